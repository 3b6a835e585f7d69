"""The flagship's regularisers, one function each: multi-scale GAN loss, DiffAugment, R1, feature matching, EMA."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .losses import GANLoss


def multiscale_gan_loss(gan: GANLoss, logits: list, real: bool, for_d: bool) -> torch.Tensor:
    """The GAN loss averaged over scales (each term is already a mean over its patches)."""
    return sum(gan(o.float(), real, for_d) for o in logits) / len(logits)  # float32 losses under autocast


# ---- objective pieces -----------------------------------------------------------------------------------------------
def diff_augment(x: torch.Tensor, policy: str = "color,translation,cutout") -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020): differentiable random colour, translation and cutout, a fresh draw per sample,
    applied to every image D sees (real and fake alike), so D cannot memorise a 10k-photo set. Images in [-1, 1].

    - color: brightness + U(-0.5, 0.5), saturation * U(0, 2), contrast * U(0.5, 1.5) (on the [-1, 1] scale);
    - translation: integer shift up to 1/8 of the size, zero (grey) fill;
    - cutout: one square of half the size set to 0."""
    if not policy:
        return x
    B, C, H, W = x.shape
    dev = x.device
    for p in policy.split(","):
        if p == "color":
            x = x + (torch.rand(B, 1, 1, 1, device=dev) - 0.5)
            m = x.mean(1, keepdim=True)
            x = (x - m) * (torch.rand(B, 1, 1, 1, device=dev) * 2) + m
            m = x.mean((1, 2, 3), keepdim=True)
            x = (x - m) * (torch.rand(B, 1, 1, 1, device=dev) + 0.5) + m
        elif p == "translation":
            sh, sw = H // 8, W // 8
            ty = torch.randint(-sh, sh + 1, (B, 1, 1), device=dev)
            tx = torch.randint(-sw, sw + 1, (B, 1, 1), device=dev)
            yy = (torch.arange(H, device=dev)[None, :, None] + ty + 1).clamp(0, H + 1).expand(B, H, W)
            xx = (torch.arange(W, device=dev)[None, None, :] + tx + 1).clamp(0, W + 1).expand(B, H, W)
            bb = torch.arange(B, device=dev)[:, None, None].expand(B, H, W)
            x = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)[bb, yy, xx].permute(0, 3, 1, 2)
        elif p == "cutout":
            ch, cw = H // 2, W // 2
            oy = torch.randint(0, H - ch + 1, (B, 1, 1), device=dev)
            ox = torch.randint(0, W - cw + 1, (B, 1, 1), device=dev)
            yy = torch.arange(H, device=dev)[None, :, None]
            xx = torch.arange(W, device=dev)[None, None, :]
            keep = ~(((yy >= oy) & (yy < oy + ch)) & ((xx >= ox) & (xx < ox + cw)))
            x = x * keep[:, None].to(x.dtype)
        else:
            raise ValueError(f"unknown DiffAugment policy {p!r}; use color, translation, cutout")
    return x


def r1_penalty(D: nn.Module, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E_real ||grad_x s(x)||^2 with s(x) = the sum over scales of the image's mean
    logit -- the same per-image quantity the loss averages, so the penalty's scale does not grow with the number of
    patches. The caller multiplies by gamma / 2."""
    real = real.detach().requires_grad_(True)
    out = D(real)
    s = sum(o.flatten(1).mean(1) for o in (out if isinstance(out, list) else [out]))
    (grad,) = torch.autograd.grad(s.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def paired_feature_matching(real_feats: list, fake_feats: list) -> torch.Tensor:
    """pix2pixHD feature matching: mean over scales and layers of L1(D_l(fake), D_l(its own photo)) per element."""
    terms = [(f.float() - r.detach().float()).abs().mean() for rs, fs in zip(real_feats, fake_feats)
             for r, f in zip(rs, fs)]
    return sum(terms) / len(terms)


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net for parameters; buffers copied."""
    for pe, p in zip(ema.parameters(), net.parameters()):
        pe.lerp_(p.detach(), 1 - decay)
    for be, b in zip(ema.buffers(), net.buffers()):
        be.copy_(b)

