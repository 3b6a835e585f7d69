"""Building blocks every network shares: normalisation, conv blocks, FiLM, weight initialisation, parameter counts."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

NORMS = ("none", "batch", "instance")


def norm_layer(kind: str, ch: int, affine: bool = True) -> nn.Module:
    """A normalisation layer by name; ``affine``: instance norm with a learned scale and shift (the study's nets) or
    without (pix2pix's and BicycleGAN's, as in their code)."""
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "instance":
        return nn.InstanceNorm2d(ch, affine=affine)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r}; choose one of {NORMS}")


def conv_block(cin, cout, norm, k=3, stride=1, transpose=False):
    """conv (or transposed conv, x2 upsampling) -> norm -> leaky ReLU(0.2)."""
    if transpose:
        conv = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=norm == "none")
    else:
        conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=norm == "none")  # a norm cancels a bias
    return nn.Sequential(conv, norm_layer(norm, cout), nn.LeakyReLU(0.2, inplace=True))


class FiLM(nn.Module):
    """x * (1 + gamma(z)) + beta(z), per channel; the identity when z is None or z_dim is 0."""

    def __init__(self, z_dim: int, ch: int):
        super().__init__()
        self.lin = nn.Linear(z_dim, 2 * ch) if z_dim else None

    def forward(self, x, z):
        if self.lin is None or z is None:
            return x
        gamma, beta = self.lin(z).chunk(2, dim=1)
        return x * (1 + gamma[..., None, None]) + beta[..., None, None]


@contextmanager
def batch_stats_kept(net: nn.Module):
    """Inside the block ``net`` normalises with batch statistics as in training, but its BatchNorm running
    statistics (mean, variance, batch count) come out as they went in: an encoder applied to generated images
    (latent regression) must keep the statistics of the photos it encodes at test time."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    keys = ("running_mean", "running_var", "num_batches_tracked")
    saved = [{k: getattr(m, k) for k in keys} for m in bns]
    # the call updates copies: batch norm keeps its running-statistics tensors for the backward pass, so the
    # originals are put back as they were (not written over in place, which autograd would refuse)
    for m, d in zip(bns, saved):
        for k in keys:
            setattr(m, k, d[k].clone())
    try:
        yield net
    finally:
        for m, d in zip(bns, saved):
            for k in keys:
                setattr(m, k, d[k])


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """N(0, gain) for conv and linear weights, as pix2pix does. FiLM layers get N(0, 0.1): a code must change the
    output from the start, or the encoder gets no gradient and the KL term collapses the posterior to the prior."""
    for m in net.modules():
        if isinstance(m, nn.Linear) and _is_film(net, m):
            nn.init.normal_(m.weight, 0.0, 0.1)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            # under spectral norm ``weight`` is computed (original / sigma): initialise the stored original
            nn.init.normal_(_weight_parameter(m), 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net


def _weight_parameter(m: nn.Module) -> torch.Tensor:
    """The parameter a layer's ``weight`` is made from: itself, or the original of a parametrization."""
    if nn.utils.parametrize.is_parametrized(m, "weight"):
        return m.parametrizations.weight.original
    return m.weight


def _is_film(net, lin):
    return any(isinstance(m, FiLM) and m.lin is lin for m in net.modules())


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _sn(layer: nn.Module, on: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(layer) if on else layer
