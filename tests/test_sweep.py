"""The slider sweep (``frankenstein_utils.evaluation.sweep``) against known answers.

Controls built from real test photos, each a generator that sees only (depth, mask, z) and tells the sweep's
positions apart by their depth maps: a photo whatever the input (ignores every slider: response 0, never breaks),
a photo that turns into pure noise at the slider ends (breaks: worst_intact 0), a photo with colour noise at one end
that dlib still detects (breaks, though the detection rate does not show it), a photo warped with the face model's
landmark motion (follows the sliders), and the depth map itself shown as an image (the reference response).
Small sweeps (components 0 and 2 and the head turn, 2 appearance codes) keep the dlib judging to a few seconds."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from frankenstein_utils.evaluation import judges as J
from frankenstein_utils.evaluation.sweep import (NOISE_TOLERANCE, descriptor_response, high_frequency, landmark_follow,
                                                 rank_correlation, reference_sweep, slider_sweep, sweep_inputs)
from frankenstein_utils.facemodel.framing import OUTER_EYE_CORNERS
from frankenstein_utils.io.draws import normal

COMPONENTS = (0, 2)
N_CODES = 2
SWEEPS = ["c0", "c2", "yaw"]


@pytest.fixture(scope="module")
def setup(face_model):
    """Render convention of the 64 px photos, the first N_CODES test photos dlib finds a face in (photo k is code
    k's face), and the sweep's inputs."""
    from frankenstein_utils.data.pairs import PairedConfig, PairedFaceDataset

    train = PairedFaceDataset("train", PairedConfig(size=64), progress=False)
    test = PairedFaceDataset("test", PairedConfig(size=64), progress=False)
    render = train.render_config(face_model)
    photos = test.tensors()[0][:8]
    photos = photos[J.judges().analyse(photos, embed=False).found][:N_CODES]
    assert len(photos) == N_CODES
    inputs = sweep_inputs(face_model, render, components=COMPONENTS, n_codes=N_CODES)
    return {"model": face_model, "render": render, "photos": photos, "inputs": inputs}


def locator(inputs):
    """``locate(depth, z) -> (rows, codes)``: for each input of a generator call, the first sweep row with that depth
    map (its sweep, value and model landmarks) and the index of its appearance code."""
    first = {}
    for i, d in enumerate(inputs.depth):
        first.setdefault(d.numpy().tobytes(), i)
    codes = inputs.z[:N_CODES]

    def locate(depth, z):
        rows = np.array([first[d.numpy().tobytes()] for d in depth])
        return rows, np.array([int((codes - zi).abs().sum(1).argmin()) for zi in z])
    return locate


def run(setup, generate, **kw):
    return slider_sweep(generate, setup["model"], setup["render"], z_dim=8, inputs=setup["inputs"], **kw)


# ---- the pieces, without dlib ----------------------------------------------------------------------------------------
def test_sweep_inputs_vary_one_slider_and_share_codes(setup, face_model):
    inp = setup["inputs"]
    assert inp.names == SWEEPS and len(inp.depth) == 3 * 5 * N_CODES
    assert inp.depth.shape[1:] == (1, 64, 64) and inp.landmarks.shape == (len(inp.depth), 68, 2)
    for k in COMPONENTS:
        rows = inp.index(f"c{k}")
        assert rows.shape == (5, N_CODES)
        c = inp.coeffs[rows[:, 0]]
        assert torch.equal(c[:, k], torch.tensor([-3, -1.5, 0, 1.5, 3.0]))
        assert c.abs().sum() == c[:, k].abs().sum()  # every other slider at 0
        assert torch.equal(inp.poses[rows[:, 0]], torch.tensor([[0, 0, 0, 1, 0, 0.0]]).repeat(5, 1))
    for name in SWEEPS:  # every position sees the same codes
        rows = inp.index(name)
        assert torch.equal(inp.z[rows[:, 0]], inp.z[rows[:1, 0]].expand(5, -1))
        assert not torch.equal(inp.z[rows[0, 0]], inp.z[rows[0, 1]])
    centres = [inp.depth[inp.index(n)[inp.centre(n), 0]] for n in SWEEPS]
    assert all(torch.equal(centres[0], c) for c in centres)  # the centre is one face
    yaw = inp.index("yaw")[:, 0]
    eyes_x = inp.landmarks[yaw][:, list(OUTER_EYE_CORNERS), 0].mean(1)
    assert np.ptp(eyes_x) < 1e-3  # turned about the eyes
    yaw_only = sweep_inputs(face_model, setup["render"], components=(), n_codes=1)
    assert yaw_only.names == ["yaw"] and np.ptp(yaw_only.landmarks[:, list(OUTER_EYE_CORNERS), 0].mean(1)) < 1e-3
    head = sweep_inputs(face_model, setup["render"], components=(), n_codes=1, yaw_pivot="head")
    assert np.ptp(head.landmarks[:, list(OUTER_EYE_CORNERS), 0].mean(1)) > 10  # about the head centre: moves
    with pytest.raises(ValueError, match="contain 0"):
        sweep_inputs(face_model, setup["render"], sigmas=(-3, 3), n_codes=1)


def test_measures_on_known_values():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(5, 2, 68, 2)) * 3
    still = np.repeat(target[2:3], 5, 0)
    assert landmark_follow(still + (target - still) * 0.5, target, 2) == pytest.approx(0.5)
    assert landmark_follow(still, target, 2) == 0
    v = np.array([-3, -1.5, 0, 1.5, 3.0])
    direction = rng.normal(size=128)
    emb = np.broadcast_to(v[:, None, None] * direction, (5, 2, 128))  # two codes, the same straight path
    assert descriptor_response(emb, v) == pytest.approx(1.0)  # further along the slider, further away
    assert descriptor_response(np.ones((5, 2, 128)), v) == 0  # the same face everywhere
    assert rank_correlation([1, 2, 3], [5, 5, 5]) == 0
    flat, noise = torch.zeros(1, 3, 16, 16), torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert high_frequency(flat)[0] == 0 and high_frequency(noise)[0] > 0.5


# ---- known-answer controls, judged by dlib ---------------------------------------------------------------------------
def test_a_fixed_photo_ignores_every_slider(setup):
    photo = setup["photos"][:1]
    r = run(setup, lambda d, m, z: photo.expand(len(d), -1, -1, -1))
    for name, s in r["sweeps"].items():
        assert s["descriptor_response"] == 0 and s["response"] == 0 and s["score"] == 0, name
        assert s["worst_detection"] == 1 and s["worst_intact"] == 1, name  # a face at every position
    assert r["sweeps"]["c0"]["follow"] == 0 and r["sweeps"]["yaw"]["follow"] == 0  # landmarks stand still
    assert r["summary"]["ignored"] == SWEEPS and r["summary"]["broken"] == []


def test_noise_at_the_slider_ends_breaks(setup):
    inp, photos, locate = setup["inputs"], setup["photos"], locator(setup["inputs"])

    def f(depth, mask, z):
        rows, codes = locate(depth, z)
        out = photos[codes].clone()
        for i, r in enumerate(rows):
            if abs(inp.value[r]) == max(abs(v) for v in inp.positions[inp.sweep[r]]):
                out[i] = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(int(r))) * 2 - 1
        return out
    r = run(setup, f)
    for name, s in r["sweeps"].items():
        assert s["detection"] == [0, 1, 1, 1, 0], name
        assert s["worst_detection"] == 0 and s["worst_intact"] == 0 and s["score"] == 0, name
    assert r["summary"]["broken"] == SWEEPS and r["summary"]["score"] == 0


def test_colour_noise_that_dlib_still_detects_counts_as_broken(setup):
    """The flagship's failure: at -3 sigma the face is drawn through colour noise and dlib still finds it."""
    inp, photos, locate = setup["inputs"], setup["photos"], locator(setup["inputs"])

    def f(depth, mask, z):
        rows, codes = locate(depth, z)
        out = photos[codes].clone()
        low = torch.tensor([inp.value[r] == min(inp.positions[inp.sweep[r]]) for r in rows])
        g = torch.Generator().manual_seed(0)
        noisy = (out + 10 / 127.5 * normal(*out.shape, generator=g)).clamp(-1, 1)  # 10 grey levels
        return torch.where(low[:, None, None, None], noisy, out)
    r = run(setup, f)
    for name, s in r["sweeps"].items():
        assert s["worst_detection"] == 1, name  # detection alone would pass it
        assert s["noise"][0] > NOISE_TOLERANCE and s["intact"] == [0, 1, 1, 1, 1], name
        assert s["worst_intact"] == 0 and s["score"] == 0, name


def warp_follower(setup):
    """Photo k warped so that its points move as the face model's landmarks move from the slider's centre to the
    input (a thin-plate spline through the 68 landmark displacements, the frame's border held still): a real face
    that follows every slider as far as a 2-D warp can. Warped at 4x the size and averaged back, so that every
    position (the centre's identity warp too) is resampled alike."""
    from scipy.interpolate import RBFInterpolator

    inp, photos, locate = setup["inputs"], setup["photos"], locator(setup["inputs"])
    S, up = photos.shape[-1], 4
    big = F.interpolate(photos, scale_factor=up, mode="bicubic", align_corners=False)
    t = (torch.arange(S * up, dtype=torch.float64) + 0.5) / up  # pixel centres of the big image, in 64 px units
    pixels = torch.stack(torch.meshgrid(t, t, indexing="xy"), -1).reshape(-1, 2).numpy()
    border = np.array([[x, y] for x in (0, S / 2, S) for y in (0, S / 2, S) if (x, y) != (S / 2, S / 2)], float)

    def f(depth, mask, z):
        rows, codes = locate(depth, z)
        grids = []
        for r in rows:
            name = inp.sweep[r]
            centre = inp.landmarks[inp.index(name)[inp.centre(name), 0]]
            at = np.r_[inp.landmarks[r], border]  # output points ...
            back = np.r_[centre - inp.landmarks[r], np.zeros_like(border)]  # ... and where they come from
            src = pixels + RBFInterpolator(at, back, kernel="thin_plate_spline")(pixels)
            grids.append(torch.from_numpy(2 * src / S - 1).float().view(S * up, S * up, 2))
        warped = F.grid_sample(big[codes], torch.stack(grids), padding_mode="border", align_corners=False)
        return F.avg_pool2d(warped, up).clamp(-1, 1)
    return f


def test_faces_that_follow_the_depth_respond(setup):
    fixed = run(setup, lambda d, m, z: setup["photos"][:1].expand(len(d), -1, -1, -1))
    r = run(setup, warp_follower(setup))
    for name, s in r["sweeps"].items():
        assert s["response"] > fixed["sweeps"][name]["response"] + 0.5, name  # the fixed photo's is 0
    for name in ("c0", "c2"):  # warped photos stay whole faces (a 30 degree warp of a frontal photo may not)
        s = r["sweeps"][name]
        assert s["worst_intact"] == 1 and s["descriptor_response"] > 0.6 and s["score"] > 0.6, name
    assert r["sweeps"]["c0"]["follow"] > 0.5 and r["sweeps"]["yaw"]["follow"] > 0.5
    ref = reference_sweep(setup["model"], setup["render"], components=COMPONENTS)
    assert ref["sweeps"]["c0"]["descriptor_response"] > 0.5 and ref["sweeps"]["c2"]["descriptor_response"] > 0.5
