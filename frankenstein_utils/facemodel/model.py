"""The linear face model (ICT-FaceKit): load it, sample faces, read and write meshes.

A face is ``mean + sum_k c_k * basis[k] + sum_j w_j * expression_basis[j]`` with identity coefficients
``c_k ~ N(0, 1)`` and expression (blendshape) weights ``w_j`` in [0, 1] (0 = neutral); units are centimetres, +Y up,
+Z toward the viewer.
"""

from __future__ import annotations

import argparse
import io
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from ..io.draws import normal
from ..io.files import atomic_savez, atomic_write_bytes
from ..io.paths import find_dataset
from ..render.rasterize import check_finite

NPZ_NAME = "ict_identity_model.npz"
EXPRESSION_NPZ_NAME = "ict_expression_model.npz"
NEUTRAL_OBJ = "generic_neutral_mesh.obj"
# Vertex ranges of the frontal face region (ICT-FaceKit README geometry table): narrow face, mouth socket,
# gums and tongue, teeth, both eyeballs. See ../shared/data/ict_facekit/README.md for why these.
FACE_REGION_RANGES = ((0, 6706), (11248, 13294), (14062, 21451), (21451, 24591))
NARROW_FACE = (0, 6706)
# The "chin" region stops at the chin line, as landmark meshes of photos do. Below the chin the narrow face turns
# into a nearly horizontal underside (normal pointing down) and then the front of the throat, which shows as a dark
# band under the chin in a frontal depth map. The underside = narrow-face vertices below the mouth (y < CHIN_MAX_Y)
# whose neutral normal has n_y < CHIN_NORMAL_Y; in each CHIN_BIN_CM-wide column of x, the chin line is the highest
# underside vertex, and every narrow-face vertex at or below it is dropped.
CHIN_MAX_Y = -5.0
CHIN_NORMAL_Y = -0.9
CHIN_BIN_CM = 1.0
REGIONS = ("face", "chin", "full")


@dataclass
class MeshRegion:
    """Vertex indices into the full mesh and triangles that index into those vertices."""

    vertices: torch.Tensor  # (N_r,) long
    faces: torch.Tensor  # (T_r, 3) long


class FaceModel:
    """Mean shape, identity basis and topology of a linear face model (torch tensors, float32)."""

    def __init__(self, mean, basis, faces, face_region=None, source: str = "?", expression_basis=None,
                 expression_names=None, landmarks68=None):
        self.mean = torch.as_tensor(np.asarray(mean, dtype=np.float32))  # (N, 3)
        self.basis = torch.as_tensor(np.asarray(basis, dtype=np.float32))  # (K_max, N, 3)
        self.faces = torch.as_tensor(np.asarray(faces, dtype=np.int64))  # (T, 3)
        self.source = source
        n = self.mean.shape[0]
        if self.mean.ndim != 2 or self.mean.shape[1] != 3:
            raise ValueError(f"{source}: mean must have shape (N, 3), got {tuple(self.mean.shape)}")
        if self.basis.shape[1:] != self.mean.shape:
            raise ValueError(f"{source}: basis must have shape (K, {n}, 3), got {tuple(self.basis.shape)}")
        if self.faces.numel() and (self.faces.min() < 0 or self.faces.max() >= n):
            raise ValueError(f"{source}: face indices out of range [0, {n})")
        # Expression blendshapes (E, N, 3); a model without them has E = 0 and only takes neutral faces.
        self.expression_basis = torch.zeros(0, n, 3) if expression_basis is None else \
            torch.as_tensor(np.asarray(expression_basis, dtype=np.float32))
        if self.expression_basis.shape[1:] != self.mean.shape:
            raise ValueError(f"{source}: expression basis must have shape (E, {n}, 3), "
                             f"got {tuple(self.expression_basis.shape)}")
        self.expression_names = [str(x) for x in (expression_names if expression_names is not None else
                                                  [f"expr{j}" for j in range(len(self.expression_basis))])]
        if len(self.expression_names) != len(self.expression_basis):
            raise ValueError(f"{source}: {len(self.expression_names)} expression names for "
                             f"{len(self.expression_basis)} blendshapes")
        # iBUG 68-point markup as vertex indices (the jaw points 0-16 are fixed substitutes for silhouette points).
        self.landmarks68 = None if landmarks68 is None else torch.as_tensor(np.asarray(landmarks68, dtype=np.int64))
        if face_region is None:
            face_region = np.concatenate([np.arange(a, min(b, n)) for a, b in FACE_REGION_RANGES if a < n])
        self._regions: dict[str, MeshRegion] = {}
        self._regions["full"] = MeshRegion(torch.arange(n), self.faces)
        self._regions["face"] = self._subset(torch.as_tensor(np.asarray(face_region, dtype=np.int64)))
        self._regions["chin"] = self._subset(self._chin_vertices(self._regions["face"].vertices))

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_npz(cls, path) -> "FaceModel":
        path = Path(path)
        try:
            d = np.load(path)
            arrays = {k: d[k] for k in ("mean", "basis", "faces")}
            region = d["face_region"] if "face_region" in d.files else None
        except KeyError as e:
            raise ValueError(f"{path}: missing array {e} (expected mean, basis, faces)") from e
        except Exception as e:
            raise ValueError(f"{path}: cannot read face model ({e})") from e
        expr = {}
        expr_path = path.with_name(EXPRESSION_NPZ_NAME)
        if expr_path.exists():
            try:
                e = np.load(expr_path)
                expr = dict(expression_basis=e["basis"], expression_names=e["names"], landmarks68=e["landmarks68"])
            except Exception as err:
                raise ValueError(f"{expr_path}: cannot read expression model ({err})") from err
        return cls(arrays["mean"], arrays["basis"], arrays["faces"], region, source=str(path), **expr)

    @classmethod
    def from_obj_dir(cls, folder, max_identities: int | None = None) -> "FaceModel":
        """Build the model from an ICT-FaceKit ``FaceXModel`` folder: ``basis[k] = identity{k:03d} - neutral``."""
        folder = Path(folder)
        mean, faces = read_obj(folder / NEUTRAL_OBJ, np.float64)  # differences in float64, as the shipped npz
        ids = sorted(folder.glob("identity[0-9][0-9][0-9].obj"))
        if max_identities is not None:
            ids = ids[:max_identities]
        if not ids:
            raise ValueError(f"{folder}: no identityNNN.obj files next to {NEUTRAL_OBJ}")
        basis = []
        for k, p in enumerate(ids):
            if p.name != f"identity{k:03d}.obj":
                raise ValueError(f"{p}: identity files must be numbered from 000 without gaps")
            v, f = read_obj(p, np.float64)
            if v.shape != mean.shape or not np.array_equal(f, faces):
                raise ValueError(f"{p}: topology differs from {NEUTRAL_OBJ}")
            basis.append((v - mean).astype(np.float32))
        return cls(mean.astype(np.float32), np.stack(basis), faces, source=str(folder))

    # ---- regions ------------------------------------------------------------------------------------------------
    def _subset(self, verts: torch.Tensor) -> MeshRegion:
        verts = torch.unique(verts)
        remap = torch.full((self.mean.shape[0],), -1, dtype=torch.long)
        remap[verts] = torch.arange(verts.numel())
        f = remap[self.faces]
        return MeshRegion(verts, f[(f >= 0).all(dim=1)])

    def _chin_vertices(self, region_verts: torch.Tensor) -> torch.Tensor:
        normals = vertex_normals(self.mean, self.faces)
        idx = region_verts
        v, n = self.mean[idx], normals[idx]
        narrow = (idx >= NARROW_FACE[0]) & (idx < NARROW_FACE[1])
        under = narrow & (n[:, 1] < CHIN_NORMAL_Y) & (v[:, 1] < CHIN_MAX_Y)
        col = torch.floor(v[:, 0] / CHIN_BIN_CM).long()
        col = col - col.min()
        chin_y = torch.full((int(col.max()) + 1,), -float("inf")).scatter_reduce(
            0, col[under], v[under, 1], reduce="amax")  # chin line height per column; -inf = no underside there
        below = narrow & (v[:, 1] <= chin_y[col])
        return idx[~below]

    def region(self, name: str = "face") -> MeshRegion:
        if name not in self._regions:
            raise ValueError(f"unknown region {name!r}; choose one of {REGIONS}")
        return self._regions[name]

    @property
    def n_components(self) -> int:
        return self.basis.shape[0]

    @property
    def n_expressions(self) -> int:
        return self.expression_basis.shape[0]

    def expression_index(self, name: str) -> int:
        if name not in self.expression_names:
            raise ValueError(f"{self.source}: unknown expression {name!r}; the model has {self.expression_names}")
        return self.expression_names.index(name)

    # ---- sampling -----------------------------------------------------------------------------------------------
    def sample_coefficients(self, n: int, k: int = 15, generator: torch.Generator | None = None,
                            truncation: float | None = None) -> torch.Tensor:
        """``c ~ N(0, I_k)``, shape (n, k); with ``truncation=t`` a normal truncated to [-t, t] (inverse CDF)."""
        self._check_k(k)
        if truncation is None:
            return normal(n, k, generator=generator)
        if truncation <= 0:
            raise ValueError(f"truncation must be > 0, got {truncation}")
        lo = torch.special.ndtr(torch.tensor(-float(truncation)))
        u = lo + (1 - 2 * lo) * torch.rand(n, k, generator=generator, dtype=torch.float64)
        return torch.special.ndtri(u).float()

    def _check_k(self, k):
        if not 1 <= k <= self.n_components:
            raise ValueError(f"{self.source}: K={k} components requested, the model holds 1..{self.n_components}")

    def vertices(self, coeffs: torch.Tensor, region: str = "full", expressions: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Vertices (B, N_r, 3) in cm for identity coefficients (B, K), K any number up to ``n_components``, and
        optional expression weights (B, E) with E = ``n_expressions`` (None = neutral). Weights are used as given;
        the blendshapes are meant for [0, 1]. NaN or Inf in either raises ``ValueError`` (every render goes
        through here; a non-finite face would rasterize to an empty map without a word)."""
        coeffs = torch.as_tensor(coeffs, dtype=torch.float32)
        if coeffs.ndim == 1:
            coeffs = coeffs[None]
        self._check_k(coeffs.shape[1])
        check_finite(coeffs, "identity coefficients")
        if expressions is not None:
            check_finite(torch.as_tensor(expressions), "expression weights")
        if expressions is not None:
            expressions = torch.as_tensor(expressions, dtype=torch.float32, device=coeffs.device)
            if expressions.ndim == 1:
                expressions = expressions[None]
            if expressions.shape != (coeffs.shape[0], self.n_expressions):
                raise ValueError(f"{self.source}: expressions must have shape ({coeffs.shape[0]}, "
                                 f"{self.n_expressions}), got {tuple(expressions.shape)}")
            key = (region, "expr", coeffs.device)
            cache = self.__dict__.setdefault("_flat_cache", {})
            if key not in cache:
                idx = self.region(region).vertices
                cache[key] = self.expression_basis[:, idx].reshape(self.n_expressions, -1).to(coeffs.device)
            neutral = self.vertices(coeffs, region)
            return neutral + (expressions @ cache[key]).view_as(neutral)
        key = (region, coeffs.shape[1], coeffs.device)
        cache = self.__dict__.setdefault("_flat_cache", {})
        if key not in cache:  # the basis of a region, flattened for one matmul: (K, N_r*3)
            idx = self.region(region).vertices
            cache[key] = (self.mean[idx].reshape(-1).to(coeffs.device),
                          self.basis[: coeffs.shape[1], idx].reshape(coeffs.shape[1], -1).to(coeffs.device))
        mean, basis = cache[key]
        return torch.addmm(mean, coeffs, basis).view(coeffs.shape[0], -1, 3)


def render_faces(model: FaceModel, coeffs: torch.Tensor, cfg=None, poses: torch.Tensor | None = None,
                 expressions: torch.Tensor | None = None):
    """``render.rasterize.render_depth`` with expressions: depth maps and masks (B, H, W) of faces with identity
    coefficients (B, K), optional poses (B, 6) and optional expression weights (B, E). Same render path
    (``render_mesh_depth``) as ``render_depth``, so neutral faces give identical maps."""
    from ..render.rasterize import RenderConfig, render_mesh_depth

    cfg = cfg or RenderConfig()
    verts = model.vertices(coeffs, cfg.region, expressions)
    return render_mesh_depth(verts, model.region(cfg.region).faces, cfg, poses)


def load_face_model() -> FaceModel:
    """The face model from the data root (npz if present, else the ICT-FaceKit .obj files); the expression
    blendshapes and 68 landmarks come from ``ict_expression_model.npz`` beside it when present."""
    try:
        return FaceModel.from_npz(find_dataset("ict_facekit", NPZ_NAME) / NPZ_NAME)
    except FileNotFoundError:
        folder = find_dataset("ict_facekit", "identity000.obj")  # raises with download instructions
        return FaceModel.from_obj_dir(folder)


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals of a mesh (N, 3)."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    fn = torch.cross(b - a, c - a, dim=1)
    vn = torch.zeros_like(verts).index_add_(0, faces.reshape(-1), fn.repeat_interleave(3, dim=0))
    return vn / vn.norm(dim=1, keepdim=True).clamp_min(1e-12)


# ---- OBJ ----------------------------------------------------------------------------------------------------------
def read_obj(path, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N, 3) ``dtype`` and triangles (T, 3) int64 of an OBJ file; quads (a,b,c,d) -> (a,b,c),(a,c,d)."""
    path = Path(path)
    verts, tris = [], []
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                if line.startswith("v "):
                    verts.append(line.split()[1:4])  # kept as text: numpy parses it below, straight to ``dtype``
                    if len(verts[-1]) != 3:
                        raise ValueError("fewer than 3 coordinates")
                    [float(t) for t in verts[-1]]  # a bad number fails here, with its line
                elif line.startswith("f "):
                    idx = [int(tok.split("/")[0]) for tok in line.split()[1:]]
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: unreadable line {line.strip()[:60]!r} ({e})") from None
            if line.startswith("f "):
                if len(idx) < 3:
                    raise ValueError(f"{path}:{lineno}: face with fewer than 3 vertices")
                idx = [i - 1 if i > 0 else len(verts) + i for i in idx]  # OBJ is 1-based; negative = relative
                for j in range(1, len(idx) - 1):  # fan triangulation, same as the shipped npz
                    tris.append((idx[0], idx[j], idx[j + 1]))
    if not verts:
        raise ValueError(f"{path}: no vertices")
    v = np.asarray(verts, dtype=dtype)
    f = np.asarray(tris, dtype=np.int64).reshape(-1, 3)
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"{path}: face index out of range [1, {len(v)}]")
    return v, f


# ---- PLY ----------------------------------------------------------------------------------------------------------
def check_mesh(verts, faces, where: str = "mesh") -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N, 3) float32 and triangles (T, 3) int32 of a mesh to write, or ``ValueError`` naming ``where``:
    non-finite coordinates or a face index outside [0, N) would make a file that ``read_ply`` (and any viewer)
    refuses or shows wrong."""
    verts, faces = np.asarray(verts), np.asarray(faces)
    if verts.ndim != 2 or verts.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"{where}: need vertices (N, 3) and triangles (T, 3), got {verts.shape} and {faces.shape}")
    verts = verts.astype(np.float32)
    if not np.isfinite(verts).all():
        bad = np.flatnonzero(~np.isfinite(verts).all(axis=1))
        raise ValueError(f"{where}: {len(bad)} of {len(verts)} vertices have NaN or infinite coordinates (first: "
                         f"vertex {bad[0]})")
    if faces.size and not (faces.dtype.kind in "iu" or np.array_equal(faces, np.round(faces))):
        raise ValueError(f"{where}: face indices must be whole numbers, got {faces.dtype} values such as "
                         f"{faces[faces != np.round(faces)][0]}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(verts)):
        raise ValueError(f"{where}: face indices out of range [0, {len(verts)}) (min {faces.min()}, max "
                         f"{faces.max()})")
    return verts, faces.astype(np.int32)


def ply_bytes(verts, faces, where: str = "mesh") -> bytes:
    """A triangle mesh as binary little-endian PLY; a mesh ``check_mesh`` refuses raises ``ValueError`` naming
    ``where``."""
    verts, faces = check_mesh(verts, faces, where)
    vert_el = np.empty(len(verts), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    vert_el["x"], vert_el["y"], vert_el["z"] = verts.T
    face_el = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
    face_el["vertex_indices"] = faces
    ply = PlyData([PlyElement.describe(vert_el, "vertex"), PlyElement.describe(face_el, "face")], text=False)
    buf = io.BytesIO()
    ply.write(buf)
    return buf.getvalue()


def write_ply(path, verts, faces) -> None:
    """Write a triangle mesh as binary little-endian PLY (atomically); NaN or infinite vertices and face indices
    out of range are refused (``ValueError`` naming ``path``) and nothing is written."""
    atomic_write_bytes(path, ply_bytes(verts, faces, str(path)))


def read_ply(path) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate a triangle mesh from PLY: returns vertices (N, 3) float32 and faces (T, 3) int64."""
    path = Path(path)
    try:
        ply = PlyData.read(str(path))
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: not a readable PLY file ({type(e).__name__}: {e})") from e
    names = [el.name for el in ply.elements]
    for need in ("vertex", "face"):
        if need not in names:
            raise ValueError(f"{path}: missing '{need}' element (has {names})")
    vert, face = ply["vertex"], ply["face"]
    props = {p.name: p for p in vert.properties}
    for axis in "xyz":
        if axis not in props:
            raise ValueError(f"{path}: vertex element lacks property '{axis}'")
        if props[axis].val_dtype not in ("f4", "f8", "float32", "float64", "float", "double"):
            raise ValueError(f"{path}: vertex property '{axis}' has type {props[axis].val_dtype}, expected float")
    fprops = {p.name: p for p in face.properties}
    key = "vertex_indices" if "vertex_indices" in fprops else "vertex_index" if "vertex_index" in fprops else None
    if key is None:
        raise ValueError(f"{path}: face element lacks a 'vertex_indices' list property")
    fp = fprops[key]
    if not hasattr(fp, "len_dtype") or np.dtype(_ply_np(fp.val_dtype)).kind not in "iu":
        raise ValueError(f"{path}: face property '{key}' must be a list of integers")
    verts = np.stack([np.asarray(vert[a], dtype=np.float32) for a in "xyz"], axis=1)
    if not np.isfinite(verts).all():
        bad = int((~np.isfinite(verts)).any(axis=1).sum())
        raise ValueError(f"{path}: {bad} vertices have NaN or infinite coordinates")
    rows = face[key]
    try:
        faces = np.asarray(np.stack(list(rows)) if len(rows) else np.zeros((0, 3)), dtype=np.int64)
    except ValueError as e:
        raise ValueError(f"{path}: faces must all be triangles ({e})") from e
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"{path}: faces must be triangles, got shape {faces.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(verts)):
        raise ValueError(f"{path}: face indices out of range [0, {len(verts)}) (min {faces.min()}, max {faces.max()})")
    return verts, faces


def _ply_np(t: str) -> str:
    return {"char": "i1", "uchar": "u1", "short": "i2", "ushort": "u2", "int": "i4", "uint": "u4",
            "float": "f4", "double": "f8"}.get(t, t)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.facemodel.model",
                                 description="Export an ICT-FaceKit FaceXModel folder of .obj files as one .npz")
    ap.add_argument("--from-obj", required=True, help="folder with generic_neutral_mesh.obj and identityNNN.obj")
    ap.add_argument("--out", required=True)
    ap.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    a = ap.parse_args(argv)
    try:
        m = FaceModel.from_obj_dir(a.from_obj)
        fr = m.region("face")
        atomic_savez(a.out, mean=m.mean.numpy(), basis=m.basis.numpy(), faces=m.faces.numpy().astype(np.int32),
                     face_region=fr.vertices.numpy().astype(np.int32),
                     face_region_faces=fr.faces.numpy().astype(np.int32))
    except (ValueError, OSError) as e:  # bad or missing files: one line naming the file (OSError's str names it)
        if a.debug:
            traceback.print_exc()
        print(f"facemodel: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {a.out}: {m.mean.shape[0]} vertices, {m.n_components} components")
    return 0


if __name__ == "__main__":
    sys.exit(main())
