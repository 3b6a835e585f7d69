"""Live exploration in JupyterLab: one slider per face-model component re-renders the depth map.

``FaceExplorer`` keeps the rendering in plain methods (``render``, ``update``) so it can be timed and tested without
a browser; ``widget`` is the ipywidgets box to display. Extra panels (for example a generated face beside the depth
map) plug in through ``panels``: callables that take the depth (1, 1, H, W) and mask and return an (H, W) or
(H, W, 3) image in [0, 1].
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from .facemodel import FaceModel
from .fileio import png_bytes
from .rasterize import RenderConfig, render_depth


def to_uint8(img) -> np.ndarray:
    img = img.detach().cpu().numpy() if torch.is_tensor(img) else np.asarray(img)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


class FaceExplorer:
    """Sliders over the first ``n_components`` coefficients (in units of sigma) and live images."""

    def __init__(self, model: FaceModel, n_components: int = 15, render: RenderConfig | None = None,
                 panels: Sequence[Callable] = (), slider_range: float = 3.0, display_scale: int = 2):
        self.model = model
        self.k = n_components
        self.cfg = render or RenderConfig()
        self.panels = list(panels)
        self.coeffs = torch.zeros(1, n_components)
        self.display_scale = display_scale
        self.last_update_ms = float("nan")
        self._range = slider_range
        self._widget = None

    def render(self, coeffs: torch.Tensor | None = None) -> list[np.ndarray]:
        """The images for the given (or current) coefficients: depth first, then one per panel."""
        c = self.coeffs if coeffs is None else torch.as_tensor(coeffs, dtype=torch.float32).view(1, -1)
        with torch.no_grad():
            depth, mask = render_depth(self.model, c, self.cfg)
            images = [to_uint8(depth[0])]
            for panel in self.panels:
                images.append(to_uint8(panel(depth[:, None], mask[:, None].float())))
        return images

    def update(self, coeffs=None) -> list[np.ndarray]:
        """Render, push the PNGs into the image widgets (if built), and time the whole update."""
        t0 = time.perf_counter()
        if coeffs is not None:
            self.coeffs = torch.as_tensor(coeffs, dtype=torch.float32).view(1, -1)
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
            self._images = [W.Image(format="png") for _ in range(1 + len(self.panels))]
            self._timing = W.Label()
            reset = W.Button(description="reset")
            reset.on_click(lambda _: self.set_coeffs(torch.zeros(self.k)))
            self._widget = W.HBox([W.VBox(self._sliders + [reset, self._timing]), W.HBox(self._images)])
            self.update()
        return self._widget

    def _on_slider(self, k, value):
        self.coeffs[0, k] = float(value)
        self.update()

    def set_coeffs(self, coeffs):
        """Move the sliders (and the images) to ``coeffs``."""
        coeffs = torch.as_tensor(coeffs, dtype=torch.float32).view(-1)
        if self._widget is None:
            return self.update(coeffs)
        for k, s in enumerate(self._sliders):
            s.unobserve_all()
            s.value = float(coeffs[k])
            s.observe(lambda ch, k=k: self._on_slider(k, ch["new"]), names="value")
        return self.update(coeffs)


def face_sliders(model: FaceModel, n_components: int = 15, **kwargs):
    """The ipywidgets box of a new ``FaceExplorer`` (display it in a notebook cell)."""
    return FaceExplorer(model, n_components, **kwargs).widget
