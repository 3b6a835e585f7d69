"""Attribute buffers as a generator's input (frankenstein_utils/data/buffers.py): the sets training reads and the generator
the evaluation calls see the same faces the same way."""
import numpy as np
import pytest
import torch

from frankenstein_utils.data import buffers as B
from frankenstein_utils.train.config import TrainConfig


@pytest.fixture(scope="module")
def small(tmp_path_factory, face_model):
    """A 300-photo paired set (64 px) and the appearance model built from it, saved where train.py looks for it."""
    from frankenstein_utils.data.appearance_build import build_appearance, default_path
    from frankenstein_utils.data.pairs import PairedConfig, PairedFaceDataset
    from frankenstein_utils.facemodel.appearance import AppearanceConfig

    cache = tmp_path_factory.mktemp("cache")
    pcfg = PairedConfig(limit=300)
    paired = PairedFaceDataset("all", pcfg, cache_dir=cache, model=face_model, progress=False)
    cfg = AppearanceConfig(max_components=10, candidates=(5, 10), rounds=1, fill_iterations=10)
    app = build_appearance(cfg, paired=paired, model=face_model, progress=False)
    app.save(default_path("baked", cache, paired))
    train = PairedFaceDataset("train", pcfg, cache_dir=cache, model=face_model, progress=False)
    return {"cache": cache, "app": app, "train": train, "model": face_model}


def test_paired_buffers_are_each_photos_own_face_in_its_own_depth(small):
    train, app, model = small["train"], small["app"], small["model"]
    ds = B.paired_buffer_set(train, app, model, app.n_components, "colour,normal", small["cache"], progress=False)
    assert len(ds) == len(train) and ds.meta["k"] == app.n_components
    it, ref = ds[5], train[5]
    assert torch.equal(it["depth"], ref["depth"]) and torch.equal(it["image"], ref["image"])  # the pair unchanged
    # the colour buffer of photo j is its own projected appearance: nearer (in the face) to photo j than to others
    n = 24
    mask = torch.stack([ds[i]["mask"] for i in range(n)])
    colour = torch.stack([ds[i]["buffers"][:3] for i in range(n)])
    photo = (torch.stack([ds[i]["image"] for i in range(n)]) + 1) / 2
    mean_c = (colour * mask).sum((2, 3)) / mask.sum((2, 3))
    mean_p = (photo * mask).sum((2, 3)) / mask.sum((2, 3))
    dist = torch.cdist(mean_c, mean_p)
    assert (dist.argmin(1) == torch.arange(n)).float().mean() > 0.5  # misaligned rows: about 1 / 24
    # normals as (n + 1) / 2: facing the viewer inside the face, x growing from the face's right to its left
    normal = torch.stack([ds[i]["buffers"][3:] for i in range(n)]) * 2 - 1
    m = mask[:, 0] > 0
    assert (normal[:, 2][m] > 0).float().mean() > 0.95
    cols = torch.arange(64).float()
    x_left = (normal[:, 0] * m * (cols < 26)).sum() / (m * (cols < 26)).sum()
    x_right = (normal[:, 0] * m * (cols > 38)).sum() / (m * (cols > 38)).sum()
    assert x_left < -0.1 < 0.1 < x_right
    # the cache is read back, not rebuilt
    again = B.paired_buffer_set(train, app, model, app.n_components, "colour,normal", small["cache"], progress=False)
    assert torch.equal(again.buffers, ds.buffers)


def test_paired_buffers_refuse_another_sets_appearance_model(small, face_model, tmp_path):
    from frankenstein_utils.data.pairs import PairedConfig, PairedFaceDataset

    other = PairedFaceDataset("train", PairedConfig(limit=200), cache_dir=tmp_path, model=face_model, progress=False)
    with pytest.raises(ValueError, match="another paired set"):
        B.paired_buffer_set(other, small["app"], face_model, 3, "colour", tmp_path, progress=False)
    with pytest.raises(ValueError, match="SH-lit"):
        B.paired_buffer_set(small["train"], small["app"], face_model, 3, "albedo", tmp_path, progress=False)


def test_synthetic_buffers_span_the_explorers_range_and_are_seeded(small):
    app, model = small["app"], small["model"]
    ds = B.synthetic_buffer_set(40, app, model, 5, "colour", seed=3, extended=0.5, progress=False)
    c, p = ds.params["coeffs"], ds.params["poses"]
    ext, rest = slice(0, 20), slice(20, 40)
    assert c[ext].abs().max(1).values.min() < 3.5 and c[ext].abs().max() > 2.5  # one component far out
    assert 15 < p[ext, 0].abs().max() <= 30 and (p[ext, 1:4] == torch.tensor([0.0, 0.0, 1.0])).all()  # turned
    assert (p[rest, 1:3] != 0).any()  # the other rows: the fitted photos' poses
    assert ds[0]["buffers"].shape == (3, 64, 64) and ds[0]["mask"].sum() > 300
    again = B.synthetic_buffer_set(40, app, model, 5, "colour", seed=3, extended=0.5, progress=False)
    assert torch.equal(again.buffers, ds.buffers) and torch.equal(again.depth, ds.depth)
    other = B.synthetic_buffer_set(40, app, model, 5, "colour", seed=4, extended=0.5, progress=False)
    assert not torch.equal(other.buffers, ds.buffers)


def test_first_k_coefficients_do_not_depend_on_the_codes_beyond_k(small):
    app = small["app"]
    K, k = app.n_components, 3
    shape = torch.randn(6, 15)
    z = torch.randn(6, K)
    z2 = z.clone()
    z2[:, k:] = torch.randn(6, K - k)
    full, full2 = app.coefficients(z, "from-shape", shape), app.coefficients(z2, "from-shape", shape)
    torch.testing.assert_close(full[:, :k], full2[:, :k])  # lower-triangular residual: truncation is exact
    torch.testing.assert_close(B.truncated_coefficients(app, z, shape, "from-shape", k), full[:, :k])
    assert not torch.allclose(full[:, k:], full2[:, k:])


class _Recorder:
    """A stand-in network that records what it is given and returns its colour buffer as the image."""

    def __init__(self, cfg):
        self.cfg, self.calls = cfg, []

    def generate(self, depth, mask, image=None, z=None, buffers=None):
        self.calls.append({"depth": depth, "z": z, "buffers": buffers})
        return buffers[:, :3] * 2 - 1


def test_raw_render_at_k_shows_the_colour_a_buffers_generator_reading_k_is_given(small):
    """``RawRender(k=...)`` (the input realism ``buffers_report truncation`` scores) renders the face with exactly the
    appearance a buffers generator reading k components gets: the same faces and codes through ``BufferGenerator``
    with a stand-in network that returns its colour buffer agree inside the face to the buffers' 8-bit rounding."""
    from frankenstein_utils.facemodel.appearance_render import RawRender

    app, model = small["app"], small["model"]
    K, k, n = app.n_components, 3, 6
    syn = B.synthetic_buffer_set(n, app, model, k, "colour", seed=2, extended=0.0, progress=False)
    params = {m: syn.params[m] for m in ("coeffs", "poses", "expressions")}
    z = B.normal(n, K, generator=torch.Generator().manual_seed(5))
    f = B.BufferGenerator(_Recorder(TrainConfig(mode="flagship", buffers="colour", appearance_k=k, z_dim=8)), model,
                          app, app.render_config())
    through_net = f(None, None, torch.cat([z[:, :k], torch.zeros(n, 8)], 1), params=params)
    depth, _ = f.buffers(params, z[:, :k])
    inside = (depth > 0).expand(-1, 3, -1, -1)
    raw_k = RawRender(model, app, app.render_config(), k=k)(None, None, z, params)
    raw_all = RawRender(model, app, app.render_config())(None, None, z, params)
    assert (raw_k - through_net)[inside].abs().max() <= 1.01 / 255  # [-1, 1]: half an 8-bit level is 1 / 255
    assert (raw_all - through_net)[inside].abs().max() > 10 / 255  # the components beyond k do change the face
    assert torch.equal(raw_k[~inside], raw_all[~inside])  # the background is the mean photo either way
    torch.testing.assert_close(RawRender(model, app, app.render_config(), k=K)(None, None, z, params), raw_all)
    with pytest.raises(ValueError, match=f"k = {K + 1}: the appearance model has {K} components"):
        RawRender(model, app, app.render_config(), k=K + 1)


def test_buffer_generator_renders_what_training_saw_and_splits_its_code(small):
    app, model = small["app"], small["model"]
    k = 4
    syn = B.synthetic_buffer_set(6, app, model, k, "colour,normal", seed=1, extended=0.0, mode="free",
                                 progress=False)
    net = _Recorder(TrainConfig(mode="flagship", buffers="colour,normal", appearance_k=k, z_dim=8))
    f = B.BufferGenerator(net, model, app, app.render_config(), mode="free")
    assert f.z_dim == k + 8 and f.uses_face_params
    params = {n: syn.params[n] for n in ("coeffs", "poses", "expressions")}
    z = torch.cat([syn.params["appearance"], torch.randn(6, 8)], 1)  # free: the code is the coefficients
    depth = torch.stack([syn[i]["depth"] for i in range(6)])
    f(depth, (depth > 0).float(), z, params=params)
    call = net.calls[-1]
    # the same 8-bit buffers and 16-bit depth as the training set of these faces
    torch.testing.assert_close(call["buffers"], torch.stack([syn[i]["buffers"] for i in range(6)]), atol=0, rtol=0)
    torch.testing.assert_close(call["depth"], depth, atol=0, rtol=0)
    torch.testing.assert_close(call["z"], z[:, k:])
    z2 = z.clone()
    z2[:, k:] = torch.randn(6, 8)  # the network's code moves, the appearance does not
    f(depth, (depth > 0).float(), z2, params=params)
    assert torch.equal(net.calls[-1]["buffers"], call["buffers"])
    z3 = z.clone()
    z3[:, 0] += 2.0
    f(depth, (depth > 0).float(), z3, params=params)
    assert not torch.equal(net.calls[-1]["buffers"], call["buffers"])
    # faces without poses are frontal and neutral (the evaluation's shape-sensitivity set): this crashed notebook 04
    from frankenstein_utils.evaluation.context import face_params
    from frankenstein_utils.facemodel.model import render_faces

    frontal, _ = render_faces(model, syn.params["coeffs"], app.render_config())
    f(frontal, None, z, params=face_params(syn.params["coeffs"]))
    assert (net.calls[-1]["depth"][:, 0] - frontal).abs().max() <= 1 / B.DEPTH_SCALE


def test_supersampled_buffers_anti_alias_the_edge_everywhere_a_generator_reads_them(small):
    """buffers_supersample s: rendered at s x the size and averaged over s x s blocks. The point-sampled edge is a
    staircase: every face pixel holds depth >= fg_floor and its full colour; anti-aliased, a pixel the face covers
    in part holds coverage x value. Training sets and BufferGenerator must render it the same way."""
    app, model, train = small["app"], small["model"], small["train"]
    render = app.render_config()
    syn1 = B.synthetic_buffer_set(8, app, model, 4, "colour,normal", seed=2, extended=0.0, progress=False)
    syn2 = B.synthetic_buffer_set(8, app, model, 4, "colour,normal", seed=2, extended=0.0, progress=False,
                                  supersample=2)
    assert syn2.meta["supersample"] == 2 and "supersample" not in syn1.meta
    d1, d2 = syn1.depth.float() / B.DEPTH_SCALE, syn2.depth.float() / B.DEPTH_SCALE
    F = torch.nn.functional

    def edge_and_inner(ds):
        m = (ds.depth > 0).float()[:, None]
        return (m > 0) & (F.max_pool2d(1 - m, 3, 1, 1) > 0), -F.max_pool2d(-m, 7, 1, 3) > 0

    def edge_share(ds, values):
        """Mean over the mask's edge pixels of ``values`` (B, 1, S, S) relative to the face's inside."""
        edge, inner = edge_and_inner(ds)
        inside = (values * inner).sum((2, 3), keepdim=True) / inner.sum((2, 3), keepdim=True)
        return float((values / inside)[edge].mean())

    colour = lambda ds: ds.buffers[:, :3].float().mean(1, keepdim=True) / 255
    # point-sampled, an edge pixel holds the face's full colour and depth (measured 0.83 of the inside's colour:
    # the baked light is darker at the sides); anti-aliased, about half the pixel is face (measured 0.60 at s = 2,
    # 0.50 at s = 4). A nearest-pixel downsampling keeps the first.
    assert edge_share(syn2, colour(syn2)) < 0.85 * edge_share(syn1, colour(syn1))
    assert edge_share(syn2, d2[:, None]) < 0.85 * edge_share(syn1, d1[:, None])
    # the mask holds every pixel the face touches: a superset of the point-sampled one
    assert ((d1 > 0) & ~(d2 > 0)).sum() == 0 and (d2 > 0).sum() > (d1 > 0).sum()
    # inside, the averaged values stay those of the face (no darkening away from the edge)
    _, inner = edge_and_inner(syn1)
    assert (colour(syn1) - colour(syn2)).abs()[inner].mean() < 0.03
    # the generator of the evaluation renders exactly what the training set stores
    net = _Recorder(TrainConfig(mode="flagship", buffers="colour,normal", appearance_k=4, z_dim=8,
                                buffers_supersample=2))
    f = B.BufferGenerator(net, model, app, render)
    params = {n: syn2.params[n] for n in ("coeffs", "poses", "expressions")}
    z = torch.cat([B.normal(8, app.n_components, generator=torch.Generator().manual_seed(0))[:, :0],
                   torch.zeros(8, 4 + 8)], 1)
    a = B.truncated_coefficients(app, z[:, :4], params["coeffs"], "from-shape", 4)
    want = B.render_buffers(model, app, params["coeffs"], a, render, params["poses"], params["expressions"], None,
                            ["colour", "normal"], supersample=2)
    f(d2[:, None], None, z, params=params)
    torch.testing.assert_close(net.calls[-1]["buffers"], want["buffers"], atol=0, rtol=0)
    torch.testing.assert_close(net.calls[-1]["depth"], want["depth"], atol=0, rtol=0)
    # the paired set renders its depth from the fit too (the paired set's own depth is point-sampled), cached apart
    p1 = B.paired_buffer_set(train, app, model, 4, "colour", small["cache"], progress=False)
    p2 = B.paired_buffer_set(train, app, model, 4, "colour", small["cache"], progress=False, supersample=2)
    assert torch.equal(p1.depth, train.depth.to(torch.int32)) and not torch.equal(p2.depth, p1.depth)
    assert p2.meta["supersample"] == 2
    again = B.paired_buffer_set(train, app, model, 4, "colour", small["cache"], progress=False, supersample=2)
    assert torch.equal(again.depth, p2.depth) and torch.equal(again.buffers, p2.buffers)
    assert edge_share(p2, p2.depth.float()[:, None]) < 0.85 * edge_share(p1, p1.depth.float()[:, None])
    # a cache that lost its depth (damaged, or written by another version) is refused in one line, not a KeyError
    cached = next(p for p in small["cache"].glob("buffers_paired_*.npz") if "depth" in np.load(p).files)
    np.savez(cached, buffers=np.load(cached)["buffers"])
    with pytest.raises(ValueError, match=f"{cached.name}: a paired buffer cache without buffers and depth"):
        B.paired_buffer_set(train, app, model, 4, "colour", small["cache"], progress=False, supersample=2)
    cached.unlink()
    with pytest.raises(ValueError, match="buffers_supersample"):
        TrainConfig(mode="flagship", buffers="", buffers_supersample=2)
    with pytest.raises(ValueError, match="buffers_supersample"):
        TrainConfig(mode="flagship", buffers="colour", appearance_k=4, buffers_supersample=0)


def test_buffers_config_counts_channels_and_refuses_nonsense():
    assert TrainConfig(mode="flagship", buffers="colour,normal", appearance_k=10).in_channels == 7
    assert TrainConfig(mode="flagship", buffers="colour", appearance_k=10, mask_input=True).in_channels == 5
    assert TrainConfig(mode="flagship").in_channels == 1
    for bad in (dict(buffers="colour,colour", appearance_k=3), dict(buffers="albedo,texture", appearance_k=3),
                dict(buffers="colour", appearance_k=0), dict(mode="gan", buffers="colour", appearance_k=3)):
        with pytest.raises(ValueError):
            TrainConfig(**{"mode": "flagship", **bad})


@pytest.fixture(scope="module")
def tiny_run(small, tmp_path_factory):
    """A 2-step buffers run (colour and normals, 5 appearance components) on the small set, through the CLI."""
    from frankenstein_utils.train import cli as train

    out = tmp_path_factory.mktemp("run")
    rc = train.main(["--preset", "flagship", "--size", "64", "--limit", "300", "--width", "8", "--d-width", "8",
                     "--encoder-width", "8", "--batch-size", "4", "--steps", "2", "--n-synthetic", "12",
                     "--buffers", "colour,normal", "--appearance-k", "5", "--cache-dir", str(small["cache"]),
                     "--checkpoint-every", "1", "--snapshot-every", "2", "--sample-every", "2", "--device", "cpu",
                     "--out-dir", str(out)])
    assert rc == 0
    return out


def test_train_cli_trains_a_buffers_generator_that_reads_its_buffers(tiny_run):
    from frankenstein_utils.train.trainer import load_run

    out = tiny_run
    assert (out / "snapshots" / "step_000002.pt").exists()
    run = load_run(out / "checkpoint.pt")
    conv = run.cfg.input_convention["buffers"]
    assert conv["paired"]["k"] == 5 and conv["synthetic"]["buffers"] == ["colour", "normal"]
    assert run.nets["G"].head[0].in_channels == 7
    d = torch.zeros(2, 1, 64, 64)
    d[:, :, 20:44, 20:44] = 0.5
    b = torch.rand(2, 6, 64, 64)
    y1 = run.generate(d, (d > 0).float(), buffers=b)
    y2 = run.generate(d, (d > 0).float(), buffers=torch.rand(2, 6, 64, 64))
    assert not torch.allclose(y1, y2)  # the network reads the buffers
    with pytest.raises(ValueError, match="reads buffers"):
        run.generate(d, (d > 0).float())


def test_generate_gives_the_faces_the_evaluation_sees(small, tiny_run, tmp_path):
    """``generate --model <buffers run>`` renders each face's buffers as ``BufferGenerator`` does (first k
    components, normals, 8-bit buffers, 16-bit depth) and feeds the network the same code: the same 8-bit images."""
    from frankenstein_utils.apps.generate import GeneratedFaceDataset, main
    from frankenstein_utils.data.appearance_build import default_path
    from frankenstein_utils.io.draws import normal
    from frankenstein_utils.train.trainer import load_run

    app_path = default_path("baked", small["cache"], small["train"])
    out = tmp_path / "g"
    assert main(["--n", "5", "--out", str(out), "--model", str(tiny_run / "checkpoint.pt"), "--appearance", "free",
                 "--appearance-model", str(app_path), "--seed", "3"]) == 0
    ds = GeneratedFaceDataset(out)
    assert ds.manifest["model_reads"] == {"buffers": ["colour", "normal"], "appearance_components": 5}
    run = load_run(tiny_run / "checkpoint.pt")
    app = small["app"]
    g = torch.Generator().manual_seed(3 + 1)  # generate's draws: appearance codes, then the network's codes
    z_app = normal(5, app.n_components, generator=g)
    z_net = normal(5, run.cfg.z_dim, generator=g)
    f = B.BufferGenerator(run, small["model"], app, app.render_config(), mode="free")
    params = {"coeffs": ds.meta["coeffs"], "poses": ds.meta["poses"], "expressions": ds.meta["expressions"]}
    torch.testing.assert_close(ds.meta["appearance"], z_app[:, :5])  # the k components the network read
    img = f(torch.zeros(5, 1, 64, 64), None, torch.cat([z_app[:, :5], z_net], 1), params=params)
    mine = torch.round((img + 1) / 2 * 255)
    theirs = torch.stack([torch.round((ds[i]["image"] + 1) * 127.5) for i in range(5)])
    assert (mine - theirs).abs().max() <= 1  # 8-bit rounding of float differences at most


def test_apply_refuses_a_buffers_model_in_one_line(tiny_run, tmp_path, capsys):
    from frankenstein_utils.apps.apply import main as apply_main
    from frankenstein_utils.io.files import save_png

    save_png(tmp_path / "in" / "000000.png", (np.arange(64 * 64).reshape(64, 64) * 15).astype(np.uint16))
    rc = apply_main(["--model", str(tiny_run / "checkpoint.pt"), "--input", str(tmp_path / "in"), "--output",
                     str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "frankenstein_utils.apps.generate" in err


def test_explorer_appearance_sliders_drive_the_buffers_generator(small, tiny_run):
    from frankenstein_utils.apps.widgets import AppearancePanel, BufferGeneratorPanel, FaceExplorer
    from frankenstein_utils.pretrained import study_export
    from frankenstein_utils.train.trainer import load_run

    app, model = small["app"], small["model"]
    run = load_run(tiny_run / "checkpoint.pt")
    gen = study_export.from_run(run, app.render_config(), small["train"].pose_jitter(model))
    ap = AppearancePanel(model, app, 3)
    panel = BufferGeneratorPanel(gen, ap)
    ex = FaceExplorer(model, render=app.render_config(), panels=[ap, panel])
    depth, colour, face = ex.update(torch.zeros(15))
    assert face.shape == (64, 64, 3) and face.std() > 0
    ap.values[0] = 3.0  # an appearance slider: the raw render and the network's face both change
    _, colour2, face2 = ex.render()
    assert np.abs(colour2.astype(int) - colour).mean() > 1 and np.abs(face2.astype(int) - face).max() > 0
    ap.values[0] = 0.0
    ex.update(torch.eye(15)[0] * 3)  # a shape slider moves the face
    assert np.abs(ex.render()[2].astype(int) - face).max() > 0


def test_shipped_buffers_generator_loads_reads_the_shipped_appearance_and_refuses_another(tiny_run, tmp_path,
                                                                                            monkeypatch, face_model):
    """``buffers_report.ship`` writes a file ``load_pretrained`` reads back as a buffers generator whose
    ``generator_fn`` renders buffers with the shipped appearance model, and refuses an appearance model other
    than the one it was shipped with. (The comparison file here is a minimal stand-in with the fields ``ship``
    copies: this test is about the file, not the numbers.)"""
    import json

    from frankenstein_utils.evaluation import context as EV
    from frankenstein_utils.pretrained import shipped
    from frankenstein_utils.study import buffers_report as R

    ck = tiny_run / "checkpoint.pt"
    row = {"kid": 0.2, "nme": 0.05, "detection": 1.0}
    cmp = {"source": f"{ck} (step 2)", "n": 3, "rows": {"buffers generator (appearance from shape)": row},
           "targets": [{"target": "t", "measured": 1.0, "bound": 2.0, "met": True}], "checks": {},
           "references": {EV.REFS[k]: row for k in ("test", "blur1", "blur2", "train")}, "sweeps": {}}
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "EVALUATION.json").write_text(json.dumps(cmp))
    path = R.ship(ck, tmp_path / "cmp", "the command", weights_dir=tmp_path / "w")
    gen = shipped.load_pretrained(str(path))
    assert gen.cfg.buffers == "colour,normal" and gen.cfg.appearance_k == 5 and gen.latent is not None
    assert "the command" in (tmp_path / "w" / "buffers_MODEL_CARD.md").read_text()
    f = EV.generator_fn(gen, seed=0)
    assert isinstance(f, B.BufferGenerator) and f.z_dim == 5 + 8
    ds = B.synthetic_buffer_set(3, gen.appearance(), face_model, 5, "colour", extended=0.0, progress=False)
    params = {k: ds.params[k] for k in ("coeffs", "poses", "expressions")}
    img = f(torch.zeros(3, 1, 64, 64), None, params=params)
    assert img.shape == (3, 3, 64, 64) and torch.isfinite(img).all()
    wrong = dict(gen.card, appearance_sha256="0" * 64)
    monkeypatch.setattr(gen, "card", wrong)
    with pytest.raises(ValueError, match="ship them together"):
        gen.appearance()
    (tmp_path / "cmp2").mkdir()
    (tmp_path / "cmp2" / "EVALUATION.json").write_text(json.dumps({"source": "elsewhere.pt (step 9)"}))
    with pytest.raises(ValueError, match="not of"):
        R.ship(ck, tmp_path / "cmp2", "x", weights_dir=tmp_path / "w2")


def test_a_shipped_supersampled_generator_keeps_its_rendering(tiny_run, small, tmp_path):
    """buffers_supersample travels with the shipped file (it decides how the generator's inputs are rendered): the
    loaded generator, its BufferGenerator and its card say the same; a file shipped before it existed reads 1."""
    from frankenstein_utils.pretrained import shipped as P
    from frankenstein_utils.study import buffers_report as R
    from frankenstein_utils.train.trainer import load_run

    run = load_run(tiny_run / "checkpoint.pt")
    render = small["app"].render_config()
    pose = small["train"].pose_jitter(small["model"])
    old = P.generator_from_blob(P.shipped_blob(run, render, pose, {}), tmp_path / "old.safetensors")
    assert old.cfg.buffers_supersample == 1
    run.cfg.buffers_supersample = 2
    blob = P.shipped_blob(run, render, pose, {})
    assert blob["config"]["buffers_supersample"] == 2
    gen = P.generator_from_blob(blob, tmp_path / "new.safetensors")
    assert gen.cfg.buffers_supersample == 2
    assert B.BufferGenerator(gen, small["model"], small["app"], render).supersample == 2
    del blob["config"]["buffers_supersample"]  # as written before the setting existed
    assert P.generator_from_blob(blob, tmp_path / "older.safetensors").cfg.buffers_supersample == 1
    from dataclasses import asdict

    card = {"config": asdict(gen.cfg), "appearance_components": 5, "appearance_sha256": "x", "step": 2,
            "wall_s": None, "command": "c", "machine": "m", "curve": [], "comparison": {"n": 3, "rows": {},
            "targets": []}, "references": {k: {} for k in ("test", "blur1", "blur2", "train")}}
    text = R.card_text("buffers", card, 1, gen, "cmp")
    assert "anti-aliased" in text and "--buffers-supersample 2" in text and "exactly the paired set's" not in text


def test_curve_scores_the_shipped_reference_once_in_the_snapshots_context(tmp_path, monkeypatch):
    """``buffers_report.curve(reference=NAME)``: the shipped generator is scored in the same evaluation context as
    the run's snapshots (same faces, same judges), stored once under ``reference:NAME`` with the file's SHA-256, and
    not scored again by a later call unless another file ships under the name (the earlier row is kept). The context and the scoring are stand-ins here (the real ones judge every
    test photo with dlib); the test is about which generator is scored where, and how often."""
    import json

    from frankenstein_utils.evaluation import context as EV
    from frankenstein_utils.facemodel.appearance import sha256_of
    from frankenstein_utils.pretrained.shipped import load_pretrained
    from frankenstein_utils.study import buffers_report as R

    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    for s in (500, 1000):
        (run / "snapshots" / f"step_{s:06d}.pt").write_bytes(b"")
    (run / "curve.json").write_text(json.dumps({"raw_render": {"kid": 0.2}}))
    contexts, scored = [], []

    class Run:
        def __init__(self, step):
            self.step = step

    monkeypatch.setattr(R, "_data", lambda cache_dir=None: (None, None, None))
    monkeypatch.setattr(EV, "build_context", lambda *a, **k: contexts.append(object()) or contexts[-1])
    monkeypatch.setattr(EV, "generator_fn", lambda m, seed=0: m)
    monkeypatch.setattr("frankenstein_utils.train.trainer.load_run", lambda p: Run(int(p.stem[5:])))

    def scores(ctx, f, n):
        scored.append((ctx, f))
        return {"n": n, "kid": 0.1 if isinstance(f, Run) else 0.3, "nme": 0.05, "detection": 1.0,
                "code_spread": 0.7}

    monkeypatch.setattr(R, "_curve_scores", scores)
    points = R.curve(run, n=7, reference="buffers")
    assert [p["step"] for p in points] == [500, 1000] and len(contexts) == 1
    ref = json.loads((run / "curve.json").read_text())["reference:buffers"]
    assert ref["kid"] == 0.3 and ref["n"] == 7
    assert ref["sha256"] == sha256_of(load_pretrained("buffers").path)
    assert all(ctx is contexts[0] for ctx, _ in scored) and len(scored) == 3  # the reference and two snapshots
    assert R.curve(run, n=7, reference="buffers") == points and len(scored) == 3 and len(contexts) == 1
    (run / "snapshots" / "step_001500.pt").write_bytes(b"")  # a new snapshot: only it is scored
    assert [p["step"] for p in R.curve(run, n=7, reference="buffers")] == [500, 1000, 1500] and len(scored) == 4
    # another file ships under the name: it is scored in the same context, the earlier row kept under its SHA
    first = json.loads((run / "curve.json").read_text())["reference:buffers"]
    monkeypatch.setattr("frankenstein_utils.facemodel.appearance.sha256_of", lambda p: "f" * 64)
    R.curve(run, n=7, reference="buffers")
    stored = json.loads((run / "curve.json").read_text())
    assert stored["reference:buffers"]["sha256"] == "f" * 64 and len(scored) == 5
    assert stored[f"reference:buffers@{first['sha256'][:12]}"] == first
    R.curve(run, n=7, reference="buffers")
    assert len(scored) == 5  # scored once


def test_face_background_swap_composites_each_face_on_the_other_background_in_one_context(monkeypatch):
    """``swap_regions`` takes the pixels inside the mask grown by a (2d+1)-px square from the face images and all
    others from the background images; ``face_background_swap`` scores both generators and both swaps in one
    context (the context, generators and KID are stand-ins here: the test is about which pixels go where)."""
    from frankenstein_utils.evaluation import context as EV
    from frankenstein_utils.study import buffers_report as R

    mask = torch.zeros(1, 1, 9, 9)
    mask[..., 4, 4] = 1
    out = R.swap_regions(torch.ones(1, 3, 9, 9), torch.zeros(1, 3, 9, 9), mask, dilate=1)
    assert out[0, :, 3:6, 3:6].eq(1).all() and out.sum() == 3 * 9  # the 3x3 square, every channel, nothing else
    no_margin = R.swap_regions(torch.ones(1, 3, 9, 9), torch.zeros(1, 3, 9, 9), mask, dilate=0)
    assert torch.equal(no_margin, mask.expand(1, 3, 9, 9))

    class Ctx:
        syn_depth = syn_params = None
        syn_mask = mask.expand(2, 1, 9, 9)

    contexts, scored = [], {}
    monkeypatch.setattr(R, "_data", lambda cache_dir=None: (None, None, None))
    monkeypatch.setattr(EV, "build_context", lambda *a, **k: contexts.append(Ctx()) or contexts[-1])
    monkeypatch.setattr("frankenstein_utils.pretrained.shipped.load_pretrained", lambda name: name)
    monkeypatch.setattr(EV, "generator_fn", lambda net, seed=0: net)
    monkeypatch.setattr(EV, "call_generator", lambda f, d, m, z, p: torch.full((2, 3, 9, 9), 1.0 if f == "A" else -1.0))

    def kid(ctx, images):
        assert ctx is contexts[0]
        scored[len(scored)] = images
        return {"kid": float(images.mean()), "kid_se": 0.0, "detection": 1.0}

    monkeypatch.setattr(R, "_kid_of", kid)
    r = R.face_background_swap("A", "B", n=2, dilate=1)
    assert len(contexts) == 1 and list(r["rows"]) == ["a: A", "b: B", "face of a, background of b",
                                                      "face of b, background of a"]
    a_on_b, b_on_a = scored[2], scored[3]
    inside = torch.zeros(9, 9, dtype=torch.bool)
    inside[3:6, 3:6] = True
    assert a_on_b[:, :, inside].eq(1).all() and a_on_b[:, :, ~inside].eq(-1).all()
    assert b_on_a[:, :, inside].eq(-1).all() and b_on_a[:, :, ~inside].eq(1).all()


def test_input_truncation_scores_the_raw_render_at_each_k_with_the_same_codes_in_one_context(small, monkeypatch,
                                                                                             tmp_path):
    """``buffers_report truncation``: the raw render of the curve's faces at each k, the same codes at every k, all
    scored in one context (the context and KID are stand-ins here; ``RawRender(k=...)`` is tested above)."""
    from frankenstein_utils.evaluation import context as EV
    from frankenstein_utils.facemodel.appearance import AppearanceModel
    from frankenstein_utils.facemodel.appearance_render import RawRender
    from frankenstein_utils.study import buffers_report as R

    path = tmp_path / "app.safetensors"
    small["app"].save(path)
    app, model = AppearanceModel.load(path), small["model"]
    K, n = app.n_components, 4
    syn = B.synthetic_buffer_set(n, app, model, 2, "colour", seed=3, extended=0.0, progress=False)

    class Ctx:
        syn_depth = syn_mask = None
        syn_params = {m: syn.params[m] for m in ("coeffs", "poses", "expressions")}

    contexts, scored = [], []
    monkeypatch.setattr(R, "_data", lambda cache_dir=None: (model, None, None))
    monkeypatch.setattr(EV, "build_context", lambda *a, **k: contexts.append(Ctx()) or contexts[-1])

    def kid(ctx, images):
        assert ctx is contexts[0]
        scored.append(images)
        return {"kid": float(images.mean()), "kid_se": 0.0, "detection": 1.0}

    monkeypatch.setattr(R, "_kid_of", kid)
    r = R.input_truncation((K, 2), n=n, appearance=path)
    assert len(contexts) == 1 and list(r["rows"]) == [K, 2] and r["appearance"] == B.app_fingerprint(app)
    z = B.normal(n, K, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(scored[0], RawRender(model, app, app.render_config())(None, None, z, Ctx.syn_params))
    torch.testing.assert_close(scored[1], RawRender(model, app, app.render_config(), k=2)(None, None, z,
                                                                                          Ctx.syn_params))
    with pytest.raises(ValueError, match=rf"k = \[{K + 1}\]: the appearance model has {K} components"):
        R.input_truncation((2, K + 1), n=n, appearance=path)


def test_issue_targets_judge_memorisation_against_chance_and_give_the_sweeps_worst_interval():
    """The comparison's targets: the held-out memorisation share is met up to chance + 2 standard errors at the
    faces' N and missed above it; the sweep's detection target names the faces per point and the worst point's
    Wilson interval; the Memorisation section lists both measures; the network-code spread is a target only where
    it was measured, and its section lists the rows that have it (stand-in numbers: the test is the rule)."""
    from frankenstein_utils.evaluation import context as EV
    from frankenstein_utils.evaluation import measures as M
    from frankenstein_utils.study import buffers_report as R

    photo = {"kid": 0.1, "nme": 0.05, "near_copy": 0.82, "near_copy_ci": (0.78, 0.85), "checkerboard": 1e-3,
             "edge_dip": -10.0, "edge_roughness": 1.0, "train_neighbour": 0.95, "train_neighbour_ci": (0.93, 0.97),
             "train_neighbour_null": 0.9, "train_neighbour_z": 0.1}
    refs = {EV.REFS[k]: dict(photo) for k in ("test", "blur1", "blur2")}
    null, n = 0.9, 400
    se = (null * (1 - null) / n) ** 0.5
    gen = {"kid": 0.2, "diversity_share": 0.8, "code_spread": 0.7, "nme": 0.05, "identity_auc": 0.9, "detection": 1.0,
           "near_copy": 0.95, "checkerboard": 1e-3, "edge_dip": -5.0, "edge_roughness": 1.0, "n_judged": n,
           "train_neighbour_null": null, "train_neighbour_se": se, "train_neighbour_z": 1.9}
    sweep = {"sweeps": {"c0": {"worst_detection": 29 / 32}, "c1": {"worst_detection": 1.0}}, "n_codes": 32,
             "end_kid": {"kid": 0.3}, "centre_kid": {"kid": 0.25}}

    def targets(share):
        rows = {"main from shape": {**gen, "train_neighbour": share}, "main free": dict(gen), "flag": dict(gen),
                "raw": dict(gen)}
        return R.issue_targets(refs, rows, {"main from shape": sweep}, "main from shape", "flag", "raw")

    def find(ts, start):
        return next(t for t in ts if t["target"].startswith(start))

    ok, bad = (find(targets(share), "memorisation, held-out") for share in (null + 1.9 * se, null + 2.1 * se))
    assert ok["met"] is True and bad["met"] is False
    assert ok["bound"] == pytest.approx(null + 2 * se) and "chance 0.900; test photos 0.950" in ok["target"]
    det = find(targets(null), "sweep: detection")
    lo, hi = M.wilson_interval(29, 32)
    assert det["measured"] == 29 / 32 and det["met"] is True and "32 faces per point" in det["target"]
    assert f"[{lo:.2f}, {hi:.2f}]" in det["target"]
    # a generator row without the held-out reference gets no held-out target (an older context), not a crash
    plain = {k: v for k, v in gen.items() if not k.startswith("train_neighbour")}
    rows = {"m from shape": plain, "m free": plain, "flag": plain, "raw": plain}
    assert not any("held-out" in t["target"] for t in R.issue_targets(refs, rows, {"m from shape": sweep},
                                                                      "m from shape", "flag", "raw"))
    assert not any("network's own code" in t["target"] for t in targets(null))
    # the code spread with the issue's whole input fixed: only the network's own code varies
    nc = {"descriptor_share": 0.17, "inside": 0.03, "outside": 0.28, "between": 0.5, "n_maps": 16, "n_codes": 8}
    for share, met in ((0.17, False), (0.6, True)):
        rows = {"m from shape": {**gen, "network_code": {**nc, "descriptor_share": share}}, "m free": gen,
                "flag": gen, "raw": gen}
        t = find(R.issue_targets(refs, rows, {"m from shape": sweep}, "m from shape", "flag", "raw"),
                 "(the same, the network's own code alone")
        assert t["measured"] == share and t["bound"] == 0.5 and t["met"] is met
        assert "0.030 inside the face, 0.280 outside, 0.500 between inputs" in t["target"]
    section = R.network_code_table({"m from shape": {"network_code": nc}, "raw": {}})
    assert section.startswith("## The network's own code") and "16 synthetic inputs" in section
    assert "| m from shape | 0.170 | 0.030 | 0.280 | 0.500 |" in section and "| raw |" not in section
    assert R.network_code_table({"raw": {}}) == ""
    text = EV.memorisation_table(refs, {"gen": {**gen, "train_neighbour": 0.91, "train_neighbour_ci": (0.88, 0.93),
                                              "near_copy_ci": (0.93, 0.97)}})
    assert "chance 0.900" in text and "| gen | 0.950 [0.930, 0.970] | 0.910 [0.880, 0.930] | +1.9 |" in text
