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

from pathlib import Path

import numpy as np
import torch

from .appearance import MODES, AppearanceModel, shading
from .draws import normal
from .rasterize import RenderConfig, apply_pose, to_pixels


def model_landmarks(model, coeffs: torch.Tensor, render, poses: torch.Tensor | None = None,
                    expressions: torch.Tensor | None = None, batch_size: int = 64) -> np.ndarray:
    """The face model's own 68 iBUG landmark vertices (``landmarks68``) projected exactly as ``render_depth`` projects
    the mesh (pose about the head centre, then ``to_pixels`` with the render's framing): (N, 68, 2) in continuous
    pixel coordinates of the depth map (pixel i covers [i, i + 1)). The ICT jaw points 0-16 are fixed vertices standing
    in for silhouette points; use ``judges.INNER_POINTS`` for errors."""
    if render.framing != "fixed":
        raise ValueError("model_landmarks: needs framing='fixed' (a 'fit' frame depends on the whole rendered mesh)")
    lm = getattr(model, "landmarks68", None)
    if lm is None:
        from .paths import find_dataset

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
                            shape_map: str = "whiten") -> torch.Tensor:
    """Appearance coefficients (B, K) from standard-normal codes z (B, K): ``free`` -> z; ``from-shape`` -> the
    conditional Gaussian given the identity coefficients, z as its noise (``AppearanceModel.coefficients``)."""
    return app.coefficients(z, mode, coeffs, shape_map)


def render_face(model, app: AppearanceModel, coeffs, appearance, render: RenderConfig, poses=None,
                expressions=None, light=None, normals: bool = True) -> dict:
    """Buffers (B, C, H, W) of faces with identity ``coeffs`` (B, K), appearance coefficients ``appearance``
    (B, K_a), optional ``poses`` (B, 6), ``expressions`` (B, E) and SH ``light`` (B, 9, 3) (needed by an SH model;
    ignored by a baked one). Keys: depth (B, 1, H, W) as ``render_faces``, mask, colour (appearance, [0, 1]),
    normal (camera frame, x right, y up, z toward the viewer), and for an SH model shading and albedo (colour is
    then albedo x shading). The render region must be the appearance model's region. ``normals=False`` skips the
    normal buffer where nothing reads it (a baked model's raw render); an SH model needs it and always gets it."""
    from .rasterize import render_mesh_buffers

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


class RawRender:
    """The appearance model rendered over the mean training photo: a generator without a network.

    Call as ``f(depth, mask, z=None, params=None)``; ``params`` = dict(coeffs, poses, expressions) of the faces
    whose depth maps were given (the evaluation passes them to generators with ``uses_face_params``). ``z`` (B, K)
    standard-normal appearance codes; drawn seeded when None."""

    uses_face_params = True

    def __init__(self, model, app: AppearanceModel, render: RenderConfig, mode: str = "from-shape", seed: int = 0,
                 background: torch.Tensor | None = None, batch_size: int = 128):
        if mode not in MODES:
            raise ValueError(f"appearance mode {mode!r}; choose one of {MODES}")
        self.model, self.app, self.render, self.mode, self.seed = model, app, render, mode, seed
        self.background = app.background if background is None else background
        self.z_dim = app.n_components
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, depth, mask, z=None, params=None):
        if params is None:
            raise ValueError("RawRender needs the faces' parameters (coeffs, poses, expressions), not only depth")
        n = len(params["coeffs"])
        g = torch.Generator().manual_seed(self.seed)
        z = normal(n, self.z_dim, generator=g) if z is None else z
        lights = self.app.sample_light(n, generator=g)
        out = []
        for s in range(0, n, self.batch_size):
            sl = slice(s, s + self.batch_size)
            coeffs = params["coeffs"][sl]
            a = appearance_coefficients(self.app, z[sl], coeffs, self.mode)
            expr = params.get("expressions")
            buf = render_face(self.model, self.app, coeffs, a, self.render, params.get("poses")[sl]
                              if params.get("poses") is not None else None,
                              None if expr is None else expr[sl], None if lights is None else lights[sl],
                              normals=False)
            out.append(composite(buf["colour"], buf["mask"], self.background))
        return torch.cat(out)


# ---- measured: the raw render as a generator ------------------------------------------------------------------------
def contact_sheet(model, app: AppearanceModel, n_faces: int = 16, n_poses: int = 5, mode: str = "from-shape",
                  seed: int = 0, table=None) -> torch.Tensor:
    """Images (n_faces * n_poses, 3, S, S) in [0, 1]: row i = one synthetic identity with one appearance draw in
    ``n_poses`` poses and expressions of fitted training photos (``table``, default the model's own table)."""
    from .depthdata import DepthSetConfig, sample_face_params

    render = app.render_config()
    table = table or app.fitted_face_params()
    g = torch.Generator().manual_seed(seed)
    coeffs = model.sample_coefficients(n_faces, 15, generator=g)
    _, poses, expr = sample_face_params(model, DepthSetConfig(n=n_poses, seed=seed + 1, pose_source="fitted",
                                                              expression_source="fitted", render=render), table)
    z = normal(n_faces, app.n_components, generator=g)
    a = appearance_coefficients(app, z, coeffs, mode)
    light = app.sample_light(n_faces, generator=g)
    rows = []
    for i in range(n_faces):
        buf = render_face(model, app, coeffs[i:i + 1].expand(n_poses, -1), a[i:i + 1].expand(n_poses, -1), render,
                          poses, expr, None if light is None else light[i:i + 1].expand(n_poses, -1, -1))
        rows.append((composite(buf["colour"], buf["mask"], app.background) + 1) / 2)
    return torch.cat(rows)


def evaluate_raw_render(paths: dict, workers: int = 2, out_dir="outputs/appearance", **context_kw) -> dict:
    """The raw render (appearance model alone, no network) scored like every shipped model: one judges-only
    evaluation context (N = 500 synthetic faces against all test photos, identity on 50 identities x 5 poses x 2
    codes with its controls), for each appearance model in ``paths`` (label -> file) and each mode. Writes
    ``EVALUATION.md`` / ``.json`` and contact sheets into ``out_dir``."""
    import json as _json
    import time

    from . import evaluation as EV
    from .datasets import PairedConfig, PairedFaceDataset
    from .facemodel import load_face_model
    from .fileio import atomic_write_bytes, png_bytes
    from .figures import image_grid

    t0 = time.time()
    out = Path(out_dir)
    model = load_face_model()
    apps = {label: AppearanceModel.load(p) for label, p in paths.items()}
    first = next(iter(apps.values()))
    pcfg = PairedConfig(size=first.render_config().resolution)
    train = PairedFaceDataset("train", pcfg, model=model, progress=False)
    test = PairedFaceDataset("test", pcfg, model=model, progress=False)
    if train.render_config(model).to_dict() != first.render_config().to_dict():
        raise ValueError("the appearance model was built in another framing than the paired set's")
    ctx = EV.build_context(model, train, test, judges_only=True, cache_dir="outputs/cache", workers=workers,
                           **context_kw)
    refs = EV.reference_rows(ctx)
    checks = EV.ladder_checks(refs)
    rows = {}
    for label, app in apps.items():
        for mode in MODES:
            name = f"raw render ({label}, {mode})"
            f = RawRender(model, app, app.render_config(), mode, seed=ctx.seed)
            rows[name] = EV.evaluate_generator(ctx, f, f.z_dim)
            print(f"{name}: KID x 10^3 {1e3 * rows[name]['kid']:.1f}, NME {rows[name]['nme']:.3f}, detection "
                  f"{rows[name]['detection']:.3f} ({time.time() - t0:.0f} s)", flush=True)
            sheet = contact_sheet(model, app, mode=mode, seed=ctx.seed)
            grid = image_grid(sheet, ncol=10)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out / f"sheet_{label}_{mode}.png",
                               png_bytes((np.clip(grid, 0, 1) * 255).round().astype(np.uint8)))
    table = EV.results_table(refs, rows, checks)
    checks_md = "\n".join(f"- {k}: {'passed' if v['ok'] else '**FAILED**'} ({v['rule']})" for k, v in checks.items())
    n, n_ref = next(iter(rows.values()))["n_judged"], next(iter(rows.values()))["n_reference"]
    mem = {k: (v.get("near_copy"), v.get("near_copy_ci")) for k, v in {**refs, **rows}.items() if "near_copy" in v}
    mem_md = "\n".join(f"| {k} | {s:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] |" for k, (s, ci) in mem.items())
    text = (f"# The raw render: the appearance model alone, no network\n\nN = {n} synthetic faces per row (identity "
            f"~ N(0, I) over 15 components, pose and expression drawn from the training photos' fits), judged with "
            f"descriptors against all {n_ref} test photos; identity on {ctx.id_ids.max() + 1} identities x "
            f"{ctx.id_poses.max() + 1} poses x {ctx.id_codes.max() + 1} codes. {time.time() - t0:.0f} s on "
            f"{__import__('os').cpu_count()} cores. Reproduce: `python -m frankenstein_utils.facerender evaluate`."
            f"\n\n## Ladders and controls\n\n{checks_md}\n\n## Table\n\n{table}\n\n## Memorisation\n\nShare of faces "
            f"whose nearest of {len(ctx.train_embeddings)} training photos is closer than dlib's 0.6 (test photos: "
            f"the share for real photos never trained on).\n\n| row | near-copy share |\n|---|---|\n{mem_md}\n")
    atomic_write_bytes(out / "EVALUATION.md", text.encode())
    atomic_write_bytes(out / "EVALUATION.json", _json.dumps(EV.to_json({"references": refs, "checks": checks,
                                                                         "rows": rows}), indent=1).encode())
    return {"references": refs, "checks": checks, "rows": rows}


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.facerender",
                                 description="Score the raw render (appearance model alone) with the evaluation.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("evaluate", help="judges-only evaluation at N = 500 and contact sheets")
    e.add_argument("--model", action="append", metavar="LABEL=FILE",
                   help="appearance models to score (default: the cached baked and SH builds that exist)")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--out", default="outputs/appearance")
    a = ap.parse_args(argv)
    from .appearance import default_path

    if a.model:
        paths = dict(m.split("=", 1) for m in a.model)
    else:
        paths = {light: default_path(light) for light in ("baked", "sh") if default_path(light).exists()}
    if not paths:
        ap.error("no appearance model built; run python -m frankenstein_utils.appearance build")
    evaluate_raw_render(paths, a.workers, a.out)


if __name__ == "__main__":
    main()
