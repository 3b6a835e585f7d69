"""Each metric is checked on cases whose answer is known, and must order a ladder of known cases correctly:
held-out real photos < real photos degraded (blurred / noised) < depth maps shown as images."""
import math

import numpy as np
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
    # (the old design: identity and code change together), on the feature net's embeddings
    ids, poses = np.arange(5).repeat(3), np.tile(np.arange(3), 5)
    photos = vi[:5].repeat_interleave(3, 0)
    ident = M.identity_auc(M.features(net, photos).numpy(), ids, ids, poses, design="old", threshold=1e-5)
    assert ident["auc"] == 1.0 and ident["same_share"] == 1.0
    shuffled = M.identity_auc(M.features(net, vi[:15]).numpy(), ids, ids, poses, design="old")
    assert shuffled["auc"] < 0.8


def test_metric_networks_are_cached(sets):
    assert (sets["cache"] / "feat.pt").exists() and (sets["cache"] / "depth.pt").exists()
    again = M.train_feature_net(sets["train"][0], steps=1, cache=sets["cache"] / "feat.pt")
    x = sets["val"][0][:4]
    torch.testing.assert_close(again(x), sets["net"](x))


# ---- metrics of the dlib judges: known answers without dlib (fast) -------------------------------------------------
def test_pair_auc_known_answers():
    assert M.pair_auc([0.1, 0.2], [0.5, 0.6])["auc"] == 1.0
    assert M.pair_auc([0.5, 0.6], [0.1, 0.2])["auc"] == 0.0
    assert M.pair_auc([0.0, 0.0], [0.0, 0.0, 0.0])["auc"] == 0.5  # ties count one half
    r = M.pair_auc([0.1, 0.3], [0.2, 0.4])
    assert r["auc"] == 0.75 and r["ci"][0] < 0.75 < r["ci"][1]


def test_identity_pair_designs():
    # 2 codes x 3 identities x 2 poses, code-major as evaluation.identity_set orders them
    codes, ids, poses = (a.ravel() for a in np.meshgrid(np.arange(2), np.arange(3), np.arange(2), indexing="ij"))
    (pi, pj), (ni, nj) = M.identity_pairs(ids, codes, poses, "new")
    assert (ids[pi] == ids[pj]).all() and (codes[pi] == codes[pj]).all() and (poses[pi] != poses[pj]).all()
    assert (ids[ni] != ids[nj]).all() and (codes[ni] == codes[nj]).all() and (poses[ni] == poses[nj]).all()
    assert len(pi) == 2 * 3 and len(ni) == 2 * 3 * 2
    (_, _), (ni, nj) = M.identity_pairs(ids, codes, poses, "old")
    assert (codes[ni] != codes[nj]).all() and (ids[ni] != ids[nj]).all()
    # an output that depends on the code only: indistinguishable under the new design, "perfect" under the old
    emb = np.eye(2)[codes]
    assert M.identity_auc(emb, ids, codes, poses, "new")["auc"] == 0.5
    assert M.identity_auc(emb, ids, codes, poses, "old")["auc"] == 1.0
    # an output that depends on the identity only wins under both
    emb = np.eye(3)[ids]
    assert M.identity_auc(emb, ids, codes, poses, "new")["auc"] == 1.0
    with pytest.raises(ValueError, match="design"):
        M.identity_pairs(ids, codes, poses, "sideways")


def test_nme_known_answers():
    t = np.random.default_rng(0).random((5, 68, 2)) * 40
    t[:, 36], t[:, 45] = [10, 20], [30, 20]  # outer eye corners 20 px apart
    assert M.nme(t, t)["nme"] == 0
    shifted = t + np.array([2.0, 0.0])  # every point 2 px off: 2 / 20
    assert M.nme(shifted, t, range(17, 68))["nme"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="nme"):
        M.nme(t[:, :10], t)


def test_frechet_distance_known_answers_with_fewer_samples_than_dimensions():
    """The regime in use (64 descriptors of 128 dimensions: both covariances singular). Exact answers that hold for
    any sample: a shift m gives |m|^2 (same covariance); doubling gives |mean|^2 + Tr C (Tr(C + 4C - 2 (4 C^2)^(1/2)))."""
    g = np.random.default_rng(0)
    a = 0.06 * g.normal(size=(64, 128))
    m = np.full(128, 0.01)
    C = np.cov(a, rowvar=False)
    assert M.frechet_distance_features(a, a + m) == pytest.approx((m ** 2).sum(), abs=1e-6)
    assert M.frechet_distance_features(a, 2 * a) == pytest.approx((a.mean(0) ** 2).sum() + np.trace(C), abs=1e-6)
    assert M.frechet_distance_features(a, a) == pytest.approx(0.0, abs=1e-6)


def test_embedding_frechet_distance_and_diversity_known_answers():
    g = np.random.default_rng(0)
    a = g.normal(size=(4000, 3))
    assert M.frechet_distance_features(a, a) == pytest.approx(0.0, abs=1e-6)
    # N(0, I) vs N(m, 4 I) in 3-D: |m|^2 + 3 (1 + 4 - 2 * 2) = |m|^2 + 3
    b = np.array([1.0, 0.0, 0.0]) + 2 * g.normal(size=(4000, 3))
    assert M.frechet_distance_features(a, b) == pytest.approx(1 + 3, rel=0.1)
    assert M.mean_pairwise_distance(np.zeros((5, 3))) == 0
    assert M.mean_pairwise_distance(np.array([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    r = M.detection_rate([True, True, False, True])
    assert r["rate"] == 0.75 and r["ci"][0] < 0.75 < r["ci"][1] and r["n"] == 4
