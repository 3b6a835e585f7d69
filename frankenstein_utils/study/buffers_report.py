"""The buffers generator's report: training curve, comparison, sweep, contact sheets and the shipped file.

Measure and ship a buffers generator: its training curve, the comparison with the raw render and the depth-only
flagship, the sweep over the explorer's range, contact sheets, and the shipped file with its card.

    python -m frankenstein_utils.study.buffers_report curve RUN_DIR [--n 200] [--reference buffers]
    python -m frankenstein_utils.study.buffers_report swap CHECKPOINT_A CHECKPOINT_B [--n 200]
    python -m frankenstein_utils.study.buffers_report truncation [--k 100 70 40 20] [--n 200]
    python -m frankenstein_utils.study.buffers_report compare CHECKPOINT [--out DIR]
    python -m frankenstein_utils.study.buffers_report codes CHECKPOINT [--n 500] [--seed 1]
    python -m frankenstein_utils.study.buffers_report ship CHECKPOINT --compare DIR --command "..." [--name buffers]

(``curve``: every snapshot not yet scored; ``swap``: which region, face or background, carries a difference in
realism between two generators; ``truncation``: how much realism the generator's input, the appearance colour
with k components, keeps; ``compare``: the comparison at N = 500; ``codes``: what the network's own code changes
with the input, appearance included, held fixed, in compare's context.)

Every number comes from the evaluation's measures (``evaluation``: KID on dlib descriptors against all test photos,
NME against the face model's own landmarks with the fitted-photo oracle, detection, diversity and code spread as
shares of the real photos', identity AUC under the matched design with its controls, memorisation) plus two checks
of the picture itself: the checkerboard score (``evaluation.measures.checkerboard_score``) and the ring at the mask edge
(``evaluation.measures.edge_ring``), each beside the test photos' own value.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..evaluation import context as EV
from ..evaluation import measures as M
from ..io.draws import normal
from ..io.files import atomic_write_bytes, png_bytes, update_json

EDGE_TOLERANCE = 2.0  # grey levels: a ring this much darker than the test photos' own edge counts as a dark ring
ROUGHNESS_TOLERANCE = 1.05  # an edge this much busier along the contour than the test photos' counts as a seam


def _data(size: int = 64, cache_dir=None):
    from ..data.pairs import PairedConfig
    from ..facemodel.model import load_face_model

    model = load_face_model()
    cfg = PairedConfig(size=size)
    return model, _split("train", model, cfg, cache_dir), _split("test", model, cfg, cache_dir)


def _split(name: str, model, cfg, cache_dir=None):
    from ..data.pairs import PairedFaceDataset

    return PairedFaceDataset(name, cfg, cache_dir=cache_dir, model=model, progress=False)


def picture_checks(images: torch.Tensor, mask: torch.Tensor) -> dict:
    """Checkerboard score, edge ring (``evaluation.measures.edge_ring``: dip in grey levels, roughness along the
    contour) and ``evaluation.measures.staircase_contrast`` (dots at the input mask's pixel corners) of images with
    their masks."""
    from ..evaluation.measures import checkerboard_score

    ring = M.edge_ring(images, mask)
    return {"checkerboard": checkerboard_score(images), "edge_dip": ring["dip"], "edge_dip_ci": ring["dip_ci"],
            "edge_roughness": ring["roughness"], "edge_roughness_ci": ring["roughness_ci"],
            "staircase": M.staircase_contrast(images, mask)["ratio"]}


# ---- the training curve ---------------------------------------------------------------------------------------------
def curve(run_dir, n: int = 200, workers: int | None = None, seed: int = 0, cache_dir=None, follow: float = 0,
          reference: str = "") -> list[dict]:
    """Score every ``snapshots/step_*.pt`` of a buffers run not yet in ``RUN_DIR/curve.json``: N = ``n`` synthetic
    faces (judges-only context, appearance from shape, fixed seed) against all test photos: KID x 10^3, NME,
    detection, diversity share, code spread, checkerboard and edge dip. The raw render's KID in the same context is
    stored once as the line the network must get below; ``reference`` names a shipped generator (e.g. the default,
    ``buffers``) scored once in the same context, as ``reference:NAME`` with its file's SHA-256 (scored again when
    another file ships under that name; the earlier row is kept as ``reference:NAME@<SHA prefix>``): a run built on
    another appearance build or machine is compared with it on the same faces and judges, not with numbers from
    another context.
    ``follow`` > 0: keep watching for new snapshots (polling every ``follow`` s) until none has come for 30 min."""
    from ..facemodel.appearance_render import RawRender
    from ..train.trainer import load_run

    run_dir = Path(run_dir)
    snaps = sorted((run_dir / "snapshots").glob("step_*.pt"))
    if not snaps:
        raise ValueError(f"{run_dir}: no snapshots (train with --snapshot-every)")
    path = run_dir / "curve.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    todo = [s for s in snaps if s.name not in done]
    ref_key = f"reference:{reference}" if reference else None
    ref_gen = ref_sha = None
    if ref_key:
        from ..facemodel.appearance import sha256_of
        from ..pretrained.shipped import load_pretrained

        ref_gen = load_pretrained(reference)
        ref_sha = sha256_of(ref_gen.path)
        old = done.get(ref_key)
        if old is not None and old.get("sha256") != ref_sha:
            # another file now ships under this name: its row is kept under its own SHA, and the new one is scored
            done = update_json(path, {f"{ref_key}@{str(old.get('sha256'))[:12]}": old})
            done.pop(ref_key)
    if not todo and (not ref_key or ref_key in done):
        return [v for k, v in sorted(done.items()) if k.startswith("step_")]
    model, train, test = _data(cache_dir=cache_dir)
    ctx = _curve_context(model, train, test, n, workers, seed, cache_dir)
    if "raw_render" not in done:
        from ..data.buffers import run_appearance

        run = load_run(snaps[0])
        app = run_appearance(run.cfg)
        f = RawRender(model, app, train.render_config(model), "from-shape", seed=seed)
        fj = EV.face_judgement(ctx, EV.call_generator(f, ctx.syn_depth, ctx.syn_mask, None, ctx.syn_params),
                               ctx.syn_landmarks)
        done = update_json(path, {"raw_render": {"kid": fj["kid"], "kid_se": fj["kid_se"], "nme": fj["nme"],
                                                 "n": n}})
    if ref_key and ref_key not in done:
        done = update_json(path, {ref_key: {"sha256": ref_sha,
                                            **_curve_scores(ctx, EV.generator_fn(ref_gen, seed), n)}})
        print(f"{ref_key}: KID x 10^3 {1e3 * done[ref_key]['kid']:.1f}", flush=True)
    last = time.time()
    while True:
        for snap in todo:
            _score_snapshot(ctx, snap, n, seed, path)
            last = time.time()
        if not follow or time.time() - last > 1800:
            break
        time.sleep(follow)
        done = json.loads(path.read_text())
        todo = [s for s in sorted((run_dir / "snapshots").glob("step_*.pt")) if s.name not in done]
    done = json.loads(path.read_text())
    return [v for k, v in sorted(done.items()) if k.startswith("step_")]


def _score_snapshot(ctx, snap, n, seed, path):
    """One curve point (see ``curve``), added to ``path``."""
    from ..train.trainer import load_run

    t0 = time.time()
    run = load_run(snap)
    pt = {"step": run.step, **_curve_scores(ctx, EV.generator_fn(run, seed), n), "score_s": time.time() - t0}
    update_json(path, {snap.name: pt})
    print(f"step {run.step}: KID x 10^3 {1e3 * pt['kid']:.1f}, NME {pt['nme']:.3f}, detection "
          f"{pt['detection']:.3f}, code spread {pt['code_spread']:.3f}", flush=True)


def _curve_context(model, train, test, n, workers, seed, cache_dir):
    """The curve's evaluation context: ``n`` synthetic faces, judges only, against all test photos."""
    return EV.build_context(model, train, test, n_synthetic=n, n_embed=n, n_ids=10, n_poses=5, judges_only=True,
                            cache_dir=cache_dir or "outputs/cache", workers=workers, seed=seed)


def _curve_scores(ctx, f, n) -> dict:
    """A curve point's numbers for the generator ``f`` in the curve's context ``ctx``."""
    imgs, r = EV.score_at_one_n(ctx, f)
    return {"n": n, "kid": r["kid"], "kid_se": r["kid_se"], "nme": r["nme"], "detection": r["detection"],
            "diversity_share": r["diversity_share"], "code_spread": EV.code_spread(ctx, f, f.z_dim),
            **picture_checks(imgs, ctx.syn_mask)}


def swap_regions(face: torch.Tensor, background: torch.Tensor, mask: torch.Tensor, dilate: int = 2) -> torch.Tensor:
    """Images with the pixels inside ``mask`` (grown by a (2d+1)-px square, ``objectives.losses.dilate_mask``) from
    ``face`` and every other pixel from ``background``: m * face + (1 - m) * background."""
    from ..objectives.losses import dilate_mask

    m = dilate_mask(mask.float(), dilate)
    return m * face + (1 - m) * background


def face_background_swap(a, b, n: int = 200, workers: int = 2, seed: int = 0, dilate: int = 2,
                         cache_dir=None) -> dict:
    """Which region carries a difference in realism between two buffers generators ``a`` and ``b`` (checkpoints or
    shipped names): KID, its s.e. and detection (``_kid_of``) of each on the curve's ``n`` faces and codes, and of
    the two swaps (the face of one on the background of the other, ``swap_regions``), all in one context. If the
    face of ``a`` on the background of ``b`` scores like ``a``, the difference is in the face."""
    from ..pretrained.shipped import load_pretrained
    from ..train.trainer import load_run

    model, train, test = _data(cache_dir=cache_dir)
    ctx = _curve_context(model, train, test, n, workers, seed, cache_dir)
    imgs = []
    for src in (a, b):
        net = load_run(src) if str(src).endswith(".pt") else load_pretrained(src)
        imgs.append(EV.call_generator(EV.generator_fn(net, seed), ctx.syn_depth, ctx.syn_mask, None, ctx.syn_params))
    rows = {f"a: {a}": imgs[0], f"b: {b}": imgs[1],
            "face of a, background of b": swap_regions(imgs[0], imgs[1], ctx.syn_mask, dilate),
            "face of b, background of a": swap_regions(imgs[1], imgs[0], ctx.syn_mask, dilate)}
    return {"n": n, "seed": seed, "dilate": dilate, "rows": {k: _kid_of(ctx, v) for k, v in rows.items()}}


def input_truncation(ks=(100, 70, 40, 20), n: int = 200, workers: int = 2, seed: int = 0, appearance=None,
                     cache_dir=None) -> dict:
    """How much realism the appearance colour keeps with its first k components, the colour a buffers generator
    reading k components is given: the raw render, no network (``RawRender(k=...)``), of the curve's ``n`` drawn
    faces with appearance from shape, the same codes at every k, scored (``_kid_of``: KID, its s.e., detection) in
    the curve's context. ``appearance``: an appearance model file (default: the cached baked build)."""
    from ..data.appearance_build import default_path
    from ..data.buffers import app_fingerprint
    from ..facemodel.appearance import AppearanceModel
    from ..facemodel.appearance_render import RawRender

    app = AppearanceModel.load(appearance or default_path("baked", cache_dir))
    bad = [k for k in ks if not 1 <= k <= app.n_components]
    if bad:
        raise ValueError(f"k = {bad}: the appearance model has {app.n_components} components")
    model, train, test = _data(cache_dir=cache_dir)
    ctx = _curve_context(model, train, test, n, workers, seed, cache_dir)
    z = normal(n, app.n_components, generator=torch.Generator().manual_seed(seed))
    rows = {}
    for k in ks:
        f = RawRender(model, app, app.render_config(), "from-shape", seed=seed, k=k)
        rows[k] = _kid_of(ctx, EV.call_generator(f, ctx.syn_depth, ctx.syn_mask, z, ctx.syn_params))
    return {"n": n, "seed": seed, "appearance": app_fingerprint(app), "rows": rows}


# ---- the comparison --------------------------------------------------------------------------------------------------
def _net(source):
    """(network, appearance model, render, label) of a buffers checkpoint or shipped name."""
    from ..data.buffers import run_appearance
    from ..pretrained import shipped
    from ..render.rasterize import RenderConfig
    from ..train.trainer import load_run

    if str(source).endswith(".pt"):
        run = load_run(source)
        return run, run_appearance(run.cfg), RenderConfig.from_dict(run.cfg.input_convention["render"]), \
            f"{source} (step {run.step})"
    gen = shipped.load_pretrained(source)
    return gen, gen.appearance(), gen.render, f"shipped {source}"


def sheet(images: torch.Tensor, ncol: int) -> bytes:
    from ..io.figures import image_grid

    grid = image_grid(((images + 1) / 2).clamp(0, 1), ncol=ncol)
    return png_bytes((np.clip(grid, 0, 1) * 255).round().astype(np.uint8))


def contact_faces(f, model, app, n_faces: int = 16, n_poses: int = 5, seed: int = 0) -> torch.Tensor:
    """Row i: one synthetic identity with one appearance and network code, in ``n_poses`` poses and expressions of
    fitted training photos (as ``evaluation.raw_render.contact_sheet``)."""
    from ..data.depth_sets import DepthSetConfig, sample_face_params

    render = f.render
    g = torch.Generator().manual_seed(seed)
    coeffs = model.sample_coefficients(n_faces, 15, generator=g)
    _, poses, expr = sample_face_params(model, DepthSetConfig(n=n_poses, seed=seed + 1, pose_source="fitted",
                                                              expression_source="fitted", render=render),
                                        app.fitted_face_params())
    z = normal(n_faces, f.z_dim, generator=g)
    rep = lambda t: t.repeat_interleave(n_poses, 0)
    params = {"coeffs": rep(coeffs), "poses": poses.repeat(n_faces, 1), "expressions": expr.repeat(n_faces, 1)}
    d = torch.zeros(n_faces * n_poses, 1, render.resolution, render.resolution)
    return f(d, d, rep(z), params=params)


def compare(source, out_dir="outputs/buffers/compare", n: int = 500, workers: int = 2, seed: int = 0,
            flagship: str = "flagship", cache_dir=None, sweep_codes: int = 8, n_ids: int = 50, n_poses: int = 5,
            components=None) -> dict:
    """The decisive comparison at one N: the buffers generator ``source`` (checkpoint or shipped name; appearance
    from shape and free), the raw render (its appearance model, no network) and the depth-only ``flagship``, each
    with every measure of the evaluation, the picture checks, the sweep over the explorer's range (buffers
    generator and flagship) and the targets of issue 22 computed from the numbers. Writes ``EVALUATION.md``,
    ``EVALUATION.json`` and contact sheets into ``out_dir``."""
    from ..data.buffers import BufferGenerator
    from ..evaluation import sweep as SW
    from ..facemodel.appearance_render import RawRender
    from ..pretrained import shipped

    t0 = time.time()
    out, model, train, test, net, app, render, label = _setup(source, out_dir, cache_dir)
    heldout = _split("val", model, train.config, cache_dir)  # never trained on: memorisation's held-out photos
    ctx = EV.build_context(model, train, test, n_synthetic=n, n_embed=n, judges_only=True, n_ids=n_ids,
                           n_poses=n_poses, cache_dir=cache_dir or "outputs/cache", workers=workers, seed=seed,
                           heldout=heldout)
    refs = EV.reference_rows(ctx)
    checks = EV.ladder_checks(refs)
    refs[EV.REFS["test"]].update(picture_checks(ctx.real_test, ctx.test_mask))
    gens = {"buffers generator (appearance from shape)": BufferGenerator(net, model, app, render, "from-shape", seed),
            "buffers generator (appearance free)": BufferGenerator(net, model, app, render, "free", seed),
            "raw render (appearance from shape, no network)": RawRender(model, app, render, "from-shape", seed=seed)}
    flag = shipped.load_pretrained(flagship)
    gens[f"depth-only {flagship} (shipped)"] = EV.generator_fn(flag, seed)
    rows, timing = {}, {}
    for name, f in gens.items():
        t1 = time.time()
        imgs = EV.call_generator(f, ctx.syn_depth, ctx.syn_mask, None, ctx.syn_params)
        rows[name] = {**EV.evaluate_generator(ctx, f, f.z_dim, images=imgs), **picture_checks(imgs, ctx.syn_mask)}
        nc = EV.network_code_spread(ctx, f)
        if nc is not None:
            rows[name]["network_code"] = nc
        if name.startswith("buffers generator (appearance from"):
            atomic_write_bytes(out / "faces_evaluation_set.png", sheet(imgs[:64], 8))
        timing[name] = time.time() - t1
        print(f"{name}: KID x 10^3 {1e3 * rows[name]['kid']:.1f}, NME {rows[name]['nme']:.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    # the sweep: every shape slider to +-3 sigma and the head turn, ``sweep_codes`` codes each
    main_name = next(iter(gens))
    sweep_kw = dict(n_codes=sweep_codes, fallback_box=ctx.fallback_box, workers=workers, seed=seed,
                    components=components)
    reference_sweep = SW.reference_sweep(model, render, **sweep_kw)
    sweeps = {}
    for name in (main_name, f"depth-only {flagship} (shipped)"):
        f = gens[name]
        r = SW.slider_sweep(f, model, render, f.z_dim, return_images=True, **sweep_kw)
        imgs = r.pop("images")
        sweeps[name] = {**r, "n_codes": sweep_codes}
        if name == main_name:
            inputs = SW.sweep_inputs(model, render, n_codes=sweep_codes, seed=seed, z_dim=f.z_dim,
                                     components=components)
            first = inputs.code == 0
            atomic_write_bytes(out / "sweep_code0.png", sheet(imgs[torch.as_tensor(first)], 5))
            ends = torch.as_tensor(np.isin(inputs.value, (-3.0, 3.0)) & (inputs.sweep != "yaw"))
            sweeps[name]["end_kid"] = _kid_of(ctx, imgs[ends])
            sweeps[name]["centre_kid"] = _kid_of(ctx, _mean_face_many_codes(f, model, render, int(ends.sum()), seed))
    atomic_write_bytes(out / "faces_16x5.png", sheet(contact_faces(gens[main_name], model, app, seed=seed), 5))
    atomic_write_bytes(out / "faces_16x5_flagship.png",
                       sheet(contact_faces(_WithParams(gens[f"depth-only {flagship} (shipped)"], render), model, app,
                                           seed=seed), 5))
    targets = issue_targets(refs, rows, sweeps, main_name, f"depth-only {flagship} (shipped)",
                            "raw render (appearance from shape, no network)")
    result = {"source": label, "source_arg": str(source), "n": n, "seed": seed, "references": refs, "checks": checks,
              "rows": rows,
              "sweeps": sweeps, "context": {"test_photos": len(ctx.test_faces.embeddings),
                                            "identities": int(ctx.id_ids.max() + 1),
                                            "poses": int(ctx.id_poses.max() + 1), "codes": int(ctx.id_codes.max() + 1)},
              "reference_sweep": reference_sweep, "targets": targets, "seconds": time.time() - t0,
              "row_seconds": timing, "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores"}
    atomic_write_bytes(out / "EVALUATION.json", json.dumps(EV.to_json(result), indent=1).encode())
    atomic_write_bytes(out / "EVALUATION.md", report_text(result).encode())
    return result


def _setup(source, out_dir, cache_dir):
    """(out folder, face model, training and test sets, network, appearance model, framing, label) of a buffers
    generator ``source``, refused if it is framed otherwise than the paired set."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, train, test = _data(cache_dir=cache_dir)
    net, app, render, label = _net(source)
    if render.to_dict() != train.render_config(model).to_dict():
        raise ValueError(f"{label}: rendered in another framing than the paired set's")
    return out, model, train, test, net, app, render, label


def network_codes(source, out_dir="outputs/buffers/codes", n: int = 500, workers: int = 2, seed: int = 0,
                  flagship: str = "flagship", cache_dir=None) -> dict:
    """``evaluation.context.network_code_spread`` of the buffers generator ``source`` (appearance from shape and
    free) and of the depth-only ``flagship`` on the synthetic inputs of ``compare``'s context (same ``n`` and
    ``seed``), without the rest of the comparison; writes ``network_code.json``, ``network_code.md`` and
    ``codes_network.png`` (8 inputs, one per row, under 8 network codes) into ``out_dir``."""
    from ..data.buffers import BufferGenerator
    from ..pretrained import shipped

    t0 = time.time()
    out, model, train, test, net, app, render, label = _setup(source, out_dir, cache_dir)
    ctx = EV.build_context(model, train, test, n_synthetic=n, n_embed=n, judges_only=True,
                           cache_dir=cache_dir or "outputs/cache", workers=workers, seed=seed)
    gens = {"buffers generator (appearance from shape)": BufferGenerator(net, model, app, render, "from-shape", seed),
            "buffers generator (appearance free)": BufferGenerator(net, model, app, render, "free", seed),
            f"depth-only {flagship} (shipped)": EV.generator_fn(shipped.load_pretrained(flagship), seed)}
    rows = {k: {"network_code": EV.network_code_spread(ctx, f)} for k, f in gens.items()}
    f = next(iter(gens.values()))
    z = EV.network_code_draws(8, 8, f.z_dim, f.code_dim, torch.Generator().manual_seed(seed + 3))
    imgs = EV.images_over_codes(ctx, f, z, 8)
    atomic_write_bytes(out / "codes_network.png", sheet(imgs, 8))
    result = {"source": label, "n": n, "seed": seed, "rows": rows, "seconds": time.time() - t0}
    atomic_write_bytes(out / "network_code.json", json.dumps(EV.to_json(result), indent=1).encode())
    atomic_write_bytes(out / "network_code.md", (
        f"# {label}: the network's own code\n\nThe synthetic inputs of `compare`'s context (N = {n}, seed {seed}); "
        f"{result['seconds']:.0f} s. Reproduce: `python -m frankenstein_utils.study.buffers_report codes {source} "
        f"--n {n} --seed {seed}`. `codes_network.png`: a row per input, its 8 network codes.\n\n"
        + network_code_table(rows)).encode())
    return result


class _WithParams:
    """A depth-only generator given the faces' parameters: renders their depth itself (contact sheets)."""

    uses_face_params = True

    def __init__(self, f, render):
        self.f, self.render, self.z_dim = f, render, f.z_dim

    def __call__(self, depth, mask, z=None, params=None):
        from ..facemodel.model import load_face_model, render_faces

        d, m = render_faces(load_face_model(), params["coeffs"], self.render, params["poses"], params["expressions"])
        return self.f(d[:, None], m[:, None].float(), z)


def _kid_of(ctx, images) -> dict:
    faces = ctx.judges.analyse(images, fallback_box=ctx.fallback_box, workers=ctx.workers)
    k = M.kernel_distance_features(faces.embeddings, ctx.test_faces.embeddings, ctx.kid_stats, seed=ctx.seed)
    return {"kid": k["kid"], "kid_se": k["kid_se"], "n": len(images), "detection": float(faces.found.mean())}


def _kid_line(r: dict) -> str:
    """One ``_kid_of`` result as printed: KID x 10^3 with its s.e., and detection."""
    return f"KID x 10^3 {1e3 * r['kid']:.1f} +- {1e3 * r['kid_se']:.1f}, detection {r['detection']:.3f}"


def _mean_face_many_codes(f, model, render, n, seed):
    """The sweep's centre (mean shape, neutral pose) drawn with ``n`` codes: the realism the slider ends compare to."""
    from ..facemodel.framing import NEUTRAL_POSE
    from ..facemodel.model import render_faces

    coeffs = torch.zeros(n, 15)
    poses = torch.tensor(NEUTRAL_POSE).repeat(n, 1)
    d, m = render_faces(model, coeffs, render, poses)
    z = normal(n, f.z_dim, generator=torch.Generator().manual_seed(seed + 5))
    return EV.call_generator(f, d[:, None], m[:, None].float(), z, {"coeffs": coeffs, "poses": poses,
                                                                    "expressions": None})


def issue_targets(refs: dict, rows: dict, sweeps: dict, main: str, flagship: str, raw: str) -> list[dict]:
    """Issue 22's targets, each (target, measured, bound, met), computed from the comparison's numbers."""
    R = lambda k: refs[EV.REFS[k]]
    m, fl, rr = rows[main], rows[flagship], rows[raw]
    free = rows[main.replace("from shape", "free")]
    sw = sweeps[main]
    worst_det = min(v["worst_detection"] for v in sw["sweeps"].values())
    t = [("realism: KID <= test photos blurred 1 px", m["kid"], R("blur1")["kid"], m["kid"] <= R("blur1")["kid"]),
         ("(where blur 2 px lies: KID)", m["kid"], R("blur2")["kid"], None),
         ("diversity >= 90 % of the test photos'", m["diversity_share"], 0.9, m["diversity_share"] >= 0.9),
         ("spread over codes for a fixed input >= 50 % of real", m["code_spread"], 0.5, m["code_spread"] >= 0.5),
         *_network_code_target(m),
         ("NME <= 1.5 x oracle (fitted landmarks)", m["nme"], 1.5 * R("test")["nme"],
          m["nme"] <= 1.5 * R("test")["nme"]),
         ("identity AUC >= 0.9 (appearance from shape)", m["identity_auc"], 0.9, m["identity_auc"] >= 0.9),
         ("(identity AUC, appearance free)", free["identity_auc"], 0.9, None),
         ("face detection >= 95 %", m["detection"], 0.95, m["detection"] >= 0.95),
         (f"memorisation share <= test photos' (dlib distance < 0.6 to one of {m.get('near_copy_n_train', '?')} "
          "training photos; fails its known answers, see Memorisation)", m.get("near_copy"), R("test").get("near_copy"),
          None if m.get("near_copy") is None else m["near_copy"] <= R("test")["near_copy"]),
         *_memorisation_target(m, R("test")),
         ("realism better than the raw render (KID)", m["kid"], rr["kid"], m["kid"] < rr["kid"]),
         ("checkerboard <= 2 x test photos'", m["checkerboard"], 2 * R("test")["checkerboard"],
          m["checkerboard"] <= 2 * R("test")["checkerboard"]),
         (f"no dark ring: edge dip >= test photos' - {EDGE_TOLERANCE:g} grey levels", m["edge_dip"],
          R("test")["edge_dip"] - EDGE_TOLERANCE, m["edge_dip"] >= R("test")["edge_dip"] - EDGE_TOLERANCE),
         (f"no dotted seam: edge roughness <= {ROUGHNESS_TOLERANCE:g} x test photos'", m["edge_roughness"],
          ROUGHNESS_TOLERANCE * R("test")["edge_roughness"],
          m["edge_roughness"] <= ROUGHNESS_TOLERANCE * R("test")["edge_roughness"]),
         (f"sweep: detection >= 90 % at every point{_per_point(sw, worst_det)}", worst_det, 0.9, worst_det >= 0.9),
         ("sweep: KID at +-3 sigma within 1.5 x the mean face's", sw["end_kid"]["kid"], 1.5 * sw["centre_kid"]["kid"],
          sw["end_kid"]["kid"] <= 1.5 * sw["centre_kid"]["kid"])]
    better = {"kid": -1, "nme": -1, "detection": 1, "diversity_share": 1, "code_spread": 1, "identity_auc": 1}
    for k, sign in better.items():
        a, b = m.get(k), fl.get(k)
        ok = None if a is None or b is None or not np.isfinite(b) else (a - b) * sign > 0
        t.append((f"better than the depth-only flagship: {k}", a, b, ok))
    return [{"target": a, "measured": b, "bound": c, "met": d} for a, b, c, d in t]


def _network_code_target(m: dict) -> list:
    """The code spread read with the issue's input (depth, mask and the rendered appearance) held fixed: only the
    network's own code varies (``evaluation.context.network_code_spread``); none for a row without it."""
    nc = m.get("network_code")
    if nc is None:
        return []
    return [("(the same, the network's own code alone: shape, pose and appearance fixed; pixel sd over codes "
             f"{nc['inside']:.3f} inside the face, {nc['outside']:.3f} outside, {nc['between']:.3f} between inputs)",
             nc["descriptor_share"], 0.5, nc["descriptor_share"] >= 0.5)]


def network_code_table(rows: dict) -> str:
    """The rows' ``network_code`` measures as a markdown section ('' when no row has them)."""
    lines = [f"| {k} | {r['network_code']['descriptor_share']:.3f} | {r['network_code']['inside']:.3f} | "
             f"{r['network_code']['outside']:.3f} | {r['network_code']['between']:.3f} |"
             for k, r in rows.items() if r.get("network_code")]
    if not lines:
        return ""
    nc = next(r["network_code"] for r in rows.values() if r.get("network_code"))
    return ("## The network's own code\n\nEach of "
            f"{nc['n_maps']} synthetic inputs (shape, pose, expression and its appearance code) under {nc['n_codes']} "
            "draws of the network's own code alone (`evaluation.context.network_code_spread`): the spread of the "
            "faces' descriptors over those codes as a share of the test photos' spread (who the person is), and the "
            "per-pixel standard deviation over the codes inside and outside the face ([-1, 1] units; hair, "
            "background and light show outside), beside the same between different inputs. A depth-only "
            "generator's whole code is its network code.\n\n| row | descriptor spread share | pixel sd inside the "
            "face | pixel sd outside | pixel sd between inputs |\n|---|---|---|---|---|\n" + "\n".join(lines) + "\n\n")


def _per_point(sweep: dict, rate: float) -> str:
    """The faces judged at each sweep point and the worst point's 95 % Wilson interval, for the target's label."""
    k = sweep.get("n_codes")
    if not k:
        return ""
    lo, hi = M.wilson_interval(round(rate * k), k)
    return f" ({k} faces per point; the worst point's interval [{lo:.2f}, {hi:.2f}])"


def _memorisation_target(m: dict, test: dict) -> list:
    """Memorisation against the held-out split: the share of faces whose nearest photo is a training photo may not
    lie above the chance share M / (M + H) by more than 2 of its standard errors (``measures.
    training_neighbour_share``; the test photos' share, in the Memorisation section, checks that chance level on
    real photos never trained on)."""
    if "train_neighbour" not in m:
        return []
    null = m["train_neighbour_null"]
    bound = null + 2 * m["train_neighbour_se"]
    return [("memorisation, held-out split: share whose nearest photo is a training one <= chance + 2 s.e. "
             f"(chance {null:.3f}; test photos {test.get('train_neighbour', float('nan')):.3f})",
             m["train_neighbour"], bound, m["train_neighbour"] <= bound)]


def report_text(result: dict) -> str:
    refs, rows, checks, c = result["references"], result["rows"], result["checks"], result["context"]
    table = EV.results_table(refs, rows, checks)
    checks_md = "\n".join(f"- {k}: {'passed' if v['ok'] else '**FAILED**'} ({v['rule']})" for k, v in checks.items())
    fmt = lambda v: "–" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
    tg = "\n".join(f"| {t['target']} | {fmt(t['measured'])} | {fmt(t['bound'])} | "
                   f"{'–' if t['met'] is None else ('yes' if t['met'] else '**no**')} |" for t in result["targets"])
    pics = "\n".join(f"| {k} | {r.get('checkerboard', float('nan')):.2e} | {r.get('edge_dip', float('nan')):.2f} "
                     f"[{r['edge_dip_ci'][0]:.2f}, {r['edge_dip_ci'][1]:.2f}] | {r['edge_roughness']:.3f} "
                     f"[{r['edge_roughness_ci'][0]:.3f}, {r['edge_roughness_ci'][1]:.3f}] | {r['staircase']:.3f} |"
                     for k, r in {**refs, **rows}.items() if "edge_dip" in r)
    from ..evaluation.sweep import format_table

    sweeps = "\n\n".join(f"**{k}** (score = min(intact, response); 1 = robust)\n\n```\n"
                         f"{format_table(v, result['reference_sweep'])}\n```" for k, v in result["sweeps"].items())
    main = next(iter(result["sweeps"].values()))
    return (f"# Buffers generator: the comparison at one N\n\nSource: {result['source']}. N = {result['n']} synthetic "
            f"faces per row (identity ~ N(0, I) over 15 components, pose and expression drawn from the training "
            f"photos' fits), judged with dlib descriptors against all {c['test_photos']} test photos; identity on "
            f"{c['identities']} identities x {c['poses']} poses x {c['codes']} codes; evaluation seed "
            f"{result['seed']}. {result['seconds']:.0f} s on {result['machine']}. Reproduce: `python -m "
            f"frankenstein_utils.study.buffers_report compare {result.get('source_arg', result['source'])} --n {result['n']} "
            f"--seed {result['seed']} --sweep-codes {main.get('n_codes', 8)}`.\n\n"
            f"## Ladders and controls\n\n{checks_md}\n\n## Table\n\n{table}\n\n## The picture itself\n\n"
            f"Checkerboard score (power on the Nyquist lines) and the ring at the mask edge (`evaluation.measures.edge_ring`: "
            f"grey level in the 2 px on both sides of the edge minus the bands beside it; negative = darker; the "
            f"test photos with their own fitted masks are the reference; edge roughness: grey-level change along the "
            f"contour in that ring over the bands beside it, which dots strung along the edge raise; staircase: "
            f"local contrast at the mask's pixel-staircase corners over the other edge pixels, `metrics."
            f"staircase_contrast`: a network drawing its input's aliased edge scores above the photos).\n\n| row | "
            f"checkerboard | edge dip (grey levels) | edge roughness | staircase |\n|---|---|---|---|---|\n{pics}\n\n"
            f"{EV.memorisation_table(refs, rows)}\n{network_code_table(rows)}"
            f"## Sweeps over the explorer's range\n\n{sweeps}\n\nKID x 10^3 at "
            f"+-3 sigma (all 15 components, {main['end_kid']['n']} faces): {1e3 * main['end_kid']['kid']:.1f} +- "
            f"{1e3 * main['end_kid']['kid_se']:.1f}; the mean face with as many codes: "
            f"{1e3 * main['centre_kid']['kid']:.1f} +- {1e3 * main['centre_kid']['kid_se']:.1f}.\n\n"
            f"## Targets (issue 22), computed\n\n| target | measured | bound | met |\n|---|---|---|---|\n{tg}\n\n"
            f"Contact sheets: `faces_16x5.png` (16 identities, 5 fitted poses each; rows = one identity, one code), "
            f"`faces_16x5_flagship.png` (the same faces by the depth-only flagship), `sweep_code0.png` (each row one "
            f"slider at -3, -1.5, 0, 1.5, 3 sigma, the last the head turn), `faces_evaluation_set.png`.\n")


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.study.buffers_report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curve", help="score the snapshots of a buffers run (RUN_DIR/curve.json)")
    c.add_argument("run_dir")
    c.add_argument("--n", type=int, default=200)
    c.add_argument("--workers", type=int, default=1)
    c.add_argument("--follow", type=float, default=0, help="poll for new snapshots every this many seconds")
    c.add_argument("--reference", default="", help="a shipped generator scored once in the same context "
                                                   "(e.g. buffers, the default)")
    w = sub.add_parser("swap", help="KID of two generators and of their face/background swaps, in one context")
    w.add_argument("a", help="a buffers checkpoint (.pt) or a shipped name")
    w.add_argument("b", help="another")
    w.add_argument("--n", type=int, default=200)
    w.add_argument("--workers", type=int, default=2)
    w.add_argument("--dilate", type=int, default=2, help="pixels the face mask grows by")
    t = sub.add_parser("truncation", help="KID of the raw render with the first k appearance components (what a "
                                          "buffers generator reading k is given)")
    t.add_argument("--k", type=int, nargs="+", default=[100, 70, 40, 20])
    t.add_argument("--n", type=int, default=200)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--appearance", default=None, help="an appearance model file (default: the cached baked build)")
    e = sub.add_parser("compare", help="the comparison at one N with every measure, sweeps and contact sheets")
    e.add_argument("source", help="a buffers checkpoint (.pt) or a shipped name")
    e.add_argument("--out", default="outputs/buffers/compare")
    e.add_argument("--n", type=int, default=500)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--flagship", default="flagship", help="the depth-only generator to compare with")
    e.add_argument("--seed", type=int, default=0, help="the evaluation's seed (synthetic faces, codes, identities)")
    e.add_argument("--sweep-codes", type=int, default=8, help="appearance codes (faces) at each point of the sweep")
    o = sub.add_parser("codes", help="what the network's own code changes with the input (shape, pose, appearance) "
                                     "fixed, in compare's context")
    o.add_argument("source", help="a buffers checkpoint (.pt) or a shipped name")
    o.add_argument("--out", default="outputs/buffers/codes")
    o.add_argument("--n", type=int, default=500)
    o.add_argument("--workers", type=int, default=2)
    o.add_argument("--flagship", default="flagship")
    o.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.cmd == "curve":
        for p in curve(a.run_dir, a.n, a.workers, follow=a.follow, reference=a.reference):
            print(json.dumps(p))
    elif a.cmd == "swap":
        r = face_background_swap(a.a, a.b, a.n, a.workers, dilate=a.dilate)
        for k, v in r["rows"].items():
            print(f"{k}: {_kid_line(v)}")
    elif a.cmd == "truncation":
        r = input_truncation(a.k, a.n, a.workers, appearance=a.appearance)
        print(f"raw render of {r['n']} drawn faces (appearance from shape, model {r['appearance']}), first k "
              f"components:")
        for k, v in r["rows"].items():
            print(f"k = {k}: {_kid_line(v)}")
    elif a.cmd == "codes":
        r = network_codes(a.source, a.out, a.n, a.workers, a.seed, a.flagship)
        for k, v in r["rows"].items():
            print(f"{k}: {v['network_code']}")
    elif a.cmd == "compare":
        r = compare(a.source, a.out, a.n, a.workers, seed=a.seed, flagship=a.flagship, sweep_codes=a.sweep_codes)
        for t in r["targets"]:
            print(t)


if __name__ == "__main__":
    main()


# ---- shipping --------------------------------------------------------------------------------------------------------
def ship(checkpoint, compare_dir, command: str, name: str = "buffers", wall_s: float | None = None,
         machine_note: str = "", weights_dir=None, note: str = "") -> Path:
    """Ship a buffers checkpoint as ``weights/<name>.safetensors`` (float16 EMA generator and encoder, the latent
    sliders' directions, settings, input convention, card numbers; reading it runs no code) with its model card:
    the comparison of ``compare_dir`` (which must be of this checkpoint), the run's curve, the command and the
    SHA-256 of the shipped appearance model it reads (checked when it is loaded)."""
    from ..facemodel.appearance import SHIPPED, sha256_of
    from ..pretrained import shipped as P
    from ..pretrained.shipped import latent_directions
    from ..render.rasterize import RenderConfig
    from ..train.trainer import load_run

    checkpoint = Path(checkpoint)
    cmp = json.loads((Path(compare_dir) / "EVALUATION.json").read_text())
    if Path(cmp["source"].split(" ")[0]) != checkpoint:
        raise ValueError(f"{compare_dir}: a comparison of {cmp['source']}, not of {checkpoint}")
    run = load_run(checkpoint)
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "snapshots" else checkpoint.parent
    curve_path = run_dir / "curve.json"
    curve_pts = json.loads(curve_path.read_text()) if curve_path.exists() else {}
    model, train, _ = _data()
    render = RenderConfig.from_dict(run.cfg.input_convention["render"])
    app_k = run.cfg.appearance_k
    mean, dirs, scales = latent_directions(run.nets["E"], train.tensors()[0][:2000], k=4)
    from dataclasses import asdict

    card = EV.to_json({
        "appearance_sha256": sha256_of(SHIPPED), "appearance_components": app_k, "step": run.step, "wall_s": wall_s,
        "command": command, "config": {k: v for k, v in asdict(run.cfg).items() if k != "data"},
        "data": run.cfg.data, "note": note,
        "comparison": {k: cmp[k] for k in ("n", "seed", "rows", "targets", "source", "checks") if k in cmp},
        "references": {k: cmp["references"][EV.REFS[k]] for k in ("test", "blur1", "blur2", "train")},
        # the comparison's sweeps, one per compared generator ("sweep" is the shipped model's own, written by
        # ``pretrained sweep``)
        "comparison_sweeps": {k: v["summary"] for k, v in cmp["sweeps"].items()},
        "curve": [{**v, "written_utc": _utc(run_dir / "snapshots" / k)} for k, v in sorted(curve_pts.items())
                  if k.startswith("step_")],
        "raw_render_curve_line": curve_pts.get("raw_render"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores"
                   f"{' (' + machine_note + ')' if machine_note else ''}, torch {torch.__version__}, no GPU"})
    blob = P.shipped_blob(run, render, train.pose_jitter(model), card,
                          {"mean": mean, "directions": dirs, "scales": scales})
    folder = Path(weights_dir) if weights_dir else P.WEIGHTS_DIR
    path = folder / f"{name}.safetensors"
    size = P.write_shipped(path, blob)
    gen = P.generator_from_blob(blob, path)
    atomic_write_bytes(folder / f"{name}_MODEL_CARD.md", card_text(name, card, size, gen, compare_dir).encode())
    P.record_checksum(path)
    return path


def _utc(path) -> str | None:
    from datetime import datetime, timezone

    path = Path(path)
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M") if path.exists() \
        else None


def card_text(name: str, card: dict, size: int, gen, compare_dir) -> str:
    """The buffers generator's model card, every number from ``card``."""
    from dataclasses import asdict

    from ..facemodel.appearance import TERMS
    from ..train.config import TrainConfig

    cfg = card["config"]
    syn = (cfg["input_convention"].get("buffers") or {}).get("synthetic") or {}
    base = asdict(TrainConfig())
    changed = {k: v for k, v in cfg.items() if k in base and base[k] != v and k not in ("out_dir", "input_convention")}
    n_g = sum(p.numel() for p in gen.nets["G"].parameters())
    n_e = sum(p.numel() for p in gen.nets["E"].parameters())
    rows = card["comparison"]["rows"]
    ref = card["references"]
    cols = (("KID x 10^3", "kid", 1e3), ("NME", "nme", 1), ("detection", "detection", 1),
            ("diversity share", "diversity_share", 1), ("code spread", "code_spread", 1),
            ("identity AUC", "identity_auc", 1), ("near-copy share", "near_copy", 1),
            ("checkerboard", "checkerboard", 1), ("edge dip", "edge_dip", 1), ("edge roughness", "edge_roughness", 1),
            ("staircase", "staircase", 1))
    fmt = lambda v, s: "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v * s:.4g}"
    table = "| row | " + " | ".join(c for c, _, _ in cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    for label, r in {"test photos (reference)": ref["test"], "training photos blurred 1 px": ref["blur1"],
                     "training photos blurred 2 px": ref["blur2"], **rows}.items():
        table += f"| {label} | " + " | ".join(fmt(r.get(k), s) for _, k, s in cols) + " |\n"
    tg = "\n".join(f"| {t['target']} | {fmt(t['measured'], 1)} | {fmt(t['bound'], 1)} | "
                   f"{'–' if t['met'] is None else ('yes' if t['met'] else '**no**')} |"
                   for t in card["comparison"]["targets"])
    curve = "\n".join(f"| {p['step']} | {p.get('written_utc') or '–'} | {1e3 * p['kid']:.1f} | {p['nme']:.3f} | "
                      f"{p['detection']:.3f} | {p['diversity_share']:.3f} | {p['code_spread']:.3f} | "
                      f"{p['edge_dip']:.2f} | {p.get('edge_roughness', float('nan')):.3f} | "
                      f"{p.get('staircase', float('nan')):.3f} |" for p in card["curve"])
    raw = card.get("raw_render_curve_line") or {}
    chosen = ""
    if card["curve"]:
        best, last = min(card["curve"], key=lambda p: p["kid"]), card["curve"][-1]
        chosen = (f"On the curve, the lowest KID x 10^3 is at step {best['step']:,} ({1e3 * best['kid']:.1f}), the "
                  f"last point at step {last['step']:,} ({1e3 * last['kid']:.1f}); this file is step "
                  f"{card['step']:,}.")
    n_curve = card["curve"][0]["n"] if card["curve"] else "–"
    steps = [p["step"] for p in card["curve"]]
    every = f"{min(b - a for a, b in zip(steps, steps[1:])):,}" if len(steps) > 1 else "–"
    ss = cfg.get("buffers_supersample", 1)
    aa = (f" The buffers and the depth are rendered at {ss} x the size and averaged over {ss} x {ss} blocks "
          f"(`--buffers-supersample {ss}`): the face's edge is anti-aliased, not a point-sampled staircase.") \
        if ss > 1 else ""
    depth_src = ("depth rendered from the same fit and anti-aliased like the buffers" if ss > 1 else
                 "depth exactly the paired set's")
    wall = f"{card['wall_s'] / 3600:.2f} h" if card.get("wall_s") else "not recorded (see the snapshot times)"
    return f"""# Model card: {name} (face-model buffers -> face, {gen.cfg.image_size} px)

## What it is

A generator that finishes the picture: from a face-model face rendered into buffers (depth, the appearance model's
colour with its first {card['appearance_components']} components, camera-frame normals: {cfg['buffers']}) and an
8-D code z (what the appearance model lacks: hair, background, clothes, light detail) to an RGB photo-like face in
[-1, 1]. `frankenstein_utils.nets.flagship.FlagshipGenerator` ({n_g:,} parameters; SPADE modulation by all input channels,
resize upsampling, bottleneck {cfg['fs_bottleneck']} px), the EMA of its weights, and its appearance encoder
({n_e:,} parameters; the latent sliders' directions are its codes of 2,000 training photos). It is
`load_pretrained()`'s default; `python -m frankenstein_utils.apps.generate` and `FaceExplorer.with_pretrained` use it.
It reads the shipped appearance model (`appearance.safetensors`, SHA-256 `{card['appearance_sha256']}`, checked when
loaded): `evaluation.context.generator_fn` renders the buffers from a face's parameters (`data.buffers.BufferGenerator`).{aa}

File: `{name}.safetensors` ({size / 2 ** 20:.2f} MiB, float16).

## Data and terms

{TERMS} Training pairs: every training photo of the paired set with its fitted face ({depth_src})
and its own projected appearance (the first {card['appearance_components']} coefficients of the MAP projection of its
visible colours); unpaired inputs: {syn.get('n', '?')} face-model faces with appearance drawn from the model
({syn.get('mode', '?')}), {syn.get('extended', 0):.0%} of them spanning the explorer's range (one component to
+-3.5 sigma, yaw to +-30 degrees). Recorded: `{json.dumps(syn)}`.

## Training

- {card['step']:,} steps, batch {cfg['batch_size']} pairs + {cfg['batch_size']} synthetic + {cfg['batch_size']} real
  photos per step; wall time {wall}; {card['machine']}.
- Settings that differ from `TrainConfig`'s defaults: `{json.dumps(changed)}`
- Reproduce (resumes exactly if interrupted): `{card['command']}`

## Curve

Every {every} steps (snapshot), N = {n_curve} synthetic faces against all test photos
(`python -m frankenstein_utils.study.buffers_report curve`); the raw render in the same context: KID x 10^3
{1e3 * raw.get('kid', float('nan')):.1f}, NME {raw.get('nme', float('nan')):.3f}.

| step | snapshot (UTC) | KID x 10^3 | NME | detection | diversity | code spread | edge dip | edge rough. | staircase |
|---|---|---|---|---|---|---|---|---|---|
{curve}

{('## How this snapshot was chosen' + chr(10) + chr(10) + card['note'] + ' ' + chosen + chr(10) + chr(10))
   if card.get('note') else ''}## Comparison at one N

N = {card['comparison']['n']} generated faces per row against all test photos, one evaluation context (evaluation
seed {card['comparison'].get('seed', 0)})
(`python -m frankenstein_utils.study.buffers_report compare`, full table with intervals and controls in
`{compare_dir}/EVALUATION.md`, not shipped). Edge dip: grey level along the mask edge minus the bands beside it
(`evaluation.measures.edge_ring`; negative = a dark ring), to compare with the test photos' own.

{table}
## Targets (issue 22), computed

| target | measured | bound | met |
|---|---|---|---|
{tg}
"""
