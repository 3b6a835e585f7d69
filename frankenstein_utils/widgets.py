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
            reset.on_click(lambda _: self.set_coeffs(torch.zeros(self.k)))
            self._widget = W.HBox([W.VBox(self._sliders + self._latent_sliders + [reset, self._timing]),
                                   W.HBox(self._images)])
            self.update()
        return self._widget

    def _on_slider(self, k, value):
        self.coeffs[0, k] = float(value)
        self.update()

    def _on_latent(self, panel, j, value):
        panel.values[j] = float(value)
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
