"""The flagship generator and the peers pix2pix and BicycleGAN: networks, objectives and training steps.

Three trainer modes live here (registered in ``OBJECTIVES``; ``training.Trainer`` delegates to them):

- ``flagship``: a deep encoder-decoder (bottleneck ``fs_bottleneck`` px, 4x4 at 64 px), resize-then-conv upsampling,
  every decoder level modulated by the appearance code z (AdaIN-style per-channel scale/shift) and by the depth map
  itself (SPADE, Park et al. 2019: per-pixel scale/shift from the resized input); a multi-scale PatchGAN with
  spectral normalisation; hinge or non-saturating loss with a lazy R1 penalty (Mescheder et al. 2018); DiffAugment
  (Zhao et al. 2020) on everything D sees; pix2pixHD feature matching on the paired branch; a BicycleGAN-style
  appearance encoder (cVAE branch on photo pairs, cLR branch with latent regression on *synthetic* face-model
  depth); an exponential moving average of G's weights, which is what ``generate`` uses.
  Every choice is a ``TrainConfig`` option (``fs_*``) so it can be ablated.
- ``pix2pix`` (Isola et al. 2017): U-Net with a skip per downsampling down to 1x1, batch norm, dropout 0.5 in the
  three innermost decoder blocks; conditional 70x70 PatchGAN (n_layers 3); vanilla GAN loss, lambda_L1 = 100, D loss
  halved, Adam(2e-4, 0.5). Paired data only, as in the paper.
- ``bicyclegan`` (Zhu et al. 2017): U-Net with z added to the input, ResNet encoder, two 2-scale PatchGANs (cVAE-GAN
  and cLR-GAN), LSGAN loss, lambda_L1 = 10, lambda_KL = 0.01, lambda_z = 0.5 (latent regression trains G alone),
  the batch split in halves between the two branches. Paired data only, as in the paper.

Deviations, stated: widths come from ``width``/``d_width``/``encoder_width`` (the papers use 64), batch size from the
config (the papers use 1-2), and ``generate`` runs the networks in eval mode (pix2pix keeps dropout and batch
statistics at test time).
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .losses import GANLoss, kl_divergence, l1_loss, reparameterize
from .models import AppearanceEncoder, PatchDiscriminator, batch_stats_kept, init_weights
from .objectives import batch_buffers, generator_input

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
def _norm(kind, ch):
    return {"batch": lambda: nn.BatchNorm2d(ch), "instance": lambda: nn.InstanceNorm2d(ch, affine=False),
            "none": nn.Identity}[kind]()


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


def _requires_grad(nets, on: bool):
    for n in nets:
        n.requires_grad_(on)


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


# ---- peers: pix2pix U-Net, BicycleGAN encoder -----------------------------------------------------------------------
class UNet(nn.Module):
    """pix2pix's U-Net, written flat: ``n_down`` = log2(S) stride-2 4x4 convs down to 1x1 (channels width, 2w, 4w,
    8w, 8w, ...), the same number of transposed convs up, each concatenated with the encoder activation of its
    resolution. Down: LReLU(0.2) -> conv -> norm (no norm on the outermost and innermost); up: ReLU -> tconv -> norm
    (+ dropout 0.5 on the three innermost blocks after the innermost, if ``dropout``); tanh out. ``z_dim`` > 0:
    BicycleGAN's ``add_to_input`` -- z tiled as extra input channels."""

    def __init__(self, in_ch=1, out_ch=3, width=64, image_size=64, norm="batch", dropout=True, z_dim=0):
        super().__init__()
        n = int(round(math.log2(image_size)))
        if 2 ** n != image_size:
            raise ValueError(f"the pix2pix U-Net needs a power-of-2 size, got {image_size}")
        self.z_dim, self.out_ch = z_dim, out_ch
        ch = [width * min(2 ** i, 8) for i in range(n)]  # channels after down i
        self.down = nn.ModuleList()
        cin = in_ch + z_dim
        for i in range(n):
            layers = [] if i == 0 else [nn.LeakyReLU(0.2, True)]
            layers.append(nn.Conv2d(cin, ch[i], 4, 2, 1, bias=norm != "batch" or i in (0, n - 1)))
            if 0 < i < n - 1:
                layers.append(_norm(norm, ch[i]))
            self.down.append(nn.Sequential(*layers))
            cin = ch[i]
        self.up = nn.ModuleList()
        for i in reversed(range(n)):  # up i maps resolution of down i back to that of down i-1
            cin = ch[i] if i == n - 1 else 2 * ch[i]
            if i == 0:
                self.up.append(nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(cin, out_ch, 4, 2, 1), nn.Tanh()))
                continue
            layers = [nn.ReLU(True), nn.ConvTranspose2d(cin, ch[i - 1], 4, 2, 1, bias=norm != "batch"),
                      _norm(norm, ch[i - 1])]
            if dropout and n - 4 <= i < n - 1:  # the 8w blocks just outside the innermost
                layers.append(nn.Dropout(0.5))
            self.up.append(nn.Sequential(*layers))

    def forward(self, x, z=None):
        if self.z_dim:
            z = torch.zeros(len(x), self.z_dim, device=x.device) if z is None else z
            x = torch.cat([x, z[..., None, None].expand(-1, -1, *x.shape[-2:])], 1)
        acts = []
        for d in self.down:
            x = d(x)
            acts.append(x)
        h = acts.pop()
        for u in self.up:
            h = u(h)
            if acts:
                h = torch.cat([h, acts.pop()], 1)
        return h


class ResNetEncoder(nn.Module):
    """BicycleGAN's E_ResNet: a 4x4 stride-2 conv, then residual blocks each halving the size (norm -> LReLU -> 3x3
    conv -> norm -> LReLU -> 3x3 conv -> 2x2 avg pool, shortcut avg pool + 1x1 conv), LReLU, global average pool,
    linear heads for mu and logvar. Returns (mu, logvar)."""

    class Block(nn.Module):
        def __init__(self, cin, cout, norm):
            super().__init__()
            self.body = nn.Sequential(_norm(norm, cin), nn.LeakyReLU(0.2, True), nn.Conv2d(cin, cin, 3, 1, 1),
                                      _norm(norm, cin), nn.LeakyReLU(0.2, True), nn.Conv2d(cin, cout, 3, 1, 1),
                                      nn.AvgPool2d(2))
            self.short = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(cin, cout, 1))

        def forward(self, x):
            return self.body(x) + self.short(x)

    def __init__(self, in_ch=3, z_dim=8, width=64, n_blocks=4, norm="instance"):
        super().__init__()
        layers = [nn.Conv2d(in_ch, width, 4, 2, 1)]
        ch = width
        for i in range(1, n_blocks):
            nxt = width * min(i + 1, 4)
            layers.append(self.Block(ch, nxt, norm))
            ch = nxt
        layers += [nn.LeakyReLU(0.2, True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.mu, self.logvar = nn.Linear(ch, z_dim), nn.Linear(ch, z_dim)
        self.z_dim = z_dim

    def forward(self, img):
        h = self.net(img)
        return self.mu(h), self.logvar(h).clamp(-10, 10)


# ---- objectives (the Trainer delegates nets, optimizers, step and generate to these) --------------------------------
class Objective:
    """Base: ``nets`` (every module saved in the checkpoint), ``trainable`` (those with an optimizer), ``optimizer``,
    ``step`` (one training step; returns the logged losses), ``generate``. ``t`` is the Trainer: data streams
    (``t._next``), ``t.tn`` (the modules to call, DDP-wrapped when distributed), NaN guard (``t._check``), step."""

    lr, betas = 2e-4, (0.5, 0.999)

    def __init__(self, trainer):
        self.t, self.cfg = trainer, trainer.cfg
        self.nets = trainer.place(self.networks(self.cfg))  # device, and NHWC on CUDA with channels_last
        self.gan = GANLoss(self.gan_loss(self.cfg))

    @property
    def trainable(self):
        return [k for k in self.nets if k != "G_ema"]

    def optimizer(self, name):
        c = self.cfg
        lr = c.d_lr if (name.startswith("D") and c.d_lr > 0) else c.lr
        return torch.optim.Adam(self.nets[name].parameters(), lr=lr, betas=(c.beta1, c.beta2))

    def gin(self, b):
        return generator_input(b["depth"], b["mask"], self.cfg.mask_input, batch_buffers(self.cfg, b))

    def _update(self, loss, names, frozen=()):
        """zero_grad, backward (``frozen`` nets get no gradient), step -- for the optimizers of ``names``."""
        for n in names:
            self.t.opts[n].zero_grad(set_to_none=True)
        _requires_grad([self.nets[f] for f in frozen], False)
        loss.backward()
        _requires_grad([self.nets[f] for f in frozen], True)
        for n in names:
            self.t.opts[n].step()

    @torch.no_grad()
    def generate(self, depth, mask, image=None, z=None, buffers=None):
        buffers = batch_buffers(self.cfg, {"buffers": buffers} if buffers is not None else {})
        G = self.nets.get("G_ema", self.nets["G"])
        E = self.nets.get("E")
        was = {k: n.training for k, n in self.nets.items()}
        for n in self.nets.values():
            n.eval()
        if E is not None and z is None:
            z = E(image)[0] if image is not None else torch.zeros(len(depth), G.z_dim, device=depth.device)
        out = G(generator_input(depth, mask, self.cfg.mask_input, buffers), z).float()
        for k, n in self.nets.items():
            n.train(was[k])
        return out


class FlagshipObjective(Objective):
    @staticmethod
    def gan_loss(c):
        return c.gan_loss

    @staticmethod
    def networks(c):
        G = FlagshipGenerator(c.in_channels, c.out_channels, c.width, c.z_dim, c.image_size, c.fs_bottleneck,
                              c.fs_upsample, c.fs_modulation, c.fs_skips, c.fs_input_blur)
        nets = {"G": init_weights(G),
                "E": init_weights(AppearanceEncoder(c.out_channels, c.z_dim, c.encoder_width)),
                "D": init_weights(MultiScaleDiscriminator(c.out_channels, c.d_width, c.fs_scales, 3, "none",
                                                          c.spectral_norm))}
        if c.fs_ema > 0:
            nets["G_ema"] = copy.deepcopy(nets["G"]).requires_grad_(False)
        return nets

    def step(self):
        c, t = self.cfg, self.t
        G, E, D = t.tn["G"], t.tn["E"], t.tn["D"]
        p, s, r = t._next("paired"), t._next("synthetic"), t._next("real")
        aug = lambda x: diff_augment(x, c.fs_diffaug)
        # forward passes and losses under bf16 autocast (--amp, on CUDA); backward and steps outside it
        with t._autocast():
            # one generator pass: cVAE branch (z = E(photo)) on pairs, cLR branch (z ~ N(0, I)) on face-model depth
            mu, logvar = (v.float() for v in E(p["image"]))
            fake_p = G(self.gin(p), reparameterize(mu, logvar)).float()
            z_r = torch.randn(len(s["depth"]), c.z_dim, device=t.device)
            fake_s = G(self.gin(s), z_r).float()
            fake = torch.cat([fake_p, fake_s])
            real = torch.cat([p["image"], r["image"]])
            # D step
            d_real, d_fake = D(aug(real)), D(aug(fake.detach()))
            l_real = multiscale_gan_loss(self.gan, d_real, True, True)
            l_fake = multiscale_gan_loss(self.gan, d_fake, False, True)
            d_loss, log = l_real + l_fake, {"d_real": l_real, "d_fake": l_fake}
            if c.fs_r1 > 0 and t.step % c.fs_r1_every == 0:  # lazy R1 (StyleGAN2): every k steps, k times the weight
                with torch.autocast(t.device.type, enabled=False):  # a double backward: float32 (amp or not)
                    r1 = r1_penalty(D, aug(real))
                d_loss = d_loss + c.fs_r1 / 2 * c.fs_r1_every * r1
                log["r1"] = r1
        t._check(log)
        self._update(d_loss, ["D"])
        # G (and E) step
        Dm = self.nets["D"]  # features() bypasses DDP; D is frozen in this step
        with t._autocast():
            adv = multiscale_gan_loss(self.gan, D(aug(fake)), True, False)
            terms = {"g_adv": (c.gan_weight, adv), "l1": (c.l1_weight, l1_loss(fake_p, p["image"])),
                     "kl": (c.kl_weight, kl_divergence(mu, logvar))}
            if c.feature_matching > 0:  # pix2pixHD: the fake's D features vs its own photo's, on the paired half
                f_real, _ = Dm.features(p["image"])
                f_fake, _ = Dm.features(fake_p)
                terms["feature_matching"] = (c.feature_matching, paired_feature_matching(f_real, f_fake))
            if c.latent_weight > 0:  # BicycleGAN latent regression E(G(x, z)) = z on synthetic depth; trains G alone
                # the raw module: under DDP a second call of the wrapped, frozen E would wait for its gradients; its
                # BatchNorm statistics stay those of photos
                Em = self.nets["E"]
                _requires_grad([Em], False)
                with batch_stats_kept(Em):
                    terms["latent"] = (c.latent_weight, l1_loss(Em(fake_s)[0].float(), z_r))
                _requires_grad([Em], True)
        t._check({k: v for k, (w, v) in terms.items()})
        self._update(sum(w * v for w, v in terms.values()), ["G", "E"], frozen=["D"])
        if "G_ema" in self.nets:
            # warm-up (as in StyleGAN2-ADA's ramp): early on the average must follow the fast-changing weights; a run
            # started from another (--init-from) counts that run's steps, its average being already settled
            seen = t.step + sum(h.get("source_step", 0) for h in t.config_history if "init_from" in h)
            decay = min(c.fs_ema, (1 + seen) / (10 + seen))
            ema_update(self.nets["G_ema"], self.nets["G"], decay)
        log.update({k: v for k, (w, v) in terms.items()})
        return {k: float(v.detach()) for k, v in log.items()}


class Pix2PixObjective(Objective):
    gan_loss = staticmethod(lambda c: "log")

    @staticmethod
    def networks(c):
        return {"G": init_weights(UNet(c.in_channels, c.out_channels, c.width, c.image_size, "batch", True)),
                "D": init_weights(NLayerDiscriminator(c.in_channels + c.out_channels, c.d_width, 3, "batch"))}

    def step(self):
        c, t = self.cfg, self.t
        G, D = t.tn["G"], t.tn["D"]
        p = t._next("paired")
        x = self.gin(p)
        with t._autocast():  # forward passes and losses (--amp on CUDA)
            fake = G(x).float()
            # D: conditional, on (input, output) pairs; its loss halved (pix2pix: slows D relative to G)
            l_real = self.gan(D(torch.cat([x, p["image"]], 1)), True, True)
            l_fake = self.gan(D(torch.cat([x, fake.detach()], 1)), False, True)
        t._check({"d_real": l_real, "d_fake": l_fake})
        self._update(0.5 * (l_real + l_fake), ["D"])
        with t._autocast():
            adv = self.gan(D(torch.cat([x, fake], 1)), True, False)
            rec = l1_loss(fake, p["image"])
        t._check({"g_adv": adv, "l1": rec})
        self._update(adv + c.l1_weight * rec, ["G"], frozen=["D"])
        return {k: float(v.detach()) for k, v in {"d_real": l_real, "d_fake": l_fake, "g_adv": adv, "l1": rec}.items()}


class BicycleGANObjective(Objective):
    gan_loss = staticmethod(lambda c: "lsgan")

    @staticmethod
    def networks(c):
        D = lambda: init_weights(MultiScaleDiscriminator(c.out_channels, c.d_width, 2, 3, "instance", False))
        return {"G": init_weights(UNet(c.in_channels, c.out_channels, c.width, c.image_size, "instance", False,
                                       c.z_dim)),
                "E": init_weights(ResNetEncoder(c.out_channels, c.z_dim, c.encoder_width, 4, "instance")),
                "D": D(), "D2": D()}

    def step(self):
        c, t = self.cfg, self.t
        G, E, D, D2 = (t.tn[k] for k in ("G", "E", "D", "D2"))
        p = t._next("paired")
        h = len(p["image"]) // 2
        x = self.gin(p)[:h]
        real_enc, real_rand = p["image"][:h], p["image"][h:2 * h]
        with t._autocast():  # forward passes and losses (--amp on CUDA)
            mu, logvar = (v.float() for v in E(real_enc))
            fake_enc = G(x, reparameterize(mu, logvar)).float()  # cVAE-GAN
            z_r = torch.randn(h, c.z_dim, device=t.device)
            fake_rand = G(x, z_r).float()  # cLR-GAN
            d = {}
            d["d_real"] = multiscale_gan_loss(self.gan, D(real_enc), True, True)
            d["d_fake"] = multiscale_gan_loss(self.gan, D(fake_enc.detach()), False, True)
            d["d2_real"] = multiscale_gan_loss(self.gan, D2(real_rand), True, True)
            d["d2_fake"] = multiscale_gan_loss(self.gan, D2(fake_rand.detach()), False, True)
        t._check(d)
        self._update(sum(d.values()), ["D", "D2"])
        with t._autocast():
            g = {"g_adv": multiscale_gan_loss(self.gan, D(fake_enc), True, False),
                 "g_adv2": multiscale_gan_loss(self.gan, D2(fake_rand), True, False),
                 "l1": l1_loss(fake_enc, real_enc), "kl": kl_divergence(mu, logvar)}
            Em = self.nets["E"]  # the raw module (DDP: see the flagship's step)
            _requires_grad([Em], False)  # latent regression trains G alone
            with batch_stats_kept(Em):
                lat = l1_loss(Em(fake_rand)[0].float(), z_r)
            _requires_grad([Em], True)
        t._check({**g, "latent": lat})
        loss = g["g_adv"] + g["g_adv2"] + c.l1_weight * g["l1"] + c.kl_weight * g["kl"] + c.latent_weight * lat
        self._update(loss, ["G", "E"], frozen=["D", "D2"])
        return {k: float(v.detach()) for k, v in {**d, **g, "latent": lat}.items()}


OBJECTIVES = {"flagship": FlagshipObjective, "pix2pix": Pix2PixObjective, "bicyclegan": BicycleGANObjective}

# The papers' settings for the peers and the flagship's defaults; ``preset(name, **overrides)`` -> TrainConfig kwargs.
PRESETS = {
    "pix2pix": dict(mode="pix2pix", lr=2e-4, beta1=0.5, l1_weight=100.0, masked_l1=False),
    "bicyclegan": dict(mode="bicyclegan", lr=2e-4, beta1=0.5, l1_weight=10.0, kl_weight=0.01, latent_weight=0.5,
                       z_dim=8),
    "flagship": dict(mode="flagship", lr=2e-4, beta1=0.0, beta2=0.99, gan_loss="hinge", spectral_norm=True,
                     l1_weight=10.0, kl_weight=0.01, latent_weight=0.5, feature_matching=10.0, z_dim=8),
}
# ablations: one choice changed from the flagship each
ABLATIONS = {
    "flagship": {},
    "-spade (z only, AdaIN)": dict(fs_modulation="adain"),
    "-resize (transposed conv)": dict(fs_upsample="transpose"),
    "-deep (bottleneck 16 px)": dict(fs_bottleneck=16),
    "-multiscale D (1 scale)": dict(fs_scales=1),
    "-R1": dict(fs_r1=0.0),
    "-DiffAugment": dict(fs_diffaug=""),
    "-feature matching": dict(feature_matching=0.0),
    "-latent regression": dict(latent_weight=0.0),
    "hinge -> non-saturating": dict(gan_loss="log"),
    "-EMA (raw G weights)": dict(fs_ema=0.0),
}


def preset(name: str, **overrides) -> dict:
    """TrainConfig keyword arguments of a named model (``flagship``, ``pix2pix``, ``bicyclegan``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return {**PRESETS[name], **overrides}


# ---- the ablation and peer study (short runs at one equal budget) ---------------------------------------------------
def study_data(size: int = 64, n_synthetic: int = 2000, seed: int = 0, cache_dir="outputs/cache", limit=None):
    """The streams every study run trains on (as ``train.py`` builds them): paired CelebA (depth of the fitted face
    model), the same training photos as unpaired reals, face-model depth with the paired set's framing, pose and
    expression drawn from the photos' fits (``train.synthetic``)."""
    from .datasets import PairedConfig, PairedFaceDataset
    from .facemodel import load_face_model

    model = load_face_model()
    train = PairedFaceDataset("train", PairedConfig(size=size, limit=limit), cache_dir=cache_dir, model=model,
                              progress=False)
    syn = train.synthetic(n_synthetic, seed=seed, model=model).materialize()
    return model, train, {"paired": train, "real": train, "synthetic": syn}


def run_study(out_dir, names: list[str], steps: int, n_eval: int = 500, progress: bool = False, rescore: bool = False,
              workers: int = 1, n_test: int | None = None, cache_dir="outputs/cache", limit: int | None = None,
              **common) -> dict:
    """Train each named run (``flagship``, an ``ABLATIONS`` key, ``pix2pix``, ``bicyclegan``) for ``steps`` with the
    ``common`` settings, then score it with the evaluation's dlib judges at one N (``evaluation.build_context``,
    judges only): ``n_eval`` synthetic inputs from the fitted distribution with z ~ N(0, I), against all test photos
    (``n_test``: the first that many, for a quick check only): KID x 10^3 on descriptors (the headline, unbiased at
    any N) with its standard error, NME against the face model's landmarks, detection, diversity share, and the
    checkerboard score beside the test photos'. Results (and wall times) go to ``out_dir/results.json`` after every
    run; finished runs are not redone (``rescore``: their checkpoints are scored again). ``limit``: the first that
    many photos only (a smoke test)."""
    import time
    from pathlib import Path

    from . import evaluation as EV
    from .datasets import PairedConfig, PairedFaceDataset
    from .fileio import update_json
    from .training import TrainConfig, Trainer

    out = Path(out_dir)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    size = common.get("image_size", 64)
    model, train, data = study_data(size, cache_dir=cache_dir, limit=limit)
    test = PairedFaceDataset("test", PairedConfig(size=size, limit=limit), cache_dir=cache_dir, model=model,
                             progress=False)
    ctx = EV.build_context(model, train, test, n_synthetic=n_eval, n_embed=n_eval, n_ids=2, n_poses=2,
                           judges_only=True, n_test=n_test, workers=workers, cache_dir=cache_dir)
    ref_cb = checkerboard_score(ctx.real_test)

    def score(tr):
        f = EV.generator_fn(tr)
        imgs = EV.call_generator(f, ctx.syn_depth, ctx.syn_mask, None, ctx.syn_params)
        fj = EV.face_judgement(ctx, imgs, ctx.syn_landmarks)
        return {"kid": 1e3 * fj["kid"], "kid_se": 1e3 * fj["kid_se"], "nme": fj["nme"],
                "detection": fj["detection"], "diversity_share": fj["diversity_share"],
                "checkerboard": checkerboard_score(imgs), "reference_checkerboard": ref_cb, "n": len(imgs),
                "n_reference": fj["n_reference"],
                "inputs": "evaluation.build_context: identity N(0, I) over 15 components, pose and expression drawn "
                          "from the training photos' fits, z ~ N(0, I)"}

    for name in names:
        run_dir = out / name.replace(" ", "_").replace("/", "-").replace("(", "").replace(")", "")
        if name in results:
            if rescore:  # the finished run's checkpoint, scored again by the current measures
                from .training import load_run

                results[name].update(score(load_run(run_dir / "checkpoint.pt")))
                results = update_json(res_path, {name: results[name]})
            continue
        kw = preset(name) if name in PRESETS else {**PRESETS["flagship"], **ABLATIONS[name]}
        cfg = TrainConfig(**{**kw, **common, "steps": steps, "out_dir": str(run_dir)})
        t0 = time.time()
        tr = Trainer(cfg, data)
        hist = tr.fit(progress=progress)
        wall = time.time() - t0
        r = score(tr)
        r.update(wall_s=wall, steps=steps, params_G=sum(p.numel() for p in tr.nets["G"].parameters()),
                 final_losses={k: float(np.mean([h[k] for h in hist[-20:] if k in h])) for k in hist[-1] if k != "step"})
        results[name] = r
        results = update_json(res_path, {name: r})
    return results


STUDY_SMALL = dict(image_size=64, width=8, d_width=8, encoder_width=8, batch_size=8, checkpoint_every=100,
                   sample_every=100, log_every=10)  # the short equal budget of the flagship card's ablation


def main(argv=None):
    """python -m frankenstein_utils.flagship OUT --steps 250 [--names NAME ...]: the flagship's ablations and peers
    at one short budget (``STUDY_SMALL``), each scored at one N (``run_study``)."""
    import argparse

    names = ["flagship", *ABLATIONS, "pix2pix", "bicyclegan"]
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("out", help="folder of the runs and results.json (resumes: finished runs are kept)")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--names", nargs="+", default=names, metavar="NAME",
                    help=f"runs to train (default: all): {', '.join(repr(n) for n in names)}")
    ap.add_argument("--n-eval", type=int, default=500, help="generated faces scored per run (one N for all)")
    ap.add_argument("--workers", type=int, default=1, help="processes for the dlib judges")
    ap.add_argument("--rescore", action="store_true", help="score finished runs' checkpoints again")
    a = ap.parse_args(argv)
    bad = [n for n in a.names if n not in names]
    if bad:
        ap.error(f"unknown run(s) {bad}; choose from {names}")
    torch.set_num_threads(1)
    res = run_study(a.out, a.names, a.steps, n_eval=a.n_eval, rescore=a.rescore, workers=a.workers, **STUDY_SMALL)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    import sys

    from frankenstein_utils import flagship as F  # the registered module, not __main__'s copy

    sys.exit(F.main())
