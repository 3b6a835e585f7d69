"""Evaluate every trained run on the same synthetic faces: realism, correspondence to the input depth, shape
sensitivity, identity consistency and diversity (the measures live in ``metrics``; this module wires them up)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import metrics as M
from .depthdata import RenderedDepthDataset
from .training import load_run


def discover_runs(roots: dict) -> dict[str, Path]:
    """Every ``<folder>/<run>/checkpoint.pt`` of ``roots`` = {prefix: folder}; runs are named ``prefix/run`` (or
    ``run`` for an empty prefix)."""
    found = {}
    for prefix, root in roots.items():
        for ck in sorted(Path(root).glob("*/checkpoint.pt")):
            found[f"{prefix}/{ck.parent.name}" if prefix else ck.parent.name] = ck
    return found


@dataclass
class EvalContext:
    """What every run is measured against (built once)."""

    real_train: torch.Tensor  # photos the feature net saw (realism reference)
    real_val: torch.Tensor  # held-out photos
    val_depth: torch.Tensor
    val_mask: torch.Tensor
    syn_depth: torch.Tensor  # synthetic inputs (N, 1, S, S)
    syn_mask: torch.Tensor
    syn_coeffs: torch.Tensor
    shape_depth: torch.Tensor  # frontal renders of shape_coeffs: shape sensitivity must not be swamped by pose
    shape_mask: torch.Tensor
    shape_coeffs: torch.Tensor
    id_depth: torch.Tensor  # n_ids * n_poses, identity-major
    id_mask: torch.Tensor
    n_ids: int
    n_poses: int
    feature_net: torch.nn.Module
    depth_estimator: torch.nn.Module
    c2st_steps: int = 200
    seed: int = 0


def build_context(model, train, val, n_synthetic: int = 500, n_ids: int = 16, n_poses: int = 4, seed: int = 0,
                  feature_steps: int = 600, depth_steps: int = 800, c2st_steps: int = 200, cache_dir=None):
    """Synthetic evaluation faces (matched framing, real pose spread), identity sets, and the metric networks
    (trained once on the real training photos, cached in ``cache_dir``)."""
    render, pose = train.render_config(model), train.pose_jitter(model)
    syn = RenderedDepthDataset(n_synthetic, seed=seed + 777, render=render, pose=pose, model=model)
    d, m = syn.render_batch(list(range(n_synthetic)))
    # identities: the same coefficients under n_poses poses each
    g = torch.Generator().manual_seed(seed + 999)
    c = model.sample_coefficients(n_ids, 15, generator=g).repeat_interleave(n_poses, 0)
    p = pose.sample(n_ids * n_poses, generator=g)
    from .rasterize import render_depth

    idd, idm = render_depth(model, c, render, p)
    sc = model.sample_coefficients(60, 15, generator=g)
    sd, sm = render_depth(model, sc, render)  # frontal
    ti, td, tm = train.tensors()
    vi, vd, vm = val.tensors()
    cache = Path(cache_dir) if cache_dir else None
    key = f"{train.config.key()}_{seed}"
    feat = M.train_feature_net(ti, steps=feature_steps, seed=seed,
                               cache=cache / f"feature_net_{key}_{feature_steps}.pt" if cache else None)
    est = M.train_depth_estimator(ti, td, tm, steps=depth_steps, seed=seed,
                                  cache=cache / f"depth_estimator_{key}_{depth_steps}.pt" if cache else None)
    return EvalContext(ti, vi, vd, vm, d, m, syn.coeffs, sd[:, None], sm[:, None].float(), sc, idd[:, None],
                       idm[:, None].float(), n_ids, n_poses, feat, est, c2st_steps, seed)


def generator_fn(run, seed: int = 0):
    """f(depth, mask, z=None) -> images for a run; models with a code get z ~ N(0, I) (seeded) when z is None."""
    z_dim = run.nets["G"].z_dim

    @torch.no_grad()
    def f(depth, mask, z=None):
        out = []
        g = torch.Generator().manual_seed(seed)
        for s in range(0, len(depth), 256):
            n = len(depth[s:s + 256])
            zz = None
            if z_dim:
                zz = z[s:s + 256] if z is not None else torch.randn(n, z_dim, generator=g)
            out.append(run.generate(depth[s:s + 256], mask[s:s + 256], z=zz).cpu())
        return torch.cat(out)
    return f


def realism(ctx: EvalContext, images: torch.Tensor) -> dict:
    c2st = M.classifier_two_sample_test(ctx.real_val, images, steps=ctx.c2st_steps, seed=ctx.seed)
    kid, kid_std = M.kernel_distance(ctx.feature_net, ctx.real_train[:2000], images)
    return {"c2st": c2st["accuracy"], "c2st_ci": [c2st["ci_low"], c2st["ci_high"]],
            "fd": M.frechet_distance(ctx.feature_net, ctx.real_train[:2000], images), "kid": kid, "kid_std": kid_std}


def evaluate_images(ctx: EvalContext, images: torch.Tensor, generate=None, z_dim: int = 0) -> dict:
    """All measures for generated images of the synthetic inputs (``generate`` re-runs the model for the shape,
    identity and per-depth diversity tests)."""
    out = realism(ctx, images)
    corr = M.correspondence(ctx.depth_estimator, images, ctx.syn_depth, ctx.syn_mask)
    out.update({"corr_rmse": corr["rmse"], "corr_rmse_ci": corr["rmse_ci"], "corr_r": corr["corr"]})
    out["diversity"] = M.mean_pairwise_feature_distance(ctx.feature_net, images)
    out["brightness_spread"] = M.brightness_spread(images, ctx.syn_mask)
    if generate is not None:
        n = len(ctx.shape_depth)
        z0 = torch.zeros(n, z_dim) if z_dim else None
        out["shape_sensitivity"] = M.shape_sensitivity(generate, ctx.feature_net, ctx.shape_coeffs, ctx.shape_depth,
                                                       ctx.shape_mask, z0)
        zid = None
        if z_dim:  # the same appearance code for all poses of one identity
            zid = torch.randn(ctx.n_ids, z_dim, generator=torch.Generator().manual_seed(ctx.seed)).repeat_interleave(
                ctx.n_poses, 0)
        ident = M.identity_consistency(generate, ctx.feature_net, ctx.id_depth, ctx.id_mask, ctx.n_ids, ctx.n_poses,
                                       zid)
        out["identity_auc"], out["identity_ratio"] = ident["auc"], ident["ratio"]
        if z_dim:  # several samples of one depth map
            k, s = 8, 8
            d = ctx.syn_depth[:k].repeat_interleave(s, 0)
            m = ctx.syn_mask[:k].repeat_interleave(s, 0)
            imgs = generate(d, m, torch.randn(k * s, z_dim, generator=torch.Generator().manual_seed(ctx.seed + 1)))
            spreads = [M.mean_pairwise_feature_distance(ctx.feature_net, imgs[i * s:(i + 1) * s]) for i in range(k)]
            out["z_diversity"] = float(sum(spreads) / k)
            out["z_brightness_spread"] = float(sum(M.brightness_spread(imgs[i * s:(i + 1) * s], m[:s])
                                                   for i in range(k)) / k)
    return out


def reference_rows(ctx: EvalContext) -> dict:
    """The known cases every variant is placed between: held-out real photos, the same photos blurred, depth
    maps shown as images; for correspondence the oracle (photo vs its own depth) and the shuffled baseline."""
    import torch.nn.functional as F

    vi = ctx.real_val
    blurred = F.avg_pool2d(F.pad(vi, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    depth_img = (ctx.syn_depth * 2 - 1).expand(-1, vi.shape[1], -1, -1)
    rows = {}
    for name, imgs in (("reference: real photos (held-out)", vi), ("reference: real photos blurred", blurred),
                       ("reference: depth maps as images", depth_img)):
        r = realism(ctx, imgs)
        r["diversity"] = M.mean_pairwise_feature_distance(ctx.feature_net, imgs)
        rows[name] = r
    rows["reference: real photos (held-out)"]["brightness_spread"] = M.brightness_spread(vi, ctx.val_mask)
    oracle = M.correspondence(ctx.depth_estimator, vi, ctx.val_depth, ctx.val_mask)
    perm = torch.roll(torch.arange(len(vi)), 1)
    shuffled = M.correspondence(ctx.depth_estimator, vi[perm], ctx.val_depth, ctx.val_mask)
    as_image = lambda d, m, z=None: (d * 2 - 1).expand(-1, vi.shape[1], -1, -1)
    rows["reference: depth maps as images"]["shape_sensitivity"] = M.shape_sensitivity(
        as_image, ctx.feature_net, ctx.shape_coeffs, ctx.shape_depth, ctx.shape_mask)
    constant = lambda d, m, z=None: vi[:1].expand(len(d), -1, -1, -1) + 1e-3 * torch.randn(
        len(d), *vi.shape[1:], generator=torch.Generator().manual_seed(0))
    rows["reference: one photo for every shape"] = {"shape_sensitivity": M.shape_sensitivity(
        constant, ctx.feature_net, ctx.shape_coeffs, ctx.shape_depth, ctx.shape_mask)}
    rows["reference: correspondence oracle"] = {"corr_rmse": oracle["rmse"], "corr_rmse_ci": oracle["rmse_ci"],
                                                "corr_r": oracle["corr"]}
    rows["reference: correspondence shuffled"] = {"corr_rmse": shuffled["rmse"], "corr_rmse_ci": shuffled["rmse_ci"],
                                                  "corr_r": shuffled["corr"]}
    return rows


def ladder_checks(rows: dict) -> dict:
    """Which metrics order the known cases correctly (a metric that fails is not reported)."""
    real, blur, dep = (rows[f"reference: {k}"] for k in ("real photos (held-out)", "real photos blurred",
                                                          "depth maps as images"))
    ok = {k: real[k] < blur[k] < dep[k] for k in ("c2st", "fd", "kid")}
    ok["c2st"] = ok["c2st"] or (real["c2st"] < blur["c2st"] <= dep["c2st"])
    o, s = rows["reference: correspondence oracle"], rows["reference: correspondence shuffled"]
    ok["corr_rmse"] = o["corr_rmse_ci"][1] < s["corr_rmse_ci"][0]
    ok["corr_r"] = o["corr_r"] > s["corr_r"]
    # shape sensitivity: the depth map itself (the shape, nothing else) must rank shape differences, a constant
    # output must not
    const = rows["reference: one photo for every shape"]["shape_sensitivity"]
    ok["shape_sensitivity"] = dep["shape_sensitivity"] > abs(const) + 0.1
    return ok


def evaluate_runs(ctx: EvalContext, checkpoints: dict, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    rows = {}
    for name, ck in tqdm(checkpoints.items(), desc="evaluating runs", disable=not progress):
        run = load_run(ck)
        gen = generator_fn(run, ctx.seed)
        imgs = gen(ctx.syn_depth, ctx.syn_mask)
        rows[name] = {"checkpoint": str(ck), "mode": run.cfg.mode,
                      **evaluate_images(ctx, imgs, gen, run.nets["G"].z_dim)}
    return rows


def load_results(path) -> dict:
    return json.loads(Path(path).read_text())
