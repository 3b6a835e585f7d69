"""Live exploration in JupyterLab: one slider per face-model component (identity, in units of sigma) and per
expression blendshape (weight in [0, 1]) re-renders the depth map.

``FaceExplorer`` keeps the rendering in plain methods (``render``, ``update``) so it can be timed and tested without
a browser; ``widget`` is the ipywidgets box to display. Extra panels (for example a generated face beside the depth
map) plug in through ``panels``: callables that take the depth (1, 1, H, W) and mask and return an (H, W) or
(H, W, 3) image in [0, 1].
"""
from __future__ import annotations

import io
import time
from typing import Callable, Sequence

import numpy as np
import torch

from .facemodel import FaceModel, render_faces
from .fileio import png_bytes
from .rasterize import RenderConfig

# Expressions shown as sliders at once; the others sit in a collapsed "more expressions" accordion.
MAIN_EXPRESSIONS = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "mouthFunnel", "eyeBlink_L", "eyeBlink_R",
                    "browInnerUp_L", "browInnerUp_R")


def to_uint8(img) -> np.ndarray:
    img = img.detach().cpu().numpy() if torch.is_tensor(img) else np.asarray(img)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


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
    def with_pretrained(cls, model: FaceModel, name: str = "flagship", **kwargs) -> "FaceExplorer":
        """The explorer with a shipped generator's face beside the depth map (``pretrained.load_pretrained``; no
        training needed), rendered in that model's input convention, with its appearance sliders."""
        from .pretrained import load_pretrained

        gen = load_pretrained(name)
        return cls(model, render=gen.render, panels=[gen.panel()], **kwargs)

    def render(self, coeffs: torch.Tensor | None = None, expressions: torch.Tensor | None = None) -> list[np.ndarray]:
        """The images for the given (or current) coefficients and expressions: depth first, then one per panel."""
        c = self.coeffs if coeffs is None else torch.as_tensor(coeffs, dtype=torch.float32).view(1, -1)
        e = self.expressions if expressions is None else torch.as_tensor(expressions, dtype=torch.float32).view(1, -1)
        with torch.no_grad():
            depth, mask = render_faces(self.model, c, self.cfg, None, e)
            images = [to_uint8(depth[0])]
            for panel in self.panels:
                images.append(to_uint8(panel(depth[:, None], mask[:, None].float())))
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
            self._timing = W.Label()
            reset = W.Button(description="reset")
            reset.on_click(lambda _: self.set_coeffs(torch.zeros(self.k), torch.zeros(self.model.n_expressions)))
            self._widget = W.HBox([W.VBox([W.Label("shape (sigma)")] + self._sliders + expr_box
                                          + self._latent_sliders + [reset, self._timing]),
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


@torch.no_grad()
def latent_directions(encoder, images: torch.Tensor, k: int = 4, batch_size: int = 256):
    """Mean, the top-``k`` principal directions (k, z_dim) and their standard deviations of the encoder's mean codes
    of ``images``."""
    encoder.eval()
    dev = next(encoder.parameters()).device
    mu = torch.cat([encoder(images[s:s + batch_size].to(dev))[0].cpu() for s in range(0, len(images), batch_size)])
    mean = mu.mean(0)
    _, sv, vt = torch.linalg.svd(mu - mean, full_matrices=False)
    std = sv / max(len(mu) - 1, 1) ** 0.5
    return mean, vt[:k], std[:k]
