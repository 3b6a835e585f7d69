"""Training objectives, one small function or module each, with its formula.

Images are in [-1, 1]; masks are {0, 1} of shape (B, 1, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dilate_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Binary dilation by a (2p+1) x (2p+1) square: the face plus a margin (hair line, jaw edge)."""
    if pixels <= 0:
        return mask
    return F.max_pool2d(mask, 2 * pixels + 1, stride=1, padding=pixels)


def l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L1 to a paired target.  L = sum_i m_i |pred_i - target_i| / sum_i m_i  (mean over all pixels if no mask).

    With a mask only the face counts: the background cannot be predicted from depth."""
    if mask is None:
        return (pred - target).abs().mean()
    m = mask.expand_as(pred)
    return ((pred - target).abs() * m).sum() / m.sum().clamp_min(1.0)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per sample, averaged over the batch:
    KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(dim=1).mean()


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None):
    """z = mu + sigma * eps, eps ~ N(0, I) (the VAE reparameterisation trick)."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


# ---- adversarial objectives -----------------------------------------------------------------------------------------
GAN_MODES = ("log", "lsgan", "wgan", "hinge")


class GANLoss(torch.nn.Module):
    """One adversarial loss, chosen by name; D outputs raw logits/scores x. Call ``loss(x, real, for_d)``.

    - ``log`` (Goodfellow et al. 2014, non-saturating G): BCE with logits against 1 (real) or 0 (fake):
      D: -log s(x_r) - log(1 - s(x_f));  G: -log s(x_f).
    - ``lsgan`` (Mao et al. 2017): D: (x_r - 1)^2 + x_f^2;  G: (x_f - 1)^2.
    - ``wgan`` (Arjovsky et al. 2017), critic scores: D: -x_r + x_f;  G: -x_f. Needs a Lipschitz critic: weight
      clipping (``clip_weights``) or the gradient penalty (``gradient_penalty``).
    - ``hinge`` (Lim & Ye 2017; Miyato et al. 2018): D: relu(1 - x_r) + relu(1 + x_f);  G: -x_f.
    Each term is a mean over all outputs (patches or images); the caller adds the real and fake parts of D.
    """

    def __init__(self, mode: str):
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"unknown GAN loss {mode!r}; choose one of {GAN_MODES}")
        self.mode = mode

    def forward(self, x: torch.Tensor, real: bool, for_d: bool = True) -> torch.Tensor:
        x = x.float()
        if self.mode == "log":
            return F.binary_cross_entropy_with_logits(x, torch.full_like(x, 1.0 if real else 0.0))
        if self.mode == "lsgan":
            return ((x - (1.0 if real else 0.0)) ** 2).mean()
        if self.mode == "wgan":
            return -x.mean() if real else x.mean()
        # hinge
        if for_d:
            return F.relu(1 - x).mean() if real else F.relu(1 + x).mean()
        return -x.mean()  # the generator's hinge loss is the linear one


def gradient_penalty(D, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None,
                     eps: float = 1e-12) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad_x f(x_hat)||_2 - 1)^2], x_hat = a real + (1 - a) fake with
    a ~ U(0, 1) drawn per sample (not per pixel), one x_hat per fake (the reals cycled when there are fewer, as when
    an objective scores the fakes of paired and synthetic inputs together). ``eps`` inside the square root keeps a
    zero gradient finite.

    Convention: f(x) is the critic's score of one image as the loss sees it, the MEAN of D's outputs for that image
    (a PatchGAN gives one score per patch; ``GANLoss`` averages them). Taking the gradient of their sum instead would
    make the penalty P^2 times stronger for P patches (196^2 at 64 px) than the loss it constrains."""
    if len(real) != len(fake):  # e.g. fakes of paired and synthetic inputs (2B) against B reals: cycle the reals
        real = real[torch.arange(len(fake), device=real.device) % len(real)]
    a = torch.rand(fake.shape[0], 1, 1, 1, generator=generator).to(real.device, real.dtype)
    x_hat = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    out = D(x_hat).float()
    score = out.reshape(len(out), -1).mean(1)  # (B,) one score per image
    # the samples are independent, so the gradient of the sum gives each sample's own gradient
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    norm = torch.sqrt(grad.flatten(1).pow(2).sum(1) + eps)
    return ((norm - 1) ** 2).mean()


@torch.no_grad()
def clip_weights(D, c: float = 0.01) -> None:
    """WGAN weight clipping: every parameter of the critic into [-c, c] after each critic step."""
    for p in D.parameters():
        p.clamp_(-c, c)


def wgan_critic_steps(gen_step: int, n_critic: int = 5, burst: int = 100, burst_until: int = 25,
                      burst_every: int = 500) -> int:
    """The original WGAN critic schedule: ``burst`` critic steps per generator step for the first ``burst_until``
    generator steps and every ``burst_every``-th one after that, otherwise ``n_critic``."""
    return burst if gen_step < burst_until or gen_step % burst_every == 0 else n_critic


def feature_matching_loss(real_feats: list, fake_feats: list) -> torch.Tensor:
    """Feature matching (Salimans et al. 2016): sum over D's layers of || mean_batch f(real) - mean_batch f(fake) ||_1
    (per-element mean), pulling the statistics of fakes toward those of real images."""
    return sum((r.detach().float().mean(0) - f.float().mean(0)).abs().mean() for r, f in zip(real_feats, fake_feats))


def bottleneck_kl(h: torch.Tensor) -> torch.Tensor:
    """VAE-style penalty pulling the generator's bottleneck toward N(0, I): per channel c, with mean m_c and
    variance v_c of the activations over batch and space, KL(N(m_c, v_c) || N(0, 1)) = (m_c^2 + v_c - log v_c - 1)/2,
    averaged over channels."""
    m = h.mean(dim=(0, 2, 3))
    v = h.var(dim=(0, 2, 3), unbiased=False).clamp_min(1e-6)
    return 0.5 * (m.pow(2) + v - v.log() - 1).mean()
