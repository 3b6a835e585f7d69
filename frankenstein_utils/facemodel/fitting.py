"""Fit the face model (identity + expression + pose) to MediaPipe FaceMesh landmarks of photos.

Two steps, both batched numpy:

1. ``derive_correspondence``: which ICT vertex each of MediaPipe's 468 landmarks sits on, and which MediaPipe
   landmark carries each point of the 68-point (iBUG) markup. Derived from the data, not typed in: the mean
   MediaPipe shape over all detected photos (generalised Procrustes) is aligned to the ICT mean face, first on eight
   named points (outer and inner eye corners, mouth corners, nose tip, chin), then on the 51 inner points of the 68
   markup (each ICT landmark vertex paired with its nearest MediaPipe point, re-paired after each alignment until
   the pairing is stable); every MediaPipe point then takes its nearest vertex of the narrow face.
2. ``fit_landmarks``: per photo, a scaled-orthographic (similarity) pose, K identity coefficients with the model's
   N(0, 1) prior and the expression weights in [0, 1] with a ridge prior, strong for the blendshapes the landmarks
   cannot see (eye gaze moves the eyeballs, which carry no landmark). Alternates Procrustes for the pose with a
   bounded ridge solve for the shape; the solve's normal matrix is the same for every photo, so each iteration is a
   few matrix products over the whole batch.

Frames: photo landmarks are pixels (x right, y down, z smaller = nearer); the fit works in a y-up, z-toward-viewer
frame (x, -y, -z) so that it is a similarity of the model frame (cm, +Y up, +Z toward the viewer).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .model import NARROW_FACE, FaceModel

# Named seed points for the first alignment, (MediaPipe index, index in the 68 markup): outer / inner eye corners of
# the subject's right and left eye, mouth corners, nose tip, chin (MediaPipe numbering from its documentation).
SEED_PAIRS = ((33, 36), (133, 39), (362, 42), (263, 45), (61, 48), (291, 54), (1, 30), (152, 8))
INNER68 = np.arange(17, 68)  # the 68-markup points on fixed vertices; 0-16 are jawline substitutes
FLIP = np.array([1.0, -1.0, -1.0])  # photo pixels (y down, z smaller = nearer) <-> y-up, z-toward-viewer


# ---- similarity alignment -------------------------------------------------------------------------------------------
def similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None):
    """Batched least-squares similarity ``dst ~ s R src + t`` (Umeyama): src, dst (B, N, 3) or (N, 3);
    returns s (B,), R (B, 3, 3) proper rotations, t (B, 3)."""
    src, dst = np.broadcast_arrays(src if src.ndim == 3 else src[None], dst if dst.ndim == 3 else dst[None])
    w = np.ones(src.shape[1]) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    mu_s, mu_d = (src * w[:, None]).sum(1), (dst * w[:, None]).sum(1)
    a, b = src - mu_s[:, None], dst - mu_d[:, None]
    H = (b * w[:, None]).transpose(0, 2, 1) @ a  # cov(dst, src)
    U, S, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.ones((len(H), 3))
    D[:, 2] = d
    R = U @ (D[:, :, None] * Vt)
    var = ((a * a).sum(2) * w).sum(1)
    s = (S * D).sum(1) / var
    t = mu_d - s[:, None] * (R @ mu_s[:, :, None])[:, :, 0]
    return s, R, t


def mean_landmark_shape(landmarks: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Generalised Procrustes mean (468, 3) of landmark sets (B, 468, 3) given in photo pixels; y-up frame, unit
    RMS size, centred."""
    X = landmarks.astype(np.float64) * FLIP
    ref = X[0] - X[0].mean(0)
    for _ in range(iterations):
        s, R, t = similarity(X, ref[None].repeat(len(X), 0))
        aligned = s[:, None, None] * (X @ R.transpose(0, 2, 1)) + t[:, None]
        ref = aligned.mean(0)
        ref -= ref.mean(0)
        ref /= np.sqrt((ref ** 2).sum(1).mean())
    return ref


# ---- correspondence -------------------------------------------------------------------------------------------------
@dataclass
class Correspondence:
    """``vertex[i]``: ICT vertex under MediaPipe landmark i (468,); ``mp68[j]``: MediaPipe landmark carrying point j
    of the 68 markup (68,); ``align_error_cm``: distance of each of the 51 inner pairs after the final alignment;
    ``vertex_error_cm``: distance of each aligned MediaPipe point to its vertex (both in the ICT mean's cm)."""

    vertex: np.ndarray
    mp68: np.ndarray
    align_error_cm: np.ndarray
    vertex_error_cm: np.ndarray
    iterations: int


def _nearest(points: np.ndarray, cloud: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d2 = ((points[:, None, :] - cloud[None]) ** 2).sum(-1)
    j = d2.argmin(1)
    return j, np.sqrt(d2[np.arange(len(points)), j])


def derive_correspondence(model: FaceModel, landmarks: np.ndarray, max_iter: int = 10, refine: int = 2
                          ) -> Correspondence:
    """Dense MediaPipe-468 <-> ICT correspondence from detected landmarks (B, 468, 3) (photo pixels, no NaN rows);
    see the module docstring. The 68-markup pairing is one-to-one (an assignment, so the closed inner lips of the
    ICT mean cannot give two markup points one landmark). ``refine`` rounds then fit the model (identity and
    expression) to the mean landmark shape and take the nearest vertices on that fitted mesh, so that a mean shape
    with a slightly open mouth pairs upper-lip points with upper-lip vertices. Deterministic for the same input."""
    from scipy.optimize import linear_sum_assignment

    if model.landmarks68 is None:
        raise ValueError(f"{model.source}: the face model has no 68-point landmarks (ict_expression_model.npz)")
    mp_mean = mean_landmark_shape(landmarks)
    ict = model.mean.numpy().astype(np.float64)
    lm68_idx = model.landmarks68.numpy()
    seed_mp, seed_68 = map(list, zip(*SEED_PAIRS))
    s, R, t = similarity(mp_mean[seed_mp], ict[lm68_idx[seed_68]])
    mesh = ict
    for r in range(refine + 1):
        lm68 = mesh[lm68_idx]
        mp68_inner = None
        for it in range(1, max_iter + 1):
            aligned = s[0] * mp_mean @ R[0].T + t[0]
            d = np.linalg.norm(lm68[INNER68][:, None] - aligned[None], axis=2)
            pairs = linear_sum_assignment(d)[1]
            if mp68_inner is not None and np.array_equal(pairs, mp68_inner):
                break
            mp68_inner = pairs
            s, R, t = similarity(mp_mean[mp68_inner], lm68[INNER68])
        aligned = s[0] * mp_mean @ R[0].T + t[0]
        narrow = mesh[NARROW_FACE[0]:NARROW_FACE[1]]  # skin only: eyeballs and teeth carry no landmark
        vertex, vertex_err = _nearest(aligned, narrow)
        vertex = vertex + NARROW_FACE[0]
        if r < refine:  # deform the model towards the mean shape, then pair again on the deformed mesh
            corr = Correspondence(vertex, np.zeros(68, int), np.zeros(0), vertex_err, it)
            # the mean shape in pseudo-pixels of a typical photo size (any scale works: the fit is similarity-free)
            f = fit_landmarks(model, (mp_mean * FLIP)[None] * 40.0, corr, FitConfig(bias_passes=0))
            mesh = (ict + np.einsum("k,knc->nc", f.coeffs[0], model.basis[:f.coeffs.shape[1]].numpy())
                    + np.einsum("e,enc->nc", f.expressions[0], model.expression_basis.numpy()))
    jaw = linear_sum_assignment(np.linalg.norm(lm68[:17][:, None] - aligned[None], axis=2))[1]
    mp68 = np.concatenate([jaw, mp68_inner])
    align_err = np.linalg.norm(aligned[mp68_inner] - lm68[INNER68], axis=1)
    return Correspondence(vertex, mp68, align_err, vertex_err, it)


# ---- the batched fit ------------------------------------------------------------------------------------------------
@dataclass
class FitConfig:
    """Settings of ``fit_landmarks`` (saved with every fit)."""

    n_components: int = 40  # identity coefficients, prior N(0, 1)
    noise_cm: float = 0.3  # landmark noise (cm) that balances the data term against the priors
    z_weight: float = 0.5  # MediaPipe's z is regressed, not observed: trust it half as much as x and y
    expression_prior: float = 4.0  # ridge weight on each expression weight (a half-normal of scale 0.5)
    unobservable_prior: float = 1e4  # ridge weight on blendshapes the landmarks cannot see (pins them at 0)
    unobservable: tuple = ("eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L",
                           "eyeLookOut_R", "eyeLookUp_L", "eyeLookUp_R")
    iterations: int = 6  # pose / shape alternations
    solver_steps: int = 100  # accelerated projected-gradient steps per shape solve
    bias_passes: int = 1  # passes that learn each landmark's mean offset from its vertex (MediaPipe's own markup)
    bias_subset: int = 2000  # photos (evenly spaced) that the offsets are learned on
    fail_residual_cm: float = 0.8  # a fit with a larger median landmark residual counts as failed

    def __post_init__(self):
        self.unobservable = tuple(self.unobservable)


@dataclass
class Fit:
    """Per photo (B rows): identity ``coeffs`` (B, K), ``expressions`` (B, E) in [0, 1], pose ``scale`` (B,) pixels
    per cm, ``rotation`` (B, 3, 3) and ``translation`` (B, 3) pixels, both in the y-up frame (photo point
    ~ (s R v + t) * FLIP), median landmark residual ``residual_cm`` (B,) in the model frame and
    ``residual_px`` (B,) in the photo's x-y plane; ``offsets`` (468, 3) cm the learned landmark offsets."""

    coeffs: np.ndarray
    expressions: np.ndarray
    scale: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    residual_cm: np.ndarray
    residual_px: np.ndarray
    offsets: np.ndarray


def _expression_prior(model: FaceModel, cfg: FitConfig) -> np.ndarray:
    lam = np.full(model.n_expressions, cfg.expression_prior)
    for name in cfg.unobservable:
        lam[model.expression_index(name)] = cfg.unobservable_prior
    return lam


def _box_ridge(H: np.ndarray, g: np.ndarray, x0: np.ndarray, n_free: int, steps: int):
    """min 1/2 x'Hx - g'x with x[:n_free] free and x[n_free:] in [0, 1], for every row of g (B, D) at once.

    The free part is eliminated exactly (Schur complement); the boxed part is solved by FISTA (accelerated projected
    gradient, step 1/L, restart when momentum points uphill)."""
    F = slice(0, n_free)
    W = slice(n_free, None)
    Hff_inv_Hfw = np.linalg.solve(H[F, F], H[F, W])  # (K, E)
    Hr = H[W, W] - H[W, F] @ Hff_inv_Hfw
    gf_solved = np.linalg.solve(H[F, F], g[:, F].T).T  # (B, K)
    gr = g[:, W] - gf_solved @ H[F, W]
    L = np.linalg.eigvalsh(Hr)[-1]
    w = np.clip(x0[:, W], 0, 1)
    y, tk = w.copy(), 1.0
    for _ in range(steps):
        w_new = np.clip(y - (y @ Hr - gr) / L, 0, 1)
        t_new = (1 + np.sqrt(1 + 4 * tk * tk)) / 2
        restart = ((y - w_new) * (w_new - w)).sum(1, keepdims=True) > 0
        y = np.where(restart, w_new, w_new + (tk - 1) / t_new * (w_new - w))
        w, tk = w_new, t_new
    c = gf_solved - w @ Hff_inv_Hfw.T
    return np.concatenate([c, w], 1)


def fit_landmarks(model: FaceModel, landmarks: np.ndarray, corr: Correspondence, cfg: FitConfig | None = None,
                  offsets: np.ndarray | None = None) -> Fit:
    """Fit every landmark set (B, 468, 3) (photo pixels, no NaN rows); see the module docstring.

    With ``cfg.bias_passes`` > 0 and no ``offsets`` given, a first fit learns each landmark's mean offset from its
    vertex in the model frame (MediaPipe's points are not exactly ICT vertices; left alone, the offsets are absorbed
    by expressions such as browInnerUp); the final fit uses them."""
    cfg = cfg or FitConfig()
    X = landmarks.astype(np.float64) * FLIP  # (B, P, 3) y-up
    if not np.isfinite(X).all():
        raise ValueError("fit_landmarks: landmarks contain NaN/inf (drop photos without a detection first)")
    if offsets is None and cfg.bias_passes > 0:
        off = np.zeros((X.shape[1], 3))
        sub = np.unique(np.linspace(0, len(X) - 1, min(len(X), cfg.bias_subset)).round().astype(int))
        for _ in range(cfg.bias_passes):
            first = fit_landmarks(model, landmarks[sub], corr, cfg, offsets=off)
            off = off + _mean_residual(model, X[sub], corr, first, off)
        offsets = off
    offsets = np.zeros((X.shape[1], 3)) if offsets is None else offsets
    K, E = cfg.n_components, model.n_expressions
    v = corr.vertex
    P0 = model.mean.numpy()[v].astype(np.float64) + offsets  # (P, 3)
    A = np.concatenate([model.basis[:K, v].numpy(), model.expression_basis[:, v].numpy()]).astype(np.float64)
    A = A.reshape(K + E, -1)  # (D, P*3)
    wz = np.tile([1.0, 1.0, cfg.z_weight], len(v))  # per coordinate weight
    prior = np.concatenate([np.ones(K), _expression_prior(model, cfg)])
    H = (A * wz) @ A.T / cfg.noise_cm ** 2 + np.diag(prior)
    w_pts = np.ones(len(v))
    B = len(X)
    x = np.zeros((B, K + E))
    shape = np.broadcast_to(P0, (B,) + P0.shape)
    for _ in range(cfg.iterations):
        s, R, t = similarity(shape, X, w_pts)
        Y = ((X - t[:, None]) @ R) / s[:, None, None]  # landmarks in the model frame
        g = ((Y - P0).reshape(B, -1) * wz) @ A.T / cfg.noise_cm ** 2
        x = _box_ridge(H, g, x, K, cfg.solver_steps)
        shape = P0 + (x @ A).reshape(B, -1, 3)
    s, R, t = similarity(shape, X, w_pts)
    Y = ((X - t[:, None]) @ R) / s[:, None, None]
    res_cm = np.median(np.linalg.norm(Y - shape, axis=2), 1)
    proj = s[:, None, None] * (shape @ R.transpose(0, 2, 1)) + t[:, None]
    res_px = np.median(np.linalg.norm((proj - X)[..., :2], axis=2), 1)
    return Fit(x[:, :K].astype(np.float32), x[:, K:].astype(np.float32), s, R, t, res_cm, res_px, offsets)


def _mean_residual(model, X, corr, fit: Fit, offsets):
    """Mean over photos of (landmark - fitted model point) in the model frame (P, 3)."""
    K = fit.coeffs.shape[1]
    v = corr.vertex
    shape = (model.mean.numpy()[v] + offsets
             + np.einsum("bk,knc->bnc", fit.coeffs, model.basis[:K, v].numpy())
             + np.einsum("be,enc->bnc", fit.expressions, model.expression_basis[:, v].numpy()))
    Y = ((X - fit.translation[:, None]) @ fit.rotation) / fit.scale[:, None, None]
    return np.median(Y - shape, axis=0)


def fitted_model_points(model: FaceModel, corr: Correspondence, fit: Fit) -> np.ndarray:
    """The fitted model's landmark points (B, 468, 3) mapped back to photo pixels (y down, z smaller = nearer)."""
    K = fit.coeffs.shape[1]
    v = corr.vertex
    shape = (model.mean.numpy()[v] + fit.offsets
             + np.einsum("bk,knc->bnc", fit.coeffs, model.basis[:K, v].numpy())
             + np.einsum("be,enc->bnc", fit.expressions, model.expression_basis[:, v].numpy()))
    return (fit.scale[:, None, None] * (shape @ fit.rotation.transpose(0, 2, 1)) + fit.translation[:, None]) * FLIP


def render_poses(fit: Fit, crop, size: int, window_cm) -> np.ndarray:
    """Render pose vectors (B, 6) (yaw, pitch, roll, scale, tx, ty; see ``render.rasterize.apply_pose``) that put each
    fitted face where it sits in the photo cropped to ``crop`` (left, top, right, bottom; one box (4,) for all photos
    or one per photo (B, 4)) and resized to ``size``, rendered through the fixed window ``window_cm`` = (x0, x1, y0,
    y1)."""
    from .framing import rotation_to_angles

    left, top, right, bottom = np.asarray(crop, np.float64).T
    x0, x1, y0, y1 = window_cm
    k = size / (x1 - x0)  # output pixels per posed cm
    sx, sy = size / (right - left), size / (bottom - top)
    if not np.allclose(sx, sy) or not np.isclose(k, size / (y1 - y0)):
        raise ValueError("render_poses needs square crops and a square window")
    # photo px in the y-up frame (x, -row) -> output px: x_o = (x - left) sx, y_o (y-up) = (y + top) sx
    scale = fit.scale * sx / k
    tx = (fit.translation[:, 0] - left) * sx / k + x0
    ty = (fit.translation[:, 1] + top) * sx / k + y1
    return np.concatenate([rotation_to_angles(fit.rotation), scale[:, None], tx[:, None], ty[:, None]], 1
                          ).astype(np.float32)


REFERENCE_VERSION = 1  # bump when derive_correspondence or the offset learning changes


def reference_correspondence(model: FaceModel, cache_dir=None) -> tuple[Correspondence, np.ndarray]:
    """The correspondence and the learned landmark offsets (468, 3) derived from all detected photos of the shipped
    CelebA landmarks: the reference for fitting any photos (a user's few photos are too few to derive them from).
    Recomputed deterministically on first use and cached under ``outputs/cache``, keyed by the inputs."""
    import hashlib

    from ..io.files import atomic_savez
    from ..io.paths import REPO_ROOT, find_dataset

    lm_path = find_dataset("celeba_10k", "landmarks_mediapipe.npz") / "landmarks_mediapipe.npz"
    cfg = FitConfig()
    key = hashlib.sha256(json.dumps([REFERENCE_VERSION, lm_path.stat().st_size, model.source, model.n_expressions,
                                     asdict(cfg)], sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir or REPO_ROOT / "outputs" / "cache") / f"mediapipe_ict_correspondence_{key}.npz"
    if not path.exists():
        d = np.load(lm_path)
        lm = d["landmarks"][d["found"]]
        corr = derive_correspondence(model, lm)
        fit = fit_landmarks(model, lm, corr, cfg)  # learns the offsets on cfg.bias_subset photos
        atomic_savez(path, vertex=corr.vertex, mp68=corr.mp68, align_error_cm=corr.align_error_cm,
                     vertex_error_cm=corr.vertex_error_cm, iterations=corr.iterations, offsets=fit.offsets)
    d = np.load(path)
    corr = Correspondence(d["vertex"], d["mp68"], d["align_error_cm"], d["vertex_error_cm"], int(d["iterations"]))
    return corr, d["offsets"]


def correspond_and_fit(model: FaceModel, landmarks: np.ndarray, cfg: FitConfig | None = None):
    """``derive_correspondence`` then ``fit_landmarks`` on the same photos, timed: (corr, fit, seconds of each)."""
    t0 = time.perf_counter()
    corr = derive_correspondence(model, landmarks)
    t1 = time.perf_counter()
    fit = fit_landmarks(model, landmarks, corr, cfg)
    return corr, fit, t1 - t0, time.perf_counter() - t1


def fit_summary(fit: Fit, cfg: FitConfig, n_missing: int = 0) -> dict:
    """Residual statistics and failure count of a fit (for reports and notebooks)."""
    fail = fit.residual_cm > cfg.fail_residual_cm
    q = lambda a: {p: float(np.percentile(a, p)) for p in (5, 50, 95, 100)}
    return {"n": int(len(fit.scale)), "n_no_landmarks": int(n_missing), "n_failed": int(fail.sum()),
            "residual_cm": q(fit.residual_cm), "residual_px": q(fit.residual_px),
            "expressions_at_bound": float((fit.expressions > 0.99).mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.facemodel.fitting",
                                 description="Fit the ICT face model to a landmarks_mediapipe.npz and report.")
    ap.add_argument("--landmarks", default=None, help="landmarks_mediapipe.npz (default: the shipped CelebA one)")
    ap.add_argument("--out", default=None, help="write the fit (npz) here")
    ap.add_argument("--components", type=int, default=FitConfig.n_components)
    a = ap.parse_args(argv)
    from ..io.files import atomic_savez
    from ..io.paths import find_dataset
    from .model import load_face_model

    path = Path(a.landmarks) if a.landmarks else find_dataset("celeba_10k", "landmarks_mediapipe.npz") / \
        "landmarks_mediapipe.npz"
    d = np.load(path)
    found = d["found"]
    lm = d["landmarks"][found]
    model = load_face_model()
    cfg = FitConfig(n_components=a.components)
    corr, fit, corr_s, fit_s = correspond_and_fit(model, lm, cfg)
    summary = fit_summary(fit, cfg, int((~found).sum()))
    summary.update(correspondence_s=corr_s, fit_s=fit_s,
                   align_median_cm=float(np.median(corr.align_error_cm)),
                   vertex_median_cm=float(np.median(corr.vertex_error_cm)))
    print(json.dumps(summary, indent=1))
    if a.out:
        atomic_savez(a.out, config=np.array(json.dumps(asdict(cfg))), names=d["names"][found],
                     vertex=corr.vertex, mp68=corr.mp68, **{k: v for k, v in asdict(fit).items()})


if __name__ == "__main__":
    main()



@dataclass
class FittedFaceParams:
    """Render poses (M, 6) and expression weights (M, E) of faces fitted to photos (``PairedFaceDataset.fit``):
    the empirical distribution synthetic faces draw their pose and expression from (whole rows, with replacement)."""

    poses: np.ndarray
    expressions: np.ndarray
    source: str = "?"

    def __post_init__(self):
        self.poses = np.asarray(self.poses, np.float32)
        self.expressions = np.asarray(self.expressions, np.float32)
        if self.poses.ndim != 2 or self.poses.shape[1] != 6 or len(self.expressions) != len(self.poses):
            raise ValueError(f"{self.source}: need poses (M, 6) and expressions (M, E) with the same M, got "
                             f"{self.poses.shape} and {self.expressions.shape}")
        # blendshape weights live in [0, 1]; a weight of 50 gives an all-foreground depth map without a word
        bad = ~np.isfinite(self.expressions) | (self.expressions < 0) | (self.expressions > 1)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(f"{self.source}: expression weights must be finite and in [0, 1]; {int(bad.sum())} are "
                             f"not (first: row {i}, weight {j} = {self.expressions[i, j]})")
        if not np.isfinite(self.poses).all():
            raise ValueError(f"{self.source}: poses hold NaN or infinite values")

    def describe(self) -> str:
        h = hashlib.sha256(self.poses.tobytes() + self.expressions.tobytes()).hexdigest()[:12]
        return f"{self.source}#{h}"
