import numpy as np
import pytest
import torch
from PIL import Image

from frankenstein_utils.data.pairs import PairedConfig, PairedFaceDataset
from frankenstein_utils.data.photos import HaarFaceDataset, ImageFolderDataset, mask_boxes
from frankenstein_utils.facemodel.framing import estimate_poses, landmark_frame, rotation_to_angles
from frankenstein_utils.io.paths import find_dataset
from frankenstein_utils.render.rasterize import render_depth, rotation_matrices

TINY = PairedConfig(size=32, limit=60, val_fraction=0.1, test_fraction=0.1, depth_source="landmarks")
TINY_FIT = PairedConfig(size=32, limit=60, val_fraction=0.1, test_fraction=0.1)  # default: fitted-model depth


@pytest.fixture(scope="module")
def paired(tmp_path_factory, face_model):
    cache = tmp_path_factory.mktemp("cache")
    return {s: PairedFaceDataset(s, TINY, cache_dir=cache, model=face_model, progress=False)
            for s in ("train", "val", "test", "all")}


@pytest.fixture(scope="module")
def fitted(paired, face_model):
    cache = paired["all"].cache_path.parent
    return {s: PairedFaceDataset(s, TINY_FIT, cache_dir=cache, model=face_model, progress=False)
            for s in ("train", "all")}


def test_fitted_pairs_are_the_fit_rendered_like_synthetic_inputs(paired, fitted, face_model):
    from frankenstein_utils.facemodel.model import render_faces

    fa, la = fitted["all"], paired["all"]
    assert TINY_FIT.depth_source == "fitted" and fa.cache_path != la.cache_path  # one cache per depth source
    assert np.array_equal(fa.indices, la.indices) and np.array_equal(fa.names, la.names)
    assert fa.stats["fit"]["n_failed"] == 0 and fa.stats["fit"]["residual_cm"]["50"] < 0.3
    # the stored depth is exactly render_faces of the fit through the synthetic render config
    cfg = fa.render_config(face_model)
    idx = [0, 17, 59]
    d, m = render_faces(face_model, torch.from_numpy(fa.fit["coeffs"][idx]), cfg, torch.from_numpy(fa.fit["poses"][idx]),
                        torch.from_numpy(fa.fit["expressions"][idx]))
    assert (fa.depth[idx].float() / 65535 - d).abs().max() <= 1.01 / 65535
    # and it covers the same pixels of the photo as the landmark mesh (the two differ at the forehead and jaw line)
    mf, ml = fa.tensors()[2] > 0, la.tensors()[2] > 0
    iou = (mf & ml).sum((1, 2, 3)).float() / (mf | ml).sum((1, 2, 3)).float()
    assert iou.median() > 0.75 and iou.min() > 0.5
    cf, cl = mask_boxes(mf.float()), mask_boxes(ml.float())
    assert np.median(np.abs(cf[:, 0] - cl[:, 0])) < 1.0  # horizontal centres agree (pixels at 32 px)


def test_synthetic_inputs_draw_the_fitted_distribution(fitted, face_model):
    tr = fitted["train"]
    table = tr.face_params()
    assert len(table.poses) == len(tr) and table.expressions.shape == (len(tr), face_model.n_expressions)
    syn = tr.synthetic(40, seed=3, model=face_model)
    assert syn.config.render == tr.render_config(face_model)
    # every drawn (pose, expression) is one fitted photo's row
    rows = np.concatenate([table.poses, table.expressions], 1)
    drawn = np.concatenate([syn.poses.numpy(), syn.expressions.numpy()], 1)
    assert all((np.abs(rows - r).max(1) == 0).any() for r in drawn)
    assert syn.coeffs.shape == (40, 15) and syn.config.table == table.describe()
    neutral = tr.synthetic(40, seed=3, model=face_model, expressions="neutral", pose="jitter")
    assert neutral.expressions.abs().sum() == 0 and not torch.equal(neutral.poses, syn.poses)
    d, m = syn.render_batch([0, 1])
    assert d.shape == (2, 1, 32, 32) and m.sum() > 0


def test_paired_items_and_split(paired):
    tr, va, te, al = paired["train"], paired["val"], paired["test"], paired["all"]
    assert len(tr) + len(va) + len(te) == len(al) == 60
    assert not set(tr.indices) & set(va.indices) and not set(va.indices) & set(te.indices)
    item = tr[0]
    assert item["image"].shape == (3, 32, 32) and item["depth"].shape == (1, 32, 32)
    assert -1 <= item["image"].min() and item["image"].max() <= 1
    d, m = item["depth"], item["mask"]
    assert (d[m == 0] == 0).all() and (d[m > 0] >= 0.1).all() and d.max() == 1.0  # near = 1 at the nearest point


def test_split_is_saved_and_reused(paired, face_model):
    again = PairedFaceDataset("val", TINY, cache_dir=paired["val"].cache_path.parent, model=face_model)
    assert np.array_equal(again.indices, paired["val"].indices)
    assert paired["val"].cache_path.with_suffix(".json").exists()


def test_landmark_depth_lies_over_the_face(paired):
    assert paired["all"].config.depth_source == "landmarks"
    """The rasterized landmark mask is centred on the landmarks in the (cropped, resized) photo frame."""
    ds = paired["all"]
    lm = np.load(find_dataset("celeba_10k") / "landmarks_mediapipe.npz")
    names, landmarks = list(lm["names"]), lm["landmarks"]  # read once: each npz access decompresses again
    near_frontal = [i for i in range(len(ds)) if abs(ds.poses_all[ds.indices[i], 0]) < 15]
    assert len(near_frontal) > 20
    # A turned head crowds the landmarks of its far side into a few pixels, which pulls their (vertex) centroid
    # away from the area centroid of the mask; near-frontal faces are where the two must agree.
    for i in near_frontal:
        j = names.index(ds.names[ds.indices[i]])
        pts = landmark_frame(landmarks[j:j + 1], TINY.crop, TINY.size)[0]
        mask = ds[i]["mask"][0]
        ys, xs = torch.nonzero(mask, as_tuple=True)
        centroid = np.array([xs.float().mean() + 0.5, ys.float().mean() + 0.5])
        # the landmark centroid is a vertex average, not an area average: allow a few pixels
        assert np.linalg.norm(centroid - pts[:, :2].mean(0)) < 3.0
        box = mask_boxes(mask[None])[0]
        assert abs(box[2] - (pts[:, 0].max() - pts[:, 0].min())) < 2.5


def test_synthetic_framing_matches_real(paired, face_model):
    ds = paired["all"]
    cfg = ds.render_config(face_model)
    assert cfg.region == "chin" and cfg.depth_mode == "relative" and cfg.resolution == 32
    c = face_model.sample_coefficients(40, generator=torch.Generator().manual_seed(0))
    _, m = render_depth(face_model, c, cfg)
    real = np.nanmedian(mask_boxes(ds.tensors()[2]), 0)
    syn = np.nanmedian(mask_boxes(m), 0)
    assert np.all(np.abs(real[:2] - syn[:2]) < 1.5)  # centred alike
    assert np.all(np.abs(real[2:] / syn[2:] - 1) < 0.2)  # similar size


def test_pose_estimation_recovers_known_rotations(face_model):
    """Rotate a symmetric landmark-like shape by known angles; the estimate gets them back."""
    lm = np.load(find_dataset("celeba_10k") / "landmarks_mediapipe.npz")
    base = lm["landmarks"][lm["found"]][:200].mean(0)  # roughly frontal average face, photo pixels
    X = (base - base.mean(0)) * np.array([1.0, -1.0, -1.0])
    true = torch.tensor([[20.0, 0, 0, 1, 0, 0], [0, 12, 0, 1, 0, 0], [0, 0, -9, 1, 0, 0], [-15, 8, 5, 1, 0, 0]])
    R = rotation_matrices(true).numpy()
    shapes = np.einsum("bij,nj->bni", R, X) * np.array([1.0, -1.0, -1.0]) + 50
    # add the unrotated shape many times so the reference (mean) stays frontal
    batch = np.concatenate([shapes, np.repeat(base[None], 60, 0)])
    est = estimate_poses(batch.astype(np.float32))[:4, :3]
    np.testing.assert_allclose(est, true[:, :3].numpy(), atol=2.5)
    np.testing.assert_allclose(rotation_to_angles(R), true[:, :3].numpy(), atol=1e-3)


def test_pose_jitter_from_real_photos(paired, face_model):
    pj = paired["all"].pose_jitter(face_model)
    assert pj.distribution == "normal" and 3 < pj.yaw_deg < 40 and 0 < pj.roll_deg < 15
    assert pj.sample(5).shape == (5, 6)


def test_image_folder_and_bad_files(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((40, 30, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    ds = ImageFolderDataset(tmp_path, size=16)
    assert len(ds) == 4
    x = ds[0]
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1
    with pytest.raises(ValueError, match="broken.jpg"):
        ds[3]  # sorted: 0.png, 1.png, 2.png, broken.jpg
    with pytest.warns(UserWarning, match="broken.jpg"):
        ok = ImageFolderDataset(tmp_path, size=16, grayscale=True, skip_bad=True)
    assert len(ok) == 3 and ok.skipped == 1 and ok[2].shape == (1, 16, 16)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope")


def test_haar_boxes_land_on_the_face_and_skip_non_faces(tmp_path):
    """On CelebA photos the Haar box (margin 0) overlaps the box of the photo's MediaPipe landmarks (IoU > 0.5, the
    landmarks' centre within 8 px of the box's), most photos are found, and a blank image gives no detection."""
    celeba = find_dataset("celeba_10k")
    lms = np.load(celeba / "landmarks_mediapipe.npz")
    names = [str(n) for n in lms["names"][:8]]
    for name in names:
        (tmp_path / name).symlink_to(celeba / "images" / name)
    Image.fromarray(np.full((109, 89, 3), 128, np.uint8)).save(tmp_path / "blank.png")
    ds = HaarFaceDataset(tmp_path, size=32, margin=0.0)
    assert [p.name for p in ds.no_face if p.name == "blank.png"] == ["blank.png"]
    assert len(ds) >= 6 and len(ds) + ds.n_no_face == 9 and ds[0].shape == (3, 32, 32)
    for f, (x0, y0, x1, y1) in ds.items:
        lm = lms["landmarks"][names.index(f.name), :, :2]
        (lx0, ly0), (lx1, ly1) = lm.min(0), lm.max(0)
        inter = max(0, min(x1, lx1) - max(x0, lx0)) * max(0, min(y1, ly1) - max(y0, ly0))
        iou = inter / ((x1 - x0) * (y1 - y0) + (lx1 - lx0) * (ly1 - ly0) - inter)
        centre = np.hypot((x0 + x1) / 2 - lm[:, 0].mean(), (y0 + y1) / 2 - lm[:, 1].mean())
        assert iou > 0.5 and centre < 8, (f.name, iou, centre)