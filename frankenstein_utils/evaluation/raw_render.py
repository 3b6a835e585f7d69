"""The raw render with no network as a generator: its contact sheet and its evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..facemodel.appearance_render import (MODES, AppearanceModel, RawRender, appearance_coefficients, composite,
                                           render_face)
from ..io.draws import normal


# ---- measured: the raw render as a generator ------------------------------------------------------------------------
def contact_sheet(model, app: AppearanceModel, n_faces: int = 16, n_poses: int = 5, mode: str = "from-shape",
                  seed: int = 0, table=None) -> torch.Tensor:
    """Images (n_faces * n_poses, 3, S, S) in [0, 1]: row i = one synthetic identity with one appearance draw in
    ``n_poses`` poses and expressions of fitted training photos (``table``, default the model's own table)."""
    from ..data.depth_sets import DepthSetConfig, sample_face_params

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

    from ..data.pairs import PairedConfig, PairedFaceDataset
    from ..evaluation import context as EV
    from ..facemodel.model import load_face_model
    from ..io.figures import image_grid
    from ..io.files import atomic_write_bytes, png_bytes

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
            f"{__import__('os').cpu_count()} cores. Reproduce: `python -m frankenstein_utils.evaluation.raw_render evaluate`."
            f"\n\n## Ladders and controls\n\n{checks_md}\n\n## Table\n\n{table}\n\n## Memorisation\n\nShare of faces "
            f"whose nearest of {len(ctx.train_embeddings)} training photos is closer than dlib's 0.6 (test photos: "
            f"the share for real photos never trained on).\n\n| row | near-copy share |\n|---|---|\n{mem_md}\n")
    atomic_write_bytes(out / "EVALUATION.md", text.encode())
    atomic_write_bytes(out / "EVALUATION.json", _json.dumps(EV.to_json({"references": refs, "checks": checks,
                                                                         "rows": rows}), indent=1).encode())
    return {"references": refs, "checks": checks, "rows": rows}


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.evaluation.raw_render",
                                 description="Score the raw render (appearance model alone) with the evaluation.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("evaluate", help="judges-only evaluation at N = 500 and contact sheets")
    e.add_argument("--model", action="append", metavar="LABEL=FILE",
                   help="appearance models to score (default: the cached baked and SH builds that exist)")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--out", default="outputs/appearance")
    a = ap.parse_args(argv)
    from ..data.appearance_build import default_path

    if a.model:
        paths = dict(m.split("=", 1) for m in a.model)
    else:
        paths = {light: default_path(light) for light in ("baked", "sh") if default_path(light).exists()}
    if not paths:
        ap.error("no appearance model built; run python -m frankenstein_utils.data.appearance_build build")
    evaluate_raw_render(paths, a.workers, a.out)


if __name__ == "__main__":
    main()
