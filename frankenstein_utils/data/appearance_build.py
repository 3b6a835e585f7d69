"""Building the appearance model from the fitted training photos: per-vertex colours, light, PCA, the shipped file."""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..facemodel.appearance import (LIGHTS, SHAPE_MAPS, SHIP_BUDGET_BYTES, SHIPPED, SHIPPED_CARD, SHIPPED_SUM, TERMS,
                                    AppearanceConfig, AppearanceModel, individual_typology_angle, ita_shares,
                                    mirror_index, neighbour_matrix, sh_basis, sha256_of, shading, skin_vertices)
from ..io.draws import normal


# ---- sampling the photos --------------------------------------------------------------------------------------------
def photo_crops(root, names, crop) -> torch.Tensor:
    """The photos cropped to ``crop`` (left, top, right, bottom) at native size, float (B, 3, S, S) in [0, 1]."""
    left, top, right, bottom = (int(round(c)) for c in crop)
    out = np.empty((len(names), 3, bottom - top, right - left), np.float32)
    for i, n in enumerate(names):
        with Image.open(Path(root) / "images" / str(n)) as im:
            out[i] = np.asarray(im.convert("RGB").crop((left, top, right, bottom)), np.float32).transpose(2, 0, 1)
    return torch.from_numpy(out / 255.0)


def sample_vertex_colours(verts_cm: torch.Tensor, faces: torch.Tensor, poses: torch.Tensor, photos: torch.Tensor,
                          window_cm, facing_min: float = 0.2, depth_tol_cm: float = 0.3, supersample: int = 2):
    """Colours (B, V, 3) and visibility (B, V) of fitted meshes ``verts_cm`` (B, V, 3) (model cm, unposed) in
    ``photos`` (B, 3, S, S), posed by render ``poses`` (B, 6) through the fixed window ``window_cm`` (the framing
    in which the fit's poses were made; the photo crop is the window). Also returns the posed normals (B, V, 3)."""
    from ..render.rasterize import RenderConfig, apply_pose, rasterize_depth, to_pixels, vertex_normals

    S = photos.shape[-1]
    posed = apply_pose(verts_cm, poses)
    normals = vertex_normals(posed, faces)
    hi = S * supersample
    px_hi = to_pixels(posed, RenderConfig(resolution=hi, window_cm=window_cm))
    zbuf, _ = rasterize_depth(px_hi, faces, hi, hi, cull_backfaces=True)
    col = px_hi[..., 0].floor().long()
    row = px_hi[..., 1].floor().long()
    inside = (col >= 0) & (col < hi) & (row >= 0) & (row < hi)
    z_at = zbuf.flatten(1).gather(1, (row.clamp(0, hi - 1) * hi + col.clamp(0, hi - 1)))
    visible = inside & (normals[..., 2] > facing_min) & (posed[..., 2] >= z_at - depth_tol_cm)
    # grid_sample with align_corners=False: -1 and 1 are the frame's outer edges, as pixel coordinates 0 and S
    grid = (px_hi[..., :2] / hi * 2 - 1)[:, :, None, :]  # (B, V, 1, 2)
    colours = torch.nn.functional.grid_sample(photos, grid, mode="bilinear", align_corners=False)[..., 0]
    return colours.transpose(1, 2), visible, normals


def harmonic_fill(X: np.ndarray, M: np.ndarray, A, iterations: int) -> np.ndarray:
    """Fill the missing entries (~M, (B, V)) of colours X (B, V, 3) by repeated neighbour averaging over the mesh
    (adjacency ``A``, row-normalized), observed entries held fixed. Starts from the observed mean per vertex."""
    B, V, _ = X.shape
    counts = M.sum(0)
    vmean = (X * M[..., None]).sum(0) / np.maximum(counts, 1)[:, None]
    vmean[counts == 0] = (X * M[..., None]).sum((0, 1)) / max(M.sum(), 1)
    Y = np.where(M[..., None], X, vmean[None]).astype(np.float32)
    flat = Y.transpose(1, 0, 2).reshape(V, B * 3)
    keep = np.repeat(M.T[:, :, None], 3, 2).reshape(V, B * 3)
    obs = flat.copy()
    for _ in range(iterations):
        flat = np.where(keep, obs, A @ flat)
    return flat.reshape(V, B, 3).transpose(1, 0, 2)


def missing_pca(X: np.ndarray, M: np.ndarray, k: int, rounds: int, seed: int = 0):
    """PCA of rows X (B, D) whose entries where ``M`` (B, D) is False are missing (already filled with a first
    guess): alternately fit mean + rank-k SVD and replace the missing entries by the reconstruction.
    Returns mean (D,), basis (k, D) orthonormal, singular values (k,), coefficients (B, k), the filled X."""
    with torch.random.fork_rng():  # svd_lowrank draws from the global generator: seed it without side effects
        torch.manual_seed(seed)
        return _missing_pca(X, M, k, rounds)


def _missing_pca(X, M, k, rounds):
    Xt = torch.from_numpy(np.ascontiguousarray(X, np.float32))
    Mt = torch.from_numpy(np.ascontiguousarray(M))
    for r in range(rounds + 1):
        mu = Xt.mean(0)
        U, S, V = torch.svd_lowrank(Xt - mu, q=min(k + 10, min(Xt.shape)), niter=3)
        U, S, V = U[:, :k], S[:k], V[:, :k]
        if r == rounds:
            break
        recon = torch.addmm(mu, U * S, V.T)
        Xt = torch.where(Mt, Xt, recon)
        del recon
    return mu.numpy(), V.T.numpy(), S.numpy(), (U * S).numpy(), Xt.numpy()


def project_observed(Y: np.ndarray, M: np.ndarray, mean: np.ndarray, basis: np.ndarray, sd: np.ndarray,
                     noise_var: float, chunk: int = 512) -> np.ndarray:
    """MAP appearance coefficients (B, K) in sd units of colours Y (B, V, 3) seen only where M (B, V): prior
    a ~ N(0, I), coefficient k scaling the unit basis row by sd_k, Gaussian noise of variance ``noise_var`` per
    entry. Uses only the visible vertices of each photo (nothing imputed)."""
    K = basis.shape[0]
    Bv = (basis.reshape(K, -1, 3) * sd[:, None, None]).transpose(1, 2, 0)  # (V, 3, K)
    P = np.einsum("vck,vcl->vkl", Bv, Bv).reshape(len(Bv), K * K)  # per-vertex Gram
    out = np.empty((len(Y), K), np.float32)
    for s in range(0, len(Y), chunk):
        m = M[s:s + chunk].astype(np.float32)
        r = (Y[s:s + chunk] - mean[None]) * m[..., None]
        G = (m @ P).reshape(-1, K, K) / noise_var + np.eye(K)
        g = np.einsum("bvc,vck->bk", r, Bv) / noise_var
        out[s:s + chunk] = np.linalg.solve(G, g[..., None])[..., 0]
    return out


def psnr(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> np.ndarray:
    """PSNR (dB, peak 1) per row of a, b (B, V, 3) over the entries where m (B, V)."""
    se = (((a - b) ** 2).sum(-1) * m).sum(1) / np.maximum(3 * m.sum(1), 1)
    return 10 * np.log10(1.0 / np.maximum(se, 1e-12))


# ---- building --------------------------------------------------------------------------------------------------------
def estimate_light(colours: np.ndarray, visible: np.ndarray, normals: np.ndarray, albedo: np.ndarray,
                   ridge: float = 1e-3, chunk: int = 256) -> np.ndarray:
    """Per photo SH light (B, 9, 3) that best explains the visible colours as albedo x shading (least squares per
    colour channel; ``albedo`` (V, 3) the current mean albedo). In chunks of photos (the design is B x V x 9)."""
    out = np.empty((len(colours), 9, 3), np.float32)
    for s in range(0, len(colours), chunk):
        sl = slice(s, s + chunk)
        Y = sh_basis(torch.from_numpy(normals[sl])).numpy()  # (b, V, 9)
        vis = visible[sl]
        for c in range(3):
            D = Y * albedo[None, :, c, None] * vis[..., None]
            G = np.einsum("bvk,bvl->bkl", D, D) + ridge * np.eye(9)
            g = np.einsum("bvk,bv->bk", D, colours[sl, :, c] * vis)
            out[sl, :, c] = np.linalg.solve(G, g[..., None])[..., 0]
    return out


def shade_photos(normals: np.ndarray, lights: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Per-vertex shading (B, V, 3) of every photo from its normals and SH light, in chunks."""
    out = np.empty(normals.shape, np.float32)
    for s in range(0, len(normals), chunk):
        out[s:s + chunk] = shading(torch.from_numpy(normals[s:s + chunk]), torch.from_numpy(lights[s:s + chunk]))
    return out


def build_appearance(config: AppearanceConfig | None = None, paired=None, model=None, progress: bool = True,
                     block: int = 256, limit: int | None = None) -> AppearanceModel:
    """Build the appearance model from the paired set's fits (see the module docstring); report in ``.report``.
    ``limit``: only the first N photos of the set (quick runs and tests; splits kept)."""
    from tqdm.auto import tqdm

    from ..data.pairs import PairedFaceDataset
    from ..facemodel.model import load_face_model

    cfg = config or AppearanceConfig()
    t0 = time.perf_counter()
    model = model or load_face_model()
    paired = paired or PairedFaceDataset("all", progress=progress)
    fit = paired.fit
    if fit is None:
        raise ValueError(f"{paired.cache_path}: built without fits; delete it to rebuild")
    data = np.load(paired.cache_path)
    P = len(paired.names) if limit is None else min(int(limit), len(paired.names))
    split = {s: data[f"split_{s}"][data[f"split_{s}"] < P] for s in ("train", "val", "test")}
    names = paired.names[:P]
    rcfg = paired.render_config(model)
    region = model.region(cfg.region)
    faces = region.faces
    V = len(region.vertices)
    colours = np.empty((P, V, 3), np.float32)
    visible = np.empty((P, V), bool)
    normals = np.empty((P, V, 3), np.float32)
    for s in tqdm(range(0, P, block), desc="appearance: sampling photos", disable=not progress):
        sl = slice(s, min(s + block, P))
        photos = photo_crops(paired.root, names[sl], paired.config.crop)
        verts = model.vertices(torch.from_numpy(fit["coeffs"][sl]), cfg.region,
                               torch.from_numpy(fit["expressions"][sl]))
        c, v, n = sample_vertex_colours(verts, faces, torch.from_numpy(fit["poses"][sl]), photos, rcfg.window_cm,
                                        cfg.facing_min, cfg.depth_tol_cm)
        colours[sl], visible[sl], normals[sl] = c.numpy(), v.numpy(), n.numpy()
    t_sample = time.perf_counter() - t0
    mean_verts = model.mean[region.vertices].numpy()
    mirror = mirror_index(mean_verts)
    A = neighbour_matrix(faces.numpy(), V)
    tr, va = split["train"], split["val"]

    lights = None
    target = colours
    if cfg.light == "sh":
        # Alternate: light per photo from the current mean albedo, then albedo = colour / shading.
        albedo_mean = (colours[tr] * visible[tr][..., None]).sum(0) / np.maximum(visible[tr].sum(0), 1)[:, None]
        for _ in range(3):
            lights = estimate_light(colours, visible, normals, albedo_mean)
            sh = shade_photos(normals, lights)
            ok = visible & (sh.min(-1) > 0.05)  # albedo only where the light reaches (no division by ~0)
            target = colours / np.clip(sh, 0.05, None)
            del sh
            albedo_mean = (target[tr] * ok[tr][..., None]).sum(0) / np.maximum(ok[tr].sum(0), 1)[:, None]
        visible = ok
        target = np.clip(target, 0, 1.5).astype(np.float32)
    normals_test = normals[split["test"]]  # for lighting drawn faces in the skin-tone check; the rest can go
    del normals

    def filled(idx, use_mirror):
        X, M = target[idx].copy(), visible[idx].copy()
        if use_mirror:
            has = mirror >= 0
            take = (~M) & has[None] & M[:, np.where(has, mirror, 0)]
            X[take] = X[:, np.where(has, mirror, 0)][take]
            M = M | take
        return harmonic_fill(X, M, A, cfg.fill_iterations), M

    Xtr, Mtr = filled(tr, cfg.mirror)
    t1 = time.perf_counter()
    Kmax = min(cfg.max_components, len(tr) - 1)
    mu, basis, S, U, _ = missing_pca(Xtr.reshape(len(tr), -1), np.repeat(Mtr[:, :, None], 3, 2).reshape(len(tr), -1),
                                     Kmax, cfg.rounds, cfg.seed)
    t_pca = time.perf_counter() - t1
    sd = S / math.sqrt(len(tr) - 1)
    # Variance explained: of the observed training entries (the part of the data that is data).
    resid = Xtr.reshape(len(tr), -1) - mu - U @ basis
    Mflat = np.repeat(visible[tr][:, :, None], 3, 2).reshape(len(tr), -1)
    cen = (target[tr].reshape(len(tr), -1) - mu)
    var_obs = float((cen ** 2 * Mflat).sum())
    noise_var = float((resid ** 2 * Mflat).sum() / Mflat.sum())
    del resid
    explained = {}
    for k in cfg.candidates:
        if k <= Kmax:
            Uk = U[:, :k] @ basis[:k]
            explained[k] = 1 - float(((cen - Uk) ** 2 * Mflat).sum()) / var_obs
            del Uk
    # Validation: project each validation photo's visible colours (nothing filled) onto the first K components.
    mean3 = mu.reshape(V, 3)
    val_psnr = {}
    for k in cfg.candidates:
        if k <= Kmax:
            a = project_observed(target[va], visible[va], mean3, basis[:k], sd[:k], noise_var)
            rec = mean3[None] + ((a * sd[:k]) @ basis[:k]).reshape(len(va), V, 3)
            val_psnr[k] = float(np.mean(psnr(rec, target[va], visible[va])))
    val_psnr_mean = float(np.mean(psnr(np.broadcast_to(mean3, target[va].shape), target[va], visible[va])))
    best = max(val_psnr.values())
    K = min(k for k, p in val_psnr.items() if p >= best - cfg.k_tolerance_db)
    basis_k, sd_k = basis[:K], sd[:K]
    photo_coeffs = project_observed(target, visible, mean3, basis_k, sd_k, noise_var)
    # From-shape conditional: joint Gaussian of (identity coefficients, appearance coefficients) over train fits.
    Sdim = cfg.shape_components
    shape = fit["coeffs"][:, :Sdim].astype(np.float64)
    conditional, cond_report = conditional_gaussian(shape[tr], photo_coeffs[tr].astype(np.float64),
                                                    shape[va], photo_coeffs[va].astype(np.float64))
    background = paired.images[torch.from_numpy(tr)].float().mean(0) / 255.0
    app = AppearanceModel(mean3, basis_k.reshape(K, V, 3), sd_k, region.vertices.numpy(), cfg, conditional,
                          None if lights is None else lights[tr], photo_coeffs, names, background=background,
                          render=rcfg.to_dict(), face_table=(fit["poses"][tr], fit["expressions"][tr]))
    skin = skin_vertices(model, region.vertices.numpy())
    photo_ita = ita_of_colours(colours, visible, skin, split["test"])
    g = torch.Generator().manual_seed(cfg.seed)
    drawn = app.colours(app.sample(len(split["test"]), "free", generator=g)).numpy()
    if lights is not None:  # lit like a training photo, on the mean shape's normals facing the camera
        nm = normals_test
        drawn = np.clip(drawn * shading(torch.from_numpy(nm), torch.from_numpy(
            lights[tr][np.random.default_rng(cfg.seed).integers(len(tr), size=len(nm))])).numpy(), 0, 1)
    drawn_ita = individual_typology_angle(drawn[:, skin].mean(1))
    app.report = {
        "n_photos": {"train": int(len(tr)), "val": int(len(va)), "all": int(P)},
        "vertices": int(V), "visible_share_per_photo": float(visible.mean()),
        "never_visible_share": float((~visible[tr].any(0)).mean()),
        "components": int(K), "variance_explained_observed": {str(k): v for k, v in explained.items()},
        "val_psnr_visible_db": {str(k): v for k, v in val_psnr.items()},
        "val_psnr_mean_appearance_db": val_psnr_mean, "noise_var": noise_var,
        "build_seconds": {"sampling": t_sample, "pca": t_pca, "total": time.perf_counter() - t0},
        "shape_explains": cond_report,
        "ita_test_photos": summarize_ita(photo_ita), "ita_drawn_free": summarize_ita(drawn_ita),
        "skin_vertices": int(len(skin)), "light": cfg.light,
    }
    app.report["val_psnr_mask_db"] = validation_psnr_in_mask(app, paired, model, cfg.candidates)
    return app


def validation_psnr_in_mask(app: AppearanceModel, paired, model, ks, rows=None, block: int = 128) -> dict:
    """PSNR (dB, per photo, averaged) inside the rendered face mask between each validation photo (the paired set's
    image at its size) and its appearance re-rendered on its own fitted geometry: its visible colours projected on
    the first k components (k in ``ks``; MAP from those colours alone, as ``project_observed``), the raw colours
    themselves (hidden vertices from the mean: the ceiling a basis can reach through this render) and the mean
    appearance (k = 0). An SH model is lit by each photo's light estimated from its colours with the mean albedo."""
    data = np.load(paired.cache_path)
    rows = data["split_val"] if rows is None else np.asarray(rows)
    fit = {k: torch.from_numpy(np.asarray(paired.fit[k])[rows]) for k in ("coeffs", "expressions", "poses")}
    render = paired.render_config(model)
    region = model.region(app.config.region)
    photos64 = paired.images[torch.as_tensor(np.searchsorted(paired.indices, rows))].float() / 255.0
    verts = model.vertices(fit["coeffs"], app.config.region, fit["expressions"])
    crops = photo_crops(paired.root, paired.names[np.searchsorted(paired.indices, rows)], paired.config.crop)
    colours, visible, normals = (t.numpy() for t in sample_vertex_colours(
        verts, region.faces, fit["poses"], crops, render.window_cm, app.config.facing_min, app.config.depth_tol_cm))
    mean = app.mean.numpy()
    lights = None
    target = colours
    if app.lights is not None:
        lights = estimate_light(colours, visible, normals, mean)
        target = colours / np.clip(shade_photos(normals, lights), 0.05, None)
    noise_var = float(app.report.get("noise_var", 0.0025))
    cands = {f"K={k}": k for k in ks if k <= app.n_components}
    out = {}
    for label in ["mean", *cands, "raw colours"]:
        if label == "mean":
            per_vertex = np.broadcast_to(mean, target.shape)
        elif label == "raw colours":
            per_vertex = np.where(visible[..., None], target, mean)
        else:
            k = cands[label]
            a = project_observed(target, visible, mean, app.basis[:k].numpy(), app.sd[:k].numpy(), noise_var)
            per_vertex = app.colours(torch.from_numpy(a)).numpy()
        scores = []
        for s in range(0, len(rows), block):
            sl = slice(s, s + block)
            # render the given per-vertex colours: a one-component "model" whose mean is each photo's colours
            buf = _render_colours(model, app, torch.from_numpy(np.ascontiguousarray(per_vertex[sl])), fit, sl,
                                  render, None if lights is None else torch.from_numpy(lights[sl]))
            m = buf["mask"]
            se = (((buf["colour"] - photos64[sl]) ** 2) * m).sum((1, 2, 3)) / (3 * m.sum((1, 2, 3))).clamp_min(1)
            scores.append(10 * torch.log10(1 / se.clamp_min(1e-12)))
        out[label] = float(torch.cat(scores).mean())
    return out


def _render_colours(model, app, colours, fit, sl, render, light):
    """``facemodel.appearance_render.render_face`` for given per-vertex colours (B, V, 3) instead of coefficients."""
    from ..render.rasterize import render_mesh_buffers

    verts = model.vertices(fit["coeffs"][sl], app.config.region, fit["expressions"][sl])
    out = render_mesh_buffers(verts, model.region(app.config.region).faces, render, fit["poses"][sl],
                              attributes={"colour": colours.float()})
    colour = out["colour"]
    if light is not None:
        colour = (colour * shading(out["normal"].flatten(1, 2), light).view_as(colour)).clamp(0, 1)
    return {"colour": colour.permute(0, 3, 1, 2), "mask": out["mask"][:, None].float()}


def shape_map_evidence(app: AppearanceModel, n: int = 2000, seed: int = 0) -> dict:
    """What each ``shape_map`` does to from-shape draws for synthetic identities z ~ N(0, I): the mean squared norm
    of the conditional mean (sd units; the fits' own predictions have about R^2 x K) and the share of vertex colour
    values outside [0, 1] before clamping (over-exposed or black skin), beside free draws and the photos' own
    projections."""
    g = torch.Generator().manual_seed(seed)
    z = normal(n, app.conditional["shape_mean"].numel(), generator=g)
    flat = app.basis.reshape(app.n_components, -1)
    clipped = lambda a: float((((app.mean.reshape(-1) + (a * app.sd) @ flat) < 0)  # noqa: E731
                               | ((app.mean.reshape(-1) + (a * app.sd) @ flat) > 1)).float().mean())
    out = {}
    for sm in SHAPE_MAPS:
        m = app.coefficients(torch.zeros(n, app.n_components), "from-shape", z, sm)
        draws = app.sample(n, "from-shape", shape=z, generator=torch.Generator().manual_seed(seed + 1), shape_map=sm)
        out[sm] = {"cond_mean_sq_norm": float((m ** 2).sum(1).mean()), "clipped_share": clipped(draws)}
    out["free"] = {"clipped_share": clipped(app.sample(n, "free", generator=torch.Generator().manual_seed(seed + 1)))}
    if app.photo_coeffs is not None:
        out["photos"] = {"clipped_share": clipped(torch.as_tensor(app.photo_coeffs[:n]))}
    return out


def ita_of_colours(colours, visible, skin, rows) -> np.ndarray:
    """ITA of the mean visible skin colour of each photo in ``rows`` (photos with no visible skin vertex skipped)."""
    m = visible[rows][:, skin]
    c = (colours[rows][:, skin] * m[..., None]).sum(1) / np.maximum(m.sum(1), 1)[:, None]
    return individual_typology_angle(c[m.sum(1) > 0])


def summarize_ita(ita: np.ndarray) -> dict:
    q = np.percentile(ita, [5, 25, 50, 75, 95])
    return {"n": int(len(ita)), "quantiles_5_25_50_75_95": [float(x) for x in q], "bands": ita_shares(ita)}


def conditional_gaussian(s_tr, a_tr, s_va, a_va):
    """Closed-form Gaussian of a given s from their joint over the training rows; with the whitening map of s.
    Returns the tensors of ``AppearanceModel.conditional`` and a report (share of appearance variance that the
    shape explains, in sample and on the validation rows)."""
    mu_s, mu_a = s_tr.mean(0), a_tr.mean(0)
    ds, da = s_tr - mu_s, a_tr - mu_a
    n = len(s_tr) - 1
    Sss, Sas, Saa = ds.T @ ds / n, da.T @ ds / n, da.T @ da / n
    W = np.linalg.solve(Sss, Sas.T).T  # (K, S)
    Sres = Saa - W @ Sas.T
    Sres = (Sres + Sres.T) / 2 + 1e-6 * np.eye(len(Sres))
    pred_tr = mu_a + ds @ W.T
    pred_va = mu_a + (s_va - mu_s) @ W.T
    r2 = lambda a, p: 1 - float(((a - p) ** 2).sum() / ((a - mu_a) ** 2).sum())
    cond = {"shape_mean": mu_s, "shape_chol": np.linalg.cholesky(Sss), "app_mean": mu_a, "regression": W,
            "residual_chol": np.linalg.cholesky(Sres)}
    report = {"r2_train": r2(a_tr, pred_tr), "r2_val": r2(a_va, pred_va), "shape_components": int(s_tr.shape[1]),
              "fit_shape_sd": [float(x) for x in np.sqrt(np.diag(Sss))],
              "synthetic_mahalanobis_sq_mean": float(s_tr.shape[1] * np.mean(1 / np.linalg.eigvalsh(Sss)))}
    return cond, report


# ---- where it lives -------------------------------------------------------------------------------------------------
def default_path(light: str = "baked", cache_dir=None, paired=None) -> Path:
    """Where a full-precision build (with every photo's coefficients) is cached: ``appearance_<light>.safetensors``
    for the default paired set, ``appearance_<light>_<set key>.safetensors`` for another ``paired`` set (a
    ``PairedFaceDataset``), under ``cache_dir`` (default outputs/cache)."""
    from ..data.pairs import PairedConfig
    from ..io.paths import REPO_ROOT

    folder = Path(cache_dir) if cache_dir else REPO_ROOT / "outputs" / "cache"
    key = None if paired is None or paired.config.key() == PairedConfig().key() else paired.config.key()
    return folder / (f"appearance_{light}.safetensors" if key is None else f"appearance_{light}_{key}.safetensors")


def cached_appearance(paired, config: AppearanceConfig | None = None, cache_dir=None, model=None,
                      progress: bool = False) -> AppearanceModel:
    """The appearance model of ``paired`` (a ``PairedFaceDataset`` of all splits): read from its cache file when it
    was built with the same configuration, else built and cached (notebook 01 uses this)."""
    cfg = config or AppearanceConfig()
    path = default_path(cfg.light, cache_dir, paired)
    if path.exists():
        app = AppearanceModel.load(path)
        if asdict(app.config) == asdict(cfg):
            return app
    app = build_appearance(cfg, paired, model, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    app.save(path)
    return app


def eight_bit_colour_error(app: AppearanceModel, small: AppearanceModel, n: int = 500, seed: int = 0) -> dict:
    """How far the 8-bit copy's colours are from the build's: ``n`` free draws of ``small``'s components, per-vertex
    colour difference in 8-bit levels (max, mean)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        small.save(Path(tmp) / "copy.safetensors", torch.float16, with_photos=False, eight_bit=True)
        back = AppearanceModel.load(Path(tmp) / "copy.safetensors")
    a = torch.randn(n, small.n_components, generator=torch.Generator().manual_seed(seed))
    d = (back.colours(a) - app.colours(a)).abs() * 255
    return {"n": n, "max_levels": float(d.max()), "mean_levels": float(d.mean())}


def ship(src=None, max_components: int | None = None, command: str = "", alternatives: dict | None = None,
         eight_bit: bool = False, table_rows: int | None = None) -> dict:
    """Write the shipped copy: float16 (with ``eight_bit`` the basis and the expression table in 8 bits with an
    offset and step per component and per blendshape, ``facemodel.appearance.quantize_8bit``), without the photos'
    coefficients, the leading ``max_components`` (the most that keeps every shipped file within
    ``SHIP_BUDGET_BYTES`` when None), ``table_rows`` of the fitted poses and expressions (a seeded random subset: the
    same distribution in less room; all when None), a SHA-256 file that loading checks, and a model card with the
    build report; ``alternatives`` (label -> built file) are other builds whose validation PSNR the card shows
    beside this one's (e.g. with the mirror fill). Returns the card's numbers. Refuses, in one line, a copy that
    would take the shipped files over the budget."""
    import platform

    from ..io.files import atomic_write_bytes

    app = AppearanceModel.load(src or default_path())
    if "val_psnr_mask_db" not in app.report:  # a model built before this measure existed
        from ..data.pairs import PairedFaceDataset
        from ..facemodel.model import load_face_model

        app.report["val_psnr_mask_db"] = validation_psnr_in_mask(
            app, PairedFaceDataset("all", progress=False), load_face_model(), app.config.candidates)
    evidence = shape_map_evidence(app)
    table, n_table = app.face_table, None if app.face_table is None else len(app.face_table[0])
    if table is not None and table_rows is not None and table_rows < n_table:
        keep = np.sort(np.random.default_rng(0).choice(n_table, table_rows, replace=False))
        table = (np.asarray(table[0])[keep], np.asarray(table[1])[keep])

    def shipped_copy(k: int) -> AppearanceModel:
        small = AppearanceModel(app.mean, app.basis[:k], app.sd[:k], app.region_vertices, app.config,
                                {kk: v for kk, v in app.conditional.items()}, app.lights, None, None,
                                {**app.report, "shipped_components": k, "shipped_eight_bit": eight_bit,
                                 "shipped_table_rows": None if table is None else len(table[0])},
                                app.background, app.render, table)
        # the conditional was fitted for all K components: keep its first k rows (a marginal of a Gaussian)
        c = small.conditional
        c["app_mean"], c["regression"] = c["app_mean"][:k], c["regression"][:k]
        c["residual_chol"] = torch.linalg.cholesky(
            (app.conditional["residual_chol"] @ app.conditional["residual_chol"].T)[:k, :k])
        return small

    others = sum(p.stat().st_size for p in SHIPPED.parent.rglob("*") if p.is_file()
                 and p not in (SHIPPED, SHIPPED_CARD, SHIPPED_SUM))
    room = SHIP_BUDGET_BYTES - others - 10_000  # the card and the checksum file
    size = lambda k: len(shipped_copy(k).to_bytes(torch.float16, False, eight_bit))  # noqa: E731
    per_k = size(2) - size(1)
    k = min(app.n_components, (room - size(1)) // per_k + 1 if max_components is None else max_components)
    if k < 1 or size(k) > room:
        raise ValueError(f"{SHIPPED}: {k} components{' in 8 bits' if eight_bit else ''} take {size(max(k, 1)):,} "
                         f"bytes, the 20 MB budget of shipped files leaves {room:,} (others {others:,})")
    small = shipped_copy(k)
    small.save(SHIPPED, dtype=torch.float16, with_photos=False, eight_bit=eight_bit)
    digest = sha256_of(SHIPPED)
    atomic_write_bytes(SHIPPED_SUM, f"{digest}  {SHIPPED.name}\n".encode())
    r = app.report
    mask = r["val_psnr_mask_db"]
    flags = (f"{f' --max-components {max_components}' if max_components else ''}{' --eight-bit' if eight_bit else ''}"
             f"{f' --table-rows {table_rows}' if table_rows else ''}")
    rows = ("no table of" if table is None else f"a table of {len(table[0]):,}" + (
        "" if len(table[0]) == n_table else f" (a seeded random subset of the {n_table:,})")) + " training photos'"
    precision = ""
    if eight_bit:
        err = eight_bit_colour_error(app, small)
        precision = (f" with the basis and the expression table in 8 bits (an offset and a step per component and "
                     f"per blendshape); colours of {err['n']} drawn appearances (free, all {k} components) differ "
                     f"from the float32 build's by at most {err['max_levels']:.2f} 8-bit levels (mean "
                     f"{err['mean_levels']:.2f})")
    tried = max(int(k_) for k_ in r["val_psnr_visible_db"])
    plateau = (f"Validation PSNR still rises at the largest K tried ({tried}), so K is that candidate."
               if app.n_components == tried else f"Validation PSNR levels off at K = {app.n_components}.")
    if k < app.n_components:
        plateau += (f" The shipped copy keeps the leading {k}" + (" (`--max-components`: what the shipped buffers "
                    "generator reads, which leaves it room in the 20 MB budget of all shipped files)."
                    if max_components else " for size."))
    k_rows = "\n".join(f"| {k_} | {r['variance_explained_observed'].get(k_, float('nan')):.3f} | {v:.2f} | "
                     f"{mask.get(f'K={k_}', float('nan')):.2f} |" for k_, v in r["val_psnr_visible_db"].items())
    ita = lambda d: ", ".join(f"{x:.1f}" for x in d["quantiles_5_25_50_75_95"])  # noqa: E731
    bands = lambda d: ", ".join(f"{n} {v:.0%}" for n, v in d["bands"].items())  # noqa: E731
    card = f"""# Appearance model (the face model's colour half)

Per-vertex colour over the ICT face model's `{app.config.region}` region ({r['vertices']} vertices), learned from the
fitted CelebA training photos: `frankenstein_utils/data/appearance_build.py` (sampling through each photo's fit with z-buffer
and facing visibility, mirror fill {'on' if app.config.mirror else 'off'}, harmonic fill, missing-data PCA with
{app.config.rounds} imputation rounds, K chosen on the validation split). Light: **{app.config.light}**.

- **Data and terms**: {TERMS} {r['n_photos']['train']} training photos, {r['n_photos']['val']} validation.
- **Shipped**: `appearance.safetensors`, the leading {k} of {app.n_components} components (the 20 MB budget of all
  shipped files), mean training photo, {rows} fitted poses/expressions; float16{precision}; SHA-256 `{digest}`
  (checked on load).
- **Reproduce**: `python -m frankenstein_utils.data.appearance_build build --light {app.config.light}` then
  `python -m frankenstein_utils.data.appearance_build ship{flags}`{(' (' + command + ')') if command else ''}.
- **Build**: {r['build_seconds']['total']:.0f} s on {__import__('os').cpu_count()} cores ({platform.machine()}; sampling
  {r['build_seconds']['sampling']:.0f} s, PCA {r['build_seconds']['pca']:.0f} s).
- **Visibility**: {r['visible_share_per_photo']:.1%} of the vertices visible per photo; {r['never_visible_share']:.1%} never
  visible in any training photo (filled by {'the mirror, ' if app.config.mirror else ''}the mesh neighbours and the PCA alone).

## Components (K = {app.n_components} chosen: the smallest within {app.config.k_tolerance_db} dB of the best)

Variance explained: of the observed training colours. Validation PSNR: each of the {r['n_photos']['val']}
validation photos' visible colours projected on the first K components (MAP, from those colours alone), PSNR over
those colours, and PSNR inside the face mask of the projection re-rendered on the photo's own fit at 64 px against
the photo. References in the mask: mean appearance {mask['mean']:.2f} dB, the photo's own raw colours (hidden
vertices from the mean) {mask['raw colours']:.2f} dB; on visible colours the mean scores
{r['val_psnr_mean_appearance_db']:.2f} dB. {plateau}

| K | variance explained | validation PSNR, visible colours (dB) | validation PSNR in mask (dB) |
|---|---|---|---|
{k_rows}

## Appearance that follows the shape

Share of the appearance coefficients' variance explained by the first {r['shape_explains']['shape_components']}
identity coefficients (joint Gaussian over the training fits): {r['shape_explains']['r2_train']:.3f} in sample,
{r['shape_explains']['r2_val']:.3f} on validation photos. The fits' identity coefficients have standard deviations
{min(r['shape_explains']['fit_shape_sd']):.2f}-{max(r['shape_explains']['fit_shape_sd']):.2f} (not 1): a synthetic face
from N(0, I) sits at a mean squared Mahalanobis distance of {r['shape_explains']['synthetic_mahalanobis_sq_mean']:.0f} under
the fits' Gaussian, so `from-shape` reads synthetic coefficients as whitened fits (`shape_map="whiten"`).

Evidence for the whitening (2,000 synthetic identities z ~ N(0, I)): the conditional mean's
mean squared norm is {evidence['whiten']['cond_mean_sq_norm']:.1f} with `whiten`, {evidence['identity']['cond_mean_sq_norm']:.1f}
with `identity` (sd units, {app.n_components} components); colour values outside [0, 1] before clamping:
{evidence['whiten']['clipped_share']:.2%} (`whiten`), {evidence['identity']['clipped_share']:.2%} (`identity`),
{evidence['free']['clipped_share']:.2%} (free draws){f", {evidence['photos']['clipped_share']:.2%} (the photos' own projections)" if 'photos' in evidence else ''}.

## Skin tone (individual typology angle, degrees; the FAIR benchmark's measure)

Mean visible cheek and forehead colour ({r['skin_vertices']} vertices).
- Test photos ({r['ita_test_photos']['n']}): quantiles 5/25/50/75/95 % = {ita(r['ita_test_photos'])}; {bands(r['ita_test_photos'])}.
- Drawn appearances (`free`, {r['ita_drawn_free']['n']}): {ita(r['ita_drawn_free'])}; {bands(r['ita_drawn_free'])}.
"""
    if alternatives:
        ks = list(r["val_psnr_visible_db"])
        head = "| build | " + " | ".join(f"K={k_}" for k_ in ks) + " |\n|---|" + "---|" * len(ks) + "\n"
        line = lambda label, rep_: (f"| {label} | " + " | ".join(  # noqa: E731
            f"{rep_['val_psnr_visible_db'].get(k_, float('nan')):.2f}" for k_ in ks) + " |")
        body = [line(f"this one (mirror {'on' if app.config.mirror else 'off'})", r)]
        for label, path in alternatives.items():
            other = AppearanceModel.load(path)
            body.append(line(f"{label} (mirror {'on' if other.config.mirror else 'off'}, light {other.config.light})",
                             other.report))
        card += ("\n## Alternatives measured (validation PSNR of visible colours, dB)\n\n" + head + "\n".join(body)
                 + "\n")
    atomic_write_bytes(SHIPPED_CARD, card.encode())
    return {"components": k, "sha256": digest, "bytes": SHIPPED.stat().st_size}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.data.appearance_build",
                                 description="Build the appearance model from the fitted CelebA photos.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="sample, fill, PCA, choose K, condition on shape; writes a safetensors file")
    b.add_argument("--light", choices=LIGHTS, default="baked")
    b.add_argument("--mirror", action="store_true", help="fill hidden vertices from their mirror image first")
    b.add_argument("--out", help=f"output file (default {default_path()})")
    b.add_argument("--max-components", type=int, default=AppearanceConfig.max_components)
    b.add_argument("--rounds", type=int, default=AppearanceConfig.rounds)
    b.add_argument("--limit", type=int, help="first N photos only (quick runs)")
    sh = sub.add_parser("ship", help="write the shipped float16 (or 8-bit) copy, its checksum and model card")
    sh.add_argument("--src", help=f"built model (default {default_path()})")
    sh.add_argument("--max-components", type=int)
    sh.add_argument("--eight-bit", action="store_true", help="the basis and the expression table in 8 bits")
    sh.add_argument("--table-rows", type=int, help="keep a seeded random subset of the fitted poses/expressions")
    sh.add_argument("--alternative", action="append", metavar="LABEL=FILE", help="another build to show beside it")
    a = ap.parse_args(argv)
    if a.cmd == "ship":
        alts = dict(x.split("=", 1) for x in a.alternative or [])
        print(json.dumps(ship(a.src, a.max_components, alternatives=alts, eight_bit=a.eight_bit,
                              table_rows=a.table_rows)))
        return
    cfg = AppearanceConfig(light=a.light, mirror=a.mirror, max_components=a.max_components, rounds=a.rounds)
    app = build_appearance(cfg, limit=a.limit)
    out = Path(a.out) if a.out else default_path(a.light)
    out.parent.mkdir(parents=True, exist_ok=True)
    app.save(out)
    print(json.dumps(app.report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
