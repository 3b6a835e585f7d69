"""Generators (U, V, F, NU of the original study), the appearance encoder of the conditional VAE, and factories.

Shapes: depth input (B, in_ch, H, W) with H, W divisible by 4; image output (B, out_ch, H, W) in [-1, 1] (tanh).
A latent code z (B, z_dim) enters by FiLM (feature-wise scale and shift after normalisation) at the bottleneck and
in the decoder: fed as constant extra channels it would be erased by the next instance normalisation.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .layers import FiLM, _sn, conv_block, norm_layer

GENERATORS = ("U", "V", "F", "NU")


class Generator(nn.Module):
    """The study's generators, chosen by ``arch``:

    - ``U``: 1x1 conv, two stride-2 convs down, a bottleneck, two transposed convs up with skip connections, 1x1 out;
    - ``V``: the same without skips;
    - ``F``: a flat stack of ``flat_layers`` same-resolution 3x3 convs;
    - ``NU``: U with a noise vector z ~ N(0, I) (``z_dim``) injected at the bottleneck, drawn anew each call unless
      given, for different faces from one depth map.
    Any arch takes an optional code z (``z_dim`` > 0): the appearance-conditioned generator is U with z from an
    encoder.
    """

    def __init__(self, arch: str = "U", in_ch: int = 1, out_ch: int = 3, width: int = 32, norm: str = "instance",
                 z_dim: int = 0, flat_layers: int = 6):
        super().__init__()
        if arch not in GENERATORS:
            raise ValueError(f"unknown generator {arch!r}; choose one of {GENERATORS}")
        if arch == "NU" and z_dim <= 0:
            z_dim = 8
        self.arch, self.z_dim, self.out_ch = arch, z_dim, out_ch
        self.skips = arch in ("U", "NU")
        w = width
        if arch == "F":
            self.head = conv_block(in_ch, w, "none", k=1)
            half = flat_layers // 2
            self.body1 = nn.Sequential(*[conv_block(w, w, norm) for _ in range(half)])
            self.film = FiLM(z_dim, w)
            self.body2 = nn.Sequential(*[conv_block(w, w, norm) for _ in range(flat_layers - half)])
            self.out = nn.Conv2d(w, out_ch, 1)
            return
        self.head = conv_block(in_ch, w, "none", k=1)  # (B, w, H, W)
        self.down1 = conv_block(w, 2 * w, norm, stride=2)  # (B, 2w, H/2, W/2)
        self.down2 = conv_block(2 * w, 4 * w, norm, stride=2)  # (B, 4w, H/4, W/4)
        self.bottleneck1 = conv_block(4 * w, 4 * w, norm)
        self.film = FiLM(z_dim, 4 * w)
        self.bottleneck2 = conv_block(4 * w, 4 * w, norm)
        self.up1 = conv_block(4 * w, 2 * w, norm, transpose=True)  # (B, 2w, H/2, W/2)
        self.film_up1 = FiLM(z_dim, 2 * w)
        self.merge1 = conv_block(4 * w if self.skips else 2 * w, 2 * w, norm)
        self.up2 = conv_block(2 * w, w, norm, transpose=True)  # (B, w, H, W)
        self.film_up2 = FiLM(z_dim, w)
        self.merge2 = conv_block(2 * w if self.skips else w, w, norm)
        self.out = nn.Conv2d(w, out_ch, 1)

    def sample_z(self, n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.z_dim, generator=generator).to(device)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None, return_bottleneck: bool = False):
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by 4")
        if self.arch == "NU" and z is None:
            z = self.sample_z(x.shape[0], x.device)
        if self.arch == "F":
            h = self.film(self.body1(self.head(x)), z)
            bott = h
            y = torch.tanh(self.out(self.body2(h)))
            return (y, bott) if return_bottleneck else y
        h0 = self.head(x)
        h1 = self.down1(h0)
        h = self.down2(h1)
        bott = self.bottleneck1(h)
        h = self.bottleneck2(self.film(bott, z))
        h = self.film_up1(self.up1(h), z)
        h = self.merge1(torch.cat([h, h1], 1) if self.skips else h)
        h = self.film_up2(self.up2(h), z)
        h = self.merge2(torch.cat([h, h0], 1) if self.skips else h)
        y = torch.tanh(self.out(h))
        return (y, bott) if return_bottleneck else y


class AppearanceEncoder(nn.Module):
    """Photo (B, C, H, W) -> (mu, logvar) of a small latent z (B, z_dim): four stride-2 convs, global average pool,
    linear. Batch normalisation or none, never instance normalisation (it would erase overall brightness)."""

    def __init__(self, in_ch: int = 3, z_dim: int = 8, width: int = 32, norm: str = "batch"):
        super().__init__()
        if norm == "instance":
            raise ValueError("the appearance encoder must not use instance normalisation (it erases brightness)")
        w = width
        self.net = nn.Sequential(conv_block(in_ch, w, "none", stride=2), conv_block(w, 2 * w, norm, stride=2),
                                 conv_block(2 * w, 4 * w, norm, stride=2), conv_block(4 * w, 4 * w, norm, stride=2),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.mu = nn.Linear(4 * w, z_dim)
        self.logvar = nn.Linear(4 * w, z_dim)
        self.z_dim = z_dim

    def forward(self, img):
        h = self.net(img)
        return self.mu(h), self.logvar(h).clamp(-10, 10)


# ---- discriminators -------------------------------------------------------------------------------------------------
DISCRIMINATORS = ("small", "patch")


class SmallDiscriminator(nn.Module):
    """The original study's discriminator: two stride-2 convs, a 3x3 conv, a dense output (one logit per image).

    ``features(x)`` returns the intermediate activations (for feature matching) and the logit."""

    def __init__(self, in_ch: int = 3, width: int = 32, image_size: int = 64, spectral_norm: bool = False,
                 norm: str = "none"):
        super().__init__()
        w = width
        self.blocks = nn.ModuleList([
            nn.Sequential(_sn(nn.Conv2d(in_ch, w, 4, 2, 1), spectral_norm), nn.LeakyReLU(0.2, True)),
            nn.Sequential(_sn(nn.Conv2d(w, 2 * w, 4, 2, 1), spectral_norm), norm_layer(norm, 2 * w),
                          nn.LeakyReLU(0.2, True)),
            nn.Sequential(_sn(nn.Conv2d(2 * w, 2 * w, 3, 1, 1), spectral_norm), norm_layer(norm, 2 * w),
                          nn.LeakyReLU(0.2, True)),
        ])
        self.dense = _sn(nn.Linear(2 * w * (image_size // 4) ** 2, 1), spectral_norm)

    def features(self, x):
        feats = []
        for b in self.blocks:
            x = b(x)
            feats.append(x)
        return feats, self.dense(x.flatten(1))  # logits (B, 1)

    def forward(self, x):
        return self.features(x)[1]


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix): stride-2 convs then a 1-channel conv; one logit per overlapping patch (B, 1, h, w)."""

    def __init__(self, in_ch: int = 3, width: int = 32, n_layers: int = 3, spectral_norm: bool = False,
                 norm: str = "batch"):
        super().__init__()
        w = width
        layers = [nn.Sequential(_sn(nn.Conv2d(in_ch, w, 4, 2, 1), spectral_norm), nn.LeakyReLU(0.2, True))]
        ch = w
        for i in range(1, n_layers):
            nxt = min(w * 2 ** i, 8 * w)
            layers.append(nn.Sequential(_sn(nn.Conv2d(ch, nxt, 4, 2 if i < n_layers - 1 else 1, 1), spectral_norm),
                                        norm_layer("none" if spectral_norm else norm, nxt),
                                        nn.LeakyReLU(0.2, True)))
            ch = nxt
        self.blocks = nn.ModuleList(layers)
        self.out = _sn(nn.Conv2d(ch, 1, 4, 1, 1), spectral_norm)

    def features(self, x):
        feats = []
        for b in self.blocks:
            x = b(x)
            feats.append(x)
        return feats, self.out(x)

    def forward(self, x):
        return self.features(x)[1]


def define_discriminator(kind: str, in_ch: int, width: int, image_size: int, spectral_norm: bool = False,
                         norm: str = "none") -> nn.Module:
    """Discriminator by name; ``ValueError`` on an unknown one."""
    if kind == "small":
        return SmallDiscriminator(in_ch, width, image_size, spectral_norm, norm)
    if kind == "patch":
        return PatchDiscriminator(in_ch, width, 3, spectral_norm, norm)
    raise ValueError(f"unknown discriminator {kind!r}; choose one of {DISCRIMINATORS}")


class ConvEncoder(nn.Module):
    """Image (B, C, H, W) -> code (B, 4w, H/4, W/4): the shared encoder of the cross-encoder (domain transfer)."""

    def __init__(self, in_ch: int, width: int = 32, norm: str = "instance"):
        super().__init__()
        w = width
        self.net = nn.Sequential(conv_block(in_ch, w, "none", k=3), conv_block(w, 2 * w, norm, stride=2),
                                 conv_block(2 * w, 4 * w, norm, stride=2), conv_block(4 * w, 4 * w, norm))

    def forward(self, x):
        return self.net(x)


class ConvDecoder(nn.Module):
    """Code (B, 4w, H/4, W/4) -> image (B, out_ch, H, W) in [-1, 1]."""

    def __init__(self, out_ch: int, width: int = 32, norm: str = "instance"):
        super().__init__()
        w = width
        self.net = nn.Sequential(conv_block(4 * w, 4 * w, norm), conv_block(4 * w, 2 * w, norm, transpose=True),
                                 conv_block(2 * w, w, norm, transpose=True), nn.Conv2d(w, out_ch, 1), nn.Tanh())

    def forward(self, h):
        return self.net(h)


class EncoderDecoder(torch.nn.Module):
    """The cross-encoder's generator: the shared (frozen) encoder, then a trainable photo decoder. Depth input
    (B, 1, H, W) in [-1, 1] is repeated to the photo's channels, as the shared encoder takes one kind of input."""

    def __init__(self, enc, dec, channels: int):
        super().__init__()
        self.enc, self.dec, self.channels = enc, dec, channels
        self.z_dim = 0

    def as_image(self, x):
        return x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x

    def forward(self, x, z=None, return_bottleneck: bool = False):
        h = self.enc(self.as_image(x))
        y = self.dec(h)
        return (y, h) if return_bottleneck else y
