import math

import pytest
import torch

from frankenstein_utils.objectives.losses import (GANLoss, bottleneck_kl, clip_weights, feature_matching_loss,
                                                  gradient_penalty, kl_divergence, l1_loss, wgan_critic_steps)

X = torch.tensor([2.0, -1.0, 0.5])  # hand-made logits / critic scores


def sig(v):
    return 1 / (1 + math.exp(-v))


def test_log_gan_loss():
    L = GANLoss("log")
    assert L(X, True).item() == pytest.approx(sum(-math.log(sig(v)) for v in X.tolist()) / 3, rel=1e-6)
    assert L(X, False).item() == pytest.approx(sum(-math.log(1 - sig(v)) for v in X.tolist()) / 3, rel=1e-6)
    assert L(X, True, for_d=False).item() == L(X, True).item()  # non-saturating G: -log D(G(z))


def test_lsgan_loss():
    L = GANLoss("lsgan")
    assert L(X, True).item() == pytest.approx(((2 - 1) ** 2 + (-1 - 1) ** 2 + (0.5 - 1) ** 2) / 3)
    assert L(X, False).item() == pytest.approx((4 + 1 + 0.25) / 3)


def test_wgan_loss():
    L = GANLoss("wgan")
    assert L(X, True).item() == pytest.approx(-(2 - 1 + 0.5) / 3)
    assert L(X, False).item() == pytest.approx((2 - 1 + 0.5) / 3)
    assert L(X, True, for_d=False).item() == pytest.approx(-(1.5) / 3)


def test_hinge_loss():
    L = GANLoss("hinge")
    assert L(X, True, for_d=True).item() == pytest.approx((0 + 2 + 0.5) / 3)  # relu(1 - x)
    assert L(X, False, for_d=True).item() == pytest.approx((3 + 0 + 1.5) / 3)  # relu(1 + x)
    assert L(X, True, for_d=False).item() == pytest.approx(-(1.5) / 3)  # -x, not the D hinge
    with pytest.raises(ValueError, match="unknown GAN loss"):
        GANLoss("relativistic")


class Linear(torch.nn.Module):
    """D(x) = sum(w * x): its input gradient is w everywhere, so the gradient norm is ||w||."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1, keepdim=True)


def test_gradient_penalty_uses_the_gradient_norm():
    w = torch.full((1, 2, 2), 0.5)  # ||w|| = sqrt(4 * 0.25) = 1 -> penalty 0
    real, fake = torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2)
    assert gradient_penalty(Linear(w), real, fake).item() == pytest.approx(0.0, abs=1e-6)
    w2 = torch.full((1, 2, 2), 1.5)  # ||w|| = 3 -> (3 - 1)^2 = 4
    D = Linear(w2)
    gp = gradient_penalty(D, real, fake)
    assert gp.item() == pytest.approx(4.0, rel=1e-5)
    gp.backward()  # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    torch.testing.assert_close(D.w.grad, 2 * (3 - 1) * w2 / 3)
    zero = Linear(torch.zeros(1, 2, 2))
    assert math.isfinite(gradient_penalty(zero, real, fake).item())  # zero gradient: finite, = 1


def test_gradient_penalty_takes_the_score_the_loss_uses():
    """A PatchGAN-like critic that repeats one score over 14 x 14 patches: GANLoss (a mean over the patches) sees the
    same critic as the one-output version, so the penalty must be the same too (a sum would be 196^2 times larger)."""

    class Patches(Linear):
        def forward(self, x):
            return super().forward(x)[:, :, None, None].expand(-1, 1, 14, 14)

    w = torch.full((1, 2, 2), 1.5)  # ||w|| = 3
    real, fake = torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2)
    one, many = gradient_penalty(Linear(w), real, fake), gradient_penalty(Patches(w), real, fake)
    assert one.item() == pytest.approx(4.0, rel=1e-5) and many.item() == pytest.approx(4.0, rel=1e-5)
    wgan = GANLoss("wgan")
    assert wgan(Patches(w)(real), True).item() == pytest.approx(wgan(Linear(w)(real), True).item())


def test_gradient_penalty_interpolates_per_sample():
    class Spy(torch.nn.Module):
        def forward(self, x):
            self.seen = x.detach()
            return x.flatten(1).sum(1)

    spy = Spy()
    real, fake = torch.ones(4, 1, 3, 3), torch.zeros(4, 1, 3, 3)
    gradient_penalty(spy, real, fake)
    per_sample = spy.seen.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample))  # one alpha per sample
    assert per_sample[:, 0].unique().numel() == 4


def test_other_terms():
    p, t = torch.tensor([[[[1.0, -1.0]]]]), torch.tensor([[[[0.0, 1.0]]]])
    assert l1_loss(p, t).item() == pytest.approx(1.5)
    assert l1_loss(p, t, torch.tensor([[[[1.0, 0.0]]]])).item() == pytest.approx(1.0)
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)]])
    assert kl_divergence(mu, logvar).item() == pytest.approx(0.5 * (1 + 1 - 0 - 1) + 0.5 * (0 + 2 - math.log(2) - 1))
    fr = [torch.tensor([[1.0, 2.0], [3.0, 4.0]])]
    ff = [torch.tensor([[0.0, 0.0], [0.0, 0.0]])]
    assert feature_matching_loss(fr, ff).item() == pytest.approx((2 + 3) / 2)
    h = torch.randn(512, 4, 3, 3)
    assert bottleneck_kl(h).item() < 0.02 and bottleneck_kl(h * 3 + 2).item() > 1


def test_clipping_and_critic_schedule():
    D = torch.nn.Linear(3, 3)
    with torch.no_grad():
        D.weight.fill_(5)
    clip_weights(D, 0.01)
    assert D.weight.abs().max() <= 0.01 and D.bias.abs().max() <= 0.01
    assert [wgan_critic_steps(s) for s in (0, 24, 25, 26, 500, 501)] == [100, 100, 5, 5, 100, 5]


def test_gradient_penalty_pairs_every_fake_with_a_real_when_there_are_more_fakes():
    """Objectives that score the fakes of paired and synthetic inputs together hand 2B fakes and B reals (issue 23:
    l1+gan and cvae-gan with wgan-gp crashed). Critic D(x) = sum(x^2) / 2 has input gradient x itself, so the
    penalty is the mean of (||x_hat_i|| - 1)^2 with x_hat_i = a_i real_(i mod B) + (1 - a_i) fake_i."""

    class Square(torch.nn.Module):
        def forward(self, x):
            return (x * x).flatten(1).sum(1, keepdim=True) / 2

    real, fake = torch.rand(2, 1, 2, 2), torch.rand(4, 1, 2, 2) + 1
    gp = gradient_penalty(Square(), real, fake, generator=torch.Generator().manual_seed(3))
    a = torch.rand(4, 1, 1, 1, generator=torch.Generator().manual_seed(3))
    x_hat = a * real[[0, 1, 0, 1]] + (1 - a) * fake
    expect = ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert gp.item() == pytest.approx(expect.item(), rel=1e-5)
