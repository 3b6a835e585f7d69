"""Metric networks trained here: the feature net (FD/KID), the two-sample classifier, the depth estimator, baselines."""

from __future__ import annotations

from pathlib import Path  # noqa: E402
from typing import Callable

import numpy as np
import torch
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ..io.files import atomic_write_bytes  # noqa: E402
from ..nets.layers import conv_block, init_weights  # noqa: E402
from ..nets.study import Generator
from ..objectives.losses import l1_loss  # noqa: E402
from .measures import frechet_distance_features, mean_ci, mean_pairwise_distance, wilson_interval


@torch.no_grad()
def paired_metrics(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict:
    """Per-image metrics, averaged: ``l1``, ``psnr``, ``ssim`` (whole image) and ``*_mask`` (inside the mask).

    pred, target: (N, C, H, W) in [-1, 1]; mask (N, 1, H, W) in {0, 1}. PSNR is per image on [0, 1] (data range 1);
    masked PSNR uses only the face pixels; masked SSIM averages the SSIM map over the face pixels."""
    p, t = (pred.float() + 1) / 2, (target.float() + 1) / 2
    m = mask.expand_as(p) > 0.5
    out = {"l1": [], "psnr": [], "ssim": [], "l1_mask": [], "psnr_mask": [], "ssim_mask": []}
    _, ssim_map = structural_similarity_index_measure(p, t, data_range=1.0, return_full_image=True,
                                                      reduction="none")
    for i in range(len(p)):
        out["l1"].append(float((pred[i] - target[i]).abs().mean()))
        out["psnr"].append(float(peak_signal_noise_ratio(p[i], t[i], data_range=1.0)))
        out["ssim"].append(float(ssim_map[i].mean()))
        mi = m[i]
        if mi.any():
            out["l1_mask"].append(float((pred[i] - target[i]).abs()[mi].mean()))
            out["psnr_mask"].append(float(peak_signal_noise_ratio(p[i][mi], t[i][mi], data_range=1.0)))
            out["ssim_mask"].append(float(ssim_map[i][mi].mean()))
    return {k: float(np.mean(v)) for k, v in out.items()}


@torch.no_grad()
def evaluate_paired(predict: Callable, images, depth, mask, batch_size: int = 256) -> dict:
    """``paired_metrics`` of ``predict(depth, mask, image) -> images`` over a whole split, in batches."""
    preds = torch.cat([predict(depth[s:s + batch_size], mask[s:s + batch_size], images[s:s + batch_size]).cpu()
                       for s in range(0, len(depth), batch_size)])
    return paired_metrics(preds, images, mask)


class MeanPhotoBaseline:
    """Predicts the mean training photo for every depth map."""

    def __init__(self, train_images: torch.Tensor):
        self.mean = train_images.float().mean(0, keepdim=True)

    def __call__(self, depth, mask=None, image=None):
        return self.mean.expand(len(depth), -1, -1, -1)


class LinearDepthBaseline:
    """Least-squares linear map of the depth value, per colour channel: image_c = a_c * depth + b_c."""

    def __init__(self, train_images: torch.Tensor, train_depth: torch.Tensor):
        X = torch.stack([train_depth.flatten().double(), torch.ones(train_depth.numel(), dtype=torch.float64)], 1)
        Y = train_images.double().permute(1, 0, 2, 3).reshape(train_images.shape[1], -1).T  # (pixels, C)
        self.coef = torch.linalg.lstsq(X, Y).solution.float()  # (2, C)

    def __call__(self, depth, mask=None, image=None):
        a, b = self.coef[0], self.coef[1]
        return (depth * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)).clamp(-1, 1)


class FeatureNet(nn.Module):
    """Face features for Frechet distance / KID / diversity: the encoder of an autoencoder trained to reconstruct
    real photos. Why an autoencoder: no labels ship with the photos and no pretrained network may be downloaded;
    reconstruction forces the code to describe what real faces look like (layout, tone, lighting, sharpness
    at the code's scale), and the ladder checks in the tests show its distances order known cases correctly.
    Output: a 32-channel map pooled to 2 x 2 -> 128 features per image."""

    num_features = 128

    def __init__(self, in_ch: int = 3, width: int = 32):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(conv_block(in_ch, w, "none", stride=2), conv_block(w, 2 * w, "batch", stride=2),
                                     conv_block(2 * w, 4 * w, "batch", stride=2), nn.Conv2d(4 * w, 32, 1))
        self.decoder = nn.Sequential(conv_block(32, 4 * w, "batch"), conv_block(4 * w, 2 * w, "batch", transpose=True),
                                     conv_block(2 * w, w, "batch", transpose=True),
                                     nn.ConvTranspose2d(w, in_ch, 4, 2, 1), nn.Tanh())

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.encoder(x.float()), 2).flatten(1)

    def reconstruct(self, x):
        return self.decoder(self.encoder(x))


def _batches(n, bs, g):
    perm = torch.randperm(n, generator=g)
    for s in range(0, n - bs + 1, bs):
        yield perm[s:s + bs]


def _fit(net, loss_fn, n: int, steps: int, batch_size: int, seed: int, lr: float = 1e-3):
    """Adam on ``loss_fn(index batch)`` for ``steps`` steps over shuffled epochs of n items (seeded)."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    step = 0
    while step < steps:
        for idx in _batches(n, min(batch_size, n), g):
            loss = loss_fn(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    return net.eval()


def _cached(path, build, make):
    """Load a metric network from ``path`` if it was trained before, else train it (``build()``) and save it
    atomically. The file holds the network's state dict (tensors and plain values, read with ``weights_only=True``:
    nothing inside it runs) and ``make()`` builds the untrained network it is loaded into."""
    if path is not None and Path(path).exists():
        from ..train.checkpoint import load_tensors_only

        ck = load_tensors_only(path, "metric-network cache", "an older cache (a pickled network) or not written by "
                               "this package: delete it and the network is trained again")
        with torch.random.fork_rng(devices=[]):  # building it draws initial weights: leave the global RNG as it was
            net = make()
        try:
            fmt = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
            if fmt != "metric-network/2":
                raise ValueError(f"format {fmt!r}, not 'metric-network/2'")
            net.load_state_dict(ck["state"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"{path}: not a metric-network cache of this network ({type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); delete it and the network "
                             f"is trained again") from e
        return net
    net = build()
    if path is not None:
        import io

        buf = io.BytesIO()
        torch.save({"format": "metric-network/2", "network": type(net).__name__, "state": net.state_dict()}, buf)
        atomic_write_bytes(path, buf.getvalue())
    return net


def train_feature_net(real: torch.Tensor, steps: int = 600, batch_size: int = 64, seed: int = 0,
                      cache=None) -> FeatureNet:
    """Train (or load from ``cache``) the feature autoencoder on real photos (N, C, H, W) in [-1, 1]."""
    def build():
        torch.manual_seed(seed)
        net = init_weights(FeatureNet(real.shape[1]))
        return _fit(net, lambda idx: l1_loss(net.reconstruct(real[idx]), real[idx]), len(real), steps, batch_size,
                    seed)
    return _cached(cache, build, lambda: FeatureNet(real.shape[1])).eval()


@torch.no_grad()
def features(net, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    net.eval()
    return torch.cat([net(images[s:s + batch_size]) for s in range(0, len(images), batch_size)])


def frechet_distance(net: FeatureNet, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to the project feature network's features of two image sets
    (``frechet_distance_features``, the one implementation of the formula)."""
    return frechet_distance_features(features(net, real).double().numpy(), features(net, fake).double().numpy())


def kernel_distance(net: FeatureNet, real: torch.Tensor, fake: torch.Tensor, subset_size: int = 100,
                    subsets: int = 50) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel on the features, mean and std over
    random subsets (torchmetrics' KernelInceptionDistance with the project's feature network)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    k = min(subset_size, len(real), len(fake))
    kid = KernelInceptionDistance(feature=net.eval(), subsets=subsets, subset_size=k, normalize=False)
    with torch.no_grad():
        kid.update(real, real=True)
        kid.update(fake, real=False)
    m, s = kid.compute()
    return float(m), float(s)


class _C2STNet(nn.Module):
    def __init__(self, in_ch, width=16):
        super().__init__()
        w = width
        self.net = nn.Sequential(conv_block(in_ch, w, "none", stride=2), conv_block(w, 2 * w, "batch", stride=2),
                                 conv_block(2 * w, 4 * w, "batch", stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4 * w, 1))

    def forward(self, x):
        return self.net(x)


def classifier_two_sample_test(real: torch.Tensor, fake: torch.Tensor, steps: int = 300, batch_size: int = 64,
                               seed: int = 0) -> dict:
    """C2ST (Lopez-Paz & Oquab 2017): a fresh small CNN learns real-vs-generated on half of each set; its accuracy on
    the other half, with a 95 % Wilson interval. 0.5 = indistinguishable, 1.0 = trivially told apart."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    n = min(len(real), len(fake))
    r, f = real[torch.randperm(len(real), generator=g)[:n]], fake[torch.randperm(len(fake), generator=g)[:n]]
    h = n // 2
    x_tr, y_tr = torch.cat([r[:h], f[:h]]), torch.cat([torch.ones(h), torch.zeros(h)])
    x_te, y_te = torch.cat([r[h:], f[h:]]), torch.cat([torch.ones(n - h), torch.zeros(n - h)])
    net = init_weights(_C2STNet(real.shape[1]))
    _fit(net, lambda idx: F.binary_cross_entropy_with_logits(net(x_tr[idx]).squeeze(1), y_tr[idx]), len(x_tr), steps,
         batch_size, seed)
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(x_te[s:s + 256]).squeeze(1) for s in range(0, len(x_te), 256)]) > 0
    correct = int((pred.float() == y_te).sum())
    lo, hi = wilson_interval(correct, len(y_te))
    return {"accuracy": correct / len(y_te), "ci_low": lo, "ci_high": hi, "n_test": len(y_te)}


# ---- correspondence to the input depth ----------------------------------------------------------------------------
def train_depth_estimator(images: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, steps: int = 800,
                          batch_size: int = 32, width: int = 16, seed: int = 0, cache=None) -> nn.Module:
    """Image (N, C, H, W) in [-1, 1] -> depth (N, 1, H, W) in [-1, 1] (U generator), L1 inside the face mask, trained
    on the paired set's training split (or loaded from ``cache``)."""
    def build():
        torch.manual_seed(seed)
        net = init_weights(Generator("U", images.shape[1], 1, width, "batch"))
        return _fit(net, lambda idx: l1_loss(net(images[idx]), depth[idx] * 2 - 1, mask[idx]), len(images), steps,
                    batch_size, seed)
    return _cached(cache, build, lambda: Generator("U", images.shape[1], 1, width, "batch")).eval()


def scale_shift_aligned_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """Per image: fit a * pred + b to target inside the mask by least squares, then RMSE there; and the Pearson
    correlation of pred and target inside the mask. Returns two (N,) tensors."""
    rmse, corr = [], []
    for p, t, m in zip(pred.flatten(1).double(), target.flatten(1).double(), mask.flatten(1) > 0.5):
        p, t = p[m], t[m]
        if len(p) < 3:
            rmse.append(float("nan"))
            corr.append(float("nan"))
            continue
        A = torch.stack([p, torch.ones_like(p)], 1)
        sol = torch.linalg.lstsq(A, t[:, None]).solution
        rmse.append(float(torch.sqrt(((A @ sol).squeeze(1) - t).pow(2).mean())))
        pc, tc = p - p.mean(), t - t.mean()
        corr.append(float((pc * tc).sum() / (pc.norm() * tc.norm()).clamp_min(1e-12)))
    return torch.tensor(rmse), torch.tensor(corr)


@torch.no_grad()
def correspondence(estimator: nn.Module, images: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor) -> dict:
    """How well images correspond to depth maps: estimate each image's depth, compare with the given depth inside the
    mask after a least-squares scale and shift (RMSE, lower is better; correlation, higher is better)."""
    est = torch.cat([estimator(images[s:s + 256]) for s in range(0, len(images), 256)])
    rmse, corr = scale_shift_aligned_error(est, depth * 2 - 1, mask)
    m, lo, hi = mean_ci(rmse)
    c, clo, chi = mean_ci(corr)
    return {"rmse": m, "rmse_ci": [lo, hi], "corr": c, "corr_ci": [clo, chi]}


# ---- diversity, shape sensitivity, identity ---------------------------------------------------------------------------
def mean_pairwise_feature_distance(net: FeatureNet, images: torch.Tensor, max_n: int = 500) -> float:
    """``mean_pairwise_distance`` of the feature network's features of the first ``max_n`` images."""
    return mean_pairwise_distance(features(net, images[:max_n]).double().numpy())


@torch.no_grad()
def shape_sensitivity(generate, net: FeatureNet, coeffs: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor,
                      z: torch.Tensor | None = None) -> float:
    """Spearman rank correlation, over all pairs of faces, between the distance of their model coefficients and the
    feature distance of the images generated from their depth maps (same z for all, if any). Near 0: the output
    ignores the shape; positive: different shapes give different faces in proportion."""
    imgs = generate(depth, mask, z)
    f = features(net, imgs).double()
    i, j = torch.triu_indices(len(f), len(f), 1)
    dc = (coeffs[i] - coeffs[j]).norm(dim=1)
    df = (f[i] - f[j]).norm(dim=1)
    return float(spearmanr(dc.numpy(), df.numpy()).statistic)
