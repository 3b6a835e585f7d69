"""The flagship's networks: the SPADE/AdaIN-modulated generator and the multi-scale PatchGAN discriminator."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .study import PatchDiscriminator

UPSAMPLES = ("resize", "transpose")
MODULATIONS = ("spade", "adain", "none")


# ---- flagship generator ---------------------------------------------------------------------------------------------
class ModNorm(nn.Module):
    """Instance norm without affine parameters, then x * (1 + gamma) + beta with gamma, beta the sum of a per-channel
    term from z (AdaIN-style) and, for ``spade``, a per-pixel term from the input depth map resized to x."""

    def __init__(self, ch: int, z_dim: int, cond_ch: int, modulation: str, hidden: int = 16):
        super().__init__()
        self.norm = nn.InstanceNorm2d(ch, affine=modulation == "none")
        self.z = nn.Linear(z_dim, 2 * ch) if (z_dim and modulation != "none") else None
        self.spade = None
        if modulation == "spade":
            self.spade = nn.Sequential(nn.Conv2d(cond_ch, hidden, 3, padding=1), nn.ReLU(True))
            self.gamma = nn.Conv2d(hidden, ch, 3, padding=1)
            self.beta = nn.Conv2d(hidden, ch, 3, padding=1)

    def forward(self, x, z, cond):
        h = self.norm(x)
        gamma = beta = 0
        if self.spade is not None:
            a = self.spade(F.interpolate(cond, size=h.shape[-2:], mode="area"))
            gamma, beta = self.gamma(a), self.beta(a)
        if self.z is not None and z is not None:
            g, b = self.z(z).chunk(2, dim=1)
            gamma, beta = gamma + g[..., None, None], beta + b[..., None, None]
        return h * (1 + gamma) + beta


class ModBlock(nn.Module):
    """3x3 conv -> ModNorm -> leaky ReLU."""

    def __init__(self, cin, cout, z_dim, cond_ch, modulation):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.mod = ModNorm(cout, z_dim, cond_ch, modulation)

    def forward(self, x, z, cond):
        return F.leaky_relu(self.mod(self.conv(x), z, cond), 0.2)


class FlagshipGenerator(nn.Module):
    """Depth (B, in_ch, S, S) and code z (B, z_dim) -> image (B, out_ch, S, S) in [-1, 1].

    Encoder: a 3x3 head, then stride-2 4x4 convs down to ``bottleneck`` px (channels double up to 8 * width), so a
    bottleneck unit sees the whole face. Two modulated blocks at the bottleneck, then per level: x2 upsampling
    (``resize``: nearest, the conv that follows does the rest -- no checkerboard, Odena et al. 2016; ``transpose``:
    a 4x4 stride-2 transposed conv), concat the encoder's activation of that size (``skips``), one modulated block.
    z None -> 0 (the prior's mean).

    ``input_blur`` = sigma > 0 (px): the input is first low-passed by a fixed Gaussian (radius ceil(2 sigma), edge
    pixels repeated), so that the rasterizer's pixel staircase along the mask edge, which the network otherwise
    copies into the photo as a dotted seam, reaches it softened (the kernel is derived from the setting, not stored)."""

    def __init__(self, in_ch=1, out_ch=3, width=32, z_dim=8, image_size=64, bottleneck=4, upsample="resize",
                 modulation="spade", skips=True, input_blur=0.0):
        super().__init__()
        if not (math.isfinite(input_blur) and input_blur >= 0):
            raise ValueError(f"input_blur must be a finite sigma >= 0 in px, got {input_blur}")
        self.input_blur = float(input_blur)
        if input_blur > 0:
            r = math.ceil(2 * input_blur)
            g = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * input_blur ** 2))
            self.register_buffer("blur_kernel", g / g.sum(), persistent=False)
        n_down = int(round(math.log2(image_size / bottleneck))) if bottleneck > 0 else 0
        if n_down < 1 or 2 ** n_down * bottleneck != image_size:
            raise ValueError(f"bottleneck {bottleneck} px must be image_size {image_size} / a power of 2 (>= 2)")
        if upsample not in UPSAMPLES:
            raise ValueError(f"unknown upsampling {upsample!r}; choose one of {UPSAMPLES}")
        if modulation not in MODULATIONS:
            raise ValueError(f"unknown modulation {modulation!r}; choose one of {MODULATIONS}")
        self.z_dim, self.out_ch, self.skips, self.upsample = z_dim, out_ch, skips, upsample
        ch = [min(width * 2 ** i, 8 * width) for i in range(n_down + 1)]  # channels at S / 2^i
        self.head = nn.Sequential(nn.Conv2d(in_ch, ch[0], 3, padding=1), nn.LeakyReLU(0.2, True))
        self.down = nn.ModuleList(nn.Sequential(nn.Conv2d(ch[i], ch[i + 1], 4, 2, 1),
                                                nn.InstanceNorm2d(ch[i + 1], affine=True), nn.LeakyReLU(0.2, True))
                                  for i in range(n_down))
        blk = lambda a, b: ModBlock(a, b, z_dim, in_ch, modulation)
        self.mid = nn.ModuleList([blk(ch[-1], ch[-1]), blk(ch[-1], ch[-1])])
        levels = list(reversed(range(n_down)))  # decoder level i: from S / 2^(i+1) to S / 2^i
        self.tconv = nn.ModuleList(nn.ConvTranspose2d(ch[i + 1], ch[i + 1], 4, 2, 1) for i in levels) \
            if upsample == "transpose" else None
        self.up = nn.ModuleList(blk(ch[i + 1] + (ch[i] if skips else 0), ch[i]) for i in levels)
        self.out = nn.Conv2d(ch[0], out_ch, 3, padding=1)

    def low_pass(self, x):
        """The separable Gaussian of ``input_blur`` over each channel (identity at 0)."""
        if not self.input_blur:
            return x
        k, c = self.blur_kernel.to(x.dtype), x.shape[1]
        r = (len(k) - 1) // 2
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    def forward(self, x, z=None):
        if z is None and self.z_dim:
            z = torch.zeros(len(x), self.z_dim, device=x.device, dtype=x.dtype)
        x = self.low_pass(x)
        cond = x
        h = self.head(x)
        skips = [h]
        for d in self.down:
            h = d(h)
            skips.append(h)
        skips.pop()  # the bottleneck itself
        for b in self.mid:
            h = b(h, z, cond)
        for k, up in enumerate(self.up):
            h = self.tconv[k](h) if self.tconv is not None else F.interpolate(h, scale_factor=2, mode="nearest")
            s = skips.pop()
            h = up(torch.cat([h, s], 1) if self.skips else h, z, cond)
        return torch.tanh(self.out(h))


# ---- discriminators -------------------------------------------------------------------------------------------------
class NLayerDiscriminator(PatchDiscriminator):
    """PatchGAN counted as pix2pix counts it (``n_layers`` = 3 gives 70x70 receptive fields): C64-C128-C256 stride 2,
    C512 stride 1, then a 1-channel 4x4 conv: one logit per patch (B, 1, h, w). No norm on the first layer; with
    spectral normalisation no other norm. The study's ``PatchDiscriminator`` with one block more."""

    def __init__(self, in_ch, width=64, n_layers=3, norm="batch", spectral_norm=False):
        super().__init__(in_ch, width, n_layers + 1, spectral_norm, norm)


class MultiScaleDiscriminator(nn.Module):
    """``n_scales`` PatchGANs on the image and its 2x, 4x ... average-pooled copies (pix2pixHD); returns a list of
    logit maps, one per scale (``features`` also returns each scale's intermediate activations)."""

    def __init__(self, in_ch, width=64, n_scales=2, n_layers=3, norm="none", spectral_norm=True):
        super().__init__()
        self.ds = nn.ModuleList(NLayerDiscriminator(in_ch, width, n_layers, norm, spectral_norm)
                                for _ in range(n_scales))

    def _scales(self, x):
        for i, d in enumerate(self.ds):
            if i:
                x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
            yield d, x

    def features(self, x):
        feats, logits = [], []
        for d, xs in self._scales(x):
            f, o = d.features(xs)
            feats.append(f)
            logits.append(o)
        return feats, logits

    def forward(self, x):
        return [d(xs) for d, xs in self._scales(x)]
