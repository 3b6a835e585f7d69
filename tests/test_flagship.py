"""The flagship generator and the peers pix2pix / BicycleGAN: every mode trains, reloads and resumes exactly; the
objective's pieces (DiffAugment, R1, EMA, latent regression) against known answers; the peers' architectures as
their papers define them. 64 px (the multi-scale 70x70 PatchGAN needs it), width 4: a few seconds."""
import math

import pytest
import torch

from frankenstein_utils.flagship import (ABLATIONS, FlagshipGenerator, NLayerDiscriminator, UNet, checkerboard_score,
                                         diff_augment, ema_update, preset, r1_penalty)
from frankenstein_utils.training import TrainConfig, Trainer, load_run
from test_smoke import Only
from test_training import ToyPairs

MODES = ("flagship", "pix2pix", "bicyclegan")
SMALL = dict(image_size=64, width=4, d_width=4, encoder_width=4, z_dim=4, batch_size=4, log_every=1, sample_every=2,
             checkpoint_every=2, fs_r1_every=2)


def streams():
    return {"paired": ToyPairs(16, 64), "synthetic": Only(ToyPairs(16, 64), ("depth", "mask", "index")),
            "real": Only(ToyPairs(16, 64), ("image", "index"))}


def config(name, out, **kw):
    return TrainConfig(**preset(name, out_dir=str(out), **{**SMALL, **kw}))


@pytest.mark.parametrize("name", MODES)
def test_mode_trains_reloads_and_generates(tmp_path, name):
    t = Trainer(config(name, tmp_path, steps=3), streams())
    hist = t.fit(progress=False)
    assert t.step == 3 and all(math.isfinite(v) for row in hist for v in row.values())
    if name == "flagship":  # every term of the objective is logged, R1 on the lazy steps (0 and 2)
        assert {"d_real", "d_fake", "g_adv", "l1", "kl", "feature_matching", "latent"} <= set(hist[0])
        assert "r1" in hist[0] and "r1" not in hist[1] and "r1" in hist[2]
        # the EMA generator is a different, slower-moving copy, and generate() uses it
        assert any(not torch.equal(a, b) for a, b in zip(t.nets["G"].parameters(), t.nets["G_ema"].parameters()))
    run = load_run(tmp_path / "checkpoint.pt")
    d, m = torch.rand(2, 1, 64, 64), torch.ones(2, 1, 64, 64)
    out = run.generate(d, m)
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()
    assert torch.equal(out, t.generate(d, m))  # the reloaded run is the trained one
    if name == "flagship":
        G = run.nets["G_ema"]
        assert torch.equal(out, G(d * 2 - 1, torch.zeros(2, 4)))


@pytest.mark.parametrize("name", MODES)
def test_resume_is_exact(tmp_path, name):
    full = Trainer(config(name, tmp_path / "a", steps=3), streams())
    full.fit(progress=False)
    part = Trainer(config(name, tmp_path / "b", steps=2), streams())
    part.fit(progress=False)
    rest = Trainer(config(name, tmp_path / "b", steps=3), streams())
    assert rest.step == 2
    rest.fit(progress=False)
    assert rest.history == full.history
    for k in full.nets:  # EMA, spectral-norm vectors and batch-norm statistics included
        for a, b in zip(full.nets[k].state_dict().values(), rest.nets[k].state_dict().values()):
            assert torch.equal(a, b), k


@pytest.mark.parametrize("name", ["flagship", "bicyclegan"])
def test_latent_regression_trains_the_generator_alone(tmp_path, name):
    """With every other generator term weighted 0, a step changes G and leaves E exactly as it was (BicycleGAN:
    the latent L1 must not move the encoder)."""
    zero = dict(l1_weight=0.0, kl_weight=0.0, latent_weight=1.0)
    if name == "flagship":
        zero.update(gan_weight=0.0, feature_matching=0.0)
    t = Trainer(config(name, tmp_path, steps=1, **zero), streams())
    if name == "bicyclegan":  # its adversarial terms have no weight option: remove them
        t.objective.gan = lambda x, real, for_d: (x * 0).mean()
    snap = {k: [p.detach().clone() for p in t.nets[k].parameters()] for k in ("G", "E")}
    t.objective.step()
    moved = lambda k: any(not torch.equal(a, b) for a, b in zip(snap[k], t.nets[k].parameters()))
    assert moved("G") and not moved("E")


def test_diff_augment():
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    assert torch.equal(diff_augment(x, ""), x)
    torch.manual_seed(0)
    t = diff_augment(x, "translation")
    # each output is its input shifted by at most 2 px (1/8 of 16) with 0 fill: find the shift, compare exactly
    for i in range(len(x)):
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = torch.zeros_like(x[i])
                ys, xs = slice(max(0, -dy), 16 - max(0, dy)), slice(max(0, -dx), 16 - max(0, dx))
                yd, xd = slice(max(0, dy), 16 - max(0, -dy)), slice(max(0, dx), 16 - max(0, -dx))
                ref[:, ys, xs] = x[i][:, yd, xd]
                found |= torch.equal(ref, t[i])
        assert found
    c = diff_augment(x, "cutout")
    zeroed = (c == 0).all(1)  # (B, H, W)
    assert (zeroed.sum((1, 2)) == 64).all()  # one 8x8 square, half the size
    assert torch.equal(c[~zeroed[:, None].expand_as(c)], x[~zeroed[:, None].expand_as(x)])
    x.requires_grad_(True)
    diff_augment(x).sum().backward()  # differentiable: G gets gradients through it
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown DiffAugment"):
        diff_augment(x, "flip")


def test_r1_penalty_known_answer():
    """D = a 1x1 conv with weights w: s(x) = mean_hw sum_c w_c x_chw, so grad = w_c / HW per pixel and
    ||grad||^2 = |w|^2 / HW, whatever the input."""
    D = torch.nn.Conv2d(3, 1, 1, bias=False)
    w = torch.tensor([0.5, -1.0, 2.0])
    D.weight.data[:] = w.view(1, 3, 1, 1)
    r1 = r1_penalty(lambda x: [D(x)], torch.randn(5, 3, 8, 8))
    assert r1.item() == pytest.approx(float(w.pow(2).sum()) / 64, rel=1e-5)


def test_ema_update_known_answer():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    ema_update(a, b, 0.75)
    assert torch.allclose(a.weight, 0.75 * before + 0.25 * b.weight)


def test_flagship_generator_shape_and_options():
    """Bottleneck 4x4 at 64 px; every ablation option builds; z and the depth map both change the output."""
    G = FlagshipGenerator(width=4, z_dim=4, image_size=64, bottleneck=4).eval()
    sizes = []
    G.down[-1].register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    z = torch.randn(2, 4)
    y = G(x, z)
    assert sizes == [(4, 4)] and y.shape == (2, 3, 64, 64)
    assert not torch.allclose(y, G(x, torch.randn(2, 4)))
    assert not torch.allclose(y, G(x.flip(-1), z))
    for kw in ABLATIONS.values():
        TrainConfig(**preset("flagship", **SMALL, **kw))  # a valid configuration
    for up in ("resize", "transpose"):
        for mod in ("spade", "adain", "none"):
            assert FlagshipGenerator(width=4, z_dim=4, upsample=up, modulation=mod, bottleneck=16)(x, z).shape == y.shape
    with pytest.raises(ValueError, match="bottleneck"):
        FlagshipGenerator(image_size=64, bottleneck=5)


def test_pix2pix_unet_reaches_1x1_and_patchgan_sees_70px():
    G = UNet(1, 3, width=4, image_size=64)
    sizes = []
    for d in G.down:
        d.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    G(torch.rand(1, 1, 64, 64))
    assert sizes == [32, 16, 8, 4, 2, 1]  # one skip per downsampling, down to 1x1
    D = NLayerDiscriminator(3, width=4, n_layers=3, norm="none")
    x = torch.rand(1, 3, 128, 128, requires_grad=True)
    out = D(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = x.grad.abs().sum((0, 1, 3)).nonzero()
    assert int(rows.max() - rows.min() + 1) == 70  # the 70x70 PatchGAN


def test_checkerboard_score():
    """A 2-px checkerboard pattern scores high, a smooth image ~0."""
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    smooth = torch.sin(xx / 5.0)[None, None].expand(4, 3, -1, -1)
    board = smooth + 0.3 * ((yy + xx) % 2 * 2 - 1)[None, None]
    assert checkerboard_score(smooth) < 1e-3 < 0.05 < checkerboard_score(board)
