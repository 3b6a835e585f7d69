"""The explorer: ipywidgets sliders over the face model's components and expressions, with generator panels.

Live exploration in JupyterLab: one slider per face-model component (identity, in units of sigma) and per
expression blendshape (weight in [0, 1]) re-renders the depth map.

``FaceExplorer`` keeps the rendering in plain methods (``render``, ``update``) so it can be timed and tested without a
browser; ``widget`` is the ipywidgets box to display. Extra panels (for example a generated face beside the depth map)
plug in through ``panels``: callables that take the depth (1, 1, H, W) and mask and return an (H, W) or (H, W, 3) image
in [0, 1]. A panel that needs the face itself, not only its depth, sets ``uses_face_params = True`` and is called with
``params=dict(coeffs, poses, expressions)`` as well (the convention of ``facemodel.appearance_render.RawRender``). A
panel with ``controls(update)`` adds its own widgets to the slider column (they call ``update()`` after changing the
panel's state) and with ``reset()`` is reset by the reset button.

``AppearancePanel`` is the appearance model's render (``facemodel.appearance_render.render_face`` over the mean training photo) with
sliders for its leading components, named where measuring shows what they change (``appearance_labels``), and an
"appearance from shape" switch; ``FaceExplorer.with_appearance`` builds the explorer around it.
"""

from __future__ import annotations

import io
import time
from typing import Callable, Sequence

import numpy as np
import torch

from ..facemodel.appearance import load_appearance
from ..facemodel.appearance_render import appearance_coefficients, composite, render_face
from ..facemodel.model import NARROW_FACE, FaceModel, render_faces
from ..io.files import png_bytes
from ..io.images import to_uint8
from ..render.rasterize import RenderConfig

# Expressions shown as sliders at once; the others sit in a collapsed "more expressions" accordion.
MAIN_EXPRESSIONS = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "mouthFunnel", "eyeBlink_L", "eyeBlink_R",
                    "browInnerUp_L", "browInnerUp_R")


class FaceExplorer:
    """Sliders over the first ``n_components`` identity coefficients (in units of sigma) and the model's expression
    weights (in [0, 1]; ``main_expressions`` shown, the rest in an accordion), and live images."""

    def __init__(self, model: FaceModel, n_components: int = 15, render: RenderConfig | None = None,
                 panels: Sequence[Callable] = (), slider_range: float = 3.0, display_scale: int = 2,
                 main_expressions: Sequence[str] = MAIN_EXPRESSIONS):
        self.model = model
        self.k = n_components
        self.cfg = render or RenderConfig()
        self.panels = list(panels)
        self.coeffs = torch.zeros(1, n_components)
        self.expressions = torch.zeros(1, model.n_expressions)
        self.main_expressions = [n for n in main_expressions if n in model.expression_names]
        self.display_scale = display_scale
        self.last_update_ms = float("nan")
        self._range = slider_range
        self._widget = None

    @classmethod
    def with_pretrained(cls, model: FaceModel, name: str | None = None, n_appearance: int = 0, app=None,
                        **kwargs) -> "FaceExplorer":
        """The explorer with a shipped generator's face (``name``, default ``pretrained.shipped.default_name()``; no
        training needed) beside the depth map, rendered in that model's input convention, with its latent sliders
        ("z dir"). With ``n_appearance`` > 0 the appearance model's render (``with_appearance``; ``app`` or the
        shipped model) sits between them. A buffers generator always has it (``n_appearance`` sliders, 8 when 0):
        the appearance sliders drive the network's face too (``BufferGeneratorPanel``)."""
        from ..pretrained.shipped import load_pretrained

        gen = load_pretrained(name)
        if gen.cfg.buffers:  # the network reads the appearance model's buffers: its sliders drive both panels
            app = app or gen.appearance()
            panel = AppearancePanel(model, app, n_appearance or 8, app.render_config())
            return cls(model, render=app.render_config(), panels=[panel, generator_panel(gen, panel)], **kwargs)
        if not n_appearance:
            return cls(model, render=gen.render, panels=[generator_panel(gen)], **kwargs)
        app = app or load_appearance()
        if gen.render.to_dict() != app.render_config().to_dict():
            raise ValueError(f"generator {name!r} reads depth in another framing than the appearance model's")
        return cls.with_appearance(model, n_appearance, app, panels=[generator_panel(gen)], **kwargs)

    @classmethod
    def with_appearance(cls, model: FaceModel, n_appearance: int = 8, app=None, panels: Sequence[Callable] = (),
                        **kwargs) -> "FaceExplorer":
        """The explorer showing the depth map and the appearance model's render (``AppearancePanel``, with
        ``n_appearance`` sliders and the from-shape switch), then ``panels``, all in the appearance model's render
        configuration (its region and framing). ``app``: an ``facemodel.appearance.AppearanceModel``, by default the one
        that ships with the package (float16), so no data is needed."""
        app = app or load_appearance()
        cfg = app.render_config()
        return cls(model, render=cfg, panels=[AppearancePanel(model, app, n_appearance, cfg), *panels], **kwargs)

    def render(self, coeffs: torch.Tensor | None = None, expressions: torch.Tensor | None = None) -> list[np.ndarray]:
        """The images for the given (or current) coefficients and expressions: depth first, then one per panel."""
        c = self.coeffs if coeffs is None else torch.as_tensor(coeffs, dtype=torch.float32).view(1, -1)
        e = self.expressions if expressions is None else torch.as_tensor(expressions, dtype=torch.float32).view(1, -1)
        with torch.no_grad():
            depth, mask = render_faces(self.model, c, self.cfg, None, e)
            images = [to_uint8(depth[0])]
            params = dict(coeffs=c, poses=None, expressions=e)
            for panel in self.panels:
                extra = {"params": params} if getattr(panel, "uses_face_params", False) else {}
                images.append(to_uint8(panel(depth[:, None], mask[:, None].float(), **extra)))
        return images

    def update(self, coeffs=None, expressions=None) -> list[np.ndarray]:
        """Render, push the PNGs into the image widgets (if built), and time the whole update."""
        t0 = time.perf_counter()
        if coeffs is not None:
            self.coeffs = torch.as_tensor(coeffs, dtype=torch.float32).view(1, -1)
        if expressions is not None:
            self.expressions = torch.as_tensor(expressions, dtype=torch.float32).view(1, -1)
        images = self.render()
        if self._widget is not None:
            for w, img in zip(self._images, images):
                if self.display_scale > 1:  # nearest-neighbour upscale so 128 px is not tiny on screen
                    img = img.repeat(self.display_scale, 0).repeat(self.display_scale, 1)
                w.value = png_bytes(img)
        self.last_update_ms = (time.perf_counter() - t0) * 1000
        if self._widget is not None:
            self._timing.value = f"update: {self.last_update_ms:.1f} ms"
        return images

    @property
    def widget(self):
        if self._widget is None:
            import ipywidgets as W

            self._sliders = [W.FloatSlider(value=0.0, min=-self._range, max=self._range, step=0.1,
                                           description=f"c{k}", continuous_update=True,
                                           layout=W.Layout(width="320px")) for k in range(self.k)]
            for k, s in enumerate(self._sliders):
                s.observe(lambda ch, k=k: self._on_slider(k, ch["new"]), names="value")
            # Expression sliders, one per blendshape, named after it; main ones in view, the rest one click away.
            self._expr_sliders = {}
            for j, name in enumerate(self.model.expression_names):
                s = W.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, description=name, continuous_update=True,
                                  style={"description_width": "120px"}, layout=W.Layout(width="320px"))
                s.observe(lambda ch, j=j: self._on_expression(j, ch["new"]), names="value")
                self._expr_sliders[name] = s
            more = [s for n, s in self._expr_sliders.items() if n not in self.main_expressions]
            self._expr_more = W.Accordion(children=[W.VBox(more)], selected_index=None)
            self._expr_more.set_title(0, f"more expressions ({len(more)})")
            expr_box = [W.Label("expression (0-1)")] + [self._expr_sliders[n] for n in self.main_expressions]
            expr_box += [self._expr_more] if more else []
            self._images = [W.Image(format="png") for _ in range(1 + len(self.panels))]
            # Panels with latent directions (GeneratorPanel) get one slider per direction.
            self._latent_sliders = []
            for p_i, panel in enumerate(self.panels):
                for j in range(getattr(panel, "n_latent", 0)):
                    s = W.FloatSlider(value=0.0, min=-self._range, max=self._range, step=0.1,
                                      description=f"z dir {j}", layout=W.Layout(width="320px"))
                    s.observe(lambda ch, panel=panel, j=j: self._on_latent(panel, j, ch["new"]), names="value")
                    self._latent_sliders.append(s)
            panel_controls = [w for panel in self.panels if hasattr(panel, "controls")
                              for w in panel.controls(self.update)]
            self._timing = W.Label()
            self._reset = W.Button(description="reset")
            self._reset.on_click(lambda _: self.reset())
            self._widget = W.HBox([W.VBox([W.Label("shape (sigma)")] + self._sliders + expr_box + panel_controls
                                          + self._latent_sliders + [self._reset, self._timing]),
                                   W.HBox(self._images)],
                                  # the default (stretch) would scale the images to the slider column's height
                                  layout=W.Layout(align_items="flex-start"))
            self.update()
        return self._widget

    @property
    def shape_sliders(self) -> list:
        """The identity sliders ("c0", "c1", ...) of the built widget; setting a value is what a drag does."""
        self.widget
        return self._sliders

    @property
    def appearance(self) -> "AppearancePanel | None":
        """The explorer's appearance panel (its sliders and switch once the widget is built), if it has one."""
        return next((p for p in self.panels if isinstance(p, AppearancePanel)), None)

    def shown(self) -> list[np.ndarray]:
        """The images the widget displays now (decoded from its PNGs, at display scale): depth, then panels."""
        from PIL import Image

        self.widget
        return [np.asarray(Image.open(io.BytesIO(bytes(w.value)))) for w in self._images]

    def _on_slider(self, k, value):
        self.coeffs[0, k] = float(value)
        self.update()

    def _on_expression(self, j, value):
        self.expressions[0, j] = float(value)
        self.update()

    def _on_latent(self, panel, j, value):
        panel.values[j] = float(value)
        self.update()

    def set_coeffs(self, coeffs, expressions=None):
        """Move the sliders (and the images) to ``coeffs`` (and ``expressions`` when given), one render."""
        coeffs = torch.as_tensor(coeffs, dtype=torch.float32).view(-1)
        if self._widget is None:
            return self.update(coeffs, expressions)
        for k, s in enumerate(self._sliders):
            s.unobserve_all()
            s.value = float(coeffs[k])
            s.observe(lambda ch, k=k: self._on_slider(k, ch["new"]), names="value")
        if expressions is not None:
            expressions = torch.as_tensor(expressions, dtype=torch.float32).view(-1)
            for j, s in enumerate(self._expr_sliders.values()):
                s.unobserve_all()
                s.value = float(expressions[j])
                s.observe(lambda ch, j=j: self._on_expression(j, ch["new"]), names="value")
        return self.update(coeffs, expressions)

    def reset(self):
        """What the reset button does: every shape, expression and panel slider (appearance) to 0, one render."""
        for panel in self.panels:
            if hasattr(panel, "reset"):
                panel.reset()
        return self.set_coeffs(torch.zeros(self.k), torch.zeros(self.model.n_expressions))


# What a named appearance slider changes: the name for each part of a component's colour change
# (``appearance_labels``).
APPEARANCE_NAMES = {"lightness": "skin tone", "colour": "warmth", "left_right": "light left-right"}


def appearance_labels(model: FaceModel, app, n: int, delta: float = 2.0, dominance: float = 0.5):
    """Names of the first ``n`` appearance components, decided by measuring what each one changes.

    For component k, the CIELAB colours of the outer face surface (the mouth socket left out) at +``delta`` and
    -``delta`` sd (all other components 0) give a change dLab_v per vertex v, of energy E = mean_v |dLab_v|^2. Three
    parts of it are measured, as shares of E:

    - ``lightness``: the mean lightness change, mean(dL)^2: the whole face lighter or darker -> "skin tone" (in a
      baked model skin tone and exposure together; it moves the skin's ITA the most);
    - ``colour``: the mean colour change, mean(da)^2 + mean(db)^2: the whole face yellower and redder, or paler
      -> "warmth";
    - ``left_right``: the mirror-odd part, mean_v |dLab_v - dLab_mirror(v)|^2 / 4: one side lighter, the other
      darker -> "light left-right".

    The parts are orthogonal (the odd part has zero mean over the mirror pairs; lightness and colour are different
    channels), so at most one holds more than half of E. A component is named after its largest part when that holds
    more than ``dominance`` of E; otherwise it has no name (None; its slider reads "a{k}"). Returns the names and, per
    component, the three shares and the change of the mean skin colour's ITA in degrees (``ita``; cheek and forehead
    vertices, ``facemodel.appearance.skin_vertices``)."""
    from skimage.color import rgb2lab

    from ..facemodel.appearance import individual_typology_angle, mirror_index, skin_vertices

    rv = app.region_vertices.numpy()
    outer = np.nonzero((rv >= NARROW_FACE[0]) & (rv < NARROW_FACE[1]))[0]
    mirror = mirror_index(model.mean[torch.as_tensor(rv[outer])].numpy())
    has = mirror >= 0
    skin = skin_vertices(model, rv)
    steps = torch.eye(n, app.n_components) * delta
    colours = app.colours(torch.cat([steps, -steps])).numpy()
    lab = rgb2lab(colours[:, outer].astype(np.float64))
    ita = individual_typology_angle(colours[:, skin].mean(1))
    names, measures = [], []
    for k in range(n):
        d = lab[k] - lab[n + k]
        energy = max(float((d ** 2).sum(1).mean()), 1e-12)
        odd = (d[has] - d[mirror[has]]) / 2
        shares = {"lightness": float(d[:, 0].mean() ** 2) / energy,
                  "colour": float(d[:, 1].mean() ** 2 + d[:, 2].mean() ** 2) / energy,
                  "left_right": float((odd ** 2).sum(1).mean() / max((d[has] ** 2).sum(1).mean(), 1e-12))}
        top = max(shares, key=shares.get)
        names.append(APPEARANCE_NAMES[top] if shares[top] > dominance else None)
        measures.append({**shares, "ita": float(ita[k] - ita[n + k])})
    return names, measures


class AppearancePanel:
    """A panel for ``FaceExplorer``: the current face (identity and expression, frontal) coloured by the appearance
    model (``facemodel.appearance_render.render_face``) over the model's mean training photo
    (``facemodel.appearance_render.composite``).

    ``values`` (n,) are the first n appearance sliders in sd units, the rest 0. ``from_shape`` False: they are the
    appearance coefficients themselves (``free``); True: they are the noise z of the conditional Gaussian given the
    current identity coefficients (``from-shape``), so moving a shape slider changes the appearance too. Slider names
    are measured on the free components (``appearance_labels``); the conditional's residual Cholesky factor is
    lower-triangular and close to diagonal (the shape explains a few % of the appearance), so with the switch on
    slider k still moves mostly component k. A lit (SH) model is lit by its training photos' mean light."""

    uses_face_params = True

    def __init__(self, model: FaceModel, app, n: int = 8, render: RenderConfig | None = None,
                 slider_range: float = 3.0):
        if not 0 < n <= app.n_components:
            raise ValueError(f"{n} appearance sliders asked for; the model has {app.n_components} components")
        self.model, self.app, self.n = model, app, n
        self.render = render or app.render_config()
        self.values = torch.zeros(n)
        self.from_shape = False
        self.labels, self.measures = appearance_labels(model, app, n)
        self.names = [f"a{k}" + (f" {lab}" if lab else "") for k, lab in enumerate(self.labels)]
        self.light = None if app.lights is None else app.lights.mean(0, keepdim=True)
        self._range = slider_range
        self._quiet = False  # set while reset moves the sliders, so that they do not re-render one by one
        self.sliders, self.switch = [], None

    def coefficients(self, coeffs: torch.Tensor) -> torch.Tensor:
        """The appearance coefficients for identity coefficients ``coeffs`` (1, k): free, the n slider values
        (1, n) (the rest are 0, so the colours need only n rows of the basis: a faster update); from shape, all K
        (1, K)."""
        if not self.from_shape:
            return self.values[None].clone()
        z = torch.zeros(1, self.app.n_components)
        z[0, :self.n] = self.values
        return appearance_coefficients(self.app, z, coeffs, "from-shape")

    def __call__(self, depth, mask, params):
        coeffs = params["coeffs"]
        buf = render_face(self.model, self.app, coeffs, self.coefficients(coeffs), self.render, params.get("poses"),
                          params.get("expressions"), self.light)
        img = composite(buf["colour"], buf["mask"], self.app.background)[0]
        return ((img + 1) / 2).permute(1, 2, 0)

    def controls(self, update: Callable) -> list:
        """The switch and the sliders (ipywidgets), each change followed by ``update()``; the sliders carry the DOM
        class ``appearance-slider``, the switch ``appearance-from-shape`` (for the browser test)."""
        import ipywidgets as W

        def on_value(k, value):
            self.values[k] = float(value)
            if not self._quiet:
                update()

        def on_switch(value):
            self.from_shape = bool(value)
            update()

        self.switch = W.Checkbox(value=self.from_shape, description="appearance from shape", indent=False)
        self.switch.add_class("appearance-from-shape")
        self.switch.observe(lambda ch: on_switch(ch["new"]), names="value")
        self.sliders = []
        for k, name in enumerate(self.names):
            s = W.FloatSlider(value=float(self.values[k]), min=-self._range, max=self._range, step=0.1,
                              description=name, continuous_update=True, style={"description_width": "120px"},
                              layout=W.Layout(width="320px"))
            s.add_class("appearance-slider")
            s.observe(lambda ch, k=k: on_value(k, ch["new"]), names="value")
            self.sliders.append(s)
        return [W.Label("appearance (sd)"), self.switch] + self.sliders

    def reset(self):
        """Sliders and values to 0 without rendering (the explorer renders once after)."""
        self._quiet = True
        try:
            for s in self.sliders:
                s.value = 0.0
        finally:
            self._quiet = False
        self.values.zero_()


class GeneratorPanel:
    """A panel for ``FaceExplorer``: the face a trained run generates from the depth map.

    For an appearance-conditioned run, ``z = mean + sum_j values_j * scales_j * directions_j`` where the directions are
    the main directions (PCA) of the encoder's codes of real photos (``latent_directions``); each gets a slider.
    Without directions z = 0 (the prior mean); a noise generator (NU) gets a fixed z."""

    def __init__(self, run, directions: torch.Tensor | None = None, mean: torch.Tensor | None = None,
                 scales: torch.Tensor | None = None, seed: int = 0):
        self.run = run
        z_dim = run.nets["G"].z_dim
        self.directions = directions
        self.mean = mean if mean is not None else torch.zeros(z_dim)
        self.scales = scales
        self.n_latent = 0 if directions is None else len(directions)
        self.values = torch.zeros(self.n_latent)
        self.fixed_z = torch.randn(1, z_dim, generator=torch.Generator().manual_seed(seed)) if z_dim else None

    def z(self):
        if self.directions is not None:
            return (self.mean + (self.values * self.scales) @ self.directions)[None]
        if "E" in self.run.nets:
            return self.mean[None]
        return self.fixed_z

    def __call__(self, depth, mask):
        dev = next(self.run.nets["G"].parameters()).device
        z = self.z()
        img = self.run.generate(depth.to(dev), mask.to(dev), z=None if z is None else z.to(dev))[0]
        return ((img.cpu() + 1) / 2).permute(1, 2, 0).squeeze(-1)


class BufferGeneratorPanel(GeneratorPanel):
    """A panel for ``FaceExplorer``: the face a buffers generator makes of the current face. Its buffers are
    rendered with the appearance coefficients of ``appearance`` (an ``AppearancePanel``: its sliders and from-shape
    switch drive this face too), quantized as in training (``data.buffers.buffer_stack``); the network's own code comes
    from the latent sliders as in ``GeneratorPanel``."""

    uses_face_params = True

    def __init__(self, gen, appearance: AppearancePanel, directions=None, mean=None, scales=None, seed: int = 0):
        from ..data.buffers import buffer_names

        super().__init__(gen, directions, mean, scales, seed)
        self.appearance = appearance
        self.names, self.k = buffer_names(gen.cfg.buffers), gen.cfg.appearance_k
        if self.k > appearance.app.n_components:
            raise ValueError(f"the generator reads {self.k} appearance components; the model has "
                             f"{appearance.app.n_components}")

    def __call__(self, depth, mask, params):
        from ..data.buffers import render_buffers

        ap = self.appearance
        coeffs = params["coeffs"]
        a = ap.coefficients(coeffs)[:, :self.k]
        if a.shape[1] < self.k:  # free: the sliders' n values, the rest 0
            a = torch.cat([a, torch.zeros(1, self.k - a.shape[1])], 1)
        buf = render_buffers(ap.model, ap.app, coeffs, a, ap.render, params.get("poses"), params.get("expressions"),
                             ap.light, self.names, self.run.cfg.buffers_supersample)
        z = self.z()
        img = self.run.generate(buf["depth"], buf["mask"], z=z, buffers=buf["buffers"])[0]
        return ((img.cpu() + 1) / 2).permute(1, 2, 0).squeeze(-1)


def generator_panel(gen, appearance=None):
    """A ``GeneratorPanel`` showing a shipped model's face (``pretrained.shipped.PretrainedGenerator``), with the latent
    sliders of its ``latent``; a buffers generator gives a ``BufferGeneratorPanel`` driven by ``appearance`` (an
    ``AppearancePanel``)."""
    lat = () if gen.latent is None else (gen.latent["directions"], gen.latent["mean"], gen.latent["scales"])
    if gen.cfg.buffers:
        if appearance is None:
            raise ValueError("a buffers generator's panel needs the explorer's AppearancePanel")
        return BufferGeneratorPanel(gen, appearance, *lat)
    return GeneratorPanel(gen, *lat)
