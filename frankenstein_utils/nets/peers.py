"""The peers' networks: pix2pix's U-Net generator and BicycleGAN's ResNet encoder."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .layers import norm_layer


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
                layers.append(norm_layer(norm, ch[i], affine=False))
            self.down.append(nn.Sequential(*layers))
            cin = ch[i]
        self.up = nn.ModuleList()
        for i in reversed(range(n)):  # up i maps resolution of down i back to that of down i-1
            cin = ch[i] if i == n - 1 else 2 * ch[i]
            if i == 0:
                self.up.append(nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(cin, out_ch, 4, 2, 1), nn.Tanh()))
                continue
            layers = [nn.ReLU(True), nn.ConvTranspose2d(cin, ch[i - 1], 4, 2, 1, bias=norm != "batch"),
                      norm_layer(norm, ch[i - 1], affine=False)]
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
            self.body = nn.Sequential(norm_layer(norm, cin, affine=False), nn.LeakyReLU(0.2, True),
                                      nn.Conv2d(cin, cin, 3, 1, 1), norm_layer(norm, cin, affine=False),
                                      nn.LeakyReLU(0.2, True), nn.Conv2d(cin, cout, 3, 1, 1), nn.AvgPool2d(2))
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
