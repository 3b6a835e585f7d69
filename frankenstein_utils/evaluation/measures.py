"""Measurements of generated images.

Paired reconstruction quality (supervised stage): L1, PSNR and SSIM, over the whole image and inside the face mask,
computed with torchmetrics. Images in [-1, 1] are mapped to [0, 1] first; L1 is reported on the [-1, 1] scale.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def checkerboard_score(images: torch.Tensor) -> float:
    """Share of the images' spectral power (mean removed per image and channel) on the Nyquist lines (vertical or
    horizontal frequency = half the sampling rate): the period-2 pattern uneven transposed-conv overlap leaves.
    Compare with real photos' own value; a checkerboard-free generator is at or below it."""
    x = images.float()
    x = x - x.mean((-2, -1), keepdim=True)
    p = torch.fft.fft2(x).abs().pow(2).mean((0, 1))  # (H, W)
    H, W = p.shape
    nyq = torch.zeros_like(p, dtype=torch.bool)
    nyq[H // 2, :] = True
    nyq[:, W // 2] = True
    return float(p[nyq].sum() / p.sum().clamp_min(1e-12))


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion k / n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


def mean_ci(values: torch.Tensor, z: float = 1.96) -> tuple[float, float, float]:
    """Mean and a normal-approximation 95 % interval of the mean."""
    v = values[torch.isfinite(values)].double()
    m = float(v.mean())
    h = z * float(v.std()) / math.sqrt(max(len(v), 1)) if len(v) > 1 else float("nan")
    return m, m - h, m + h


def brightness_spread(images: torch.Tensor, mask: torch.Tensor) -> float:
    """Standard deviation over images of the mean brightness inside the face mask (skin tone and lighting)."""
    lum = images.float().mean(1, keepdim=True)
    m = mask.float()
    per = (lum * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    return float(per.std())


# ---- judges trained elsewhere (dlib, see ``judges``): detection, landmarks, identity, face-FD ---------------------
def detection_rate(found) -> dict:
    """Share of images where the face detector found a face, with its 95 % Wilson interval."""
    found = np.asarray(found, bool)
    lo, hi = wilson_interval(int(found.sum()), len(found))
    return {"rate": float(found.mean()) if len(found) else float("nan"), "ci": [lo, hi], "n": int(len(found))}


def nme(pred, target, points=None, eye_corners=(36, 45)) -> dict:
    """Normalised mean landmark error: per face, the mean distance between predicted and target points divided by the
    target's outer-eye-corner distance (iBUG 36 and 45); mean over faces with a 95 % interval. ``points``: the
    indices used (default all 68); pred and target (N, 68, 2) in the same pixel frame."""
    pred, target = np.asarray(pred, float), np.asarray(target, float)
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[2] != 2:
        raise ValueError(f"nme: pred and target must both be (N, P, 2), got {pred.shape} and {target.shape}")
    iod = np.linalg.norm(target[:, eye_corners[0]] - target[:, eye_corners[1]], axis=1)
    idx = list(points) if points is not None else list(range(pred.shape[1]))
    per = np.linalg.norm(pred[:, idx] - target[:, idx], axis=2).mean(1) / np.maximum(iod, 1e-9)
    m, lo, hi = mean_ci(torch.from_numpy(per))
    return {"nme": m, "ci": [lo, hi], "per_face": per}


def frechet_distance_features(a, b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D):
    ||m_a - m_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)).

    Tr (C_a C_b)^(1/2) is computed as the sum of the square roots of the eigenvalues of the symmetric matrix
    C_a^(1/2) C_b C_a^(1/2) (same eigenvalues as C_a C_b; symmetric eigensolvers, negative round-off clipped to 0).
    Why not ``scipy.linalg.sqrtm(C_a @ C_b)``: with fewer samples than dimensions both covariances are singular and
    the general matrix square root of their non-symmetric product is ill-conditioned, so its value moves with the
    BLAS kernels of the CPU; the symmetric route is backward stable."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ma, mb = a.mean(0), b.mean(0)
    ca = np.cov(a, rowvar=False) if len(a) > 1 else np.zeros((a.shape[1],) * 2)
    cb = np.cov(b, rowvar=False) if len(b) > 1 else np.zeros((b.shape[1],) * 2)
    w, v = np.linalg.eigh(ca)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    mid = root_a @ cb @ root_a
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((mid + mid.T) / 2), 0, None)).sum()
    return float(((ma - mb) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * tr_covmean)


def mean_pairwise_distance(feats) -> float:
    """Mean Euclidean distance over all pairs of distinct rows (diversity of a set of embeddings)."""
    f = torch.as_tensor(np.asarray(feats, np.float64))
    n = len(f)
    return float(torch.cdist(f, f).sum() / (n * (n - 1))) if n > 1 else float("nan")


def pair_auc(pos, neg) -> dict:
    """AUC that a positive pair is closer than a negative pair (ties count one half), with the Hanley-McNeil 95 %
    interval. 0.5 = the distance says nothing, 1 = every positive pair is closer than every negative pair."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if len(pos) == 0 or len(neg) == 0:
        return {"auc": float("nan"), "ci": [float("nan")] * 2, "n_pos": len(pos), "n_neg": len(neg)}
    less = (pos[:, None] < neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    a = float(less + 0.5 * ties)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (len(pos) - 1) * (q1 - a * a) + (len(neg) - 1) * (q2 - a * a)) / (len(pos) * len(neg))
    h = 1.96 * math.sqrt(max(var, 0.0))
    return {"auc": a, "ci": [max(a - h, 0.0), min(a + h, 1.0)], "n_pos": len(pos), "n_neg": len(neg)}


def _mmd2_unbiased(x, y) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T / d + 1.0) ** 3, (y @ y.T / d + 1.0) ** 3, (x @ y.T / d + 1.0) ** 3)
    nx, ny = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (nx * (nx - 1)) + (kyy.sum() - np.trace(kyy)) / (ny * (ny - 1))
                 - 2 * kxy.mean())


def kernel_distance_features(a, b, standardize=None, subsets: int = 50, seed: int = 0) -> dict:
    """KID (Binkowski et al. 2018) between two feature sets (N, D), e.g. generated faces' and test photos' dlib
    descriptors: the unbiased estimate of MMD^2 with the cubic polynomial kernel k(x, y) = (x . y / D + 1)^3,

        MMD^2_u = sum_{i != j} k(a_i, a_j) / (n_a (n_a - 1)) + sum_{i != j} k(b_i, b_j) / (n_b (n_b - 1))
                  - 2 sum_{i, j} k(a_i, b_j) / (n_a n_b),

    on all rows of both sets ("kid"), and its standard error ("kid_se"): the standard deviation over ``subsets``
    random half-samples of each set (seeded) divided by sqrt(2) (the variance of the estimate falls as 1/N).
    ``standardize`` = (mean, std) per dimension, from a third set of real faces (e.g. training photos), applied to
    both sets first: dlib descriptors are nearly unit vectors whose entries are about 0.1, so with x . y / D of
    order 0.01 the cubic kernel is nearly linear and sees little but the means; standardized, it also sees the
    spread (a generator with 0.7x the real spread scores above a perfect one, ``tests/test_metrics.py``).
    Why KID and not FD at a few hundred samples of 128-D descriptors: KID is unbiased at any N (another sample of
    the real distribution scores 0 on average), while FD's plug-in covariances rank a narrower set above a perfect
    one at 64 or 128 samples."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 4:
        raise ValueError(f"kernel_distance_features: need two (N >= 4, D) sets of one D, got {a.shape} and "
                         f"{b.shape}")
    if standardize is not None:
        mu, sd = (np.asarray(v, np.float64) for v in standardize)
        a, b = (a - mu) / sd, (b - mu) / sd
    rng = np.random.default_rng(seed)
    halves = [_mmd2_unbiased(a[rng.choice(len(a), len(a) // 2, replace=False)],
                             b[rng.choice(len(b), len(b) // 2, replace=False)]) for _ in range(subsets)]
    return {"kid": _mmd2_unbiased(a, b), "kid_se": float(np.std(halves) / np.sqrt(2)), "n_a": len(a), "n_b": len(b)}


def near_copy_share(feats, train_feats, threshold: float = 0.6) -> dict:
    """Memorisation: the share of ``feats`` (N, D) whose nearest row of ``train_feats`` (M, D) is closer than
    ``threshold`` (dlib's same-person distance), with a Wilson interval. Compare it with the same share for real
    photos that were not trained on (a set of one celebrity's photos has near pairs of its own)."""
    a, b = np.asarray(feats, np.float64), np.asarray(train_feats, np.float64)
    if not len(a) or not len(b):
        return {"share": float("nan"), "ci": (float("nan"), float("nan")), "n": len(a), "n_train": len(b)}
    d = _nearest(a, b)[0]
    k = int((d < threshold).sum())
    return {"share": k / len(a), "ci": wilson_interval(k, len(a)), "n": len(a), "n_train": len(b),
            "median_nearest": float(np.median(d))}


def _nearest(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each row of ``a`` to its nearest row of ``b``, and that row's index (in chunks of
    ``b``: 10k x 10k stays small)."""
    best, idx = np.full(len(a), np.inf), np.zeros(len(a), np.int64)
    aa = (a * a).sum(1)[:, None]
    for i in range(0, len(b), chunk):
        c = b[i:i + chunk]
        d = aa + (c * c).sum(1)[None] - 2 * a @ c.T
        k = d.argmin(1)
        dk = d[np.arange(len(a)), k]
        better = dk < best
        best[better], idx[better] = dk[better], i + k[better]
    return np.sqrt(np.maximum(best, 0)), idx


def training_neighbour_share(feats, train_feats, heldout_feats) -> dict:
    """Memorisation against a held-out split: the share of ``feats`` (N, D) whose nearest real photo, among the
    training photos ``train_feats`` (M, D) and photos never trained on ``heldout_feats`` (H, D), is a training photo.

    Each face's nearest photo in the union is fixed; only which split it fell in is chance. If the split was drawn at
    random and the faces do not depend on it (real photos of neither split, a generator that did not memorise), each
    nearest photo is a training one with probability p = M / (M + H), so the share has mean p whatever the faces
    look like: blurred, plain, depth maps. A generator that copies training photos pulls it toward 1. Faces that
    share a nearest photo share its draw (blurred faces crowd onto a few "hub" photos), so the standard error counts
    them together: with n_j faces on nearest photo j, se = sqrt(p (1 - p) sum_j n_j^2) / N (the binomial one when
    every face has its own). A fixed distance threshold (``near_copy_share``) has no such chance level: a blurred or
    constant face sits closer to every photo and reads as a copy. Returns the share, its interval (Wilson at the
    effective size N^2 / sum_j n_j^2), the chance p, se and z = (share - p) / se (z > 2: more training neighbours
    than chance), and how many distinct nearest photos there are."""
    a, t, h = (np.asarray(x, np.float64) for x in (feats, train_feats, heldout_feats))
    if not len(a) or not len(t) or not len(h):
        raise ValueError(f"training_neighbour_share: need faces, training and held-out descriptors, got {len(a)}, "
                         f"{len(t)} and {len(h)} rows")
    (dt, it), (dh, ih) = _nearest(a, t), _nearest(a, h)
    is_train = dt < dh
    nearest = np.where(is_train, it, len(t) + ih)
    counts = np.unique(nearest, return_counts=True)[1].astype(np.float64)
    n, p, share = len(a), len(t) / (len(t) + len(h)), float(is_train.mean())
    se = math.sqrt(p * (1 - p) * (counts ** 2).sum()) / n
    n_eff = n * n / (counts ** 2).sum()
    return {"share": share, "ci": wilson_interval(share * n_eff, n_eff), "null": p, "se": se, "z": (share - p) / se,
            "n": n, "n_train": len(t), "n_heldout": len(h), "distinct_nearest": len(counts)}


def standardizer(features) -> tuple:
    """(mean, std) per dimension of a real feature set, for ``kernel_distance_features(standardize=...)``."""
    f = np.asarray(features, np.float64)
    return f.mean(0), np.maximum(f.std(0), 1e-12)


def spread_share(groups, reference) -> float:
    """Mean pairwise descriptor distance within each group of images (a list of (k, D) arrays: e.g. one depth map
    under k appearance codes), averaged over groups, as a share of the ``reference`` set's own mean pairwise
    distance (real photos). 0 = every group is one image (a collapsed generator), about 1 = each group varies as
    much as different real people do."""
    within = [mean_pairwise_distance(g) for g in groups if len(g) > 1]
    return float(np.mean(within) / mean_pairwise_distance(reference))


def pixel_spread(images: torch.Tensor, mask: torch.Tensor) -> dict:
    """Where a generator's code changes the picture. ``images`` (M, K, C, H, W): M fixed inputs, each under K codes;
    ``mask`` (M, 1, H, W): each input's face. Per pixel, the standard deviation over the K codes (mean over
    channels), averaged over the pixels inside the face and outside it, then over the inputs:
    sd_x = (1 / K) sum_k (x_k - mean_k x)^2, sqrt'd; inside = mean over inputs of mean_{p in face} sd_p.
    0 = the code changes nothing there. In the images' units ([-1, 1])."""
    if images.dim() != 5 or images.shape[1] < 2:
        raise ValueError(f"pixel_spread: images of shape (inputs, codes >= 2, C, H, W), got {tuple(images.shape)}")
    if mask.shape[0] != images.shape[0] or mask.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"pixel_spread: a mask of shape {tuple(mask.shape)} for images {tuple(images.shape)}")
    sd = images.float().std(1, unbiased=False).mean(1)  # (M, H, W)
    face = mask.bool().reshape(sd.shape)
    region = lambda inside: float(np.mean([sd[i][face[i] == inside].mean().item() for i in range(len(sd))  # noqa: E731
                                           if (face[i] == inside).any()]))
    return {"inside": region(True), "outside": region(False)}


def _weighted_auc(dpos, wpos, dneg, wneg) -> float:
    """P(positive distance < negative distance) + 0.5 P(tie), pairs weighted (Mann-Whitney with weights)."""
    order = np.argsort(dneg, kind="stable")
    dn, cw = dneg[order], np.concatenate([[0.0], np.cumsum(wneg[order])])
    lo, hi = np.searchsorted(dn, dpos, "left"), np.searchsorted(dn, dpos, "right")
    total = cw[-1]
    return float((wpos * ((total - cw[hi]) + 0.5 * (cw[hi] - cw[lo]))).sum() / (wpos.sum() * total))


def identity_pairs(ids, codes=None, poses=None, design: str = "matched"):
    """Index pairs (i, j), i < j, that test identity consistency. ``ids``: identity of each image; ``codes``: its
    appearance code; ``poses``: its pose slot (a slot is the same pose and expression for every identity of a code).

    ``"matched"`` (the measure): positives = same identity, same code, different pose; negatives = different
    identity, same code, *different* pose. Both classes cover every pair of distinct pose slots (each slot pair once
    per identity or identity pair), so the pose gap is drawn from the same distribution in both and only identity
    separates them: a generator that follows the pose but not the identity scores 0.5, one that ignores the depth
    and draws the face from the code alone scores 0.5.
    ``"same-pose"`` (the design used before, shown to expose its confound): negatives in the *same* pose, so a
    generator that keeps identity but turns the head with the input scores below 0.5.
    ``"old"``: negatives = different identity *and* different code, any pose; a depth-blind generator scores 1.
    ``"labels"``: real photos with known identity: positives = same identity, negatives = different identity."""
    ids = np.asarray(ids)
    i, j = np.triu_indices(len(ids), 1)
    same_id = ids[i] == ids[j]
    if design == "labels":
        return (i[same_id], j[same_id]), (i[~same_id], j[~same_id])
    codes, poses = np.asarray(codes), np.asarray(poses)
    same_code, same_pose = codes[i] == codes[j], poses[i] == poses[j]
    pos = same_id & same_code & ~same_pose
    if design == "matched":
        neg = ~same_id & same_code & ~same_pose
    elif design == "same-pose":
        neg = ~same_id & same_code & same_pose
    elif design == "old":
        neg = ~same_id & ~same_code
    else:
        raise ValueError(f"design must be 'matched', 'same-pose', 'old' or 'labels', got {design!r}")
    return (i[pos], j[pos]), (i[neg], j[neg])


def identity_auc(embeddings, ids, codes=None, poses=None, design: str = "matched", threshold: float = 0.6,
                 n_boot: int = 200, seed: int = 0) -> dict:
    """Identity consistency from face embeddings (dlib descriptors) under a pair design (``identity_pairs``): the
    AUC that a positive pair is closer than a negative pair (ties one half), its 95 % interval by bootstrap over
    identities (pairs share images, so they are not independent: identities are resampled with replacement, a
    positive pair weighted by its identity's count, a negative pair by the product of its two identities' counts),
    and the share of positive pairs closer than ``threshold`` (dlib's same-person rule)."""
    e, ids = np.asarray(embeddings, float), np.asarray(ids)
    (pi, pj), (ni, nj) = identity_pairs(ids, codes, poses, design)
    dpos = np.linalg.norm(e[pi] - e[pj], axis=1)
    dneg = np.linalg.norm(e[ni] - e[nj], axis=1)
    nan = float("nan")
    out = {"auc": nan, "ci": [nan, nan], "n_pos": len(dpos), "n_neg": len(dneg), "design": design,
           "n_ids": int(len(np.unique(ids))),
           "same_share": float((dpos < threshold).mean()) if len(dpos) else nan}
    if len(dpos) == 0 or len(dneg) == 0:
        return out
    out["auc"] = _weighted_auc(dpos, np.ones(len(dpos)), dneg, np.ones(len(dneg)))
    uniq, inv = np.unique(ids, return_inverse=True)
    rng, boots = np.random.default_rng(seed), []
    for _ in range(n_boot):
        w = np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq)).astype(float)
        wp, wn = w[inv[pi]], w[inv[ni]] * w[inv[nj]]
        if wp.sum() > 0 and wn.sum() > 0:
            boots.append(_weighted_auc(dpos, wp, dneg, wn))
    out["ci"] = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]
    return out


def _grow(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Binary dilation (r > 0) or erosion (r < 0) of masks (N, 1, H, W) by a (2|r| + 1) square."""
    if r == 0:
        return mask > 0.5
    m = (mask > 0.5).float()
    k = 2 * abs(r) + 1
    if r > 0:
        return F.max_pool2d(m, k, 1, abs(r)) > 0.5
    return -F.max_pool2d(-m, k, 1, abs(r)) > 0.5


def edge_ring(images: torch.Tensor, mask: torch.Tensor, width: int = 2) -> dict:
    """A dark (or bright) ring along the face mask's edge. Per image, grey level Y (mean of the channels, [0, 255])
    in the ring of ``width`` px on both sides of the edge minus the mean of the two bands beside it (the next
    2 x ``width`` px inside and outside):

        dip = mean_ring Y - (mean_inner_band Y + mean_outer_band Y) / 2.

    A seam the generator draws at the mask edge makes ``dip`` negative; an edge the photo itself has there (jaw
    shadow, hair line) does too, so compare with real photos and their own fitted masks. A dotted or checkered
    seam need not change the mean: ``roughness`` is the mean |dY/dt|, the grey-level change *along* the edge (t: the
    tangent of the mask's contour, from the gradient of the mask blurred with sigma 3 px), in the ring over that in
    the two bands. A photo's own edges (jaw line, hair line) run along the contour and change little along it; dots
    strung along the edge change at every step. Returns the means of ``dip`` and ``roughness`` over images with
    95 % intervals, and ``per_image`` dips."""
    y = (torch.as_tensor(images).float().mean(1, keepdim=True) + 1) * 127.5
    w = width
    ring = _grow(mask, w) & ~_grow(mask, -w)
    inner = _grow(mask, -w) & ~_grow(mask, -3 * w)
    outer = _grow(mask, 3 * w) & ~_grow(mask, w)
    mean_in = lambda sel: (y * sel).sum((1, 2, 3)) / sel.sum((1, 2, 3)).clamp_min(1)
    ok = (ring.sum((1, 2, 3)) > 0) & (inner.sum((1, 2, 3)) > 0) & (outer.sum((1, 2, 3)) > 0)
    dip = (mean_in(ring) - (mean_in(inner) + mean_in(outer)) / 2)[ok]
    r = torch.arange(-9, 10, dtype=torch.float32)
    k1 = torch.exp(-r ** 2 / 18)
    k1 = k1 / k1.sum()
    mb = F.conv2d(F.conv2d((mask > 0.5).float(), k1.view(1, 1, 1, -1), padding=(0, 9)), k1.view(1, 1, -1, 1),
                  padding=(9, 0))
    grad = lambda t: (F.pad(t[..., :, 2:] - t[..., :, :-2], (1, 1)) / 2, F.pad(t[..., 2:, :] - t[..., :-2, :],
                                                                               (0, 0, 1, 1)) / 2)
    mx, my = grad(mb)
    norm = (mx ** 2 + my ** 2).sqrt().clamp_min(1e-8)
    yx, yy = grad(y)
    along = (yx * -my / norm + yy * mx / norm).abs()  # derivative along the contour's tangent (-n_y, n_x)
    bands = inner | outer
    mean_sel = lambda sel: (along * sel).sum((1, 2, 3)) / sel.sum((1, 2, 3)).clamp_min(1)
    rough = (mean_sel(ring) / mean_sel(bands).clamp_min(1e-6))[ok]
    m, lo, hi = mean_ci(dip.double())
    r, rlo, rhi = mean_ci(rough.double())
    return {"dip": m, "dip_ci": [lo, hi], "roughness": r, "roughness_ci": [rlo, rhi], "n": int(ok.sum()),
            "per_image": dip.double().numpy()}


def staircase_contrast(images: torch.Tensor, mask: torch.Tensor) -> dict:
    """Whether a generator draws the input mask's pixel staircase: the mean local contrast (|Y - mean of its 8
    neighbours|, grey levels) at the mask's convex staircase corners (face pixels with one face neighbour vertically
    and one horizontally) over that at the other edge pixels. A photo knows nothing of a fitted mask's pixels
    (about 1); a network that turns the aliased edge of its input into dots scores above it."""
    y = (torch.as_tensor(images).float().mean(1, keepdim=True) + 1) * 127.5
    mb = (mask > 0.5).float()
    up, down = F.pad(mb, (0, 0, 1, 0))[..., :-1, :], F.pad(mb, (0, 0, 0, 1))[..., 1:, :]
    left, right = F.pad(mb, (1, 0))[..., :-1], F.pad(mb, (0, 1))[..., 1:]
    edge = (mb > 0) & (up + down + left + right < 4)
    corner = edge & ((up + down) == 1) & ((left + right) == 1)
    k = torch.ones(1, 1, 3, 3) / 8
    k[0, 0, 1, 1] = 0
    c = (y - F.conv2d(y, k, padding=1)).abs()
    if not corner.any() or not (edge & ~corner).any():
        return {"ratio": float("nan"), "corners": int(corner.sum())}
    return {"ratio": float(c[corner].mean() / c[edge & ~corner].mean()), "corners": int(corner.sum())}
