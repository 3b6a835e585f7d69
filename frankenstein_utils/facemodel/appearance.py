"""The face model's appearance half: per-vertex colour learned from the photos through their fits.

Every CelebA photo of the paired set is already fitted (identity, expression, pose; ``facemodel/fitting.py``).
Projecting the fitted mesh into the photo gives each visible vertex its colour; a PCA of those colours over the training
split is an appearance model in the face model's own topology, as FLAME's texture space was built from fitted photos.

Steps (``build_appearance``):

1. **Sampling**: vertex ``v`` of photo ``b`` takes the photo's colour at its projection (bilinear) when it is
   visible: its posed normal faces the camera (n_z > ``facing_min``) and it is not behind the fitted surface
   (z-buffer at twice the photo's resolution, tolerance ``depth_tol_cm``). About a third of the region is visible in
   a photo; the rest is missing data.
2. **Filling**: ``mirror`` copies the colour of the mirrored vertex where only that one is visible; what is still
   missing starts as the neighbours' average (a harmonic fill over the mesh), which PCA then refines.
3. **Missing-data PCA** (iterative imputation, Ilin & Raiko 2010): ``X[missing] <- mean + U S V^T`` of the previous
   round, ``rounds`` times, with a randomized SVD (``torch.svd_lowrank``) of the filled matrix.
4. **Components**: K is chosen on the validation split: each validation photo's *visible* colours are projected onto
   the first K components (a MAP fit that sees only those), and K is the smallest whose error is within
   ``k_tolerance_db`` of the best K's.

Light (``light``): ``"baked"`` keeps the photos' lighting in the colours (the model draws lit faces);
``"sh"`` separates each photo's colours into albedo x shading, with 9 spherical-harmonics light coefficients per
colour channel estimated from the fitted normals (DECA, GIF): ``colour_v = albedo_v * (Y(n_v) . l)``. The PCA is then
over albedo, and each training photo's light ``l`` (9 x 3) is kept, so that new faces are lit as real ones are
(``sample_light`` draws one of them).

Appearance that follows the shape: the joint Gaussian of (identity coefficients, appearance coefficients) over the
training fits gives a closed-form conditional ``a | s ~ N(mu_a + W (s - mu_s), S_res)`` (``from-shape``); ``free``
draws the marginal. Synthetic identities are drawn from N(0, I), much wider than the fits' spread (a synthetic face
sits far outside the fits' Gaussian); ``shape_map="whiten"`` reads a synthetic ``z`` as the fits' whitened
coefficients (``s = mu_s + L z``, L the Cholesky factor of their covariance) before conditioning, so the conditional
is never extrapolated; ``"identity"`` conditions on z as given.

Appearance coefficients are stored in units of their own standard deviation, so ``free`` draws N(0, I).

The model is derived from CelebA and carries its terms: non-commercial research and education only; do not
redistribute.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.draws import normal

LIGHTS = ("baked", "sh")
MODES = ("from-shape", "free")
SHAPE_MAPS = ("whiten", "identity")
TERMS = ("Derived from CelebA (MMLAB, CUHK) photos: non-commercial research and educational use only; "
         "no redistribution (CelebA agreement). Cite Liu et al., ICCV 2015.")


@dataclass
class AppearanceConfig:
    """How the appearance model is built (saved inside it)."""

    region: str = "chin"  # the face model region (the paired set's render region)
    light: str = "baked"
    mirror: bool = False  # measured: the mirror fill lowered validation PSNR (build reports, issue 21 note)
    facing_min: float = 0.2  # posed normal's z above which a vertex counts as facing the camera
    depth_tol_cm: float = 0.3  # a vertex this far behind the z-buffer is hidden
    fill_iterations: int = 60  # neighbour-averaging steps of the initial harmonic fill
    rounds: int = 4  # imputation rounds of the missing-data PCA
    max_components: int = 100
    candidates: tuple = (5, 10, 20, 30, 40, 60, 80, 100)
    k_tolerance_db: float = 0.1  # the smallest K within this of the best validation PSNR
    shape_components: int = 15  # identity coefficients that the from-shape conditional reads
    seed: int = 0

    def __post_init__(self):
        self.candidates = tuple(int(k) for k in self.candidates)
        if self.light not in LIGHTS:
            raise ValueError(f"AppearanceConfig.light={self.light!r}; choose one of {LIGHTS}")


# ---- geometry helpers -------------------------------------------------------------------------------------------
def mirror_index(verts: np.ndarray, max_cm: float = 0.3) -> np.ndarray:
    """Index of each vertex's mirror image (x -> -x) among ``verts`` (N, 3) of the mean face; -1 where none is
    within ``max_cm``."""
    from scipy.spatial import cKDTree

    d, j = cKDTree(verts).query(verts * np.array([-1.0, 1.0, 1.0]))
    return np.where(d <= max_cm, j, -1)


def neighbour_matrix(faces: np.ndarray, n: int):
    """Row-normalized vertex adjacency (sparse, N x N) of a triangle mesh."""
    from scipy import sparse

    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    A = sparse.coo_matrix((np.ones(len(i), np.float32), (i, j)), shape=(n, n)).tocsr()
    A.data[:] = 1.0
    deg = np.asarray(A.sum(1)).ravel()
    return sparse.diags(1.0 / np.maximum(deg, 1)).astype(np.float32) @ A


# ---- spherical harmonics ------------------------------------------------------------------------------------------
def sh_basis(n: torch.Tensor) -> torch.Tensor:
    """The 9 real spherical harmonics up to band 2 at unit normals (..., 3), constants folded in (Ramamoorthi &
    Hanrahan 2001, the irradiance form DECA uses): (..., 9)."""
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    c0, c1, c2, c3, c4 = 0.886227, 1.023328, 0.858086, 0.247708, 0.429043
    return torch.stack([torch.full_like(x, c0), c1 * y, c1 * z, c1 * x, c2 * x * y, c2 * y * z,
                        c3 * (3 * z * z - 1), c2 * x * z, c4 * (x * x - y * y)], -1)


def shading(normals: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """Per-vertex shading (B, N, 3) from unit normals (B, N, 3) and SH light (B, 9, 3)."""
    return torch.einsum("bnk,bkc->bnc", sh_basis(normals), light)


# ---- skin tone ------------------------------------------------------------------------------------------------------
def individual_typology_angle(rgb: np.ndarray) -> np.ndarray:
    """ITA in degrees, ``atan2(L* - 50, b*)``, of skin colours (..., 3) in sRGB [0, 1]: > 55 very light, 41-55
    light, 28-41 intermediate, 10-28 tan, -30-10 brown, < -30 dark (Chardon et al. 1991; the FAIR benchmark)."""
    from skimage.color import rgb2lab

    lab = rgb2lab(np.clip(np.asarray(rgb, np.float64), 0, 1))  # sRGB, D65
    return np.degrees(np.arctan2(lab[..., 0] - 50, lab[..., 2]))


ITA_BANDS = ((55, 90, "very light"), (41, 55, "light"), (28, 41, "intermediate"), (10, 28, "tan"),
             (-30, 10, "brown"), (-90, -30, "dark"))


def ita_shares(ita: np.ndarray) -> dict:
    """Share of skin colours in each ITA band."""
    ita = np.asarray(ita)
    return {name: float(((ita >= lo) & (ita < hi)).mean()) for lo, hi, name in ITA_BANDS}


def skin_vertices(model, region_vertices: np.ndarray, radius_cm: float = 1.2) -> np.ndarray:
    """Positions (within the region) of cheek and forehead vertices of the mean face: skin without beard, brows or
    lips, for skin-tone measures. Centred on the middle of each cheek (between the jaw's 4th point and the nose
    wing of the 68 markup) and 2.5 cm above the nose bridge's top; outer surface only."""
    lm = model.mean[model.landmarks68].numpy()
    centres = [(lm[3] + lm[31]) / 2, (lm[13] + lm[35]) / 2, lm[27] + np.array([0.0, 2.5, 0.0])]
    from .model import NARROW_FACE

    idx = np.asarray(region_vertices)
    v = model.mean[torch.as_tensor(idx)].numpy()
    d = np.min([np.linalg.norm(v - c, axis=1) for c in centres], axis=0)
    outer = (idx >= NARROW_FACE[0]) & (idx < NARROW_FACE[1])  # the skin surface, not the mouth socket behind it
    return np.nonzero((d < radius_cm) & outer)[0]


# ---- the model -----------------------------------------------------------------------------------------------------
class AppearanceModel:
    """Per-vertex colour ``mean + sum_k a_k sd_k basis_k`` over a face-model region, with ``a ~ N(0, I)`` (free) or
    the Gaussian conditioned on the identity coefficients (from-shape). Colours are sRGB in [0, 1]; with
    ``light == "sh"`` they are albedo, lit by ``shading``."""

    def __init__(self, mean, basis, sd, region_vertices, config: AppearanceConfig, conditional: dict,
                 lights=None, photo_coeffs=None, photo_names=None, report=None, background=None, render=None,
                 face_table=None):
        self.mean = torch.as_tensor(np.asarray(mean, np.float32))  # (V, 3)
        self.basis = torch.as_tensor(np.asarray(basis, np.float32))  # (K, V, 3), unit-norm rows
        self.sd = torch.as_tensor(np.asarray(sd, np.float32))  # (K,)
        self.region_vertices = torch.as_tensor(np.asarray(region_vertices, np.int64))
        self.config = config
        self.conditional = {k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in conditional.items()}
        self.lights = None if lights is None else torch.as_tensor(np.asarray(lights, np.float32))  # (P, 9, 3)
        self.photo_coeffs = photo_coeffs  # (P, K) numpy, per photo of the paired set (all splits), sd units
        self.photo_names = photo_names
        self.report = report or {}
        # the mean training photo (3, S, S) in [0, 1], in the paired set's framing: what a raw render is shown over
        self.background = None if background is None else torch.as_tensor(np.asarray(background, np.float32))
        # the paired set's render configuration (RenderConfig dict): the framing the photos, and so the model, live in
        self.render = render
        # render poses (M, 6) and expressions (M, E) of the fitted training photos: where new faces draw pose and
        # expression from without the data (``facemodel.fitting.FittedFaceParams``)
        self.face_table = face_table

    @property
    def n_components(self) -> int:
        return self.basis.shape[0]

    def colours(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Per-vertex colours (B, V, 3) of appearance coefficients (B, k), k <= K (sd units); clamped to [0, 1]."""
        coeffs = torch.as_tensor(coeffs, dtype=torch.float32)
        if coeffs.ndim == 1:
            coeffs = coeffs[None]
        k = coeffs.shape[1]
        if k > self.n_components:
            raise ValueError(f"{k} appearance coefficients given; the model has {self.n_components}")
        flat = (coeffs * self.sd[:k]) @ self.basis[:k].reshape(k, -1)
        return (self.mean.reshape(-1) + flat).view(len(coeffs), -1, 3).clamp(0, 1)

    def shape_to_fits(self, z: torch.Tensor) -> torch.Tensor:
        """Synthetic identity coefficients z (B, >= S) read as whitened fitted coefficients (``shape_map``)."""
        S = self.conditional["shape_mean"].numel()
        z = torch.as_tensor(z, dtype=torch.float32)[:, :S]
        if z.shape[1] < S:
            z = torch.cat([z, torch.zeros(len(z), S - z.shape[1])], 1)
        return self.conditional["shape_mean"] + z @ self.conditional["shape_chol"].T

    def sample(self, n: int, mode: str = "from-shape", shape: torch.Tensor | None = None,
               generator: torch.Generator | None = None, shape_map: str = "whiten") -> torch.Tensor:
        """Appearance coefficients (n, K) in sd units. ``from-shape``: conditioned on synthetic identity coefficients
        ``shape`` (n, >= S; see the module docstring for ``shape_map``); ``free``: N(0, I). Seeded by
        ``generator``; the draw for face i does not depend on n."""
        if shape is not None and len(shape) != n:
            raise ValueError(f"appearance 'from-shape' needs identity coefficients for each of the {n} faces")
        return self.coefficients(normal(n, self.n_components, generator=generator), mode, shape, shape_map)

    def coefficients(self, z: torch.Tensor, mode: str = "from-shape", shape: torch.Tensor | None = None,
                     shape_map: str = "whiten") -> torch.Tensor:
        """Appearance coefficients (B, K) from standard-normal codes z (B, K): ``free`` -> z itself; ``from-shape``
        -> the conditional Gaussian given the identity coefficients ``shape`` with z as its noise,
        ``app_mean + W (s - shape_mean) + L_res z`` (z = 0: the conditional mean)."""
        if mode not in MODES:
            raise ValueError(f"appearance mode {mode!r}; choose one of {MODES}")
        if shape_map not in SHAPE_MAPS:
            raise ValueError(f"shape_map {shape_map!r}; choose one of {SHAPE_MAPS}")
        z = torch.as_tensor(z, dtype=torch.float32)
        if mode == "free":
            return z
        if shape is None:
            raise ValueError("appearance 'from-shape' needs identity coefficients for each face")
        c = self.conditional
        s = self.shape_to_fits(shape) if shape_map == "whiten" else torch.as_tensor(shape, dtype=torch.float32)[
            :, :c["shape_mean"].numel()]
        return c["app_mean"] + (s - c["shape_mean"]) @ c["regression"].T + z @ c["residual_chol"].T

    def sample_light(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """SH lights (n, 9, 3) of randomly chosen training photos (None for a baked model)."""
        if self.lights is None:
            return None
        idx = torch.randint(len(self.lights), (n,), generator=generator)
        return self.lights[idx]

    # ---- files -------------------------------------------------------------------------------------------------
    def tensors(self, dtype=torch.float32, eight_bit: bool = False) -> dict:
        """The file's tensors: floats in ``dtype``; with ``eight_bit`` the large ones (``EIGHT_BIT``) as 8-bit codes
        with a float32 offset and step per slice, and the vertex indices in the smallest integer type that holds
        them (a shipped copy: 1 byte instead of 2 per basis entry)."""
        out = {"mean": self.mean, "basis": self.basis, "sd": self.sd, "region_vertices": self.region_vertices,
               **{f"cond_{k}": v for k, v in self.conditional.items()}}
        if self.lights is not None:
            out["lights"] = self.lights
        if self.background is not None:
            out["background"] = self.background
        if self.face_table is not None:
            out["table_poses"] = torch.as_tensor(self.face_table[0])
            out["table_expressions"] = torch.as_tensor(self.face_table[1])
        codes = {}
        if eight_bit:  # from the float32 values, not from their float16 rounding
            for name, axis in EIGHT_BIT.items():
                if name in out:
                    q, lo, step = quantize_8bit(out.pop(name).float(), axis)
                    codes.update({f"{name}_u8": q, f"{name}_u8_lo": lo, f"{name}_u8_step": step})
            if len(self.region_vertices) and int(self.region_vertices.max()) < 2 ** 15:
                out["region_vertices"] = out["region_vertices"].to(torch.int16)
        out = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in out.items()}
        return {**out, **{k: v.contiguous() for k, v in codes.items()}}

    def metadata(self, eight_bit: bool = False) -> dict:
        meta = {"config": json.dumps(asdict(self.config)), "report": json.dumps(self.report), "terms": TERMS,
                "format": "frankenstein appearance model 1", "render": json.dumps(self.render)}
        if eight_bit:
            meta["eight_bit"] = json.dumps([k for k in EIGHT_BIT if k != "table_expressions" or self.face_table
                                            is not None])
        return meta

    def to_bytes(self, dtype=torch.float32, with_photos: bool = True, eight_bit: bool = False) -> bytes:
        """The safetensors file's bytes (loading it runs no code); ``with_photos`` adds every photo's coefficients,
        ``eight_bit`` stores the basis and the expression table in 8 bits (``tensors``)."""
        from safetensors.torch import save as st_save

        t = self.tensors(dtype, eight_bit)
        if with_photos and self.photo_coeffs is not None:
            t["photo_coeffs"] = torch.as_tensor(self.photo_coeffs, dtype=torch.float32)
        meta = self.metadata(eight_bit)
        if with_photos and self.photo_names is not None:
            meta["photo_names"] = json.dumps([str(x) for x in self.photo_names])
        return st_save(t, metadata=meta)

    def save(self, path, dtype=torch.float32, with_photos: bool = True, eight_bit: bool = False) -> None:
        """Write ``to_bytes`` atomically."""
        from ..io.files import atomic_write_bytes

        atomic_write_bytes(path, self.to_bytes(dtype, with_photos, eight_bit))

    @classmethod
    def load(cls, path) -> "AppearanceModel":
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 (any damage: one clear line)
            raise ValueError(f"{path}: not a readable appearance model ({e})") from e
        if meta.get("format") != "frankenstein appearance model 1":
            raise ValueError(f"{path}: not an appearance model (format {meta.get('format')!r})")
        t = {k: (v.float() if v.is_floating_point() else v) for k, v in t.items()}
        try:
            eight_bit = [str(x) for x in json.loads(meta.get("eight_bit", "[]"))]
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: unreadable list of 8-bit tensors ({e})") from e
        for name in eight_bit:
            parts = [t.pop(f"{name}_u8{x}", None) for x in ("", "_lo", "_step")]
            if any(p is None for p in parts) or parts[0].dtype != torch.uint8:
                raise ValueError(f"{path}: 8-bit tensor {name!r} lacks its uint8 codes, offset or step")
            t[name] = dequantize_8bit(*parts)
        cond = {k[5:]: v for k, v in t.items() if k.startswith("cond_")}
        names = json.loads(meta["photo_names"]) if "photo_names" in meta else None
        pc = t["photo_coeffs"].numpy() if "photo_coeffs" in t else None
        return cls(t["mean"], t["basis"], t["sd"], t["region_vertices"], AppearanceConfig(**json.loads(meta["config"])),
                   cond, t.get("lights"), pc, names, json.loads(meta.get("report", "{}")), t.get("background"),
                   json.loads(meta.get("render", "null")),
                   (t["table_poses"], t["table_expressions"]) if "table_poses" in t else None)

    def render_config(self):
        """The ``RenderConfig`` of the paired set the model was built from (its region and framing)."""
        from ..render.rasterize import RenderConfig

        if self.render is None:
            raise ValueError("this appearance model records no render configuration")
        return RenderConfig.from_dict(self.render)

    def fitted_face_params(self):
        """The training photos' fitted poses and expressions as a ``facemodel.fitting.FittedFaceParams`` table."""
        from .fitting import FittedFaceParams

        if self.face_table is None:
            raise ValueError("this appearance model carries no table of fitted poses and expressions")
        return FittedFaceParams(np.asarray(self.face_table[0], np.float32), np.asarray(self.face_table[1], np.float32),
                                source="appearance model: fitted training photos")


# tensors a shipped copy stores in 8 bits, and the axis along which each gets its own offset and step: one per
# basis component (in the shipped build their ranges differ by up to 8x) and one per blendshape column (most are
# near 0 in most photos: their ranges differ by 2,000x)
EIGHT_BIT = {"basis": 0, "table_expressions": 1}


def quantize_8bit(t: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``t`` as ``lo + step * q`` with uint8 codes q, ``lo`` the minimum and ``step`` = range / 255 of each slice
    along ``axis`` (float32, kept dimensions): every value within step / 2 of the original."""
    dims = tuple(d for d in range(t.ndim) if d != axis % t.ndim)
    lo = t.amin(dim=dims, keepdim=True)
    step = ((t.amax(dim=dims, keepdim=True) - lo) / 255).clamp_min(torch.finfo(torch.float32).tiny)
    q = ((t - lo) / step).round().clamp(0, 255).to(torch.uint8)
    return q, lo.float(), step.float()


def dequantize_8bit(q: torch.Tensor, lo: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The float32 values of ``quantize_8bit``'s codes."""
    return lo.float() + step.float() * q.float()


SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "appearance.safetensors"


def load_appearance(path=None) -> AppearanceModel:
    """The shipped appearance model (float16, checked against its SHA-256), or the file ``path`` (e.g. a full build,
    ``default_path()``, which also holds every photo's coefficients)."""
    if path is not None:
        return AppearanceModel.load(path)
    if not SHIPPED.exists():
        raise FileNotFoundError(f"{SHIPPED}: no shipped appearance model; build one with `python -m "
                                "frankenstein_utils.data.appearance_build build` and pass its path")
    want = SHIPPED_SUM.read_text().split()[0] if SHIPPED_SUM.exists() else None
    if want != sha256_of(SHIPPED):
        raise ValueError(f"{SHIPPED}: SHA-256 differs from {SHIPPED_SUM.name} (a damaged or replaced file)")
    return AppearanceModel.load(SHIPPED)


SHIPPED_CARD = SHIPPED.with_name("appearance_MODEL_CARD.md")
SHIPPED_SUM = SHIPPED.with_name("appearance.sha256")
SHIP_BUDGET_BYTES = 20_000_000  # every shipped file together (the project's rule)


def sha256_of(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
