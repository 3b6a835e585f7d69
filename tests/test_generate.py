"""``python -m frankenstein_utils.apps.generate`` (labelled synthetic faces) and ``apply`` with a shipped model's name.

Small sets (24 faces: one full render block of 16 and a partial one) so the whole file runs in well under a minute.
"""
import shutil

import numpy as np
import pytest
import torch

from frankenstein_utils.apps import generate as G
from frankenstein_utils.apps.apply import main as apply_main
from frankenstein_utils.apps.generate import GeneratedFaceDataset, generate_faces, main
from frankenstein_utils.data.depth_sets import DEPTH_SCALE, generate_depth_dataset
from frankenstein_utils.facemodel.appearance_render import model_landmarks
from frankenstein_utils.io.files import FolderBusyError, FolderLock, load_npz, load_png
from frankenstein_utils.render.rasterize import RenderConfig

N, SEED = 24, 3
SHIPPED = "study/U"  # a depth-only shipped generator (z_dim 0): its output is a function of depth and mask


def files_of(root):
    """Every file under ``root`` (the lock file included) -> its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stack(folder, kind):
    return np.stack([load_png(folder / kind / f"{i:06d}.png") for i in range(N)])


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The uninterrupted run every other run is compared with."""
    return generate_faces(N, tmp_path_factory.mktemp("gen") / "ref", seed=SEED, progress=False)


@pytest.fixture(scope="module")
def frontal(tmp_path_factory):
    return generate_faces(N, tmp_path_factory.mktemp("gen") / "frontal", seed=SEED, pose="frontal", progress=False)


def test_layout_and_labels_are_written(ref):
    files = files_of(ref)
    for kind in G.KINDS:
        assert sorted(k for k in files if k.startswith(kind + "/")) == [f"{kind}/{i:06d}.png" for i in range(N)]
    assert not [k for k in files if k.endswith(".tmp")]
    img, app, depth, mask = (stack(ref, k) for k in ("image", "appearance", "depth", "mask"))
    assert img.shape == app.shape == (N, 64, 64, 3) and img.dtype == np.uint8
    assert depth.dtype == np.uint16 and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert ((depth > 0) == (mask > 0)).all()  # fg_floor keeps the face apart from the background
    assert (app[mask == 0] == 0).all() and (app[mask > 0].max(-1) > 0).mean() > 0.99  # black outside only
    assert (img[mask == 0] > 0).any()  # the raw render puts the face over the mean photo, not over black
    meta = load_npz(ref / "meta.npz")
    assert meta["coeffs"].shape == (N, 15) and meta["poses"].shape == (N, 6) and meta["landmarks"].shape == (N, 68, 2)
    assert meta["appearance"].shape[0] == N and meta["expressions"].shape[0] == N
    assert np.abs(meta["poses"][:, 0]).max() > 5  # fitted poses (degrees), not all frontal


def test_same_seed_same_bytes_other_seed_differs(ref, tmp_path, capsys):
    torch.set_num_threads(2)  # the caller's thread count neither changes the bytes nor is left changed
    try:
        again = generate_faces(N, tmp_path / "again", seed=SEED, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    assert files_of(again) == files_of(ref)
    assert main(["--n", str(N), "--out", str(tmp_path / "other"), "--seed", str(SEED + 1)]) == 0
    assert f"wrote {N} faces" in capsys.readouterr().out
    other = files_of(tmp_path / "other")
    assert other.keys() == files_of(ref).keys()
    for kind in ("image", "depth", "mask", "appearance"):
        assert all(other[f"{kind}/{i:06d}.png"] != files_of(ref)[f"{kind}/{i:06d}.png"] for i in range(N)), kind
    assert other["meta.npz"] != files_of(ref)["meta.npz"]


def test_resume_after_lost_and_truncated_files_equals_the_uninterrupted_run(ref, tmp_path):
    r = tmp_path / "r"
    shutil.copytree(ref, r)
    (r / "image" / "000003.png").unlink()  # a face whose other files are done: its block is rendered again
    (r / "depth" / "000017.png").unlink()  # in the partial last block
    for kind in G.KINDS:
        (r / kind / "000020.png").unlink()  # a face not written at all
    m = r / "mask" / "000010.png"
    m.write_bytes(m.read_bytes()[:40])  # truncated under its final name
    (r / "image" / ".000005.png.x1y2.tmp").write_bytes(b"half")  # what a killed atomic write leaves
    before = (r / "depth" / "000000.png").stat().st_mtime_ns
    generate_faces(N, r, seed=SEED, progress=False)
    assert files_of(r) == files_of(ref)
    assert (r / "depth" / "000000.png").stat().st_mtime_ns == before  # finished faces are not redone


def test_a_run_stopped_by_an_error_in_the_writer_resumes_to_the_same_bytes(ref, tmp_path, monkeypatch):
    """The writer thread's error surfaces in the caller, nothing writes after the lock is released, and the rerun
    completes the folder to the uninterrupted run's bytes."""
    calls = []
    real = G.atomic_write_bytes

    def failing(path, data, durable=True):
        calls.append(path)
        if len(calls) == 38:  # mid-face, mid-block: face 9's depth and mask written, its image not
            raise OSError("disk full (test)")
        real(path, data, durable)

    monkeypatch.setattr(G, "atomic_write_bytes", failing)
    with pytest.raises(OSError, match="disk full"):
        generate_faces(N, tmp_path / "s", seed=SEED, progress=False)
    written = len(calls)
    monkeypatch.setattr(G, "atomic_write_bytes", real)
    assert written == 38 and len(list((tmp_path / "s").rglob("*.png"))) == 37  # the writer stopped at once
    with FolderLock(tmp_path / "s", "a check"):  # the lock went with the failed run
        pass
    generate_faces(N, tmp_path / "s", seed=SEED, progress=False)
    assert files_of(tmp_path / "s") == files_of(ref)


def test_a_second_writer_fails_clearly(tmp_path, capsys):
    with FolderLock(tmp_path / "busy", "another generate"):
        with pytest.raises(FolderBusyError, match=r"another process is writing here \(pid \d+, another generate\)"):
            generate_faces(4, tmp_path / "busy", progress=False)
        assert main(["--n", "4", "--out", str(tmp_path / "busy")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("generate: ") and "another process is writing here" in err
    assert not (tmp_path / "busy" / "image").exists()


def test_a_folder_of_another_configuration_is_refused(ref, tmp_path, capsys):
    r = tmp_path / "r"
    shutil.copytree(ref, r)
    before = files_of(r)
    with pytest.raises(ValueError, match=r"r/manifest.json: folder holds faces made with another configuration"):
        generate_faces(N, r, seed=SEED + 1, progress=False)
    assert main(["--n", str(N + 1), "--out", str(r), "--seed", str(SEED)]) == 2  # more faces: another set too
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "manifest.json" in err and "another configuration" in err
    assert files_of(r) == before


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    for argv, words in ((["--n", "0"], "--n must be >= 1"),
                        (["--n", "2", "--model", "study/no-such-model"], "neither a shipped model"),
                        (["--n", "2", "--model", str(tmp_path / "junk.pt")], "junk.pt: ")):
        assert main([*argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("generate: ") and words in err, err
    assert main(["--n", "2", "--model", "nope", "--out", str(tmp_path / "o")]) == 2
    assert SHIPPED in capsys.readouterr().err  # an unknown name's message lists the shipped models
    assert not list((tmp_path / "o").glob("*/*.png"))


def test_landmarks_are_where_the_rendered_face_is(ref, frontal, face_model):
    """Known answers, independent of how the landmarks are computed: on frontal neutral faces the landmarks are
    left-right symmetric about the nose line, which is the rendered mask's centre, the nose tip is the nearest
    (brightest) pixel of the depth map and the chin point lies on the mask's lower edge; with the photos' fitted
    poses the nose tip turns with the yaw, seen both against the eye corners and against the rendered face; the
    nose and eye points always lie inside the mask."""
    for folder in (ref, frontal):
        meta = load_npz(folder / "meta.npz")
        L, mask, depth = meta["landmarks"], stack(folder, "mask") > 127, stack(folder, "depth")
        # what the meta holds is the face model's landmark projection of the faces written
        want = model_landmarks(face_model, torch.from_numpy(meta["coeffs"]), RenderConfig.from_dict(
            G.json.loads((folder / "manifest.json").read_text())["faces"]["render"]),
            torch.from_numpy(meta["poses"]), torch.from_numpy(meta["expressions"]))
        np.testing.assert_allclose(L, want, atol=1e-4)
        for i in range(N):
            for k in range(27, 48):  # nose and eyes
                assert mask[i, int(L[i, k, 1]), int(L[i, k, 0])], (folder.name, i, k)
        centroid_x = np.array([np.nonzero(m)[1].mean() + 0.5 for m in mask])  # pixel i covers [i, i + 1)
        nose = L[:, 30]
        eyes_x = (L[:, 39, 0] + L[:, 42, 0]) / 2
        if folder == frontal:
            assert np.abs(meta["poses"][:, :3]).max() == 0 and np.abs(meta["expressions"]).max() == 0
            centre = L[:, 27:31, 0].mean(1)  # the nose line
            for left, right in ((36, 45), (39, 42), (31, 35), (48, 54), (17, 26)):
                assert np.abs(L[:, left, 0] + L[:, right, 0] - 2 * centre).max() < 0.5, (left, right)
                assert np.abs(L[:, left, 1] - L[:, right, 1]).max() < 0.5, (left, right)
            assert np.abs(centroid_x - nose[:, 0]).max() < 0.4  # a half-pixel or mirrored x would fail
            nearest = np.array([np.unravel_index(d.argmax(), d.shape) for d in depth])  # (row, col)
            assert np.abs(nearest + 0.5 - nose[:, ::-1]).max() < 1.0
            # the chin point (8) sits on the mask's lower edge in its column: y offsets and flips fail
            chin = L[:, 8]
            bottom = np.array([np.nonzero(m[:, int(x)])[0].max() + 1 for m, x in zip(mask, chin[:, 0])])
            assert np.abs(bottom - chin[:, 1]).max() < 0.75
        else:
            yaw = meta["poses"][:, 0]
            turned = np.abs(yaw) > 5
            assert turned.sum() >= 8
            assert (np.sign(nose[turned, 0] - eyes_x[turned]) == np.sign(yaw[turned])).all()
            assert (np.sign(nose[turned, 0] - centroid_x[turned]) == np.sign(yaw[turned])).all()
            assert np.abs(nose[turned, 0] - eyes_x[turned]).min() > 0.5


def test_depth_and_mask_are_the_depth_sets_for_the_same_draws(ref, tmp_path, face_model):
    """generate's depth and mask are what ``generate_depth_dataset`` renders for the same seed and configuration
    (the same face draws: one convention for both kinds of folder)."""
    import json

    from frankenstein_utils.facemodel.appearance import load_appearance

    faces = json.loads((ref / "manifest.json").read_text())["faces"]
    app = load_appearance()
    d = generate_depth_dataset(N, tmp_path / "d", seed=SEED, render=RenderConfig.from_dict(faces["render"]),
                               model=face_model, progress=False, device="cpu", table=app.fitted_face_params(),
                               pose_source="fitted", expression_source="fitted")
    assert json.loads((d / "config.json").read_text()) == faces
    assert np.array_equal(stack(d, "depth"), stack(ref, "depth")) and np.array_equal(stack(d, "mask"),
                                                                                       stack(ref, "mask"))
    dm = load_npz(d / "meta.npz")
    meta = load_npz(ref / "meta.npz")
    for k in ("coeffs", "poses", "expressions"):
        assert np.array_equal(dm[k], meta[k]), k


def test_dataset_returns_the_written_items(ref, tmp_path):
    ds = GeneratedFaceDataset(ref)
    meta = load_npz(ref / "meta.npz")
    assert len(ds) == N
    for i in (0, 17, N - 1):
        item = ds[i]
        img = load_png(ref / "image" / f"{i:06d}.png")
        assert item["image"].shape == (3, 64, 64) and item["image"].min() >= -1 and item["image"].max() <= 1
        assert torch.equal(item["image"], torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1)
        assert torch.equal(item["landmarks"], torch.from_numpy(meta["landmarks"][i]))
        assert torch.equal(item["pose"], torch.from_numpy(meta["poses"][i]))
        assert torch.equal(item["coeffs"], torch.from_numpy(meta["coeffs"][i]))
        d = load_png(ref / "depth" / f"{i:06d}.png")
        assert torch.equal(item["depth"][0], torch.from_numpy(d.astype(np.float32) / DEPTH_SCALE))
        assert torch.equal(item["mask"][0] > 0, torch.from_numpy(load_png(ref / "mask" / f"{i:06d}.png") > 127))
        assert item["appearance_render"].max() <= 1 and item["index"] == i
    r = tmp_path / "r"
    shutil.copytree(ref, r)
    (r / "image" / "000011.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 24 faces missing.*image/000011.png"):
        GeneratedFaceDataset(r)


def test_a_shipped_model_makes_the_images_and_apply_takes_its_name(ref, tmp_path, capsys):
    """``--model study/U``: the same faces and labels as the raw render (only the images differ); ``apply`` with
    the model's name reproduces those images from the written depth maps (read back at 16 bits), and gives the same
    bytes as with the shipped file's path; a depth set of another convention is refused naming the model."""
    from frankenstein_utils.pretrained.shipped import available, load_pretrained

    assert SHIPPED in available()
    u = tmp_path / "u"
    assert main(["--n", str(N), "--out", str(u), "--seed", str(SEED), "--model", SHIPPED]) == 0
    got, want = files_of(u), files_of(ref)
    for k in want:
        if k.startswith("image/"):
            assert got[k] != want[k]
        elif k != "manifest.json":
            assert got[k] == want[k], k
    diff = np.abs(stack(u, "image").astype(int) - stack(ref, "image").astype(int))
    assert diff.mean() > 5  # a network's faces, not the raw render
    # apply with the name, on generate's depth folder: its manifest gives the convention (checked, not noted)
    capsys.readouterr()
    assert apply_main(["--model", SHIPPED, "--input", str(u / "depth"), "--output", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert f"wrote {N} images" in captured.out and "cannot be checked" not in captured.err
    applied = np.stack([load_png(tmp_path / "a" / f"{i:06d}.png") for i in range(N)]).astype(int)
    gap = np.abs(applied - stack(u, "image").astype(int))
    assert gap.mean() < 0.5 and gap.max() <= 8  # only the 16-bit depth quantisation and rounding differ
    # the shipped file's path (the --checkpoint spelling) gives the same bytes as the name
    shipped_file = load_pretrained(SHIPPED).path
    assert apply_main(["--checkpoint", str(shipped_file), "--input", str(u / "depth"), "--output",
                       str(tmp_path / "b")]) == 0
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")
    # another convention (the default RenderConfig: the face region, fixed depth): refused, one line
    other = generate_depth_dataset(1, tmp_path / "other", render=RenderConfig(resolution=64), progress=False,
                                   device="cpu")
    capsys.readouterr()
    assert apply_main(["--model", SHIPPED, "--input", str(other / "depth"), "--output", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other/config.json" in err and "region: model 'chin', input 'face'" in err
    assert f"load_pretrained('{SHIPPED}').render" in err and not (tmp_path / "c").exists()
    assert apply_main(["--model", "study/no-such-model", "--input", str(u / "depth"), "--output",
                       str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "neither a shipped model" in err and SHIPPED in err


def test_a_training_checkpoint_is_a_model_too(tmp_path, capsys):
    """``--model`` takes a training checkpoint whose inputs were rendered in the appearance model's framing; one
    that does not record its inputs' render is refused in one line."""
    from torch.utils.data import TensorDataset

    from frankenstein_utils.facemodel.appearance import load_appearance
    from frankenstein_utils.train.cli import input_convention
    from frankenstein_utils.train.config import TrainConfig
    from frankenstein_utils.train.trainer import Trainer

    class Pairs(TensorDataset):
        def __getitem__(self, i):
            d, img = super().__getitem__(i)
            return {"image": img, "depth": d, "mask": (d > 0).float(), "index": i}

    g = torch.Generator().manual_seed(0)
    pairs = Pairs(torch.rand(8, 1, 64, 64, generator=g), torch.rand(8, 3, 64, 64, generator=g) * 2 - 1)
    render = load_appearance().render_config()
    for name, conv in (("run", input_convention(render, "test")), ("old", {})):
        c = TrainConfig(image_size=64, width=8, batch_size=4, steps=1, out_dir=str(tmp_path / name), z_dim=4,
                        encoder_width=8, checkpoint_every=1, sample_every=100, log_every=1, input_convention=conv)
        Trainer(c, {"paired": pairs}).fit(progress=False)
    assert main(["--n", "3", "--out", str(tmp_path / "g"), "--model", str(tmp_path / "run" / "checkpoint.pt")]) == 0
    assert GeneratedFaceDataset(tmp_path / "g")[2]["image"].shape == (3, 64, 64)
    capsys.readouterr()
    assert main(["--n", "3", "--out", str(tmp_path / "h"), "--model", str(tmp_path / "old" / "checkpoint.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not record the render of its inputs" in err
