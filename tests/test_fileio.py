"""Safe files (fileio.py) and where they are used: atomic writes keep the umask's mode, a folder lock stops a
second writer, a resume verifies PNGs and removes the temporary files of killed writes, damaged files are named."""
import json
import os
import stat
import warnings

import numpy as np
import pytest

from frankenstein_utils.data.depth_sets import DepthMapDataset, generate_depth_dataset
from frankenstein_utils.io.files import (FolderBusyError, FolderLock, atomic_write_bytes, load_npz, png_is_complete,
                                         remove_orphan_tmp, save_png)
from frankenstein_utils.render.rasterize import RenderConfig


def test_atomic_writes_get_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640  # mkstemp alone gives 0600
        os.umask(0o022)
        save_png(tmp_path / "b.png", np.zeros((2, 2), np.uint8))
        assert stat.S_IMODE((tmp_path / "b.png").stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_folder_lock_and_orphan_cleanup(tmp_path):
    with FolderLock(tmp_path, "first"):
        with pytest.raises(FolderBusyError, match=r"another process is writing here \(pid \d+, first\)"):
            FolderLock(tmp_path, "second").acquire()
    FolderLock(tmp_path, "second").acquire().release()  # free again once released
    assert (tmp_path / ".lock").read_bytes() == b""  # a finished folder's bytes do not depend on its writer's pid
    (tmp_path / "sub").mkdir()
    orphans = [tmp_path / ".a.png.x1.tmp", tmp_path / "sub" / ".b.npy.x2.tmp"]
    for p in orphans:
        p.write_bytes(b"partial")
    keep = tmp_path / "notes.tmp"  # not one of atomic_write_bytes's names
    keep.write_bytes(b"mine")
    assert remove_orphan_tmp(tmp_path) == 2 and not any(p.exists() for p in orphans) and keep.exists()


def test_png_verification_and_damaged_npz_named(tmp_path):
    save_png(tmp_path / "ok.png", np.arange(64, dtype=np.uint16).reshape(8, 8))
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    assert png_is_complete(tmp_path / "ok.png")
    assert not png_is_complete(tmp_path / "cut.png") and not png_is_complete(tmp_path / "empty.png")
    (tmp_path / "meta.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match=r"meta.npz: damaged or not an .npz file"):
        load_npz(tmp_path / "meta.npz")


def test_generation_resume_redoes_damaged_maps_and_cleans_up(tmp_path, face_model):
    kw = dict(render=RenderConfig(resolution=16), model=face_model, progress=False)
    ref = generate_depth_dataset(4, tmp_path / "ref", seed=3, **kw)
    out = generate_depth_dataset(4, tmp_path / "out", seed=3, **kw)
    d1, d2 = out / "depth" / "000001.png", out / "depth" / "000002.png"
    d1.write_bytes(d1.read_bytes()[:30])  # truncated by a crash
    d2.write_bytes(b"")  # zero bytes
    orphan = out / "depth" / ".000003.png.q7.tmp"
    orphan.write_bytes(b"\0" * 100)
    generate_depth_dataset(4, out, seed=3, **kw)
    for name in ("000001.png", "000002.png"):
        assert (out / "depth" / name).read_bytes() == (ref / "depth" / name).read_bytes()
    assert not orphan.exists()
    assert len(DepthMapDataset(out)) == 4
    (out / "meta.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"out/meta.npz: damaged"):
        DepthMapDataset(out)


def test_two_generations_into_one_folder_and_empty_sets_fail(tmp_path, face_model):
    kw = dict(render=RenderConfig(resolution=16), model=face_model, progress=False)
    with FolderLock(tmp_path / "set", "generating depth maps (seed 7)"):  # the first writer is still running
        with pytest.raises(FolderBusyError, match="seed 7"):
            generate_depth_dataset(4, tmp_path / "set", seed=8, **kw)
    assert not (tmp_path / "set" / "meta.npz").exists()
    for bad in (dict(n=0), dict(n=2, truncation=float("nan"))):
        with pytest.raises(ValueError, match="n must be >= 1 and truncation"):
            generate_depth_dataset(out_dir=tmp_path / "bad", **bad, **kw)
    assert not list((tmp_path / "bad").glob("*.png"))


def test_haar_dataset_skips_unreadable_photos_and_warns_when_empty(tmp_path):
    from frankenstein_utils.data.photos import HaarFaceDataset

    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    from PIL import Image

    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(tmp_path / "blank.png")  # readable, no face
    with pytest.warns(UserWarning) as w:
        ds = HaarFaceDataset(tmp_path)
    msgs = [str(x.message) for x in w]
    assert len(ds) == 0 and ds.n_unreadable == 1 and ds.n_no_face == 1
    assert any("broken.jpg" in m for m in msgs) and any("no face found in any of 2 images" in m for m in msgs)
    with warnings.catch_warnings(), pytest.raises(ValueError, match="broken.jpg: cannot read image"):
        warnings.simplefilter("ignore")
        HaarFaceDataset(tmp_path, skip_bad=False)


def _add_rows(path, prefix, n):
    from frankenstein_utils.io.files import update_json

    for i in range(n):
        update_json(path, {f"{prefix}{i}": i})


def test_update_json_keeps_every_writers_rows(tmp_path):
    """Two processes adding rows to one results file (a study split over both cores) lose none of each other's: the
    read-merge-write is done under a lock. Without it, a read between the other's read and write drops rows."""
    import multiprocessing as mp

    path = tmp_path / "results.json"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_add_rows, args=(path, p, 300)) for p in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = json.loads(path.read_text())
    assert len(rows) == 600 and rows["a299"] == 299 and rows["b0"] == 0
