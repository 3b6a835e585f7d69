import hashlib
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from frankenstein_utils.data.depth_sets import (DEPTH_SCALE, DepthMapDataset, RenderedDepthDataset,
                                                generate_depth_dataset)
from frankenstein_utils.facemodel.model import read_ply
from frankenstein_utils.render.rasterize import PoseJitter, RenderConfig

RC = RenderConfig(resolution=64)


def digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path, face_model):
    # byte-reproducibility holds per device (a CUDA render may differ in the last bit): compare on one, pinned
    a = generate_depth_dataset(10, tmp_path / "a", seed=5, render=RC, model=face_model, progress=False, device="cpu")
    b = generate_depth_dataset(10, tmp_path / "b", seed=5, render=RC, model=face_model, progress=False, device="cpu")
    c = generate_depth_dataset(10, tmp_path / "c", seed=6, render=RC, model=face_model, progress=False, device="cpu")
    assert digest(a) == digest(b) != digest(c)
    assert len(list((a / "depth").glob("*.png"))) == 10 and len(list((a / "mask").glob("*.png"))) == 10
    meta = np.load(a / "meta.npz")
    assert meta["coeffs"].shape == (10, 15) and meta["poses"].shape == (10, 6)
    assert '"resolution": 64' in str(meta["config"])


def test_resume_does_not_redo_finished_files(tmp_path, face_model):
    kw = dict(seed=1, render=RC, model=face_model, progress=False, pose=PoseJitter(yaw_deg=10))
    full = generate_depth_dataset(9, tmp_path / "full", **kw)
    part = tmp_path / "part"
    generate_depth_dataset(9, part, **kw)
    # simulate an interruption: some faces never written, one left with its mask but not its depth
    for i in (4, 5, 8):
        (part / f"depth/{i:06d}.png").unlink()
    (part / "mask/000008.png").unlink()
    kept = {i: os.stat(part / f"depth/{i:06d}.png").st_mtime_ns for i in (0, 3, 7)}
    generate_depth_dataset(9, part, **kw)
    assert digest(part) == digest(full)
    assert all(os.stat(part / f"depth/{i:06d}.png").st_mtime_ns == t for i, t in kept.items())
    assert not list(part.rglob("*.tmp"))


def test_other_config_in_same_folder_is_refused(tmp_path, face_model):
    generate_depth_dataset(3, tmp_path, seed=0, render=RC, model=face_model, progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        generate_depth_dataset(3, tmp_path, seed=1, render=RC, model=face_model, progress=False)


def test_dataset_reads_back_what_was_rendered(tmp_path, face_model):
    root = generate_depth_dataset(12, tmp_path, seed=2, render=RC, model=face_model, write_ply=True, progress=False)
    ds = DepthMapDataset(root)
    live = RenderedDepthDataset(12, seed=2, render=RC, model=face_model)
    assert len(ds) == len(live) == 12
    for i in (0, 7, 11):
        a, b = ds[i], live[i]
        assert a["depth"].shape == (1, 64, 64) and a["depth"].dtype == torch.float32
        assert torch.equal(a["mask"], b["mask"])
        # 16-bit PNG keeps the depth to one level (1/65535); batch size may move a value across a level
        assert (a["depth"] - b["depth"]).abs().max() <= 1.01 / DEPTH_SCALE
        assert torch.equal(a["coeffs"], b["coeffs"])
    batch = next(iter(DataLoader(ds, batch_size=5)))
    assert batch["depth"].shape == (5, 1, 64, 64) and batch["coeffs"].shape == (5, 15)
    v, f = read_ply(root / "ply/000003.ply")
    np.testing.assert_allclose(v, face_model.vertices(ds.coeffs[3:4], "face")[0].numpy(), atol=1e-5)
    assert f.shape == (38052, 3)


def test_dataset_errors_name_the_file(tmp_path, face_model):
    with pytest.raises(FileNotFoundError, match="meta.npz"):
        DepthMapDataset(tmp_path)
    root = generate_depth_dataset(3, tmp_path / "s", seed=0, render=RC, model=face_model, progress=False)
    (root / "depth/000001.png").write_bytes(b"not a png")
    ds = DepthMapDataset(root)
    with pytest.raises(ValueError, match="000001.png"):
        ds[1]
    (root / "depth/000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 3 depth maps missing"):
        DepthMapDataset(root)


def test_fitted_pose_and_expression_table(tmp_path, face_model):
    from frankenstein_utils.facemodel.fitting import FittedFaceParams

    g = np.random.default_rng(0)
    poses = np.zeros((5, 6), np.float32)
    poses[:, 0] = np.arange(5) * 5.0  # distinct yaws identify the rows
    poses[:, 3] = 1
    expr = np.zeros((5, face_model.n_expressions), np.float32)
    expr[:, face_model.expression_index("jawOpen")] = np.arange(5) / 5
    table = FittedFaceParams(poses, expr, source="test")
    root = generate_depth_dataset(6, tmp_path / "t", seed=1, render=RC, model=face_model, write_ply=True,
                                  progress=False, table=table, pose_source="fitted", expression_source="fitted")
    ds = DepthMapDataset(root)
    rows = (ds.poses[:, 0] / 5).round().long()
    assert torch.equal(ds.expressions[:, face_model.expression_index("jawOpen")], torch.from_numpy(expr[rows, 26]))
    assert ds.config.table == table.describe() and ds.config.expression_source == "fitted"
    i = int(torch.argmax(ds.expressions.sum(1)))
    v, _ = read_ply(root / f"ply/{i:06d}.ply")
    from frankenstein_utils.render.rasterize import apply_pose
    expect = apply_pose(face_model.vertices(ds.coeffs[i:i + 1], "face", ds.expressions[i:i + 1]), ds.poses[i:i + 1])
    np.testing.assert_allclose(v, expect[0].numpy(), atol=1e-4)
    live = RenderedDepthDataset(6, seed=1, render=RC, model=face_model, table=table, pose_source="fitted",
                                expression_source="fitted")
    assert (live[i]["depth"] - ds[i]["depth"]).abs().max() <= 1.01 / DEPTH_SCALE
    with pytest.raises(ValueError, match="no FittedFaceParams table"):
        RenderedDepthDataset(2, render=RC, model=face_model, expression_source="fitted")
    with pytest.raises(ValueError, match="expression_source"):
        RenderedDepthDataset(2, render=RC, model=face_model, expression_source="smiling")
