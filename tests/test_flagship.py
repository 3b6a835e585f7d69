"""The flagship generator and the peers pix2pix / BicycleGAN: every mode trains, reloads and resumes exactly; the
objective's pieces (DiffAugment, R1, EMA, latent regression) against known answers; the peers' architectures as
their papers define them. 64 px (the multi-scale 70x70 PatchGAN needs it), width 4: a few seconds."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from test_smoke import Only
from test_training import ToyPairs

from frankenstein_utils.evaluation.measures import checkerboard_score
from frankenstein_utils.nets.flagship import FlagshipGenerator, NLayerDiscriminator
from frankenstein_utils.nets.peers import UNet
from frankenstein_utils.objectives import flagship  # the objective: it looks diff_augment up here
from frankenstein_utils.objectives.flagship_parts import diff_augment, ema_update, r1_penalty
from frankenstein_utils.study.ablation import ABLATIONS, preset
from frankenstein_utils.train.config import TrainConfig
from frankenstein_utils.train.trainer import Trainer, load_run

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
    """Plumbing: every mode trains, logs, checkpoints and reloads. What the flagship's losses compute is checked
    against their formulas by the ``test_flagship_step_*`` tests below."""
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


# ---- one flagship training step, traced: its losses against their formulas ------------------------------------------
def traced_step(t, augment=None, before_update=None, monkeypatch=None):
    """Run ``t.objective.step()`` once and record: the batches drawn (``batches``), G's calls (``g_calls``: phase,
    inputs, output), D's forward calls (``d_calls``: phase, input, list of logit maps), the loss tensors handed to
    the NaN guard (``checked``) and to each optimizer update (``updates``: names, loss), the returned log (``log``).
    Phase 0 = before D's update (D's step), 1 = after it (G's step). ``augment`` replaces DiffAugment (the policies
    it is called with go to ``policies``); ``before_update(rec, names, loss)`` runs before each update."""
    rec = SimpleNamespace(batches={}, g_calls=[], d_calls=[], checked=[], updates=[], policies=[])
    obj = t.objective
    nxt, chk, upd = t._next, t._check, obj._update

    def _next(name):
        rec.batches[name] = b = nxt(name)
        return b

    def _check(losses):
        rec.checked.append(dict(losses))
        return chk(losses)

    def _update(loss, names, frozen=()):
        if before_update is not None:
            before_update(rec, list(names), loss)
        rec.updates.append((list(names), loss))
        return upd(loss, names, frozen)

    t._next, t._check, obj._update = _next, _check, _update
    hooks = [t.nets["G"].register_forward_hook(lambda m, i, o: rec.g_calls.append((len(rec.updates), i, o))),
             t.nets["D"].register_forward_hook(lambda m, i, o: rec.d_calls.append((len(rec.updates), i[0], o)))]
    if augment is not None:
        monkeypatch.setattr(flagship, "diff_augment", lambda x, policy: (rec.policies.append(policy), augment(x))[1])
    try:
        rec.log = obj.step()
    finally:
        for h in hooks:
            h.remove()
        del t._next, t._check, obj._update
    rec.real = torch.cat([rec.batches["paired"]["image"], rec.batches["real"]["image"]])
    rec.fake = torch.cat([o for ph, _, o in rec.g_calls if ph == 0]).detach()
    return rec


def flagship_trainer(tmp_path, **kw):
    return Trainer(config("flagship", tmp_path, steps=1, **kw), streams())


def r1_reference(D, real):
    """R1 as the docstring defines it, one image at a time: E_i ||grad_{x_i} s(x_i)||^2, s = sum over scales of the
    image's mean logit."""
    sq = []
    for x in real:
        x = x[None].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(sum(o.mean() for o in D(x)), x, create_graph=True)
        sq.append(g.pow(2).sum())
    return torch.stack(sq).mean()


def test_flagship_step_r1_is_lazy_and_scaled(tmp_path):
    """Lazy R1 (StyleGAN2): on steps divisible by k = fs_r1_every, D's loss is d_real + d_fake + gamma/2 * k * R1 --
    value and gradient -- with R1 computed here independently on the step's reals; on the other steps no R1 at all.
    gamma 3, k 4: gamma/2*k = 6 differs from the unscaled 1, gamma/2 = 1.5, gamma = 3 and gamma*k = 12."""
    t = flagship_trainer(tmp_path, fs_r1=3.0, fs_r1_every=4, fs_diffaug="", spectral_norm=False)
    D = t.nets["D"]
    for m in D.modules():  # He-scale weights: at init_weights' scale R1 is ~1e-9, lost in float32 next to d_real
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, a=0.2)
    params = list(D.parameters())

    def before_update(rec, names, loss):
        if names != ["D"]:
            return
        parts = rec.checked[-1]  # the D step's loss terms, as handed to the NaN guard
        extra = loss - parts["d_real"] - parts["d_fake"]
        real = torch.cat([rec.batches["paired"]["image"], rec.batches["real"]["image"]])
        ref = 3.0 / 2 * 4 * r1_reference(D, real)  # D not yet updated (no spectral norm: no state either)
        grads = lambda y, **kw: [torch.zeros_like(p) if g is None else g for p, g in
                                 zip(params, torch.autograd.grad(y, params, allow_unused=True, **kw))]
        rec.r1 = dict(value=extra.item(), ref=ref.item(), logged=parts["r1"].item() if "r1" in parts else None,
                      grad=grads(extra, retain_graph=True), grad_ref=grads(ref))

    for step, lazy in ((0, True), (1, False), (4, True)):
        t.step = step
        rec = traced_step(t, before_update=before_update)
        got = rec.r1
        assert ("r1" in rec.log) == lazy
        if lazy:
            assert got["ref"] > 1e-2  # a penalty big enough to tell the scales apart
            assert got["logged"] == pytest.approx(got["ref"] / 6, rel=1e-4)
            assert got["value"] == pytest.approx(got["ref"], rel=1e-3)
            scale = max(float(r.abs().max()) for r in got["grad_ref"])
            assert scale > 0
            for g, r in zip(got["grad"], got["grad_ref"]):  # the penalty's gradient reaches D, scaled alike
                assert torch.allclose(g, r, rtol=1e-3, atol=1e-5 * scale)
        else:
            assert got["value"] == pytest.approx(0, abs=1e-6) and got["logged"] is None  # float32 rounding only
            assert all((g == 0).all() for g in got["grad"])


def test_flagship_step_diffaugment_on_everything_d_sees(tmp_path, monkeypatch):
    """DiffAugment on every image D's losses see: reals and fakes in D's step, fakes in G's (with the gradient to G
    kept), with the configured policy. A marker augmentation (x + 10) shows which D inputs were augmented."""
    t = flagship_trainer(tmp_path, fs_diffaug="translation")
    rec = traced_step(t, augment=lambda x: x + 10, monkeypatch=monkeypatch)
    assert rec.policies and set(rec.policies) == {"translation"}
    src = {0: [], 1: []}
    for phase, x, _ in rec.d_calls:
        assert (x > 8).all(), f"D's step {phase} got an image without DiffAugment"
        x = x - 10
        kind = "real" if torch.allclose(x, rec.real, atol=1e-5) else "fake" if torch.allclose(x, rec.fake, atol=1e-5) \
            else "?"
        src[phase].append((kind, x.requires_grad))
    assert ("real", False) in src[0] and ("fake", False) in src[0]  # D's step: reals, detached fakes
    assert src[1] == [("fake", True)]  # G's step: the fakes, gradient to G kept
    assert "r1" in rec.log and len(src[0]) == 3  # and R1 on augmented reals


def d_outputs(rec, phase, target):
    """D's logit maps of the call in ``phase`` whose input is ``target``."""
    (out,) = [o for ph, x, o in rec.d_calls if ph == phase and torch.equal(x.detach(), target)]
    return [o.detach().float() for o in out]


@pytest.mark.parametrize("gan", ["hinge", "log"])
def test_flagship_step_gan_losses_match_their_formulas(tmp_path, gan):
    """On the step's own D outputs (scales averaged): hinge D = mean relu(1 - D(real)) + mean relu(1 + D(fake)),
    G = -mean D(fake); non-saturating D = softplus(-D(real)) + softplus(D(fake)), G = softplus(-D(fake)). G's term
    uses D after its update, on the fakes with G's gradient; G's update gets gan_weight * g_adv when it is alone."""
    t = flagship_trainer(tmp_path, gan_loss=gan, fs_diffaug="", gan_weight=0.5, l1_weight=0.0, kl_weight=0.0,
                         feature_matching=0.0, latent_weight=0.0)
    t.step = 1  # no R1
    rec = traced_step(t)
    o_real, o_fake, o_g = d_outputs(rec, 0, rec.real), d_outputs(rec, 0, rec.fake), d_outputs(rec, 1, rec.fake)
    scales = lambda f, os: float(sum(f(o).mean() for o in os) / len(os))
    if gan == "hinge":
        want = dict(d_real=scales(lambda o: F.relu(1 - o), o_real), d_fake=scales(lambda o: F.relu(1 + o), o_fake),
                    g_adv=scales(lambda o: -o, o_g))
    else:
        want = dict(d_real=scales(lambda o: F.softplus(-o), o_real), d_fake=scales(F.softplus, o_fake),
                    g_adv=scales(lambda o: F.softplus(-o), o_g))
    for k, v in want.items():
        assert rec.log[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    ((_, g_loss),) = [u for u in rec.updates if "G" in u[0]]
    assert g_loss.item() == pytest.approx(0.5 * want["g_adv"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("gan", ["hinge", "log"])
def test_flagship_step_generator_raises_d_of_its_fakes(tmp_path, gan):
    """With the adversarial term alone, G's update raises the (just updated, then fixed) D's mean logit on the
    step's own fakes: G(x, z) with the same inputs, before and after the step."""
    t = flagship_trainer(tmp_path, gan_loss=gan, fs_diffaug="", l1_weight=0.0, kl_weight=0.0, feature_matching=0.0,
                         latent_weight=0.0)
    G0 = copy.deepcopy(t.nets["G"])
    rec = traced_step(t)
    inputs = [tuple(a.detach() for a in i) for ph, i, _ in rec.g_calls if ph == 0]
    D = t.nets["D"].eval()  # spectral norm: eval uses the vectors G's step used, without another power iteration
    with torch.no_grad():
        score = lambda G: float(sum(o.mean() for o in D(torch.cat([G(*i) for i in inputs]))))
        before, after = score(G0), score(t.nets["G"])
    assert torch.equal(torch.cat([G0(*i) for i in inputs]).detach(), rec.fake)  # the same fakes the step made
    assert after > before


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


@pytest.mark.parametrize("name", ["flagship"])
def test_latent_regression_leaves_the_encoders_batch_statistics_to_photos(tmp_path, name):
    """The encoder also encodes fakes (latent regression); its BatchNorm running statistics must only take in the
    photos it encodes at test time (they took in every fake batch too: two batches per step)."""
    import copy

    t = Trainer(config(name, tmp_path, steps=2), streams())
    E0 = copy.deepcopy(t.nets["E"])
    photos = []
    nxt = t._next

    def spy(stream):
        b = nxt(stream)
        if stream == "paired":
            photos.append(b["image"].clone())
        return b
    t._next = spy
    t.fit(progress=False)
    bns = [m for m in t.nets["E"].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(int(m.num_batches_tracked) == 2 for m in bns)  # one photo batch per step
    E0.train()
    with torch.no_grad():
        for p in photos:  # the statistics of the photos alone (the weights change too little to matter here)
            E0(p)
    for a, b in zip(bns, [m for m in E0.modules() if isinstance(m, torch.nn.BatchNorm2d)]):
        torch.testing.assert_close(a.running_var, b.running_var, rtol=0.05, atol=1e-4)


def test_init_from_keeps_the_ema_warm_up_of_the_source(tmp_path, monkeypatch):
    """``--init-from`` starts the step count at 0; the EMA's warm-up must count the source's steps too (it restarted
    at decay 0.1, throwing the settled average away on the first steps of a fine-tune)."""
    from frankenstein_utils.objectives import flagship as FS  # the objective looks ema_update up here

    src = Trainer(config("flagship", tmp_path / "src", steps=3), streams())
    src.fit(progress=False)
    decays = []
    real = FS.ema_update
    monkeypatch.setattr(FS, "ema_update", lambda ema, net, decay: (decays.append(decay), real(ema, net, decay)))
    ft = Trainer(config("flagship", tmp_path / "ft", steps=1, init_from=str(tmp_path / "src" / "checkpoint.pt")),
                 streams())
    ft.fit(progress=False)
    assert decays == [pytest.approx((1 + 3) / (10 + 3))]
    fresh = Trainer(config("flagship", tmp_path / "fresh", steps=1), streams())
    fresh.fit(progress=False)
    assert decays[-1] == pytest.approx(1 / 10)  # a new run warms up from the start


@pytest.mark.parametrize("name", MODES)
def test_amp_and_channels_last_reach_the_peers(tmp_path, monkeypatch, name):
    """``--amp`` and ``--channels-last`` did nothing for the flagship, pix2pix and BicycleGAN (issue 23): their steps
    ran outside the trainer's autocast and their networks kept the NCHW layout. This CPU build has no CUDA, so the
    trainer's two switches are turned on here for the CPU (bf16 autocast, NHWC): every network of the mode must take
    the layout, and G's forward passes in the step must run in bf16, while losses stay float32 and finite."""
    monkeypatch.setattr(Trainer, "_autocast", lambda self: torch.autocast("cpu", dtype=torch.bfloat16))
    monkeypatch.setattr(Trainer, "memory_format", property(lambda self: torch.channels_last))
    t = Trainer(config(name, tmp_path, steps=1), streams())
    convs = [m.weight for net in t.nets.values() for m in net.modules()
             if isinstance(m, torch.nn.Conv2d) and m.weight.dim() == 4 and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    dtypes, d_dtypes = [], []
    hooks = [t.nets["G"].register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))]
    hooks += [m.register_forward_hook(lambda mod, inp, out: d_dtypes.append(out.dtype))
              for k in t.nets if k.startswith("D") for m in t.nets[k].modules() if isinstance(m, torch.nn.Conv2d)]
    log = t.objective.step()
    for h in hooks:
        h.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}, dtypes
    # every D call runs in bf16 too (D's step and G's), but the lazy R1 double backward, which stays float32
    r1 = name == "flagship" and "r1" in log
    assert d_dtypes and set(d_dtypes) == ({torch.bfloat16, torch.float32} if r1 else {torch.bfloat16}), set(d_dtypes)
    assert all(math.isfinite(v) for v in log.values()), log


def test_input_blur_is_a_gaussian_low_pass_of_the_input_before_everything_else():
    """``fs_input_blur`` = sigma: G sees its input convolved with a normalised Gaussian of that sigma (edge pixels
    repeated), computed here independently in numpy; at 0 the generator is unchanged. A hard staircase edge (what
    the rasterizer gives) comes out with a smaller largest step."""
    import numpy as np

    torch.manual_seed(0)
    sharp = FlagshipGenerator(2, 3, 4, 4, 32, 4, input_blur=0.0)
    soft = FlagshipGenerator(2, 3, 4, 4, 32, 4, input_blur=0.8)
    soft.load_state_dict(sharp.state_dict())  # the kernel is not part of the state dict
    x = torch.rand(2, 2, 32, 32) * 2 - 1
    x[:, :, 10:20, 5:15] = 1.0  # a hard-edged block
    r = 2
    g = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * 0.8 ** 2))
    g /= g.sum()
    xp = np.pad(x.numpy().astype(np.float64), ((0, 0), (0, 0), (r, r), (r, r)), mode="edge")
    want = np.zeros(x.shape)
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            want += g[i] * g[j] * xp[:, :, i:i + 32, j:j + 32]
    got = soft.low_pass(x)
    assert np.abs(got.numpy() - want).max() < 1e-5
    assert torch.equal(sharp.low_pass(x), x)
    z = torch.randn(2, 4)
    assert torch.allclose(soft(x, z), sharp(torch.from_numpy(want).float(), z), atol=1e-5)
    steps = lambda t: (t[:, :, :, 1:] - t[:, :, :, :-1]).abs().amax()
    assert steps(got) < 0.6 * steps(x)
    with pytest.raises(ValueError, match="input_blur"):
        FlagshipGenerator(2, 3, 4, 4, 32, 4, input_blur=float("nan"))
    for bad in (dict(mode="flagship", fs_input_blur=-1.0), dict(mode="l1", fs_input_blur=0.5)):
        with pytest.raises(ValueError, match="fs_input_blur"):
            TrainConfig(**bad)


def test_input_blur_survives_shipping(tmp_path):
    """A shipped flagship keeps its input blur: the setting is among the ones that rebuild its generator."""
    from frankenstein_utils.pretrained.shipped import generator_from_blob, shipped_blob
    from frankenstein_utils.render.rasterize import PoseJitter, RenderConfig

    t = Trainer(config("flagship", tmp_path, steps=1, fs_input_blur=0.7), streams())
    gen = generator_from_blob(shipped_blob(t, RenderConfig(resolution=64), PoseJitter(), {}), tmp_path / "x.safetensors")
    assert gen.cfg.fs_input_blur == 0.7 and gen.nets["G"].input_blur == 0.7


def test_ablation_study_scores_every_run_at_one_n_on_kid(tmp_path):
    """flagship.run_study (the card's ablations and peers) scores at one stated N with KID on descriptors against
    every test photo (issue 20: face-FD at 128 was mostly small-sample bias), resumes without retraining, and its
    command line has --help and refuses an unknown run in one line."""
    import json
    import subprocess
    import sys

    from frankenstein_utils.study import ablation

    common = dict(ablation.STUDY_SMALL, batch_size=4, checkpoint_every=0, sample_every=0)
    res = ablation.run_study(tmp_path / "study", ["flagship", "-R1"], steps=1, n_eval=6, cache_dir=tmp_path / "cache",
                      limit=200, **common)
    assert sorted(res) == ["-R1", "flagship"]
    for r in res.values():
        assert r["n"] == 6 and r["n_reference"] > 5 and r["steps"] == 1
        assert r["kid"] > 0 and r["kid_se"] >= 0 and 0 <= r["detection"] <= 1
        assert "face_fd" not in r  # the small-N measure is gone from the table
    assert res["-R1"]["final_losses"].get("r1", 0.0) == 0.0 < res["flagship"]["final_losses"]["r1"]
    on_disk = json.loads((tmp_path / "study" / "results.json").read_text())
    assert on_disk["flagship"]["kid"] == res["flagship"]["kid"]
    again = ablation.run_study(tmp_path / "study", ["flagship"], steps=1, n_eval=6, cache_dir=tmp_path / "cache",
                        limit=200, **common)  # finished: read back, not retrained
    assert again["flagship"]["wall_s"] == res["flagship"]["wall_s"]
    cli = [sys.executable, "-m", "frankenstein_utils.study.ablation"]
    assert "--n-eval" in subprocess.run([*cli, "--help"], capture_output=True, text=True).stdout
    bad = subprocess.run([*cli, str(tmp_path / "x"), "--names", "no such run"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown run" in bad.stderr.strip().splitlines()[-1]


def test_linear_lr_decay_sets_every_optimizer_per_step_and_resumes_exactly(tmp_path):
    """pix2pix's schedule: constant to lr_decay_from, linear to 0 at lr_decay_to. Each optimizer's rate during
    each step (its own rate: D's d_lr) follows it, and a run stopped inside the decay and resumed equals the
    uninterrupted one, bit for bit."""
    from frankenstein_utils.train.config import lr_schedule_factor

    assert [lr_schedule_factor(TrainConfig(lr_decay_from=100, lr_decay_to=300), s)
            for s in (0, 100, 150, 200, 299, 300, 400)] == [1, 1, 0.75, 0.5, 0.005, 0, 0]
    assert lr_schedule_factor(TrainConfig(), 10 ** 6) == 1
    with pytest.raises(ValueError, match="lr_decay_to"):
        TrainConfig(lr_decay_from=5)
    with pytest.raises(ValueError, match="must be after lr_decay_from"):
        TrainConfig(lr_decay_from=5, lr_decay_to=5)
    sched = dict(lr=1e-3, d_lr=4e-4, lr_decay_from=1, lr_decay_to=5, fs_r1_every=1)
    seen = []  # (optimizer, rate) at each optimizer step
    t = Trainer(config("flagship", tmp_path / "full", steps=4, **sched), streams())
    for name, opt in t.opts.items():
        opt.register_step_pre_hook(lambda o, a, k, name=name: seen.append((name, o.param_groups[0]["lr"])))
    t.fit(progress=False)
    want = {"G": 1e-3, "E": 1e-3, "D": 4e-4}
    assert {n for n, _ in seen} == set(want)
    for name in want:
        rates = [r for n, r in seen if n == name]
        per_step = len(rates) // 4
        assert per_step >= 1 and len(rates) == 4 * per_step, (name, rates)
        for s, f in enumerate((1.0, 1.0, 0.75, 0.5)):
            assert rates[s * per_step:(s + 1) * per_step] == [pytest.approx(want[name] * f)] * per_step, name
    part = Trainer(config("flagship", tmp_path / "part", steps=2, **sched), streams())
    part.fit(progress=False)
    rest = Trainer(config("flagship", tmp_path / "part", steps=4, **sched), streams())
    assert rest.step == 2
    rest.fit(progress=False)
    assert rest.history == t.history
    for k in t.nets:
        for a, b in zip(t.nets[k].state_dict().values(), rest.nets[k].state_dict().values()):
            assert torch.equal(a, b), k
