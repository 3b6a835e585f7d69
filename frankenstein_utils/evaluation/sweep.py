"""Robustness over the explorer's range: sweep every shape slider (and a head turn) and judge the faces.

A user of the explorer (``apps.widgets.FaceExplorer``) drags one of the 15 shape sliders to +-3 sigma while the others
stay at 0, or turns the head. A generator can fail there in two ways that the card's numbers (faces drawn from
N(0, I), where +-3 sigma is rare) do not see:

- it **breaks** at the slider ends: the face dissolves (no face found) or turns into colour noise;
- it **ignores** the slider: the same face at every value.

The sweep (``sweep_inputs``): each component k at ``sigmas`` = -3, -1.5, 0, 1.5, 3 sigma (the other components at 0,
neutral pose), and the mean face turned to ``yaws`` = -30 ... 30 degrees; every position is generated with the same
``n_codes`` appearance codes z ~ N(0, I), so that two positions of a slider differ by the slider alone. The faces are
judged by the dlib judges (``judges``: detection, 68 landmarks, 128-D descriptor) and one image statistic, and
``slider_sweep`` reduces each sweep (``"c0"`` ... ``"c14"``, ``"yaw"``) to one headline number:

    score = min(worst_intact, response)                                            in [0, 1], 1 = robust

- ``worst_intact`` (breaks): the lowest share, over the slider's positions, of codes whose image is *intact*: dlib
  finds a face in it AND its high-frequency energy (``high_frequency``) is at most ``noise_tolerance`` = 1.25 times
  that of the same code's face at the slider's centre. Why the second condition: the flagship's colour noise at
  -3 sigma of components 0 and 2 is detected as a face by dlib's HOG detector for every code (its detection rate is
  1.0 there), so detection alone cannot show the break the issue describes; the paired energy ratio is 1.3-2.1 there,
  while a generator that follows the sliders cleanly (``study/U``) stays within 0.92-1.04 over every position.
- ``response`` (ignores): does the face follow the slider, asked of the judge that is built to see that change.
  Shape sliders (``"c<k>"``) change who the face is, so the identity descriptor: ``descriptor_response``, Spearman's
  rank correlation, over all pairs of positions (p, q) and every code, between the slider distance |v_p - v_q| and
  the descriptor distance ||e_p - e_q|| of the two faces with the same code (does the face move further away, by
  dlib's identity network, the further the slider moves?), clipped at 0. A generator that ignores the slider gives
  equal (zero) distances: 0; the depth map itself shown as an image (``reference_sweep``) gives 0.69-0.95 on all
  components but c9 (0.29: c9 barely changes the frontal depth map). A head turn must *not* change who the face is
  (the descriptor is trained to be pose-invariant: a generator that keeps the identity while turning scores a rho
  near 0, ``study/U`` 0.32), so for ``"yaw"`` the landmarks: ``follow`` clipped to [0, 1].

Beside the headline, per sweep: per-position detection rate, landmark NME against the face model's own landmarks (inner
points 17-67, ``evaluation.measures.nme``), energy ratio, intact share, descriptor distance from the centre face, and
``follow`` for every sweep whose model landmarks move enough (``min_motion_px``): the regression gain of dlib's landmark
motion on the model's (``landmark_follow``; 0 = the landmarks stand still, 1 = they move together). Its scale, measured:
a real photo warped with the model's landmark motion (thin-plate spline, ``tests/test_sweep.py``) scores 0.9-1.1 on
components 0 and 5 and 0.76 on the head turn; ``study/U`` 0.42-0.83 on components 0, 5 and 7 and 1.19 on the head turn.
It is the geometric reading of "ignores the slider" for shape too, but most components move the model's landmarks by
less than half a pixel at 64 px (they change depth, not outline), where dlib's landmarks cannot measure it, so the
headline uses the descriptor there.

Head turn: ``yaw_pivot="eyes"`` (default) turns the head about the midpoint of the outer eye corners, i.e. shifts
the turned head sideways so that the eyes stay where they are in the frontal render. That is how the generators'
training photos are framed (CelebA is aligned on the eyes: the poses fitted to them shift x by -0.165 cm per degree
of yaw, which keeps the eyes in place); ``"head"`` turns about the model's origin as ``render.rasterize.apply_pose`` does,
which moves the face 4.8 px sideways at 15 degrees (64 px) - a change of framing as much as a head turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..facemodel.framing import NEUTRAL_POSE, eye_pivot_shift
from ..io.draws import normal
from . import judges as J
from . import measures as M

SWEEP_SIGMAS = (-3.0, -1.5, 0.0, 1.5, 3.0)
SWEEP_YAWS = (-30.0, -15.0, 0.0, 15.0, 30.0)
# An image is "noisy" when its high-frequency energy exceeds its own code's centre face by more than this factor.
# Measured (64 px, 8 codes, all 15 components): study/U 0.92-1.04 everywhere; flagship 0.94-1.19 except the
# colour noise at -3 sigma of c0 (1.34-1.48) and c2 (1.73-2.10) and any head turn about the head centre (1.8-2.4).
NOISE_TOLERANCE = 1.25
# ``follow`` is reported as NaN where the model's inner landmarks move less than this (RMS px, farthest position):
# below it dlib's landmark jitter dominates (measured gains of study/U swing from -1 to 1.3 on such components).
MIN_MOTION_PX = 0.4


# ---- inputs ----------------------------------------------------------------------------------------------------------
@dataclass
class SweepInputs:
    """The sweep's N = (number of sweeps) x (positions) x (codes) inputs, ordered sweep-major, then position, then
    code: ``index(name)`` gives a sweep's rows as a (positions, codes) array."""

    depth: torch.Tensor  # (N, 1, S, S) in [0, 1]
    mask: torch.Tensor  # (N, 1, S, S) float
    landmarks: np.ndarray  # (N, 68, 2) the face model's own landmarks, pixel frame of the depth map
    coeffs: torch.Tensor  # (N, K) shape coefficients in units of sigma
    poses: torch.Tensor  # (N, 6)
    z: torch.Tensor | None  # (N, z_dim) appearance codes, None for z_dim = 0
    sweep: np.ndarray  # (N,) sweep name: "c0" ... "c14", "yaw"
    value: np.ndarray  # (N,) the slider's value: sigma for "c<k>", degrees for "yaw"
    code: np.ndarray  # (N,) appearance-code index
    positions: dict  # {sweep name: tuple of values, in order}

    @property
    def names(self) -> list[str]:
        return list(self.positions)

    def index(self, name: str) -> np.ndarray:
        """Row indices of sweep ``name`` as (positions, codes)."""
        rows = np.nonzero(self.sweep == name)[0]
        return rows.reshape(len(self.positions[name]), -1)

    def centre(self, name: str) -> int:
        """Position index of the slider's 0 (the face the explorer opens with)."""
        return list(self.positions[name]).index(0.0)


def sweep_inputs(model, render, n_components: int = 15, sigmas=SWEEP_SIGMAS, yaws=SWEEP_YAWS, n_codes: int = 8,
                 seed: int = 0, z_dim: int = 8, components=None, yaw_pivot: str = "eyes",
                 base_pose=NEUTRAL_POSE) -> SweepInputs:
    """Depth maps, masks and the face model's own landmarks (``evaluation.context.model_landmarks``) of every sweep:

    - ``"c<k>"`` for k in ``components`` (default ``range(n_components)``): coefficient k at each of ``sigmas``,
      every other coefficient 0, pose ``base_pose`` (neutral: what the explorer shows);
    - ``"yaw"`` (unless ``yaws`` is empty): the mean face turned by each of ``yaws`` degrees about the eyes
      (``yaw_pivot="eyes"``, ``eye_pivot_shift``) or about the head centre (``"head"``).

    Every position is rendered ``n_codes`` times, once per appearance code; the codes z ~ N(0, I) (``z_dim``-D,
    ``io.draws.normal``, seeded) are drawn once and shared by every position, so two positions of one slider with the
    same code differ by the slider alone. Both ranges must contain 0, the centre every measure is taken from."""
    from ..render.rasterize import render_depth
    from .context import model_landmarks

    comps = list(range(n_components)) if components is None else [int(k) for k in components]
    sigmas, yaws = tuple(float(v) for v in sigmas), tuple(float(v) for v in yaws)
    if comps and (0.0 not in sigmas or len(set(sigmas)) < 2):
        raise ValueError(f"sweep_inputs: sigmas must contain 0 (the slider's centre) and another value, got {sigmas}")
    if yaws and (0.0 not in yaws or len(set(yaws)) < 2):
        raise ValueError(f"sweep_inputs: yaws must contain 0 (the frontal face) and another value, got {yaws}")
    if yaw_pivot not in ("eyes", "head"):
        raise ValueError(f"sweep_inputs: yaw_pivot must be 'eyes' or 'head', got {yaw_pivot!r}")
    if n_codes < 1 or not (comps or yaws):
        raise ValueError("sweep_inputs: need n_codes >= 1 and at least one component or yaw")
    width = max(comps, default=0) + 1  # coefficients past the last swept component are 0 anyway
    codes = normal(n_codes, z_dim, generator=torch.Generator().manual_seed(seed)) if z_dim else None

    coeffs, poses, names, values = [], [], [], []
    for k in comps:
        for v in sigmas:
            c = torch.zeros(width)
            c[k] = v
            coeffs.append(c)
            poses.append(torch.tensor(base_pose, dtype=torch.float32))
            names.append(f"c{k}")
            values.append(v)
    if yaws:
        shift = eye_pivot_shift(model, render, yaws, base_pose) if yaw_pivot == "eyes" else torch.zeros(len(yaws))
        for v, dx in zip(yaws, shift):
            p = torch.tensor(base_pose, dtype=torch.float32)
            p[0] += v
            p[4] += dx
            coeffs.append(torch.zeros(width))
            poses.append(p)
            names.append("yaw")
            values.append(v)
    # one render per position, repeated per code (the codes change the generator's output, not its input)
    coeffs, poses = torch.stack(coeffs), torch.stack(poses)
    d, m = render_depth(model, coeffs, render, poses)
    lm = model_landmarks(model, coeffs, render, poses)
    rep = lambda t: t.repeat_interleave(n_codes, 0)
    positions = {}
    for n, v in zip(names, values):
        positions.setdefault(n, []).append(v)
    return SweepInputs(
        depth=rep(d[:, None]), mask=rep(m[:, None].float()), landmarks=np.repeat(lm, n_codes, 0),
        coeffs=rep(coeffs), poses=rep(poses), z=None if codes is None else codes.repeat(len(names), 1),
        sweep=np.repeat(np.array(names), n_codes), value=np.repeat(np.array(values), n_codes),
        code=np.tile(np.arange(n_codes), len(names)), positions={k: tuple(v) for k, v in positions.items()})


# ---- measures --------------------------------------------------------------------------------------------------------
def high_frequency(images) -> np.ndarray:
    """Per image (N, C, H, W) in [-1, 1]: the mean absolute 4-neighbour Laplacian over interior pixels and channels,

        h = mean |4 x[i, j] - x[i-1, j] - x[i+1, j] - x[i, j-1] - x[i, j+1]|,

    the image's energy at the highest spatial frequencies. Colour noise raises it; a smooth face keeps it low. Used
    only as a ratio to the same code's face at the slider's centre, so a generator's own texture cancels."""
    x = torch.as_tensor(images).detach().float().cpu()
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return lap.abs().mean((1, 2, 3)).double().numpy()


def rank_correlation(x, y) -> float:
    """Spearman's rho (Pearson correlation of average ranks, ties share a rank); 0 where either side does not vary
    (e.g. every descriptor distance 0: the face did not change, so it did not follow the slider)."""
    from scipy.stats import rankdata

    rx, ry = rankdata(np.asarray(x, float)), rankdata(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / den) if den > 1e-12 else 0.0


def descriptor_response(emb: np.ndarray, values) -> float:
    """``descriptor_response`` of one sweep: descriptors ``emb`` (P, K, D) of P positions x K codes at slider
    ``values`` (P,). Spearman's rho between |v_p - v_q| and ||e[p, k] - e[q, k]|| over all position pairs p < q and
    codes k (pairs with the same code only: the code's own effect cancels)."""
    v = np.asarray(values, float)
    p, q = np.triu_indices(len(v), 1)
    dist = np.linalg.norm(emb[p] - emb[q], axis=-1)  # (pairs, K)
    return rank_correlation(np.repeat(np.abs(v[p] - v[q]), emb.shape[1]), dist.ravel())


def landmark_follow(pred: np.ndarray, target: np.ndarray, centre: int, points=J.INNER_POINTS) -> float:
    """``follow`` of one sweep: predicted (dlib) and target (face model) landmarks (P, K, 68, 2); displacements from
    the centre position with the same code, dP and dT, over the inner ``points``; the least-squares gain of dP on dT,

        follow = sum <dP, dT> / sum |dT|^2    (over positions, codes, points),

    i.e. the share of the model's landmark motion the generated face's landmarks make: 1 = they move with the model,
    0 = they stand still (the slider is ignored), < 0 = they move the other way."""
    idx = list(points)
    dp = pred[:, :, idx] - pred[centre:centre + 1, :, idx]
    dt = target[:, :, idx] - target[centre:centre + 1, :, idx]
    den = float((dt ** 2).sum())
    return float((dp * dt).sum() / den) if den > 0 else float("nan")


def score_sweeps(inputs: SweepInputs, images, faces: J.FaceAnalysis, noise_tolerance: float = NOISE_TOLERANCE,
                 min_motion_px: float = MIN_MOTION_PX) -> dict:
    """The sweep's numbers from generated ``images`` (N, C, S, S) and the judges' ``faces`` of them (with
    descriptors), in ``inputs``' order. Returns {"sweeps": {name: numbers}, "summary": numbers}; per sweep:

    - ``score``: min(worst_intact, response), the headline (module docstring);
    - ``worst_intact``: min over positions of ``intact`` (breaks);
    - ``response``: max(descriptor_response, 0) for a shape slider, ``follow`` clipped to [0, 1] for ``"yaw"``
      (ignores; the descriptor's rho where ``follow`` cannot be measured);
    - ``worst_detection``: min over positions of ``detection``;
    - ``descriptor_response``: descriptor rank correlation with the slider distance (``descriptor_response``);
    - ``follow``: landmark gain (``landmark_follow``), NaN where ``target_motion`` stays below ``min_motion_px``;
    - ``worst_nme``, ``worst_noise``: max over positions of ``nme`` and ``noise``;
    - per position (lists in ``values`` order): ``detection`` (share of codes with a dlib face), ``nme`` (mean NME,
      inner points, vs the model's landmarks), ``noise`` (median over codes of the high-frequency energy over that
      of the same code's centre face), ``intact`` (share of codes detected and with noise <= ``noise_tolerance``),
      ``change`` (mean descriptor distance to the same code's centre face; dlib calls two faces different people
      above 0.6), ``target_motion`` (RMS displacement of the model's inner landmarks from the centre, px).

    Summary over all sweeps (``summarize``)."""
    found = np.asarray(faces.found, bool)
    emb = np.asarray(faces.embeddings, float)
    nme = M.nme(faces.landmarks, inputs.landmarks, J.INNER_POINTS)["per_face"]
    hf = high_frequency(images)
    inner = list(J.INNER_POINTS)
    sweeps = {}
    for name in inputs.names:
        rows, c = inputs.index(name), inputs.centre(name)
        noise = hf[rows] / np.maximum(hf[rows[c]], 1e-9)[None]
        intact = found[rows] & (noise <= noise_tolerance)
        tgt, pred = inputs.landmarks[rows], np.asarray(faces.landmarks)[rows]
        motion = np.sqrt(((tgt[:, :, inner] - tgt[c:c + 1, :, inner]) ** 2).sum(-1).mean((1, 2)))
        follow = landmark_follow(pred, tgt, c) if motion.max() >= min_motion_px else float("nan")
        rho = descriptor_response(emb[rows], inputs.positions[name])
        # a head turn keeps who the face is (the descriptor ignores pose by design): ask the landmarks instead
        response = float(np.clip(follow, 0, 1)) if name == "yaw" and np.isfinite(follow) else max(rho, 0.0)
        worst_intact = float(intact.mean(1).min())
        sweeps[name] = {
            "score": min(worst_intact, response), "worst_intact": worst_intact, "response": response,
            "worst_detection": float(found[rows].mean(1).min()), "descriptor_response": rho, "follow": follow,
            "worst_nme": float(nme[rows].mean(1).max()), "worst_noise": float(np.median(noise, 1).max()),
            "values": list(inputs.positions[name]),
            "detection": found[rows].mean(1).tolist(), "nme": nme[rows].mean(1).tolist(),
            "noise": np.median(noise, 1).tolist(), "intact": intact.mean(1).tolist(),
            "change": np.linalg.norm(emb[rows] - emb[rows[c]][None], axis=-1).mean(1).tolist(),
            "target_motion": motion.tolist()}
    return {"sweeps": sweeps, "summary": summarize(sweeps)}


def summarize(sweeps: dict) -> dict:
    """Over all sweeps (``score_sweeps``): ``score`` and ``worst_sweep`` (the lowest headline and its sweep),
    ``mean_score``, ``worst_intact``, ``worst_detection`` and ``min_response`` (each the worst over sweeps),
    ``follow`` (median over the sweeps where it is measured), and the sweeps that are ``broken`` (worst_intact < 0.5:
    at some position most codes give no intact face) and that are ``ignored`` (response < 0.5)."""
    worst = min(sweeps, key=lambda n: sweeps[n]["score"])
    follows = [s["follow"] for s in sweeps.values() if np.isfinite(s["follow"])]
    return {"score": sweeps[worst]["score"], "worst_sweep": worst,
            "mean_score": float(np.mean([s["score"] for s in sweeps.values()])),
            "worst_intact": min(s["worst_intact"] for s in sweeps.values()),
            "worst_detection": min(s["worst_detection"] for s in sweeps.values()),
            "min_response": min(s["response"] for s in sweeps.values()),
            "follow": float(np.median(follows)) if follows else float("nan"),
            "broken": [n for n, s in sweeps.items() if s["worst_intact"] < 0.5],
            "ignored": [n for n, s in sweeps.items() if s["response"] < 0.5]}


# ---- the sweep of a generator ----------------------------------------------------------------------------------------
@torch.no_grad()
def generate_all(generate, inputs: SweepInputs, batch_size: int = 256) -> torch.Tensor:
    """``generate(depth, mask, z)`` over the inputs in batches (z None for a generator without codes); a generator
    that reads the faces' parameters (``uses_face_params``: the raw render, buffers generators) gets them too
    (neutral expressions, as the sweep renders)."""
    from .context import call_generator

    out = []
    for s in range(0, len(inputs.depth), batch_size):
        sl = slice(s, s + batch_size)
        z = None if inputs.z is None else inputs.z[sl]
        params = {"coeffs": inputs.coeffs[sl], "poses": inputs.poses[sl], "expressions": None}
        out.append(torch.as_tensor(call_generator(generate, inputs.depth[sl], inputs.mask[sl], z, params)
                                   ).detach().float().cpu())
    return torch.cat(out)


def slider_sweep(generate, model, render, z_dim: int, judges: J.FaceJudges | None = None, fallback_box=None,
                 n_components: int = 15, components=None, sigmas=SWEEP_SIGMAS, yaws=SWEEP_YAWS, n_codes: int = 8,
                 seed: int = 0, yaw_pivot: str = "eyes", base_pose=NEUTRAL_POSE,
                 noise_tolerance: float = NOISE_TOLERANCE, min_motion_px: float = MIN_MOTION_PX,
                 workers: int | None = None, batch_size: int = 256, inputs: SweepInputs | None = None,
                 return_images: bool = False) -> dict:
    """Sweep a generator over the explorer's range and judge it: ``generate(depth (B, 1, S, S), mask (B, 1, S, S) float,
    z (B, z_dim) or None) -> images (B, 3, S, S) in [-1, 1]`` (e.g. ``evaluation.context.generator_fn``), rendered with
    ``render`` (the generator's input convention, e.g. ``PretrainedGenerator.render``; framing "fixed"). ``judges``: a
    ``evaluation.judges.FaceJudges`` (default the shared one); ``fallback_box``: the box (fractions) where dlib finds no
    face (pass the median detection box of real photos, as ``pretrained.scoring.face_scores`` does, to compare NME with
    the card's); ``workers``: processes for dlib. ``inputs``: a ``sweep_inputs`` result to reuse (then the sweep
    arguments are ignored). Returns ``score_sweeps``' numbers (plus the images with ``return_images``)."""
    if inputs is None:
        inputs = sweep_inputs(model, render, n_components, sigmas, yaws, n_codes, seed, z_dim, components,
                              yaw_pivot, base_pose)
    images = generate_all(generate, inputs, batch_size)
    faces = (judges or J.judges()).analyse(images, embed=True, fallback_box=fallback_box, workers=workers)
    out = score_sweeps(inputs, images, faces, noise_tolerance, min_motion_px)
    if return_images:
        out["images"] = images
    return out


def depth_image_generator():
    """The reference control: the depth map itself shown as an image, ``(depth * 2 - 1)`` in grey on three
    channels. It changes with every slider exactly as the input does (its ``descriptor_response`` is what a generator
    that follows the input can reach through dlib's descriptors); dlib seldom finds a face in it, so its
    ``worst_intact`` and ``score`` say nothing."""
    def f(depth, mask, z=None):
        return (depth * 2 - 1).expand(-1, 3, -1, -1)
    f.z_dim = 0
    return f


def reference_sweep(model, render, **kwargs) -> dict:
    """``slider_sweep`` of ``depth_image_generator`` (no appearance codes, one code suffices)."""
    kwargs.setdefault("n_codes", 1)
    return slider_sweep(depth_image_generator(), model, render, z_dim=0, **kwargs)


def format_table(result: dict, reference: dict | None = None) -> str:
    """A plain-text table of ``slider_sweep``'s per-sweep numbers (and the reference's descriptor response)."""
    cols = ("score", "worst_intact", "response", "worst_detection", "descriptor_response", "follow", "worst_noise",
            "worst_nme")
    short = ("score", "intact", "resp", "detect", "rho", "follow", "noise", "nme")
    lines = [f"{'sweep':6s}" + "".join(f" {c:>6s}" for c in short) + (f" {'ref':>6s}" if reference else "")]
    for n, s in result["sweeps"].items():
        line = f"{n:6s}" + "".join(f" {s[c]:6.3f}" for c in cols)
        if reference and n in reference["sweeps"]:
            line += f" {reference['sweeps'][n]['descriptor_response']:6.3f}"
        lines.append(line)
    sm = result["summary"]
    lines.append(f"summary: score {sm['score']:.3f} (worst sweep {sm['worst_sweep']}), mean score "
                 f"{sm['mean_score']:.3f}, worst intact {sm['worst_intact']:.3f}, worst detection "
                 f"{sm['worst_detection']:.3f}, min response {sm['min_response']:.3f}, follow {sm['follow']:.3f}; "
                 f"broken {sm['broken']}, ignored {sm['ignored']}")
    return "\n".join(lines)
