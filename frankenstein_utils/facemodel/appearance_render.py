"""Whole-face renders from the face model's two halves: shape (identity, expression, pose) and appearance.

``render_face`` rasterizes a face once and shades the fragments into every buffer a generator may read: depth and
mask (exactly ``render_faces``' depth), the appearance colour (per-vertex colours interpolated), the camera-frame
normals, and with an SH-lit appearance model the shading and the lit colour. ``composite`` puts the coloured face
over a background (by default the mean training photo, which the appearance model carries).

``RawRender`` is the appearance model alone, no network, used as a generator: ``f(depth, mask, z, params=...)``
renders the face whose parameters are given, with appearance coefficients from ``z`` (``free``: z itself;
``from-shape``: the conditional Gaussian's draw with z as its noise). Every later generator is compared with it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..io.draws import normal
from ..render.rasterize import RenderConfig, apply_pose, to_pixels
from .appearance import MODES, AppearanceModel, shading


def model_landmarks(model, coeffs: torch.Tensor, render, poses: torch.Tensor | None = None,
                    expressions: torch.Tensor | None = None, batch_size: int = 64) -> np.ndarray:
    """The face model's own 68 iBUG landmark vertices (``landmarks68``) projected exactly as ``render_depth`` projects
    the mesh (pose about the head centre, then ``to_pixels`` with the render's framing): (N, 68, 2) in continuous
    pixel coordinates of the depth map (pixel i covers [i, i + 1)). The ICT jaw points 0-16 are fixed vertices standing
    in for silhouette points; use ``evaluation.judges.INNER_POINTS`` for errors."""
    if render.framing != "fixed":
        raise ValueError("model_landmarks: needs framing='fixed' (a 'fit' frame depends on the whole rendered mesh)")
    lm = getattr(model, "landmarks68", None)
    if lm is None:
        from ..io.paths import find_dataset

        folder = find_dataset("ict_facekit", "ict_expression_model.npz")
        lm = np.load(folder / "ict_expression_model.npz")["landmarks68"]
    lm = torch.as_tensor(np.asarray(lm), dtype=torch.long)
    coeffs = torch.as_tensor(coeffs, dtype=torch.float32)
    K = coeffs.shape[1]
    # only the 68 rows of the model: the whole mesh (26k vertices) for 68 points costs more than the render
    mean, basis = model.mean[lm].reshape(-1), model.basis[:K, lm].reshape(K, -1)
    expr_basis = None if expressions is None else model.expression_basis[:, lm].reshape(model.n_expressions, -1)
    out = []
    for s in range(0, len(coeffs), batch_size):
        v = torch.addmm(mean, coeffs[s:s + batch_size], basis)
        if expr_basis is not None:
            v = v + torch.as_tensor(expressions[s:s + batch_size], dtype=torch.float32) @ expr_basis
        v = v.view(-1, len(lm), 3)
        p = None if poses is None else poses[s:s + batch_size]
        out.append(to_pixels(apply_pose(v, p), render)[..., :2])
    return torch.cat(out).double().numpy()


def appearance_coefficients(app: AppearanceModel, z: torch.Tensor, coeffs: torch.Tensor, mode: str,
                            shape_map: str = "whiten", k: int | None = None) -> torch.Tensor:
    """Appearance coefficients (B, K) from standard-normal codes z (B, K): ``free`` -> z; ``from-shape`` -> the
    conditional Gaussian given the identity coefficients, z as its noise (``AppearanceModel.coefficients``).
    ``k``: the first k coefficients (B, k) from the first k codes, the codes beyond k at 0, which is what a buffers
    generator reading k components gets. Exact for the first k: from-shape's residual factor is lower-triangular
    (Cholesky), so coefficient i depends on codes 0..i only."""
    if k is None:
        return app.coefficients(z, mode, coeffs, shape_map)
    z = torch.as_tensor(z, dtype=torch.float32)
    full = torch.zeros(len(z), app.n_components)
    full[:, :k] = z[:, :k]
    return app.coefficients(full, mode, coeffs, shape_map)[:, :k]


def render_face(model, app: AppearanceModel, coeffs, appearance, render: RenderConfig, poses=None,
                expressions=None, light=None, normals: bool = True) -> dict:
    """Buffers (B, C, H, W) of faces with identity ``coeffs`` (B, K), appearance coefficients ``appearance``
    (B, K_a), optional ``poses`` (B, 6), ``expressions`` (B, E) and SH ``light`` (B, 9, 3) (needed by an SH model;
    ignored by a baked one). Keys: depth (B, 1, H, W) as ``render_faces``, mask, colour (appearance, [0, 1]),
    normal (camera frame, x right, y up, z toward the viewer), and for an SH model shading and albedo (colour is
    then albedo x shading). The render region must be the appearance model's region. ``normals=False`` skips the
    normal buffer where nothing reads it (a baked model's raw render); an SH model needs it and always gets it."""
    from ..render.rasterize import render_mesh_buffers

    if render.region != app.config.region:
        raise ValueError(f"render region {render.region!r} differs from the appearance model's region "
                         f"{app.config.region!r}")
    region = model.region(render.region)
    verts = model.vertices(coeffs, render.region, expressions)
    colours = app.colours(appearance)
    normals = normals or app.lights is not None
    out = render_mesh_buffers(verts, region.faces, render, poses, attributes={"colour": colours}, normals=normals)
    chw = lambda t: t.permute(0, 3, 1, 2).contiguous()
    buf = {"depth": out["depth"][:, None], "mask": out["mask"][:, None].float(), "colour": chw(out["colour"])}
    if normals:
        buf["normal"] = chw(out["normal"])
    if app.lights is not None:
        if light is None:
            raise ValueError("an SH-lit appearance model needs a light per face (AppearanceModel.sample_light)")
        m = buf["mask"]
        sh = shading(out["normal"].flatten(1, 2), torch.as_tensor(light, dtype=torch.float32))
        sh = chw(sh.view_as(out["normal"])) * m
        buf["albedo"] = buf["colour"]
        buf["shading"] = sh
        buf["colour"] = (buf["colour"] * sh).clamp(0, 1)
    return buf


def composite(colour: torch.Tensor, mask: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Face colour (B, 3, H, W) in [0, 1] over ``background`` (3, h, w) in [0, 1] (resized to H x W), as images in
    [-1, 1]."""
    H = colour.shape[-1]
    bg = background.float()
    if bg.shape[-1] != H:
        bg = torch.nn.functional.interpolate(bg[None], size=(H, H), mode="bilinear", antialias=True,
                                             align_corners=False)[0]
    out = mask * colour + (1 - mask) * bg[None]
    return out * 2 - 1


def face_batches(gen, params, z, who: str):
    """The batches a generator of faces from their parameters (``RawRender``, ``data.buffers.BufferGenerator``)
    draws: yields (the batch's params, its codes, its lights), ``gen.batch_size`` faces at a time. The codes z are
    given, or N(0, I) seeded by ``gen.seed``; the lights are drawn after them from the same stream."""
    if params is None:
        raise ValueError(f"{who} needs the faces' parameters (coeffs, poses, expressions), not only depth")
    n = len(params["coeffs"])
    g = torch.Generator().manual_seed(gen.seed)
    z = normal(n, gen.z_dim, generator=g) if z is None else torch.as_tensor(z, dtype=torch.float32)
    lights = gen.app.sample_light(n, generator=g)
    for s in range(0, n, gen.batch_size):
        sl = slice(s, s + gen.batch_size)
        yield ({k: (None if v is None else v[sl]) for k, v in params.items()}, z[sl],
               None if lights is None else lights[sl])


class RawRender:
    """The appearance model rendered over the mean training photo: a generator without a network.

    Call as ``f(depth, mask, z=None, params=None)``; ``params`` = dict(coeffs, poses, expressions) of the faces
    whose depth maps were given (the evaluation passes them to generators with ``uses_face_params``). ``z`` (B, K)
    standard-normal appearance codes; drawn seeded when None. ``k``: the first k components only
    (``appearance_coefficients``), the colour that a buffers generator reading k components is given."""

    uses_face_params = True
    code_dim = 0  # its whole code is appearance: no network code (``evaluation.context.network_code_spread``)

    def __init__(self, model, app: AppearanceModel, render: RenderConfig, mode: str = "from-shape", seed: int = 0,
                 background: torch.Tensor | None = None, batch_size: int = 128, k: int | None = None):
        if mode not in MODES:
            raise ValueError(f"appearance mode {mode!r}; choose one of {MODES}")
        if k is not None and not 1 <= k <= app.n_components:
            raise ValueError(f"k = {k}: the appearance model has {app.n_components} components")
        self.k = k  # render the first k components only (None: all), as a buffers generator reading k sees the face
        self.model, self.app, self.render, self.mode, self.seed = model, app, render, mode, seed
        self.background = app.background if background is None else background
        self.z_dim = app.n_components
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, depth, mask, z=None, params=None):
        out = []
        for p, zz, lights in face_batches(self, params, z, "RawRender"):
            a = appearance_coefficients(self.app, zz, p["coeffs"], self.mode, k=self.k)
            buf = render_face(self.model, self.app, p["coeffs"], a, self.render, p.get("poses"), p.get("expressions"),
                              lights, normals=False)
            out.append(composite(buf["colour"], buf["mask"], self.background))
        return torch.cat(out)
