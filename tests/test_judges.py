"""The dlib judges on small real data: each ladder of known cases holds, the real-photo NME oracle is below the
shuffled row, the MediaPipe -> iBUG map generalises to held-out photos, the depth-blind generator cannot fake identity
under the new design (it could under the old one), and bad input fails with a clear error."""
import numpy as np
import pytest
import torch

from frankenstein_utils.data.pairs import PairedConfig, PairedFaceDataset
from frankenstein_utils.evaluation import context as EV
from frankenstein_utils.evaluation import judges as J
from frankenstein_utils.evaluation import measures as M

CFG = PairedConfig(size=64, limit=360, val_fraction=0.0, test_fraction=0.25)
N = 60  # photos per rung: enough for the face-FD ladder in 128-D, few enough for seconds of dlib


@pytest.fixture(scope="module")
def data(tmp_path_factory, face_model):
    cache = tmp_path_factory.mktemp("judges")
    tr = PairedFaceDataset("train", CFG, cache_dir=cache, model=face_model, progress=False)
    te = PairedFaceDataset("test", CFG, cache_dir=cache, model=face_model, progress=False)
    jd = J.judges()
    ti, vi = tr.tensors()[0], te.tensors()[0]
    mp_map = EV.mediapipe_ibug_map(tr, jd, n=150, cache_dir=cache)
    test = jd.analyse(vi)  # the reference (90 photos)
    real = ti[150:150 + N]  # training photos not used by the map
    real_lm = J.map_mediapipe(EV.photo_mediapipe(tr)[150:150 + N], mp_map["W"])
    rungs = {"real": real, "blur2": EV.gaussian_blur(real, 2.0), "noise20": EV.add_noise(real, 20.0),
             "depth": EV.depth_as_image(te.tensors()[1][:N], 3),
             "const": ti.mean(0, keepdim=True).expand(N, -1, -1, -1)}
    faces = {k: jd.analyse(x) for k, x in rungs.items()}
    return dict(tr=tr, te=te, jd=jd, test=test, mp_map=mp_map, faces=faces, rungs=rungs, real_lm=real_lm,
                test_lm=J.map_mediapipe(EV.photo_mediapipe(te), mp_map["W"]), cache=cache)


def test_detection_ladder(data):
    rate = {k: M.detection_rate(f.found)["rate"] for k, f in data["faces"].items()}
    assert rate["real"] > 0.85 and M.detection_rate(data["test"].found)["rate"] > 0.85, rate
    assert rate["real"] > rate["blur2"] + 0.2 and rate["real"] > rate["noise20"] + 0.2, rate
    assert rate["depth"] < rate["real"], rate
    # the blind spot the evaluation reports: one constant mean face is detected although it is no one's photo
    assert rate["const"] == 1.0


def test_face_fd_ladder_and_diversity(data):
    ref = data["test"].embeddings
    fd = {k: M.frechet_distance_features(f.embeddings, ref) for k, f in data["faces"].items()}
    assert fd["real"] < fd["blur2"] < fd["depth"] < fd["const"], fd
    assert fd["real"] < fd["noise20"] < fd["depth"], fd
    div = {k: M.mean_pairwise_distance(f.embeddings) for k, f in data["faces"].items()}
    assert div["const"] < 1e-6 < div["depth"] < div["real"], div
    # different people: dlib's descriptors put most pairs beyond its 0.6 same-person threshold
    assert div["real"] > J.SAME_PERSON_THRESHOLD


def test_nme_oracle_below_shuffled_and_degraded(data):
    test, lm = data["test"], data["test_lm"]
    oracle = M.nme(test.landmarks, lm, J.INNER_POINTS)
    shuffled = M.nme(test.landmarks, np.roll(lm, 1, axis=0), J.INNER_POINTS)
    assert oracle["ci"][1] < shuffled["ci"][0] and oracle["nme"] < 0.06, (oracle["nme"], shuffled["nme"])
    blurred = M.nme(data["faces"]["blur2"].landmarks, data["real_lm"], J.INNER_POINTS)
    real = M.nme(data["faces"]["real"].landmarks, data["real_lm"], J.INNER_POINTS)
    assert real["nme"] < blurred["nme"]  # a degraded face is a worse match to its own landmarks


def test_mediapipe_map_generalises_and_is_deterministic(data):
    W = data["mp_map"]["W"]
    assert W.shape == (68, 468) and np.allclose(W.sum(1), 1) and (W >= 0).all() and ((W > 0).sum(1) <= 6).all()
    # held-out (test) photos where dlib found the face: mapped points within a few % of the eye distance of dlib's
    test, lm = data["test"], data["test_lm"]
    e = M.nme(test.landmarks[test.found], lm[test.found], J.INNER_POINTS)["per_face"]
    assert np.median(e) < 0.05
    again = EV.mediapipe_ibug_map(data["tr"], data["jd"], n=150, cache_dir=None)  # recomputed, not read from cache
    np.testing.assert_allclose(again["W"], W, atol=1e-9)


def test_identity_controls_with_real_descriptors(data, face_model):
    """On dlib's real descriptors: a generator that ignores the depth map and draws the face from the code alone
    (each image its own small noise, so no distance ties) scores ~0.5 under the matched design (it scored ~1 under
    the old design); a pose-following, identity-blind generator (the mean shape's depth shown as an image, every
    identity alike) scores ~0.5 under the matched design and far below it under the same-pose design (the confound);
    a generator that draws the identity from the depth (one real photo per identity, any code or pose) scores 1."""
    tr = data["tr"]
    render, pose = tr.render_config(face_model), tr.pose_jitter(face_model)
    d, m, ids, codes, pidx = EV.identity_set(face_model, render, pose, n_codes=2, n_ids=8, n_poses=3)
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))[torch.from_numpy(codes)]
    imgs = EV.z_only_generator(data["te"].tensors()[0], noise_grey_levels=2.0)(d, m, z)
    emb = data["jd"].analyse(imgs).embeddings
    matched = M.identity_auc(emb, ids, codes, pidx)
    old = M.identity_auc(emb, ids, codes, pidx, "old")
    assert abs(matched["auc"] - 0.5) <= 0.1 and old["auc"] > 0.9, (matched["auc"], old["auc"])
    md, mm = EV.identity_set(face_model, render, pose, 2, 8, 3, mean_shape=True)[:2]
    noisy = EV.with_image_noise(lambda d, m, z=None: EV.depth_as_image(d, 3), 2.0)
    emb = data["jd"].analyse(noisy(md, mm)).embeddings
    assert abs(M.identity_auc(emb, ids, codes, pidx)["auc"] - 0.5) <= 0.1
    assert M.identity_auc(emb, ids, codes, pidx, "same-pose")["auc"] < 0.2
    per_id = data["te"].tensors()[0][torch.from_numpy(ids)]
    emb = data["jd"].analyse(per_id).embeddings
    assert M.identity_auc(emb, ids, codes, pidx)["auc"] == 1.0


def test_landmark_oracle_uses_the_fitted_face_model(data, face_model):
    """The oracle is scored by the definition synthetic targets use: dlib on each test photo vs the face model fitted
    to that photo, projected by ``model_landmarks`` (not dlib vs MediaPipe mapped onto dlib's own markup, which has
    no definitional offset). It is far below another photo's fitted landmarks, and above the MediaPipe-mapped
    oracle (the offset between the two definitions shows)."""
    te = data["te"]
    fitted = EV.photo_fitted_landmarks(face_model, te, data["tr"].render_config(face_model))
    test = data["test"]
    oracle = M.nme(test.landmarks, fitted, J.INNER_POINTS)
    shuffled = M.nme(test.landmarks, np.roll(fitted, 1, axis=0), J.INNER_POINTS)
    mediapipe = M.nme(test.landmarks, data["test_lm"], J.INNER_POINTS)
    assert oracle["ci"][1] < shuffled["ci"][0] and oracle["nme"] < 0.1, (oracle["nme"], shuffled["nme"])
    assert mediapipe["nme"] < oracle["nme"], (mediapipe["nme"], oracle["nme"])


def test_orl_known_identities():
    photos, ids = EV.load_orl(64, n_people=8, per_person=3)
    r = M.identity_auc(J.judges().analyse(photos).embeddings, ids, design="labels")
    assert r["auc"] > 0.9 and r["same_share"] > 0.5, r


def test_model_landmarks_follow_the_render(face_model, data):
    """The face model's projected landmarks sit on its rendered depth: every inner landmark inside the face mask,
    and they move with the pose exactly as the mesh does (a shift of 1 cm moves them by 1 cm in pixels)."""
    tr = data["tr"]
    render, pose = tr.render_config(face_model), tr.pose_jitter(face_model)
    c = face_model.sample_coefficients(4, 15, generator=torch.Generator().manual_seed(1))
    p = pose.sample(4, generator=torch.Generator().manual_seed(2))
    from frankenstein_utils.render.rasterize import render_depth

    _, mask = render_depth(face_model, c, render, p)
    lm = EV.model_landmarks(face_model, c, render, p)
    ij = np.floor(lm[:, 17:]).astype(int)
    inside = mask[np.arange(4)[:, None], ij[..., 1].clip(0, 63), ij[..., 0].clip(0, 63)]
    assert inside.float().mean() > 0.95
    # expressions pass through: neutral weights change nothing, jawOpen moves the lower lip (iBUG 57) down
    e = torch.zeros(4, face_model.n_expressions)
    np.testing.assert_allclose(EV.model_landmarks(face_model, c, render, p, e), lm, atol=1e-3)
    e[:, face_model.expression_index("jawOpen")] = 1
    assert (EV.model_landmarks(face_model, c, render, p, e)[:, 57, 1] - lm[:, 57, 1]).min() > 1
    shifted = p.clone()
    shifted[:, 4] += 1.0
    x0, x1 = render.window_cm[:2]
    np.testing.assert_allclose(EV.model_landmarks(face_model, c, render, shifted)[..., 0] - lm[..., 0],
                               render.resolution / (x1 - x0), rtol=1e-4)
    # the matched framing puts the model's landmarks where the photos' are (mean shapes within 10 % of the eye
    # distance): the NME targets and the photos live in the same frame
    mean_syn = EV.model_landmarks(face_model, face_model.sample_coefficients(64, 15), render,
                                  pose.sample(64)).mean(0, keepdims=True)
    assert M.nme(mean_syn, data["test_lm"].mean(0, keepdims=True), J.INNER_POINTS)["nme"] < 0.1


@pytest.mark.parametrize("bad", [torch.zeros(2, 3, 8, 8), torch.zeros(2, 4, 64, 64), torch.zeros(3, 64, 64),
                                 torch.zeros(2, 3, 64, 48), torch.full((1, 3, 64, 64), float("nan"))])
def test_bad_input_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="face judges"):
        J.judges().analyse(bad)


def test_judges_only_context_for_a_generator(data, face_model, tmp_path):
    """The light path other code uses (model cards, the shipped generator's check): dlib measures only, small sets."""
    ctx = EV.build_context(face_model, data["tr"], data["te"], n_synthetic=12, n_codes=2, n_ids=2, n_poses=2,
                           n_embed=8, n_map=150, orl_people=3, orl_per_person=2, n_test=30, judges_only=True,
                           cache_dir=data["cache"])
    assert ctx.feature_net is None and len(ctx.real_test) == 30 and ctx.syn_landmarks.shape == (12, 68, 2)
    # the reference is the test split, and the "real" rung is other photos (it once compared a set with itself)
    assert torch.equal(ctx.real_test, data["te"].tensors()[0][:30])
    test_bytes = {x.numpy().tobytes() for x in data["te"].tensors()[0]}
    assert not any(x.numpy().tobytes() in test_bytes for x in ctx.real_train)
    const = lambda d, m, z=None: data["tr"].tensors()[0][:1].expand(len(d), -1, -1, -1)  # noqa: E731
    r = EV.evaluate_generator(ctx, const, 0)
    assert {"detection", "nme", "nme_ci", "kid", "kid_se", "face_fd", "face_diversity", "identity_auc",
            "identity_spread", "identity_mean_shape"} <= set(r)
    # one face for every input: no diversity, no spread over identities, identity at chance (all distances tie)
    assert "fd" not in r and r["face_diversity"] == 0 and r["identity_spread"] == 0 and r["identity_auc"] == 0.5
    assert r["n_judged"] == 8 and r["n_reference"] == 30 and np.isnan(r["code_spread"])
    refs = EV.reference_rows(ctx)
    # the oracle row is scored against the photos' fitted landmarks, the MediaPipe-mapped one is a second line
    assert np.array_equal(ctx.test_landmarks, EV.photo_fitted_landmarks(face_model, data["te"],
                                                                       data["tr"].render_config(face_model))[:30])
    assert refs[EV.REFS["test"]]["nme_mediapipe"] != refs[EV.REFS["test"]]["nme"]
    checks = EV.ladder_checks(refs)
    assert "fd" not in checks and {"kid", "face_fd", "detection", "nme", "identity_auc"} <= set(checks)
    table = EV.results_table(refs, {"const": r}, checks)
    assert "| const |" in table and "KID x 10^3" in table.splitlines()[0]


def test_a_generator_that_ignores_its_code_shows_it(data, face_model):
    """Mode collapse made visible: a generator that draws the same face whatever its code (one photo per depth
    map) has code spread 0; one that draws a different photo for every code has a spread near the real photos'."""
    ctx = EV.build_context(face_model, data["tr"], data["te"], n_synthetic=16, n_codes=1, n_ids=2, n_poses=2,
                           n_embed=8, n_map=150, orl_people=2, orl_per_person=2, n_test=30, judges_only=True,
                           cache_dir=data["cache"])
    photos = data["tr"].tensors()[0]
    by_depth = lambda d, m, z=None: photos[(d.flatten(1).sum(1) * 1000).long() % len(photos)]  # noqa: E731
    by_depth.z_dim = 8
    by_code = EV.z_only_generator(photos)
    assert EV.code_spread(ctx, by_depth, 8) == 0
    assert EV.code_spread(ctx, by_code, 8) > 0.7


def test_network_code_spread_shows_what_the_networks_own_code_changes_with_the_input_fixed(data, face_model):
    """Known answers for the code a buffers network reads beside its appearance code z[:, :k]: a generator that
    ignores it scores 0 everywhere; one that paints only the background from it changes nothing inside the face and
    something outside; one that draws another photo for every code spreads like real people; a generator whose
    whole code is appearance has no network code (None)."""
    import hashlib

    ctx = EV.build_context(face_model, data["tr"], data["te"], n_synthetic=16, n_codes=1, n_ids=2, n_poses=2,
                           n_embed=8, n_map=150, orl_people=2, orl_per_person=2, n_test=30, judges_only=True,
                           cache_dir=data["cache"])
    photos = data["tr"].tensors()[0]
    key = lambda *t: int(hashlib.sha1(b"".join(x.numpy().tobytes() for x in t)).hexdigest(), 16)  # noqa: E731

    class Fake:
        k, z_dim, code_dim = 4, 8, 4  # z[:, :4] appearance, z[:, 4:] the network's, as a BufferGenerator's

        def __init__(self, what):
            self.what = what

        def __call__(self, depth, mask, z=None):
            face = [key(d, zi[:self.k] if self.what != "whole" else zi) % len(photos) for d, zi in zip(depth, z)]
            out = photos[face].clone()
            if self.what == "background":
                bg = torch.tanh(z[:, self.k:self.k + 1])[:, :, None, None].expand_as(out)
                out = torch.where(mask.bool().expand_as(out), out, bg)
            return out

    kw = dict(n_maps=8, n_codes=4)
    none = EV.network_code_spread(ctx, Fake("ignores"), **kw)
    assert none["descriptor_share"] == 0 and none["inside"] == 0 and none["outside"] == 0
    assert none["between"] > 0.2 and none["n_maps"] == 8 and none["n_codes"] == 4
    bg = EV.network_code_spread(ctx, Fake("background"), **kw)
    assert bg["inside"] == 0 and bg["outside"] > 0.2
    whole = EV.network_code_spread(ctx, Fake("whole"), **kw)
    assert whole["descriptor_share"] > 0.7 and whole["inside"] > 0.2 and whole["outside"] > 0.2
    assert bg["descriptor_share"] < whole["descriptor_share"] / 2
    appearance_only = Fake("ignores")
    appearance_only.z_dim, appearance_only.code_dim = 4, 0
    assert EV.network_code_spread(ctx, appearance_only, **kw) is None
    # the generators compare scores: the raw render has no network code; a depth-only one's whole code is its own
    from frankenstein_utils.facemodel.appearance import load_appearance
    from frankenstein_utils.facemodel.appearance_render import RawRender

    app = load_appearance()
    assert EV.network_code_spread(ctx, RawRender(face_model, app, app.render_config(), "from-shape"), **kw) is None
    assert EV.network_code_spread(ctx, RawRender(face_model, app, app.render_config(), "from-shape", k=40), **kw) is None
    depth_only = EV.z_only_generator(photos)
    whole_z = EV.network_code_spread(ctx, depth_only, **kw)
    assert whole_z["descriptor_share"] > 0.7 and whole_z["inside"] > 0.2
    with pytest.raises(ValueError, match="pixel_spread: images of shape"):
        M.pixel_spread(photos[:4], ctx.syn_mask[:4])


def test_memorisation_against_a_held_out_split_on_real_photos(data, face_model):
    """Photos of neither split sit at the chance share, blurred or not, where the fixed-threshold share calls blurred
    photos copies; training photos and their 1 px blur are copies (share 1); the context's held-out reference is
    every training photo and the held-out split, judged once and cached, and a generator's row carries the share."""
    jd, tr, te = data["jd"], data["tr"], data["te"]
    ti, vi = tr.tensors()[0], te.tensors()[0]
    ctx = EV.build_context(face_model, tr, te, n_synthetic=8, n_codes=1, n_ids=2, n_poses=2, n_embed=8, n_map=150,
                           orl_people=2, orl_per_person=2, judges_only=True, cache_dir=data["cache"], heldout=te)
    T, V = ctx.copy_reference
    assert T.shape == (len(ti), 128) and V.shape == (len(vi), 128)
    cached = list(data["cache"].glob("copy_reference_*.npz"))
    assert len(cached) == 1 and np.array_equal(EV.copy_reference(jd, tr, te, data["cache"])[0], T)
    # the test split's second half is of neither split when the first half is the held-out one
    H, half = V[:45], slice(45, None)
    queries = {"photos": V[half], **{f"blur{s:g}": jd.analyse(EV.gaussian_blur(vi[half], s)).embeddings
                                     for s in (1.0, 2.0)}}
    for name, q in queries.items():
        r = M.training_neighbour_share(q, T, H)
        assert abs(r["z"]) < 3 and r["null"] == pytest.approx(len(T) / (len(T) + 45)), (name, r)
    thr = {k: M.near_copy_share(q, T)["share"] for k, q in queries.items()}
    assert thr["blur2"] > thr["photos"] + 0.2, thr
    for q in (T[:45], jd.analyse(EV.gaussian_blur(ti[:45], 1.0)).embeddings):
        assert M.training_neighbour_share(q, T, H)["share"] > 0.97
    # a generator's faces: training photos handed back are all copies, held-out photos none
    assert EV.face_judgement(ctx, ti[:8], None)["train_neighbour"] == 1.0
    r = EV.face_judgement(ctx, vi[:8], None)
    assert r["train_neighbour"] == 0.0 and r["train_neighbour_null"] == pytest.approx(len(ti) / (len(ti) + len(vi)))
