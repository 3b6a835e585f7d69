"""Evaluate every trained run on the same synthetic faces, against the held-out TEST photos only.

Two kinds of judges (the measures live in ``metrics``; this module wires them up):
- networks trained here on the training photos (feature autoencoder: FD, KID, diversity; depth estimator:
  correspondence; a fresh classifier per comparison: C2ST);
- networks trained elsewhere on real faces (dlib, ``judges``): face detection rate, 68-landmark error (NME) against the
  face model's own landmarks, identity consistency with face descriptors, face-FD and diversity of descriptors.

Every run, each metric is first validated on a ladder of known cases (``reference_rows`` / ``ladder_checks``); a
metric whose ladder fails is shown as failed. Splits: no generator or metric network trains on the test split; the
"real" rung of every realism ladder is training photos compared with test photos (two different sets of photos). The
split is per image (the CelebA subset has no identity labels), so one celebrity can be in both.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.depth_sets import RenderedDepthDataset
from ..facemodel.appearance_render import model_landmarks  # noqa: F401 (part of this module's interface)
from ..io.draws import normal
from ..render.rasterize import render_depth
from ..train.trainer import load_run
from . import judges as J
from . import measures, metric_nets

# Known-answer ladder rungs made from real photos: Gaussian blur sigma (px at the image size) and additive Gaussian
# noise sigma (grey levels of 255), applied to the same training photos as the "real" rung (a paired comparison).
BLUR_SIGMAS = (1.0, 2.0)
NOISE_LEVELS = (10.0, 20.0)


def discover_runs(roots: dict) -> dict[str, Path]:
    """Every ``<folder>/<run>/checkpoint.pt`` of ``roots`` = {prefix: folder}; runs are named ``prefix/run`` (or
    ``run`` for an empty prefix)."""
    found = {}
    for prefix, root in roots.items():
        for ck in sorted(Path(root).glob("*/checkpoint.pt")):
            found[f"{prefix}/{ck.parent.name}" if prefix else ck.parent.name] = ck
    return found


# ---- landmarks of the face model and of the photos -------------------------------------------------------------------
def photo_mediapipe(ds) -> np.ndarray:
    """MediaPipe landmarks (N, 468, 2) of a ``PairedFaceDataset`` split, in its image's pixel frame."""
    from ..facemodel.framing import landmark_frame

    lm = np.load(ds.root / "landmarks_mediapipe.npz")
    keep = np.nonzero(lm["found"])[0]
    if ds.config.limit:
        keep = keep[: ds.config.limit]
    return landmark_frame(lm["landmarks"][keep[ds.indices]], ds.config.crop, ds.config.size)[..., :2].astype(float)


def photo_fitted_landmarks(model, ds, render) -> np.ndarray:
    """The 68 landmarks of the face model fitted to each photo of a ``PairedFaceDataset`` split (its stored fit:
    identity, expression, render pose), projected by ``model_landmarks`` exactly as a synthetic input's targets
    are: the like-for-like landmark oracle (dlib on the photo vs the photo's own fitted face model)."""
    if getattr(ds, "fit", None) is None:
        raise ValueError(f"{ds.cache_path}: built without fits; delete it to rebuild")
    f = {k: torch.as_tensor(np.asarray(ds.fit[k])[ds.indices]).float() for k in ("coeffs", "expressions", "poses")}
    return model_landmarks(model, f["coeffs"], render, f["poses"], f["expressions"])


def mediapipe_ibug_map(train, judges: J.FaceJudges, n: int = 1000, cache_dir=None,
                       workers: int | None = None) -> dict:
    """The MediaPipe 468 -> iBUG 68 map (``evaluation.judges.fit_mediapipe_to_ibug``) fitted on the first ``n`` training
    photos where dlib finds a face (never on test photos); cached as ``mp468_to_ibug68_<set>_<n>.npz``. Deterministic:
    same photos, same detections, same NNLS solution."""
    path = Path(cache_dir) / f"mp468_to_ibug68_{train.config.key()}_{n}.npz" if cache_dir else None
    if path is not None and path.exists():
        d = np.load(path)
        return {"W": d["W"], "n_fit": int(d["n_fit"])}
    ti = train.tensors()[0][:n]
    faces = judges.analyse(ti, embed=False, workers=workers)
    mp = photo_mediapipe(train)[:n]
    W = J.fit_mediapipe_to_ibug(mp[faces.found], faces.landmarks[faces.found])
    if path is not None:
        from ..io.files import atomic_savez

        atomic_savez(path, W=W, n_fit=np.array(int(faces.found.sum())))
    return {"W": W, "n_fit": int(faces.found.sum())}


# ---- known-answer rungs ----------------------------------------------------------------------------------------------
def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (N, C, H, W) images with ``sigma`` pixels (scipy, edges replicated)."""
    from scipy.ndimage import gaussian_filter

    return torch.from_numpy(gaussian_filter(images.float().numpy(), (0, 0, sigma, sigma), mode="nearest"))


def add_noise(images: torch.Tensor, grey_levels: float, seed: int = 0) -> torch.Tensor:
    """Additive Gaussian noise with a standard deviation of ``grey_levels`` of 255 (images in [-1, 1]), clipped."""
    g = torch.Generator().manual_seed(seed)
    return (images + grey_levels / 127.5 * normal(*images.shape, generator=g)).clamp(-1, 1)


def depth_as_image(depth: torch.Tensor, channels: int) -> torch.Tensor:
    return (depth * 2 - 1).expand(-1, channels, -1, -1)


def z_only_generator(photos: torch.Tensor, noise_grey_levels: float = 0.0):
    """A depth-blind control: one photo per appearance code z, whatever the depth map (within a call, the k-th
    distinct code gets photo k, so different codes never share a photo). Under the old identity design it scores
    AUC ~1, under the matched one 0.5. ``noise_grey_levels`` > 0 gives each image its own small noise (seeded by
    its position), so that distances are real and untied and a pair design that is not neutral shows it."""
    def f(depth, mask, z=None):
        if z is None:
            out = photos[:1].expand(len(depth), -1, -1, -1)
        else:
            order = {}
            idx = [order.setdefault(hashlib.sha1(zi.numpy().tobytes()).hexdigest(), len(order)) % len(photos)
                   for zi in z.float()]
            out = photos[idx]
        return add_noise(out, noise_grey_levels, seed=len(depth)) if noise_grey_levels else out
    f.z_dim = 8
    return f


def with_image_noise(generate, grey_levels: float = 2.0, seed: int = 0):
    """``generate`` with each output image given its own small Gaussian noise: a generator that draws identical
    images for different inputs then gets real, untied descriptor distances (the mean-shape control)."""
    def f(depth, mask, z=None, params=None):
        return add_noise(call_generator(generate, depth, mask, z, params), grey_levels, seed)
    f.z_dim = getattr(generate, "z_dim", 0)
    f.uses_face_params = getattr(generate, "uses_face_params", False)
    return f


def call_generator(generate, depth, mask, z=None, params=None):
    """``generate(depth, mask, z)``; a generator that reads more than depth (``uses_face_params``: the raw render,
    generators fed appearance buffers) also gets the faces' parameters, dict(coeffs, poses, expressions)."""
    if getattr(generate, "uses_face_params", False):
        if params is None:
            raise ValueError("this generator needs the faces' parameters; the evaluation set has none")
        return generate(depth, mask, z, params=params)
    return generate(depth, mask, z)


def face_params(coeffs, poses=None, expressions=None, rows=None) -> dict:
    """The parameters of a set of rendered faces (optionally the rows ``rows`` of them)."""
    p = {"coeffs": coeffs, "poses": poses, "expressions": expressions}
    if rows is not None:
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        p = {k: None if v is None else v[rows] for k, v in p.items()}
    return p


# ---- what every run is measured against ------------------------------------------------------------------------------
@dataclass
class EvalContext:
    """What every run is measured against (built once by ``build_context``)."""

    real_train: torch.Tensor  # training photos (the real rung; the feature net and depth estimator saw them)
    real_test: torch.Tensor  # the one reference for realism
    test_depth: torch.Tensor
    test_mask: torch.Tensor
    test_landmarks: np.ndarray  # (N, 68, 2) the test photos' fitted face model's own landmarks (like synthetic targets)
    test_landmarks_mediapipe: np.ndarray  # (N, 68, 2) their MediaPipe landmarks mapped to iBUG (secondary)
    test_faces: J.FaceAnalysis  # dlib on the test photos (descriptors = the face-FD reference)
    train_landmarks: np.ndarray  # of real_train[:n_embed] (rungs made from training photos)
    syn_depth: torch.Tensor  # synthetic inputs (N, 1, S, S)
    syn_mask: torch.Tensor
    syn_coeffs: torch.Tensor
    syn_landmarks: np.ndarray  # the face model's own landmarks of each synthetic input (N, 68, 2)
    shape_depth: torch.Tensor  # frontal renders of shape_coeffs: shape sensitivity must not be swamped by pose
    shape_mask: torch.Tensor
    shape_coeffs: torch.Tensor
    id_depth: torch.Tensor  # identity set: n_codes * n_ids * n_poses renders
    id_mask: torch.Tensor
    id_ids: np.ndarray  # identity (shape coefficients) index of each render
    id_codes: np.ndarray  # appearance-code index of each render
    id_poses: np.ndarray  # pose index within its code (the same pose for every identity of a code)
    id_mean_depth: torch.Tensor  # the identity set with every identity replaced by the mean shape (a control)
    id_mean_mask: torch.Tensor
    orl: torch.Tensor  # real photos with known identity (ORL), and their labels
    orl_ids: np.ndarray
    feature_net: torch.nn.Module
    depth_estimator: torch.nn.Module
    judges: J.FaceJudges
    fallback_box: tuple  # detection box used where dlib finds no face (median box of test photos, fractions)
    mp_map: dict = field(default_factory=dict)
    # the faces' parameters, dict(coeffs, poses, expressions), of each synthetic set (generators with
    # ``uses_face_params`` read them)
    syn_params: dict | None = None
    id_params: dict | None = None
    id_mean_params: dict | None = None
    train_embeddings: np.ndarray | None = None  # dlib descriptors of training photos (memorisation's reference)
    # memorisation against a held-out split (``measures.training_neighbour_share``): descriptors of every training
    # photo and of photos never trained on (the validation split), or None
    copy_reference: tuple | None = None
    kid_stats: tuple | None = None  # (mean, std) of real training photos' descriptors: KID's standardisation
    n_embed: int = 500  # generated faces per run that get a descriptor (KID, face-FD, diversity)
    workers: int | None = None  # processes for the dlib judges (single-threaded C++); None: the judges' default
    c2st_steps: int = 200
    seed: int = 0

    def id_codes_z(self, z_dim: int) -> torch.Tensor:
        """The appearance code of every identity-set render: one N(0, I) code per code index (seeded)."""
        n_codes = int(self.id_codes.max()) + 1
        z = normal(n_codes, z_dim, generator=torch.Generator().manual_seed(self.seed + 4242))
        return z[torch.from_numpy(self.id_codes)]


def identity_set(model, render, pose, n_codes: int, n_ids: int, n_poses: int, seed: int = 0, source=None,
                 mean_shape: bool = False, with_params: bool = False):
    """Renders for the identity test: ``n_ids`` identities (shape coefficients) shared by all codes; for each of
    ``n_codes`` appearance codes, ``n_poses`` pose slots drawn once and used for every identity of that code (so a
    same-code, different-identity pair has the same pose and expression). Order: code-major, then identity, then
    pose. Pose (and expression) per slot: from ``source`` (a ``RenderedDepthDataset`` of n_codes * n_poses items,
    e.g. ``PairedFaceDataset.synthetic``: the photos' fitted distribution) when given, else ``pose.sample``, neutral.
    ``mean_shape=True``: the same set with every identity's shape replaced by the mean shape (the control that must
    score identity AUC 0.5: pose-following, identity-blind). ``with_params``: also the faces' parameters."""
    from ..facemodel.model import render_faces

    g = torch.Generator().manual_seed(seed + 999)
    coeffs = model.sample_coefficients(n_ids, 15, generator=g)
    if mean_shape:
        coeffs = torch.zeros_like(coeffs)
    if source is not None:
        poses = source.poses[:n_codes * n_poses].view(n_codes, n_poses, 6)
        expr = getattr(source, "expressions", None)
        expr = None if expr is None else expr[:n_codes * n_poses].view(n_codes, n_poses, -1)
    else:
        poses, expr = pose.sample(n_codes * n_poses, generator=g).view(n_codes, n_poses, 6), None
    codes, ids, pidx = np.meshgrid(np.arange(n_codes), np.arange(n_ids), np.arange(n_poses), indexing="ij")
    codes, ids, pidx = codes.ravel(), ids.ravel(), pidx.ravel()
    e = None if expr is None else expr[codes, pidx]
    d, m = render_faces(model, coeffs[ids], render, poses[codes, pidx], e)
    out = d[:, None], m[:, None].float(), ids, codes, pidx
    return out + (face_params(coeffs[ids], poses[codes, pidx], e),) if with_params else out


def load_orl(size: int, n_people: int = 20, per_person: int = 5, grayscale: bool = False) -> tuple:
    """ORL faces (first ``n_people`` people, first ``per_person`` photos each), centre square, bicubic to ``size``."""
    from PIL import Image

    from ..io.images import centre_square, load_image, to_tensor
    from ..io.paths import find_dataset

    root = find_dataset("orl_faces", "images") / "images"
    imgs, ids = [], []
    for p in range(1, n_people + 1):
        for k in range(1, per_person + 1):
            im = load_image(root / f"s{p:02d}_{k}.png", grayscale)
            imgs.append(to_tensor(im.resize((size, size), Image.BICUBIC, box=centre_square(*im.size))))
            ids.append(p)
    return torch.stack(imgs), np.array(ids)


def kid_reference(jd, train_images, test_images, n_map: int = 1000, n_embed: int = 500,
                  workers: int | None = None):
    """KID's two real sets, judged by ``jd``: the test photos (the reference every generator is compared with) and
    the faces of its standardisation (``measures.standardizer``): the first ``max(n_embed, 64)`` training photos
    of the ``n_map`` that fit the MediaPipe map, so neither the reference nor the real rung. Returns (test faces,
    standardisation faces)."""
    return (jd.analyse(test_images, workers=workers),
            jd.analyse(train_images[:n_map][:max(n_embed, 64)], workers=workers))


def build_context(model, train, test, n_synthetic: int = 500, n_codes: int = 2, n_ids: int = 50, n_poses: int = 5,
                  n_embed: int = 500, n_map: int = 1000, orl_people: int = 20, orl_per_person: int = 5,
                  seed: int = 0, feature_steps: int = 600, depth_steps: int = 800, c2st_steps: int = 200,
                  cache_dir=None, judges_only: bool = False, n_test: int | None = None,
                  workers: int | None = None, heldout=None) -> EvalContext:
    """Synthetic evaluation faces (matched framing; pose and expression drawn from the fitted training photos, or
    the photos' pose spread for a landmark-mesh set) with their target landmarks, the
    identity set, the test photos judged once, and the metric networks (trained on the training split only, cached
    in ``cache_dir``). ``train`` and ``test`` are ``PairedFaceDataset`` splits.

    ``judges_only=True`` skips the networks trained here (no C2ST / FD / KID / depth RMSE / shape sensitivity): the
    dlib measures alone, e.g. for a model card or a quick check of a shipped generator; ``n_test`` uses only the first
    test photos as the reference (faster, face-FD then has a larger small-sample bias: compare like with like).
    ``heldout``: photos never trained on (the validation split) for memorisation against a held-out split
    (``copy_reference``; every training photo gets a descriptor, cached in ``cache_dir``)."""
    render, pose = train.render_config(model), train.pose_jitter(model)
    if getattr(train, "fit", None) is not None:  # identity ~ N(0, I); pose, expression: the photos' fitted ones
        syn = train.synthetic(n_synthetic, seed=seed + 777, model=model)
        id_source = train.synthetic(n_codes * n_poses, seed=seed + 999, model=model)
    else:
        syn = RenderedDepthDataset(n_synthetic, seed=seed + 777, render=render, pose=pose, model=model)
        id_source = None
    d, m = syn.render_batch(list(range(n_synthetic)))
    syn_lm = model_landmarks(model, syn.coeffs, render, syn.poses, getattr(syn, "expressions", None))
    idd, idm, ids, codes, pidx, id_params = identity_set(model, render, pose, n_codes, n_ids, n_poses, seed,
                                                         id_source, with_params=True)
    mean_d, mean_m, *_, mean_params = identity_set(model, render, pose, n_codes, n_ids, n_poses, seed, id_source,
                                                   mean_shape=True, with_params=True)
    g = torch.Generator().manual_seed(seed + 1001)
    sc = model.sample_coefficients(60, 15, generator=g)
    sd, sm = render_depth(model, sc, render)  # frontal
    ti, td, tm = train.tensors()
    vi, vd, vm = (t[:n_test] for t in test.tensors())
    cache = Path(cache_dir) if cache_dir else None
    key = f"{train.config.key()}_{seed}"
    feat = est = None
    if not judges_only:
        feat = metric_nets.train_feature_net(ti, steps=feature_steps, seed=seed,
                                   cache=cache / f"feature_net_{key}_{feature_steps}.pt" if cache else None)
        est = metric_nets.train_depth_estimator(ti, td, tm, steps=depth_steps, seed=seed,
                                      cache=cache / f"depth_estimator_{key}_{depth_steps}.pt" if cache else None)
    jd = J.judges()
    mp_map = mediapipe_ibug_map(train, jd, n_map, cache, workers)
    test_faces, std_faces = kid_reference(jd, ti, vi, n_map, n_embed, workers)
    box = np.median(test_faces.boxes[test_faces.found], 0) / vi.shape[-1] if test_faces.found.any() else None
    fallback = tuple(float(v) for v in box) if box is not None else jd.fallback_box
    # the real rung: training photos not used to fit the landmark map, as many as a run gets descriptors for
    real_train = ti[n_map:] if len(ti) > n_map + n_embed else ti
    train_mp = photo_mediapipe(train)[n_map:] if len(ti) > n_map + n_embed else photo_mediapipe(train)
    orl, orl_ids = load_orl(vi.shape[-1], orl_people, orl_per_person, grayscale=vi.shape[1] == 1)
    copy_ref = None if heldout is None else copy_reference(jd, train, heldout, cache, fallback, workers)
    return EvalContext(
        real_train=real_train, real_test=vi, test_depth=vd, test_mask=vm,
        test_landmarks=photo_fitted_landmarks(model, test, render)[:n_test],
        test_landmarks_mediapipe=J.map_mediapipe(photo_mediapipe(test)[:n_test], mp_map["W"]), test_faces=test_faces,
        train_landmarks=J.map_mediapipe(train_mp[:n_embed], mp_map["W"]),
        syn_depth=d, syn_mask=m, syn_coeffs=syn.coeffs, syn_landmarks=syn_lm,
        shape_depth=sd[:, None], shape_mask=sm[:, None].float(), shape_coeffs=sc,
        id_depth=idd, id_mask=idm, id_ids=ids, id_codes=codes, id_poses=pidx, id_mean_depth=mean_d,
        id_mean_mask=mean_m, orl=orl, orl_ids=orl_ids, kid_stats=measures.standardizer(std_faces.embeddings),
        feature_net=feat, depth_estimator=est, judges=jd, fallback_box=fallback, mp_map=mp_map, n_embed=n_embed,
        workers=workers, c2st_steps=c2st_steps, seed=seed,
        syn_params=face_params(syn.coeffs, syn.poses, getattr(syn, "expressions", None)), id_params=id_params,
        id_mean_params=mean_params, train_embeddings=std_faces.embeddings, copy_reference=copy_ref)


def copy_reference(jd, train, heldout, cache=None, fallback_box=None, workers: int | None = None) -> tuple:
    """Descriptors of every photo of ``train`` and of ``heldout`` (``PairedFaceDataset`` splits), judged like
    generated faces (``fallback_box`` where dlib finds no face): memorisation's two reference sets. Cached in
    ``cache`` by the splits' key and sizes (judging 9k photos takes minutes)."""
    from ..io.files import atomic_savez

    ti, hi = train.tensors()[0], heldout.tensors()[0]
    name = (f"copy_reference_{train.config.key()}_{len(ti)}_{heldout.config.key()}_"
            f"{getattr(heldout, 'split', '')}{len(hi)}.npz")
    path = None if cache is None else Path(cache) / name
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as z:
            return z["train"], z["heldout"]
    t = jd.analyse(ti, fallback_box=fallback_box, workers=workers).embeddings
    h = jd.analyse(hi, fallback_box=fallback_box, workers=workers).embeddings
    if path is not None:
        atomic_savez(path, train=t, heldout=h)
    return t, h


def generator_fn(model, seed: int = 0):
    """f(depth, mask, z=None) -> images for a trained run (``load_run``) or a shipped model (``load_pretrained``);
    models with a code get z ~ N(0, I) (seeded) when z is None. A buffers model gives a ``data.buffers.BufferGenerator``
    with the appearance model it was trained with (it reads the faces' parameters; z = appearance codes, then the
    network's code)."""
    if model.cfg.buffers:
        from ..data.buffers import BufferGenerator, run_appearance
        from ..facemodel.model import load_face_model
        from ..render.rasterize import RenderConfig

        shipped = hasattr(model, "appearance")  # a shipped model carries its appearance model and framing
        app = model.appearance() if shipped else run_appearance(model.cfg)
        render = model.render if shipped else RenderConfig.from_dict(model.cfg.input_convention["render"])
        return BufferGenerator(model, load_face_model(), app, render, seed=seed)
    z_dim = getattr(model.nets["G"], "z_dim", 0)

    @torch.no_grad()
    def f(depth, mask, z=None):
        out = []
        g = torch.Generator().manual_seed(seed)
        for s in range(0, len(depth), 256):
            n = len(depth[s:s + 256])
            zz = None
            if z_dim:
                zz = z[s:s + 256] if z is not None else normal(n, z_dim, generator=g)
            out.append(model.generate(depth[s:s + 256], mask[s:s + 256], z=zz).cpu())
        return torch.cat(out)
    f.z_dim = z_dim
    return f


def score_at_one_n(ctx: EvalContext, generate) -> tuple[torch.Tensor, dict]:
    """A generator judged on the context's synthetic inputs at its one N (the judges alone; the scorer of curves,
    ablations and peers): (its images, {kid, kid_se, nme, detection, diversity_share, n, n_reference}), KID on
    descriptors against all the context's test photos."""
    imgs = call_generator(generate, ctx.syn_depth, ctx.syn_mask, None, ctx.syn_params)
    fj = face_judgement(ctx, imgs, ctx.syn_landmarks)
    keys = ("kid", "kid_se", "nme", "detection", "diversity_share", "n_reference")
    return imgs, {**{k: fj[k] for k in keys}, "n": len(imgs)}


# ---- measures --------------------------------------------------------------------------------------------------------
def realism(ctx: EvalContext, images: torch.Tensor) -> dict:
    """Networks trained here, reference = test photos: C2ST (fresh classifier), FD and KID in autoencoder features."""
    c2st = metric_nets.classifier_two_sample_test(ctx.real_test, images, steps=ctx.c2st_steps, seed=ctx.seed)
    kid, kid_std = metric_nets.kernel_distance(ctx.feature_net, ctx.real_test, images)
    return {"c2st": c2st["accuracy"], "c2st_ci": [c2st["ci_low"], c2st["ci_high"]],
            "fd": metric_nets.frechet_distance(ctx.feature_net, ctx.real_test, images), "ae_kid": kid, "ae_kid_std": kid_std}


def face_judgement(ctx: EvalContext, images: torch.Tensor, target_landmarks: np.ndarray | None) -> dict:
    """dlib judges on N images: detection rate (all N), NME of the detected 68 landmarks against ``target_landmarks``
    (inner points 17-67; detected box, or the fixed fallback box where detection fails), and on the first
    ``n_embed`` images the descriptors: face-FD against the test photos' descriptors and diversity."""
    faces = ctx.judges.analyse(images[:ctx.n_embed], fallback_box=ctx.fallback_box, workers=ctx.workers)
    if len(images) > ctx.n_embed:
        rest = ctx.judges.analyse(images[ctx.n_embed:], embed=False, fallback_box=ctx.fallback_box,
                                  workers=ctx.workers)
        found = np.concatenate([faces.found, rest.found])
        lms = np.concatenate([faces.landmarks, rest.landmarks])
    else:
        found, lms = faces.found, faces.landmarks
    det = measures.detection_rate(found)
    kid = measures.kernel_distance_features(faces.embeddings, ctx.test_faces.embeddings, ctx.kid_stats, seed=ctx.seed)
    out = {"detection": det["rate"], "detection_ci": det["ci"], "kid": kid["kid"], "kid_se": kid["kid_se"],
           "n_judged": len(faces.embeddings), "n_reference": len(ctx.test_faces.embeddings),
           "face_fd": measures.frechet_distance_features(faces.embeddings, ctx.test_faces.embeddings),
           "face_diversity": measures.mean_pairwise_distance(faces.embeddings),
           "diversity_share": measures.mean_pairwise_distance(faces.embeddings)
           / measures.mean_pairwise_distance(ctx.test_faces.embeddings), "landmarks": lms, "embeddings": faces.embeddings}
    if ctx.train_embeddings is not None:  # memorisation: near copies of training photos, beside the test photos'
        mem = measures.near_copy_share(faces.embeddings, ctx.train_embeddings)
        out.update({"near_copy": mem["share"], "near_copy_ci": mem["ci"], "near_copy_n_train": mem["n_train"]})
    out.update(_training_neighbours(ctx, faces.embeddings))
    if target_landmarks is not None:
        e = measures.nme(lms, target_landmarks[:len(lms)], J.INNER_POINTS)
        out.update({"nme": e["nme"], "nme_ci": e["ci"]})
    return out


def _training_neighbours(ctx: EvalContext, embeddings) -> dict:
    """Memorisation against the held-out split (``measures.training_neighbour_share``), where the context has one."""
    if ctx.copy_reference is None:
        return {}
    r = measures.training_neighbour_share(embeddings, *ctx.copy_reference)
    return {"train_neighbour": r["share"], "train_neighbour_ci": r["ci"], "train_neighbour_null": r["null"],
            "train_neighbour_se": r["se"], "train_neighbour_z": r["z"],
            "train_neighbour_distinct": r["distinct_nearest"]}


# identity controls and the band each must fall in, else the identity measure is marked failed
IDENTITY_BANDS = {"z_only": (0.4, 0.6), "mean_shape": (0.4, 0.6), "depth": (0.6, 1.0), "orl": (0.9, 1.0)}


def identity(ctx: EvalContext, generate, z_dim: int, controls: bool = True) -> dict:
    """Identity consistency of ``generate`` on the identity set (``n_ids`` identities x ``n_poses`` pose slots per code)
    with dlib descriptors: AUC under the matched pair design (``evaluation.measures.identity_pairs``; interval by
    bootstrap over identities), the same-pose and old designs shown beside it; the spread over identities for a fixed
    code and pose as a share of the test photos' spread (0 = one face for every shape). ``controls``: also the
    mean-shape control with this generator (every identity replaced by the mean shape, each image its own 2-grey-level
    noise: must score 0.5, ``IDENTITY_BANDS``)."""
    z = ctx.id_codes_z(z_dim) if z_dim else None
    imgs = call_generator(generate, ctx.id_depth, ctx.id_mask, z, ctx.id_params)
    emb = ctx.judges.analyse(imgs, fallback_box=ctx.fallback_box, workers=ctx.workers).embeddings
    out = {}
    for design, key in (("matched", "identity_auc"), ("same-pose", "identity_auc_same_pose"),
                        ("old", "identity_auc_old")):
        r = measures.identity_auc(emb, ctx.id_ids, ctx.id_codes, ctx.id_poses, design, seed=ctx.seed)
        out[key], out[f"{key}_ci"] = r["auc"], r["ci"]
        if design == "matched":
            out["identity_same_share"], out["identity_n_ids"] = r["same_share"], r["n_ids"]
    groups = [emb[(ctx.id_codes == c) & (ctx.id_poses == p)] for c in np.unique(ctx.id_codes)
              for p in np.unique(ctx.id_poses)]
    out["identity_spread"] = measures.spread_share(groups, ctx.test_faces.embeddings)
    if controls:
        noisy = with_image_noise(generate, 2.0, ctx.seed)
        m_emb = ctx.judges.analyse(noisy(ctx.id_mean_depth, ctx.id_mean_mask, z, ctx.id_mean_params),
                                   fallback_box=ctx.fallback_box,
                                   workers=ctx.workers).embeddings
        r = measures.identity_auc(m_emb, ctx.id_ids, ctx.id_codes, ctx.id_poses, seed=ctx.seed)
        lo, hi = IDENTITY_BANDS["mean_shape"]
        out["identity_mean_shape"], out["identity_mean_shape_ok"] = r["auc"], bool(lo <= r["auc"] <= hi)
    return out


def images_over_codes(ctx: EvalContext, generate, z: torch.Tensor, n_maps: int) -> torch.Tensor:
    """The faces of the context's first ``n_maps`` synthetic inputs, each repeated len(z) / n_maps times in a row
    (input 0 under its codes, then input 1, ...), under the codes ``z``."""
    rows = np.repeat(np.arange(n_maps), len(z) // n_maps)
    params = None if ctx.syn_params is None else face_params(**ctx.syn_params, rows=rows)
    return call_generator(generate, ctx.syn_depth[:n_maps][rows], ctx.syn_mask[:n_maps][rows], z, params)


def network_code_draws(n_maps: int, n_codes: int, z_dim: int, code_dim: int, generator) -> torch.Tensor:
    """(n_maps * n_codes, z_dim) codes: one draw of z per input, repeated, with its last ``code_dim`` entries (the
    network's own code) drawn again for every row: the appearance part held, the network's code varied."""
    z = normal(n_maps, z_dim, generator=generator).repeat_interleave(n_codes, 0)
    z[:, z_dim - code_dim:] = normal(n_maps * n_codes, code_dim, generator=generator)
    return z


def _spread_over_codes(ctx: EvalContext, images: torch.Tensor, n_maps: int, n_codes: int) -> float:
    """``measures.spread_share`` of the descriptors of ``images`` (n_maps groups of n_codes, in a row) against the
    test photos'."""
    emb = ctx.judges.analyse(images, fallback_box=ctx.fallback_box, workers=ctx.workers).embeddings
    return measures.spread_share([emb[i * n_codes:(i + 1) * n_codes] for i in range(n_maps)], ctx.test_faces.embeddings)


def code_spread(ctx: EvalContext, generate, z_dim: int, n_maps: int = 16, n_codes: int = 8) -> float:
    """Mode collapse over codes: for each of ``n_maps`` fixed synthetic depth maps, the spread of the descriptors of its
    faces under ``n_codes`` appearance codes, as a share of the test photos' spread
    (``evaluation.measures.spread_share``; 0 = the same face whatever the code). NaN for a generator without a code."""
    if not z_dim:
        return float("nan")
    n_maps = min(n_maps, len(ctx.syn_depth))
    z = normal(n_maps * n_codes, z_dim, generator=torch.Generator().manual_seed(ctx.seed + 1))
    return _spread_over_codes(ctx, images_over_codes(ctx, generate, z, n_maps), n_maps, n_codes)


def network_code_spread(ctx: EvalContext, generate, n_maps: int = 16, n_codes: int = 8) -> dict | None:
    """What the network's own code does when everything else is fixed: for each of ``n_maps`` synthetic inputs (shape,
    pose, expression and, for a buffers generator, its appearance code), ``n_codes`` draws of the network's own code
    (``network_code_draws``). ``descriptor_share``: the spread of the
    faces' descriptors over those codes as a share of the test photos' (``measures.spread_share``; who the person
    is); ``inside`` / ``outside``: the per-pixel standard deviation over the codes inside and outside the face
    (``measures.pixel_spread``; hair, background and light show outside); ``between``: the same over different
    inputs, one code each, over the whole picture (the scale). None for a generator with no network code.
    The network's part of z is the generator's ``code_dim`` last entries (a ``BufferGenerator``; the raw render's
    is 0), or all of z for a generator that does not say (a depth-only one). With an SH-lit appearance model a
    buffers generator draws each image's light itself, and the spread then counts that light as the network's; the
    shipped model's light is baked."""
    z_dim = getattr(generate, "z_dim", 0) or 0
    code_dim = getattr(generate, "code_dim", z_dim)
    if not code_dim:
        return None
    n_maps = min(n_maps, len(ctx.syn_depth))
    z = network_code_draws(n_maps, n_codes, z_dim, code_dim, torch.Generator().manual_seed(ctx.seed + 2))
    imgs = images_over_codes(ctx, generate, z, n_maps)
    share = _spread_over_codes(ctx, imgs, n_maps, n_codes)
    px = measures.pixel_spread(imgs.view(n_maps, n_codes, *imgs.shape[1:]), ctx.syn_mask[:n_maps])
    between = float(imgs[::n_codes].float().std(0, unbiased=False).mean())
    return {"descriptor_share": share, **px, "between": between, "n_maps": n_maps, "n_codes": n_codes}


def evaluate_generator(ctx: EvalContext, generate, z_dim: int = 0, images: torch.Tensor | None = None) -> dict:
    """Every measure for ``generate(depth, mask, z) -> images in [-1, 1]`` (z ~ N(0, I) seeded when None) on the
    synthetic inputs: realism (C2ST, FD, KID; test photos as reference), correspondence (depth estimator; NME of dlib
    landmarks vs the face model's own), detection rate, face-FD, diversity, shape sensitivity, identity (new and old
    design). ``images``: the outputs on ``ctx.syn_depth`` if already computed."""
    imgs = call_generator(generate, ctx.syn_depth, ctx.syn_mask, None, ctx.syn_params) if images is None else images
    if ctx.feature_net is None:  # judges only
        out = face_judgement(ctx, imgs, ctx.syn_landmarks)
        out.pop("landmarks"), out.pop("embeddings")
        out.update(identity(ctx, generate, z_dim))
        out["code_spread"] = code_spread(ctx, generate, z_dim)
        return out
    out = realism(ctx, imgs)
    corr = metric_nets.correspondence(ctx.depth_estimator, imgs, ctx.syn_depth, ctx.syn_mask)
    out.update({"corr_rmse": corr["rmse"], "corr_rmse_ci": corr["rmse_ci"], "corr_r": corr["corr"]})
    fj = face_judgement(ctx, imgs, ctx.syn_landmarks)
    fj.pop("landmarks"), fj.pop("embeddings")
    out.update(fj)
    out["code_spread"] = code_spread(ctx, generate, z_dim)
    out["ae_diversity"] = metric_nets.mean_pairwise_feature_distance(ctx.feature_net, imgs)
    out["brightness_spread"] = measures.brightness_spread(imgs, ctx.syn_mask)
    n = len(ctx.shape_depth)
    shape_params = face_params(ctx.shape_coeffs)  # frontal (poses None), neutral
    out["shape_sensitivity"] = metric_nets.shape_sensitivity(lambda d, m_, z: call_generator(generate, d, m_, z, shape_params),
                                                   ctx.feature_net, ctx.shape_coeffs, ctx.shape_depth,
                                                   ctx.shape_mask, torch.zeros(n, z_dim) if z_dim else None)
    out.update(identity(ctx, generate, z_dim))
    if z_dim:  # several samples of one depth map
        k, s = 8, 8
        d = ctx.syn_depth[:k].repeat_interleave(s, 0)
        m = ctx.syn_mask[:k].repeat_interleave(s, 0)
        params = None if ctx.syn_params is None else face_params(**ctx.syn_params, rows=np.repeat(np.arange(k), s))
        z = normal(k * s, z_dim, generator=torch.Generator().manual_seed(ctx.seed + 1))
        imgs = call_generator(generate, d, m, z, params)
        out["ae_z_diversity"] = float(np.mean([metric_nets.mean_pairwise_feature_distance(
            ctx.feature_net, imgs[i * s:(i + 1) * s]) for i in range(k)]))
    return out


REFS = {"test": "reference: real test photos", "train": "reference: real training photos (vs test)",
        **{f"blur{s:g}": f"reference: training photos blurred, sigma {s:g} px" for s in BLUR_SIGMAS},
        **{f"noise{s:g}": f"reference: training photos + noise, sigma {s:g} grey levels" for s in NOISE_LEVELS},
        "depth": "reference: depth maps as images", "const": "reference: one constant mean face",
        "shuffled": "reference: NME shuffled (test photos vs another photo's fitted landmarks)",
        "narrow": "reference: training photos' descriptors at 0.7x their spread (KID only)",
        "z_only": "control: z-only generator (depth-blind)", "orl": "control: ORL real photos (known identity)",
        "one_photo": "reference: one photo for every shape"}


def reference_rows(ctx: EvalContext) -> dict:
    """The known cases every run is placed between (all against the test photos): the real rung (training photos),
    the same photos blurred and noised, depth maps shown as images, one constant mean face; for NME the oracle (test
    photos vs their own landmarks) and the shuffled baseline; identity controls (z-only generator, depth map as image,
    ORL photos with known identity); shape-sensitivity controls."""
    C = ctx.real_test.shape[1]
    n = ctx.n_embed
    tr = ctx.real_train[:n]
    mean_face = ctx.real_train.mean(0, keepdim=True)
    rungs = {"train": (tr, ctx.train_landmarks),
             **{f"blur{s:g}": (gaussian_blur(tr, s), ctx.train_landmarks) for s in BLUR_SIGMAS},
             **{f"noise{s:g}": (add_noise(tr, s, ctx.seed), ctx.train_landmarks) for s in NOISE_LEVELS},
             "depth": (depth_as_image(ctx.syn_depth[:n], C), ctx.syn_landmarks),
             "const": (mean_face.expand(n, -1, -1, -1), ctx.syn_landmarks)}
    here = ctx.feature_net is not None  # False: judges only (see build_context)
    rows, train_emb = {}, None
    for key, (imgs, target) in rungs.items():
        r = realism(ctx, imgs) if here else {}
        r.update(face_judgement(ctx, imgs, target))
        r.pop("landmarks")
        train_emb = r.pop("embeddings") if key == "train" else train_emb
        r.pop("embeddings", None)
        if here:
            r["ae_diversity"] = metric_nets.mean_pairwise_feature_distance(ctx.feature_net, imgs)
        rows[REFS[key]] = r
    # KID's own known answer at the same N: the real rung's descriptors pulled to 0.7x their spread
    narrow = train_emb.mean(0) + 0.7 * (train_emb - train_emb.mean(0))
    k = measures.kernel_distance_features(narrow, ctx.test_faces.embeddings, ctx.kid_stats, seed=ctx.seed)
    rows[REFS["narrow"]] = {"kid": k["kid"], "kid_se": k["kid_se"], "n_judged": len(narrow)}
    # the test photos themselves: detection, NME oracle (dlib vs each photo's own fitted face model's landmarks, the
    # definition synthetic targets use; MediaPipe mapped to iBUG as a secondary line), diversity
    tf = ctx.test_faces
    o = measures.nme(tf.landmarks, ctx.test_landmarks, J.INNER_POINTS)
    o_jaw = measures.nme(tf.landmarks, ctx.test_landmarks, range(17))
    o_mp = measures.nme(tf.landmarks, ctx.test_landmarks_mediapipe, J.INNER_POINTS)
    det = measures.detection_rate(tf.found)
    rows[REFS["test"]] = {"detection": det["rate"], "detection_ci": det["ci"], "nme": o["nme"], "nme_ci": o["ci"],
                          "nme_jaw": o_jaw["nme"], "nme_mediapipe": o_mp["nme"], "nme_mediapipe_ci": o_mp["ci"],
                          "face_diversity": measures.mean_pairwise_distance(tf.embeddings), "diversity_share": 1.0,
                          "n_judged": len(tf.embeddings),
                          "brightness_spread": measures.brightness_spread(ctx.real_test, ctx.test_mask)}
    if ctx.train_embeddings is not None:  # memorisation's reference: real photos never trained on
        mem = measures.near_copy_share(tf.embeddings, ctx.train_embeddings)
        rows[REFS["test"]].update({"near_copy": mem["share"], "near_copy_ci": mem["ci"],
                                   "near_copy_n_train": mem["n_train"]})
    rows[REFS["test"]].update(_training_neighbours(ctx, tf.embeddings))
    s = measures.nme(tf.landmarks, np.roll(ctx.test_landmarks, 1, axis=0), J.INNER_POINTS)
    rows[REFS["shuffled"]] = {"nme": s["nme"], "nme_ci": s["ci"]}
    # identity controls, each with its band (IDENTITY_BANDS)
    z_only = z_only_generator(ctx.real_test, noise_grey_levels=2.0)
    rows[REFS["z_only"]] = identity(ctx, z_only, z_only.z_dim, controls=False)
    as_image = lambda d, m, z=None: depth_as_image(d, C)  # noqa: E731
    rows[REFS["depth"]].update(identity(ctx, as_image, 0, controls=False))
    orl = ctx.judges.analyse(ctx.orl, fallback_box=ctx.fallback_box, workers=ctx.workers)
    r = measures.identity_auc(orl.embeddings, ctx.orl_ids, design="labels", seed=ctx.seed)
    det = measures.detection_rate(orl.found)
    rows[REFS["orl"]] = {"identity_auc": r["auc"], "identity_auc_ci": r["ci"], "identity_n_ids": r["n_ids"],
                         "identity_same_share": r["same_share"], "detection": det["rate"], "detection_ci": det["ci"]}
    if not here:
        return rows
    rows[REFS["test"]]["ae_diversity"] = metric_nets.mean_pairwise_feature_distance(ctx.feature_net, ctx.real_test)
    oracle = metric_nets.correspondence(ctx.depth_estimator, ctx.real_test, ctx.test_depth, ctx.test_mask)
    perm = torch.roll(torch.arange(len(ctx.real_test)), 1)
    shuffled = metric_nets.correspondence(ctx.depth_estimator, ctx.real_test[perm], ctx.test_depth, ctx.test_mask)
    rows[REFS["test"]].update({"corr_rmse": oracle["rmse"], "corr_rmse_ci": oracle["rmse_ci"],
                               "corr_r": oracle["corr"]})
    rows[REFS["shuffled"]].update({"corr_rmse": shuffled["rmse"], "corr_rmse_ci": shuffled["rmse_ci"],
                                   "corr_r": shuffled["corr"]})
    # shape sensitivity: the depth map itself must rank shape differences, one fixed photo must not
    rows[REFS["depth"]]["shape_sensitivity"] = metric_nets.shape_sensitivity(
        as_image, ctx.feature_net, ctx.shape_coeffs, ctx.shape_depth, ctx.shape_mask)
    g = torch.Generator().manual_seed(0)
    one = lambda d, m, z=None: ctx.real_test[:1].expand(len(d), -1, -1, -1) + 1e-3 * torch.randn(  # noqa: E731
        len(d), *ctx.real_test.shape[1:], generator=g)
    rows[REFS["one_photo"]] = {"shape_sensitivity": metric_nets.shape_sensitivity(
        one, ctx.feature_net, ctx.shape_coeffs, ctx.shape_depth, ctx.shape_mask)}
    return rows


def ladder_checks(rows: dict) -> dict:
    """Which metrics order their known cases correctly. Each entry: {"ok": bool, "rule": what was checked}.

    Face detection is checked on the degradations only (real >= mild >= strong, real > strong, depth maps below
    real): one constant mean face is a perfectly frontal average face and IS detected (~1.0), so detection is a
    necessary sign of a face, not a measure of realism; that rung is reported beside the check, not hidden."""
    g = lambda k, m: rows[REFS[k]].get(m, float("nan"))  # noqa: E731
    b1, b2 = (f"blur{s:g}" for s in BLUR_SIGMAS)
    n1, n2 = (f"noise{s:g}" for s in NOISE_LEVELS)
    out = {}

    def check(name, ok, rule):
        out[name] = {"ok": bool(ok), "rule": rule}

    here = "fd" in rows[REFS["train"]]  # False: judges only
    v = {k: g(k, "kid") for k in ("train", b1, b2, n1, n2, "depth", "const", "narrow")}
    check("kid", v["train"] < v[b1] < v[b2] and v["train"] < v[n1] < v[n2] and v["train"] < v["narrow"]
          and max(v[b1], v[b2], v[n1], v[n2]) < v["depth"] and v["train"] < v["const"],
          "real < blur 1 < blur 2; real < noise 10 < noise 20; real < real at 0.7x spread; real < constant face; "
          "every degraded rung < depth as image")
    v = {k: g(k, "face_fd") for k in ("train", b1, b2, n1, n2, "depth", "const")}
    check("face_fd", v["train"] < v[b1] < v[b2] and v["train"] < v[n1] < v[n2]
          and max(v[b1], v[b2], v[n1], v[n2]) < v["depth"] < v["const"],
          "real < blur 1 < blur 2; real < noise 10 < noise 20; every degraded rung < depth as image < constant "
          "(shown beside its N; biased at small N)")
    if here:
        # the autoencoder's features keep the ladder they were built for (real < blurred < depth maps); the mild
        # rungs and the constant face are in the table, not checked: they need not see a 1 px blur or sensor noise
        for m in ("fd", "ae_kid"):
            v = {k: g(k, m) for k in ("train", b2, "depth")}
            check(m, v["train"] < v[b2] < v["depth"], "real < blur 2 < depth as image (mild rungs shown, unchecked)")
        v = {k: g(k, "c2st") for k in ("train", b2, "depth")}
        hi = rows[REFS["train"]]["c2st_ci"]
        check("c2st", hi[0] < 0.5 + 0.1 and hi[1] < min(v[b2], v["depth"]),
              "real (train vs test) interval reaches near 0.5 and lies below blur 2 and depth as image")
    v = {k: g(k, "detection") for k in ("train", b1, b2, n1, n2, "depth")}
    check("detection", v["train"] >= v[b1] >= v[b2] and v["train"] > v[b2] and v["train"] >= v[n1] >= v[n2]
          and v["train"] > v[n2] and v["depth"] < v["train"],
          "real >= blur 1 >= blur 2 (real > blur 2), same for noise, depth as image < real; constant face reported "
          f"(detected {g('const', 'detection'):.2f}: detection is not realism)")
    o, s = rows[REFS["test"]], rows[REFS["shuffled"]]
    check("nme", o["nme_ci"][1] < s["nme_ci"][0], "oracle (test photos vs own landmarks) < shuffled, intervals apart")
    if here:
        check("corr_rmse", o["corr_rmse_ci"][1] < s["corr_rmse_ci"][0], "oracle < shuffled, intervals apart")
        check("corr_r", o["corr_r"] > s["corr_r"], "oracle > shuffled")
    check("face_diversity", g("const", "face_diversity") < g("test", "face_diversity"), "constant face < test photos")
    if "train_neighbour" in rows[REFS["test"]]:  # memorisation against the held-out split
        t, null = rows[REFS["test"]], rows[REFS["test"]]["train_neighbour_null"]
        check("train_neighbour", g("train", "train_neighbour") >= 0.99 and g(b1, "train_neighbour") > null
              and t["train_neighbour_ci"][0] <= null <= t["train_neighbour_ci"][1],
              "copies (training photos) >= 0.99; their 1 px blur above the null; the test photos' interval holds "
              f"the null {null:.3f}")
    zo, orl, dep = rows[REFS["z_only"]], rows[REFS["orl"]], rows[REFS["depth"]]
    inside = lambda v, key: IDENTITY_BANDS[key][0] <= v <= IDENTITY_BANDS[key][1]  # noqa: E731
    check("identity_auc", inside(zo["identity_auc"], "z_only") and inside(orl["identity_auc"], "orl")
          and inside(dep["identity_auc"], "depth"),
          f"controls inside their bands: z-only generator {IDENTITY_BANDS['z_only']} (untied: each image its own "
          f"noise), depth maps as images {IDENTITY_BANDS['depth']}, ORL real identities {IDENTITY_BANDS['orl']}; "
          f"each run's mean-shape control {IDENTITY_BANDS['mean_shape']} is checked in its own row")
    check("identity_auc_old", zo["identity_auc_old"] > 0.9,
          "the old design is confounded: the z-only generator scores > 0.9 (shown, not used to rank)")
    if not here:
        return out
    const = rows[REFS["one_photo"]]["shape_sensitivity"]
    check("shape_sensitivity", g("depth", "shape_sensitivity") > abs(const) + 0.1,
          "depth map itself > |one fixed photo| + 0.1")
    return out


def evaluate_runs(ctx: EvalContext, checkpoints: dict, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    rows = {}
    for name, ck in tqdm(checkpoints.items(), desc="evaluating runs", disable=not progress):
        run = load_run(ck)
        gen = generator_fn(run, ctx.seed)
        rows[name] = {"checkpoint": str(ck), "mode": run.cfg.mode, "z_dim": gen.z_dim,
                      **evaluate_generator(ctx, gen, gen.z_dim)}
    return rows


# ---- the table, the winners, the figures -----------------------------------------------------------------------------
# (column, metric key, interval key, lower is better; None = shown, never ranks: the old identity design is
# confounded, and the same-person share alone rewards identical outputs)
COLUMNS = [("KID x 10^3 (dlib)", "kid", None, True), ("N", "n_judged", None, None),
           ("detection", "detection", "detection_ci", False), ("NME (inner 51)", "nme", "nme_ci", True),
           ("diversity share", "diversity_share", None, False), ("code spread", "code_spread", None, False),
           ("identity spread", "identity_spread", None, False),
           ("identity AUC", "identity_auc", "identity_auc_ci", False),
           ("mean-shape control", "identity_mean_shape", None, None),
           ("same-person share", "identity_same_share", None, None),  # a collapsed output scores 1: never ranks
           ("identity AUC same-pose design", "identity_auc_same_pose", None, None),
           ("face-FD at N", "face_fd", None, None),  # biased at small N: shown beside N, never ranks
           ("C2ST", "c2st", "c2st_ci", True), ("FD (AE)", "fd", None, True), ("KID (AE)", "ae_kid", None, True),
           ("depth RMSE", "corr_rmse", "corr_rmse_ci", True), ("shape sens.", "shape_sensitivity", None, False),
           ("AE diversity", "ae_diversity", None, False)]
LADDER_OF = {"identity_auc": "identity_auc", "identity_same_share": "identity_auc",
             "identity_mean_shape": "identity_auc", "identity_auc_same_pose": "identity_auc_old",
             "face_diversity": "face_diversity", "diversity_share": "face_diversity", "code_spread": "face_diversity",
             "identity_spread": "face_diversity"}
SCALE = {"kid": 1e3}  # shown x 10^3


def memorisation_table(refs: dict, rows: dict) -> str:
    """A "Memorisation" section in markdown: both measures for every row that has them (the threshold share of
    ``measures.near_copy_share``; the held-out one of ``measures.training_neighbour_share`` beside its chance)."""
    parts = memorisation_parts(refs, rows)
    return f"{parts[0]}\n\n{parts[1]}\n" if parts else ""


def memorisation_parts(refs: dict, rows: dict) -> tuple[str, str] | None:
    """``memorisation_table``'s two parts: (heading and text, the table), or None when no row has a measure."""
    have = {k: r for k, r in {**refs, **rows}.items() if "near_copy" in r or "train_neighbour" in r}
    if not have:
        return None
    ci = lambda r, k: (f"{r[k]:.3f} [{r[k + '_ci'][0]:.3f}, {r[k + '_ci'][1]:.3f}]" if r.get(k) is not None  # noqa
                       else "–")
    lines = "\n".join(f"| {k} | {ci(r, 'near_copy')} | {ci(r, 'train_neighbour')} | "
                      f"{r['train_neighbour_z']:+.1f} |" if "train_neighbour_z" in r else
                      f"| {k} | {ci(r, 'near_copy')} | – | – |" for k, r in have.items())
    null = next((r["train_neighbour_null"] for r in have.values() if "train_neighbour_null" in r), None)
    chance = "" if null is None else (
        f" Held-out split: the share of faces whose nearest photo (dlib descriptors), among every training photo "
        f"and the validation photos never trained on, is a training photo; chance {null:.3f} (M / (M + H)) for "
        f"any face made without seeing either split, whatever it looks like; z = (share - chance) / s.e., the s.e. "
        f"counting faces that share a nearest photo together; copies of training photos score 1 "
        f"(`evaluation.measures.training_neighbour_share`).")
    n_thr = next((r["near_copy_n_train"] for r in have.values() if "near_copy_n_train" in r), "the")
    return (f"## Memorisation\n\nThreshold: the share of faces within dlib's same-person distance 0.6 of one of "
            f"{n_thr} training photos; it has no chance level, and blurred or plain faces, which sit close to "
            f"every photo, read as copies (see the constant face, depth maps and blur rungs).{chance}",
            f"| row | threshold share | held-out: nearest is a training photo | z |\n|---|---|---|---|\n{lines}")


def _fmt(v, ci=None, digits=3):
    if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
        return "–"
    s = f"{v:.{digits}f}"
    if ci is not None and all(isinstance(c, float) and math.isfinite(c) for c in ci):
        s += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return s


def results_table(refs: dict, rows: dict, checks: dict) -> str:
    """One markdown table: every control row, then every run; 95 % intervals in brackets where a number is a mean
    or a proportion. A column whose ladder failed says FAILED in its header."""
    head = []
    for col, key, _, _ in COLUMNS:
        chk = checks.get(LADDER_OF.get(key, key))
        head.append(col + ("" if chk is None or chk["ok"] else " (ladder FAILED)"))
    lines = ["| row | " + " | ".join(head) + " |", "|---|" + "---|" * len(COLUMNS)]
    for name, r in {**refs, **rows}.items():
        cells = []
        for _, key, ci, _ in COLUMNS:
            k, v = SCALE.get(key, 1), r.get(key)
            if key == "n_judged":
                cells.append(str(v) if v is not None else "–")
                continue
            cell = _fmt(v * k if isinstance(v, (int, float)) else v, [c * k for c in r[ci]] if ci and r.get(ci) else None)
            if key == "identity_mean_shape" and r.get("identity_mean_shape_ok") is False:
                cell += " (outside band: FAILED)"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def winners(rows: dict, checks: dict) -> dict:
    """The best run on each axis whose ladder passed (None when no run has a number, all runs tie, no run's
    identity AUC is above chance, or the ladder failed)."""
    out = {}
    for col, key, _, lower in COLUMNS:
        chk = checks.get(LADDER_OF.get(key, key))
        if lower is None or (chk is not None and not chk["ok"]):
            continue
        cand = {n: r[key] for n, r in rows.items() if isinstance(r.get(key), float) and math.isfinite(r[key])}
        if key == "c2st":
            cand = {n: abs(v - 0.5) for n, v in cand.items()}
        if key == "identity_auc":  # only runs that keep identity above chance and pass their mean-shape control
            cand = {n: v for n, v in cand.items() if rows[n]["identity_auc_ci"][0] > 0.5
                    and rows[n].get("identity_mean_shape_ok", True)}
        if len(set(cand.values())) == 1 and len(cand) > 1:  # all equal (e.g. C2ST saturated at 1): no winner
            cand = {}
        out[col] = (min if lower else max)(cand, key=cand.get) if cand else None
    return out


def conclusions(refs: dict, rows: dict, checks: dict) -> list[str]:
    """Sentences that follow from the numbers of this run (no fixed verdicts)."""
    out = []
    real = refs[REFS["train"]]
    b2 = refs[REFS[f"blur{BLUR_SIGMAS[-1]:g}"]]
    oracle, shuffled, const = refs[REFS["test"]], refs[REFS["shuffled"]], refs[REFS["const"]]
    for name, r in rows.items():
        bits = []
        if checks["kid"]["ok"]:
            where = ("below blurred sigma 2" if r["kid"] <= b2["kid"] else
                     "below depth-as-image" if r["kid"] < refs[REFS["depth"]]["kid"] else
                     "at or beyond depth-as-image")
            bits.append(f"KID x 10^3 {1e3 * r['kid']:.2f} at N = {r['n_judged']} ({where}; real "
                        f"{1e3 * real['kid']:.2f})")
        if isinstance(r.get("code_spread"), float) and math.isfinite(r["code_spread"]):
            bits.append(f"faces under 8 codes of one depth map spread {r['code_spread']:.2f} of the real photos' "
                        f"spread; over identities {r['identity_spread']:.2f}")
        if checks["nme"]["ok"]:
            where = ("below the depth-blind constant face" if r["nme_ci"][1] < const["nme_ci"][0] else
                     "worse than the depth-blind constant face" if r["nme_ci"][0] > const["nme_ci"][1] else
                     "indistinguishable from the depth-blind constant face")
            bits.append(f"NME {r['nme']:.3f} ({where} {const['nme']:.3f}; oracle {oracle['nme']:.3f}, "
                        f"shuffled {shuffled['nme']:.3f})")
        if checks["identity_auc"]["ok"] and r.get("identity_mean_shape_ok", True):
            lo = r["identity_auc_ci"][0]
            bits.append(f"identity AUC {r['identity_auc']:.2f} ("
                        + ("keeps identity across poses" if lo > 0.5 else "no evidence of identity beyond chance")
                        + f"; same-pose design {r['identity_auc_same_pose']:.2f})")
        out.append(f"{name}: " + "; ".join(bits))
    return out


def plot_realism_vs_nme(refs: dict, rows: dict, ax=None):
    """KID on dlib descriptors (realism) against NME (correspondence), one point per run with its NME interval, and the
    control rows as reference lines/points."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 6))
    for name, r in rows.items():
        ax.errorbar(r["nme"], 1e3 * r["kid"], xerr=np.clip([[r["nme"] - r["nme_ci"][0]], [r["nme_ci"][1] - r["nme"]]],
                                                         0, None), fmt="o", ms=5, alpha=0.8)
        ax.annotate(name, (r["nme"], 1e3 * r["kid"]), fontsize=7, rotation=15)
    for key, style in (("depth", "s"), ("const", "X")):
        r = refs[REFS[key]]
        ax.plot(r["nme"], 1e3 * r["kid"], style, c="k", ms=8, label=REFS[key].split(": ")[1])
    ax.axvline(refs[REFS["test"]]["nme"], ls="--", c="g", label="NME oracle (real photos)")
    ax.axvline(refs[REFS["shuffled"]]["nme"], ls="--", c="r", label="NME shuffled")
    for key, c in (("train", "g"), (f"blur{BLUR_SIGMAS[-1]:g}", "orange")):
        ax.axhline(1e3 * refs[REFS[key]]["kid"], ls=":", c=c, label="KID " + REFS[key].split(": ")[1])
    ax.set_xlabel("correspondence: NME of dlib landmarks vs the face model's (inner 51 points; lower = better)")
    ax.set_ylabel("realism: KID x 10^3 to the test photos (dlib descriptors; lower = better)")
    ax.legend(fontsize=7)
    return ax


def landmark_examples(ctx: EvalContext, generate, n: int = 6, z_dim: int = 0):
    """The first ``n`` synthetic inputs through ``generate``: (images, dlib landmarks, detected?) for the grid."""
    params = None if ctx.syn_params is None else face_params(**ctx.syn_params, rows=np.arange(n))
    imgs = call_generator(generate, ctx.syn_depth[:n], ctx.syn_mask[:n], None, params)
    faces = ctx.judges.analyse(imgs, embed=False, fallback_box=ctx.fallback_box, workers=ctx.workers)
    return imgs, faces.landmarks, faces.found


def plot_landmark_grid(ctx: EvalContext, images: dict, n: int = 6):
    """Rows: the input depth with the face model's target landmarks, then each run's faces with dlib's detected
    landmarks (green: detected box, red: fallback box) over them. ``images`` = {name: (images, landmarks, found)}."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(images) + 1, n, figsize=(1.6 * n, 1.7 * (len(images) + 1)), squeeze=False)
    tgt = ctx.syn_landmarks
    for j in range(n):
        axes[0, j].imshow(ctx.syn_depth[j, 0], cmap="gray")
        axes[0, j].scatter(tgt[j, 17:, 0] - 0.5, tgt[j, 17:, 1] - 0.5, s=2, c="cyan")
    axes[0, 0].set_title("input depth + target landmarks", fontsize=7, loc="left")
    for i, (name, (imgs, lms, found)) in enumerate(images.items(), 1):
        for j in range(n):
            axes[i, j].imshow(((imgs[j].permute(1, 2, 0) + 1) / 2).clamp(0, 1).squeeze(-1).numpy(), cmap="gray")
            axes[i, j].scatter(lms[j][17:, 0] - 0.5, lms[j][17:, 1] - 0.5, s=2, c="lime" if found[j] else "red")
            axes[i, j].scatter(tgt[j, 17:, 0] - 0.5, tgt[j, 17:, 1] - 0.5, s=1, c="cyan", alpha=0.5)
        axes[i, 0].set_title(name, fontsize=7, loc="left")
    for a in axes.ravel():
        a.axis("off")
    fig.tight_layout()
    return fig


def to_json(obj):
    """Results with numpy values made JSON-serialisable."""
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    return obj
