"""Issue 23, point 4: bad input that used to give silently wrong results now fails with one line naming the file and
the problem (or, on a resume, is redone)."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from frankenstein_utils.data.depth_sets import DepthMapDataset, generate_depth_dataset
from frankenstein_utils.io.files import FolderLock, atomic_savez, load_npz, png_header, save_png
from frankenstein_utils.render.rasterize import RenderConfig

RC = RenderConfig(resolution=16)


def rgb16_png(path, size=16):
    """A valid 16-bit RGB PNG (colour type 2): the set's depth size and bit depth, another colour type (Pillow
    writes no 16-bit RGB)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + np.full((size, 3), 30000, ">u2").tobytes() for _ in range(size))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_resume_redoes_valid_pngs_of_another_mode_or_size(tmp_path, face_model):
    """A PNG that decodes but is not what the set writes (8-bit, palette or RGB depth, another size, an RGB or
    16-bit mask) is rendered again on resume, not kept."""
    from frankenstein_utils.io.files import png_is_complete

    kw = dict(seed=3, render=RC, model=face_model, progress=False, device="cpu")
    ref = generate_depth_dataset(6, tmp_path / "ref", **kw)
    out = generate_depth_dataset(6, tmp_path / "out", **kw)
    save_png(out / "depth/000000.png", np.full((16, 16), 200, np.uint8))  # 8-bit depth
    save_png(out / "depth/000001.png", np.full((8, 8), 30000, np.uint16))  # another resolution
    Image.fromarray(np.zeros((16, 16), np.uint8)).convert("P").save(out / "depth/000002.png")  # palette
    save_png(out / "mask/000003.png", np.zeros((16, 16, 3), np.uint8))  # RGB mask
    save_png(out / "mask/000004.png", np.zeros((16, 16), np.uint16))  # 16-bit mask
    rgb16_png(out / "depth/000005.png")  # RGB depth, 16-bit and 16x16 as the set's: only its colour type differs
    h = png_header(out / "depth/000005.png")
    assert (h.width, h.height, h.bit_depth, h.colour_type) == (16, 16, 16, 2)
    assert png_is_complete(out / "depth/000005.png")  # it decodes
    generate_depth_dataset(6, out, **kw)
    for sub in ("depth", "mask"):
        for i in range(6):
            name = f"{sub}/{i:06d}.png"
            assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert (png_header(out / "depth/000000.png").bit_depth, png_header(out / "mask/000003.png").colour_type) == (16, 0)
    assert png_header(out / "depth/000005.png").colour_type == 0


def test_resume_refuses_files_it_cannot_tie_to_the_configuration(tmp_path, face_model):
    """With meta.npz and config.json gone, the maps of another seed used to be kept (and the new seed's meta written
    over them); a config.json of another set without its meta.npz used to be overwritten."""
    kw = dict(render=RC, model=face_model, progress=False)
    old = generate_depth_dataset(3, tmp_path / "old", seed=1, **kw)
    (old / "meta.npz").unlink()
    (old / "config.json").unlink()
    with pytest.raises(ValueError, match=r"old: holds depth-set files \(depth/000000.png, \.\.\.\) but no meta.npz"):
        generate_depth_dataset(3, old, seed=2, **kw)
    assert not (old / "meta.npz").exists()
    other = generate_depth_dataset(3, tmp_path / "other", seed=1, **kw)
    (other / "meta.npz").unlink()
    with pytest.raises(ValueError, match=r"other/config.json: folder holds a set made with another configuration "
                                         r"\(differs in seed\)"):
        generate_depth_dataset(3, other, seed=2, **kw)
    # the same configuration's config.json ties the files to it: the resume goes on and restores meta.npz
    generate_depth_dataset(3, other, seed=1, **kw)
    assert len(DepthMapDataset(other)) == 3
    # a meta.npz without its readable copy: the copy is restored
    before = (other / "config.json").read_bytes()
    (other / "config.json").unlink()
    generate_depth_dataset(3, other, seed=1, **kw)
    assert (other / "config.json").read_bytes() == before


def test_dataset_refuses_a_meta_npz_that_does_not_match_its_maps(tmp_path, face_model):
    """Fewer coefficient rows than maps used to give a shorter set; a meta.npz of a smaller set copied over a bigger
    one, too."""
    kw = dict(render=RC, model=face_model, progress=False)
    root = generate_depth_dataset(4, tmp_path / "s", seed=0, **kw)
    meta = dict(load_npz(root / "meta.npz"))
    atomic_savez(root / "meta.npz", **{**meta, "coeffs": meta["coeffs"][:3]})
    with pytest.raises(ValueError, match=r"s/meta.npz: 3 coefficient rows for 4 depth maps"):
        DepthMapDataset(root)
    small = generate_depth_dataset(3, tmp_path / "small", seed=0, **kw)
    (root / "meta.npz").write_bytes((small / "meta.npz").read_bytes())
    with pytest.raises(ValueError, match=r"s/meta.npz: describes 3 faces but .*s/depth holds 4 depth maps"):
        DepthMapDataset(root)


# ---- apply ---------------------------------------------------------------------------------------------------------
class Pairs(torch.utils.data.Dataset):
    """Random depth maps with a colour function of depth: enough for a 1-step checkpoint."""

    def __init__(self, n=16):
        self.depth = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.depth)

    def __getitem__(self, i):
        d = self.depth[i]
        return {"image": torch.cat([d, -d, d * d]) * 2 - 1, "depth": d, "mask": torch.ones_like(d), "index": i}


@pytest.fixture(scope="module")
def applied(tmp_path_factory, face_model):
    """A 1-step checkpoint of each kind apply handles (plain: no z; cvae: z), and a 3-face depth set at its size."""
    from frankenstein_utils.train.cli import input_convention
    from frankenstein_utils.train.config import TrainConfig
    from frankenstein_utils.train.trainer import Trainer

    root = tmp_path_factory.mktemp("apply")
    ckpts = {}
    for mode in ("l1", "cvae"):
        c = TrainConfig(mode=mode, image_size=16, width=8, batch_size=8, steps=1, out_dir=str(root / mode),
                        sample_every=0, checkpoint_every=1, log_every=1, encoder_width=8, z_dim=4,
                        input_convention=input_convention(RC, "test"))
        Trainer(c, {"paired": Pairs()}).fit(progress=False)
        ckpts[mode] = str(root / mode / "checkpoint.pt")
    depth_set = generate_depth_dataset(3, root / "set", render=RC, model=face_model, progress=False)
    return ckpts, depth_set


def copy_set(depth_set, dest):
    shutil.copytree(depth_set, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_apply_refuses_depth_pngs_of_other_modes_and_non_square_ones(tmp_path, applied, capsys):
    """A 1-bit map used to give depths of at most 1/255, a palette map its indices as depths, a 48x32 map was
    stretched to square: all exited 0. Now one line names the file, before anything is written; --on-error skip
    skips and counts them. 16-bit and 8-bit greyscale maps stay accepted."""
    from frankenstein_utils.apps.apply import main

    ckpt = applied[0]["l1"]
    s = copy_set(applied[1], tmp_path / "set")
    a = np.array(Image.open(s / "depth/000000.png"))
    save_png(s / "depth/000000.png", (a >> 8).astype(np.uint8))  # 8-bit greyscale: the convention's other mode
    for name, make, match in [
            ("000001.png", lambda p: Image.fromarray(a > 0).save(p), "got 1-bit greyscale 16x16"),
            ("000001.png", lambda p: Image.fromarray((a >> 8).astype(np.uint8)).convert("P").save(p),
             "got 8-bit palette 16x16"),
            ("000001.png", lambda p: save_png(p, np.zeros((32, 48), np.uint16)), "depth map is 48x32, not square"),
            ("mask/000002.png", lambda p: Image.fromarray(a > 0).save(p), "mask must be an 8-bit greyscale PNG"),
            ("000002.png", lambda p: save_png(p, np.zeros((16, 16, 3), np.uint8)), "got 8-bit RGB 16x16")]:
        bad = tmp_path / "bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(s, bad)
        name = name if "/" in name else f"depth/{name}"
        make(bad / name)
        assert main(["--checkpoint", ckpt, "--input", str(bad / "depth"), "--output", str(tmp_path / "out")]) == 1
        err = one_error_line(capsys)
        assert f"bad/{name}: " in err and match in err, err
        assert not (tmp_path / "out").exists()
    assert main(["--checkpoint", ckpt, "--input", str(bad / "depth"), "--output", str(tmp_path / "out"),
                 "--on-error", "skip"]) == 0
    assert "skipped 1" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["000000.png", "000001.png"]


def test_apply_refuses_a_generator_with_non_finite_parameters(tmp_path, applied, capsys):
    """A checkpoint with NaN weights used to write black images and exit 0."""
    from frankenstein_utils.apps.apply import main

    ck = torch.load(applied[0]["l1"], weights_only=True)
    name = next(k for k, v in ck["nets"]["G"].items() if v.is_floating_point())
    ck["nets"]["G"][name][...] = float("nan")
    torch.save(ck, tmp_path / "nan.pt")
    assert main(["--checkpoint", str(tmp_path / "nan.pt"), "--input", str(applied[1] / "depth"), "--output",
                 str(tmp_path / "out")]) == 1
    err = one_error_line(capsys)
    assert "nan.pt: the generator has non-finite parameters" in err and name in err
    assert not (tmp_path / "out").exists()


def test_apply_refuses_to_write_over_its_input(tmp_path, applied, capsys):
    """--output equal to --input (by any path) used to replace the depth maps by faces, exit 0."""
    from frankenstein_utils.apps.apply import main

    s = copy_set(applied[1], tmp_path / "set")
    before = {p.name: p.read_bytes() for p in (s / "depth").glob("*.png")}
    masks = {p.name: p.read_bytes() for p in (s / "mask").glob("*.png")}
    (tmp_path / "link").symlink_to(s / "depth")
    for out in (s / "depth", s / "depth" / ".", s / "mask" / ".." / "depth", tmp_path / "link", s / "mask"):
        assert main(["--checkpoint", applied[0]["l1"], "--input", str(s / "depth"), "--output", str(out)]) == 1
        err = one_error_line(capsys)
        assert f"{out}: is the input" in err and "would overwrite" in err
    assert {p.name: p.read_bytes() for p in (s / "depth").glob("*.png")} == before
    assert {p.name: p.read_bytes() for p in (s / "mask").glob("*.png")} == masks


def test_a_second_apply_into_one_output_fails_clearly(tmp_path, applied, capsys):
    """Two applies into one folder used to both exit 0, one's images lost under the other's."""
    from frankenstein_utils.apps.apply import main

    out = tmp_path / "out"
    with FolderLock(out, "apply other.pt"):  # the first apply is still writing
        assert main(["--checkpoint", applied[0]["l1"], "--input", str(applied[1] / "depth"), "--output",
                     str(out)]) == 1
        err = one_error_line(capsys)
        assert f"{out}: another process is writing here (pid" in err and "apply other.pt" in err
    assert not list(out.glob("*.png"))
    assert main(["--checkpoint", applied[0]["l1"], "--input", str(applied[1] / "depth"), "--output", str(out)]) == 0


def test_a_skipped_map_does_not_shift_the_others_z(tmp_path, applied, capsys):
    """With --z-seed, z is drawn for every file in order (as apply's comment says): a skipped file used to pass its z
    to the next file, which then got another face than in a run without the bad file."""
    from frankenstein_utils.apps.apply import main

    ckpt = applied[0]["cvae"]
    s = copy_set(applied[1], tmp_path / "set")
    args = ["--checkpoint", ckpt, "--input", str(s / "depth"), "--z-seed", "3", "--on-error", "skip"]
    assert main(args + ["--output", str(tmp_path / "all")]) == 0
    (s / "depth/000001.png").write_bytes(b"not a png")
    assert main(args + ["--output", str(tmp_path / "some")]) == 0
    for name in ("000000.png", "000002.png"):
        assert (tmp_path / "some" / name).read_bytes() == (tmp_path / "all" / name).read_bytes(), name


# ---- facemodel.write_ply -------------------------------------------------------------------------------------------
def test_write_ply_refuses_nan_vertices_and_face_indices_out_of_range(tmp_path, face_model):
    """write_ply used to write both (a file read_ply then refuses, or a viewer shows wrong); now nothing is
    written and the error names the path and the problem. A valid mesh is written as before."""
    from frankenstein_utils.facemodel.model import read_ply, write_ply

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    tri = np.array([[0, 1, 2]])
    bad_v = v.copy()
    bad_v[1, 2] = np.nan
    for name, verts, faces, match in [("nan.ply", bad_v, tri, r"1 of 3 vertices have NaN or infinite .*vertex 1"),
                                      ("inf.ply", v + np.inf, tri, "3 of 3 vertices have NaN or infinite"),
                                      ("high.ply", v, np.array([[0, 1, 5]]), r"out of range \[0, 3\) .*max 5"),
                                      ("negative.ply", v, np.array([[0, -1, 2]]), r"out of range \[0, 3\) \(min -1"),
                                      ("quads.ply", v, np.array([[0, 1, 2, 0]]), r"triangles \(T, 3\)")]:
        with pytest.raises(ValueError, match=match) as e:
            write_ply(tmp_path / name, verts, faces)
        assert str(e.value).startswith(str(tmp_path / name)) and not (tmp_path / name).exists()
    write_ply(tmp_path / "ok.ply", v, tri)
    assert np.array_equal(read_ply(tmp_path / "ok.ply")[0], v)


def test_fitted_face_table_refuses_expression_weights_outside_0_1():
    """A fitted table with an expression weight of 50 rendered all-foreground depth maps without a word (issue 23
    point 4); weights must be finite and in [0, 1], poses finite."""
    import numpy as np
    import pytest

    from frankenstein_utils.facemodel.fitting import FittedFaceParams

    poses, expr = np.zeros((3, 6), np.float32), np.zeros((3, 53), np.float32)
    FittedFaceParams(poses, expr, source="ok")
    expr[1, 7] = 50.0
    with pytest.raises(ValueError, match=r"table\.npz: expression weights must be finite and in \[0, 1\].*row 1"):
        FittedFaceParams(poses, expr, source="table.npz")
    expr[1, 7] = np.nan
    with pytest.raises(ValueError, match="expression weights"):
        FittedFaceParams(poses, expr, source="table.npz")
    expr[1, 7] = 0.5
    poses[2, 0] = np.inf
    with pytest.raises(ValueError, match="poses hold NaN"):
        FittedFaceParams(poses, expr, source="table.npz")


# ---- cvae-gan: the encoder's BatchNorm statistics ------------------------------------------------------------------
def test_cvae_gan_leaves_the_encoders_batch_statistics_to_photos(tmp_path):
    """cvae-gan encodes photos (the cVAE branch) and fakes (latent regression, ``batch_stats_kept``): the encoder's
    BatchNorm running statistics must be those of the photo batches alone (they took in each fake batch too,
    skewing E(photo) at test time). Every BatchNorm's input is recorded and its statistics recomputed from the
    photo calls: num_batches_tracked counts photo batches only, mean and variance match."""
    from test_smoke import SMALL, streams

    from frankenstein_utils.train.config import TrainConfig
    from frankenstein_utils.train.trainer import Trainer

    steps = 2
    t = Trainer(TrainConfig(mode="cvae-gan", out_dir=str(tmp_path), steps=steps,
                            **{**SMALL, "sample_every": 0, "checkpoint_every": 0}), streams())
    E = t.nets["E"]
    bns = [m for m in E.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.track_running_stats and m.momentum == 0.1 for m in bns)
    init = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    photos, calls, seen = [], [], {i: [] for i in range(len(bns))}
    nxt = t._next

    def spy(stream):
        b = nxt(stream)
        if stream == "paired":
            photos.append(b["image"])
        return b
    t._next = spy
    E.register_forward_pre_hook(lambda mod, inp: calls.append(any(torch.equal(inp[0], p) for p in photos)))
    for i, m in enumerate(bns):  # (is this E call on photos, the layer's input)
        m.register_forward_pre_hook(lambda mod, inp, i=i: seen[i].append((calls[-1], inp[0].detach().clone())))
    t.fit(progress=False)
    assert calls.count(True) == steps and calls.count(False) == steps  # photo codes and latent regression, each step
    for m, (mean, var), inputs in zip(bns, init, seen.values()):
        assert int(m.num_batches_tracked) == steps
        for is_photo, x in inputs:
            if is_photo:
                x = x.double()
                mean = 0.9 * mean.double() + 0.1 * x.mean((0, 2, 3))
                var = 0.9 * var.double() + 0.1 * x.var((0, 2, 3), unbiased=True)
        torch.testing.assert_close(m.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.running_var.double(), var, rtol=1e-5, atol=1e-6)
