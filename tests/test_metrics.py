"""Each metric is checked on cases whose answer is known, and must order a ladder of known cases correctly:
held-out real photos < real photos degraded (blurred / noised) < depth maps shown as images."""
import math

import pytest
import torch
import torch.nn.functional as F

from frankenstein_utils import metrics as M
from frankenstein_utils.datasets import PairedConfig, PairedFaceDataset

CFG = PairedConfig(size=32, limit=700, val_fraction=0.3, test_fraction=0.0)


@pytest.fixture(scope="module")
def sets(tmp_path_factory, face_model):
    cache = tmp_path_factory.mktemp("metrics")
    tr = PairedFaceDataset("train", CFG, cache_dir=cache, model=face_model, progress=False)
    va = PairedFaceDataset("val", CFG, cache_dir=cache, model=face_model, progress=False)
    ti, td, tm = tr.tensors()
    vi, vd, vm = va.tensors()
    blurred = F.avg_pool2d(F.pad(vi, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    noised = (vi + 0.4 * torch.randn(vi.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    depth_img = (vd * 2 - 1).expand(-1, 3, -1, -1)
    net = M.train_feature_net(ti, steps=250, cache=cache / "feat.pt")
    est = M.train_depth_estimator(ti, td, tm, steps=250, width=8, cache=cache / "depth.pt")
    return dict(train=(ti, td, tm), val=(vi, vd, vm), blurred=blurred, noised=noised, depth_img=depth_img, net=net,
                est=est, cache=cache)


def test_paired_metrics_known_answers():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    m = torch.ones(2, 1, 16, 16)
    r = M.paired_metrics(x, x, m)
    assert r["l1"] == 0 and r["l1_mask"] == 0 and r["ssim"] == pytest.approx(1.0) and math.isinf(r["psnr"])
    y = (x + 0.2).clamp(-1, 1)
    assert M.paired_metrics(y, x, m)["psnr"] < 30


def test_frechet_distance_and_kid_known_answers(sets):
    net, (ti, _, _), (vi, _, _) = sets["net"], sets["train"], sets["val"]
    assert M.frechet_distance(net, vi, vi) == pytest.approx(0.0, abs=1e-3)
    # two halves of the same distribution: KID is unbiased, so it scatters around 0
    a, b = ti[: len(ti) // 2], ti[len(ti) // 2:]
    kid, kid_std = M.kernel_distance(net, a, b, subset_size=100, subsets=50)
    assert abs(kid) < 3 * kid_std + 1e-3


def test_realism_ladder(sets):
    net, (ti, _, _), (vi, _, _) = sets["net"], sets["train"], sets["val"]
    ladder = [vi, sets["blurred"], sets["depth_img"]]
    fd = [M.frechet_distance(net, ti, x) for x in ladder]
    assert fd[0] < fd[1] < fd[2], fd
    fd_noise = M.frechet_distance(net, ti, sets["noised"])
    assert fd[0] < fd_noise < fd[2]
    kid = [M.kernel_distance(net, ti, x)[0] for x in ladder]
    assert kid[0] < kid[1] < kid[2], kid
    acc = [M.classifier_two_sample_test(ti[:len(x)], x, steps=120)["accuracy"] for x in ladder]
    assert acc[0] < 0.65 and acc[0] < acc[1] <= acc[2] and acc[2] > 0.95, acc
    div = [M.mean_pairwise_feature_distance(net, x) for x in (vi, sets["depth_img"])]
    assert div[0] > 0 and div[1] > 0


def test_correspondence_oracle_far_below_shuffled(sets):
    est, (vi, vd, vm) = sets["est"], sets["val"]
    oracle = M.correspondence(est, vi, vd, vm)
    perm = torch.roll(torch.arange(len(vi)), 1)
    shuffled = M.correspondence(est, vi[perm], vd, vm)
    assert oracle["rmse"] < 0.8 * shuffled["rmse"] and oracle["corr"] > shuffled["corr"] + 0.1
    assert oracle["rmse_ci"][1] < shuffled["rmse_ci"][0]  # the intervals do not overlap


def test_scale_shift_alignment_is_invariant():
    t = torch.rand(3, 1, 8, 8)
    m = torch.ones_like(t)
    rmse, corr = M.scale_shift_aligned_error(3 * t - 0.7, t, m)
    assert rmse.max() < 1e-6 and (corr > 0.999).all()
    rmse, corr = M.scale_shift_aligned_error(torch.rand(3, 1, 8, 8), t, m)
    assert rmse.min() > 0.05


def test_wilson_interval_and_identity_auc(sets):
    lo, hi = M.wilson_interval(50, 100)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.19, abs=0.01)
    net, (vi, vd, vm) = sets["net"], sets["val"]
    # "generator" that returns real photos: the same photo for every pose of an identity -> AUC 1
    photos = vi[:5].repeat_interleave(3, 0)
    ident = M.identity_consistency(lambda d, m, z: photos, net, vd[:15], vm[:15], n_ids=5, n_poses=3)
    assert ident["auc"] == 1.0 and ident["within"] == pytest.approx(0.0, abs=1e-5)
    shuffled = M.identity_consistency(lambda d, m, z: vi[:15], net, vd[:15], vm[:15], n_ids=5, n_poses=3)
    assert shuffled["auc"] < 0.8


def test_metric_networks_are_cached(sets):
    assert (sets["cache"] / "feat.pt").exists() and (sets["cache"] / "depth.pt").exists()
    again = M.train_feature_net(sets["train"][0], steps=1, cache=sets["cache"] / "feat.pt")
    x = sets["val"][0][:4]
    torch.testing.assert_close(again(x), sets["net"](x))
