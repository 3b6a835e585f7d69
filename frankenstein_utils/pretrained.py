"""The generators shipped with the package: ``load_pretrained()`` gives a ready generator on CPU, no training needed.

Files (``frankenstein_utils/weights/``): ``<name>.pt`` holds the generator's weights in half precision (for the
flagship the exponential moving average of G, what its training samples with), its appearance encoder, the settings
that rebuild them, the input convention (render configuration and pose spread of its synthetic inputs) and the
numbers of its model card; ``<name>_MODEL_CARD.md`` says how it was made and what it scores.

    from frankenstein_utils.pretrained import load_pretrained
    g = load_pretrained()                      # the flagship, float32 on CPU, eval mode
    faces = g.generate(depth, mask)            # depth, mask (B, 1, 64, 64) in [0, 1] -> faces (B, 3, 64, 64) in [-1, 1]
    faces = g.generate(depth, mask, z=z)       # z (B, 8): appearance code, N(0, I) is the prior; None -> 0
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .fileio import atomic_write_bytes
from .flagship import OBJECTIVES, gen_input
from .rasterize import PoseJitter, RenderConfig

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# the settings that rebuild a generator and its encoder (the rest of a TrainConfig is about training)
BUILD_KEYS = ("mode", "width", "d_width", "encoder_width", "z_dim", "image_size", "out_channels", "mask_input",
              "gan_loss", "spectral_norm", "fs_bottleneck", "fs_upsample", "fs_modulation", "fs_skips", "fs_scales",
              "fs_ema")


class PretrainedGenerator:
    """A shipped generator: ``nets`` ({"G", "E"}: generator and appearance encoder, float32, eval mode), ``cfg``
    (the TrainConfig that rebuilds them), ``render`` / ``pose`` (the input convention: how its synthetic inputs
    are rendered), ``card`` (the model card's numbers) and ``generate`` like a trained run's."""

    def __init__(self, nets: dict, cfg, render: RenderConfig, pose: PoseJitter, card: dict, path: Path):
        self.nets, self.cfg, self.render, self.pose, self.card, self.path = nets, cfg, render, pose, card, path

    @torch.no_grad()
    def generate(self, depth, mask, image=None, z=None):
        """Faces (B, C, S, S) in [-1, 1] for depth maps and masks (B, 1, S, S) in [0, 1] at the model's size;
        z = E(image) mean if a photo is given, else ``z`` (None -> 0, the prior's mean)."""
        S = self.cfg.image_size
        if depth.shape[-2:] != (S, S) or mask.shape[-2:] != depth.shape[-2:]:
            raise ValueError(f"{self.path.name}: expects depth and mask of {S}x{S} px (render with "
                             f"PretrainedGenerator.render), got {tuple(depth.shape[-2:])}, {tuple(mask.shape[-2:])}")
        G = self.nets["G"]
        if z is None:
            z = self.nets["E"](image)[0] if image is not None else torch.zeros(len(depth), G.z_dim)
        return G(gen_input(depth.float(), mask.float(), self.cfg.mask_input), z.float()).float()


def export(run, path, render: RenderConfig, pose: PoseJitter, card: dict) -> int:
    """Write a trained run's sampling generator (G's EMA where there is one) and encoder in float16 with its
    settings, input convention and card numbers to ``path`` (atomically). Returns the file size in bytes."""
    nets = run.nets
    G = nets.get("G_ema", nets["G"])
    half = lambda m: {k: (v.half() if v.is_floating_point() else v) for k, v in m.state_dict().items()}
    blob = {"format": 1, "config": {k: getattr(run.cfg, k) for k in BUILD_KEYS},
            "G": half(G), "E": half(nets["E"]) if "E" in nets else None,
            "render": render.to_dict(), "pose": asdict(pose), "card": card}
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write_bytes(path, buf.getvalue())
    return len(buf.getvalue())


def available() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def load_pretrained(name: str = "flagship", device: str = "cpu") -> PretrainedGenerator:
    """The shipped generator ``name`` (see ``available()``), rebuilt from its file, float32, eval mode."""
    from .training import TrainConfig

    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no shipped model {name!r}; available: {available()}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
        cfg = TrainConfig(**blob["config"], device=device)
        nets = OBJECTIVES[cfg.mode].networks(cfg)
        G = nets.get("G")
        G.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["G"].items()})
        out = {"G": G}
        if blob["E"] is not None:
            nets["E"].load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["E"].items()})
            out["E"] = nets["E"]
    except Exception as e:
        raise ValueError(f"{path}: not a readable shipped model ({type(e).__name__}: {e})") from e
    out = {k: v.to(device).eval().requires_grad_(False) for k, v in out.items()}
    return PretrainedGenerator(out, cfg, RenderConfig.from_dict(blob["render"]), PoseJitter(**blob["pose"]),
                               blob["card"], path)


# ---- the card's numbers: a small fixed set of synthetic inputs, judged by dlib ---------------------------------------
def fixed_inputs(model, render: RenderConfig, pose: PoseJitter, n: int = 64, seed: int = 2024):
    """``n`` face-model depth maps (identity ~ N(0, I) over 15 components, pose from ``pose``), their masks, the
    face model's own 68 landmarks in their pixel frame and appearance codes z ~ N(0, I) (8-D): a fixed function of
    ``seed``."""
    from .evaluation import model_landmarks
    from .rasterize import render_depth

    g = torch.Generator().manual_seed(seed)
    coeffs = model.sample_coefficients(n, 15, generator=g)
    poses = pose.sample(n, generator=g)
    z = torch.randn(n, 8, generator=g)
    d, m = render_depth(model, coeffs, render, poses)
    return d[:, None], m[:, None].float(), model_landmarks(model, coeffs, render, poses), z


def face_scores(images: torch.Tensor, target_landmarks: np.ndarray, reference: torch.Tensor) -> dict:
    """dlib judges (``judges``; measures of ``metrics``) on generated faces: detection rate, landmark NME against
    the face model's own landmarks (inner points 17-67, fallback box = the reference photos' median detection box),
    face-FD of descriptors against ``reference`` photos, diversity of descriptors (beside the reference's own)."""
    from . import judges as J
    from . import metrics as M

    jd = J.judges()
    ref = jd.analyse(reference)
    box = tuple(float(v) for v in np.median(ref.boxes[ref.found], 0) / reference.shape[-1])
    faces = jd.analyse(images, fallback_box=box)
    return {"detection": float(M.detection_rate(faces.found)["rate"]),
            "nme": float(M.nme(faces.landmarks, target_landmarks, J.INNER_POINTS)["nme"]),
            "face_fd": float(M.frechet_distance_features(faces.embeddings, ref.embeddings)),
            "diversity": float(M.mean_pairwise_distance(faces.embeddings)),
            "reference_diversity": float(M.mean_pairwise_distance(ref.embeddings)),
            "reference_detection": float(ref.found.mean())}


def reference_photos(n: int = 64, size: int = 64) -> torch.Tensor:
    """The first ``n`` photos of the paired set's test split (never trained on), in [-1, 1]."""
    from .datasets import PairedConfig, PairedFaceDataset

    test = PairedFaceDataset("test", PairedConfig(size=size), progress=False)
    return test.tensors()[0][:n]


def card_numbers(gen, model, n: int = 64, seed: int = 2024) -> dict:
    """The numbers the card records and ``tests/test_pretrained.py`` recomputes: ``face_scores`` of ``gen`` on
    ``fixed_inputs(n, seed)`` against ``reference_photos(n)``."""
    d, m, lm, z = fixed_inputs(model, gen.render, gen.pose, n, seed)
    faces = torch.cat([gen.generate(d[s:s + 32], m[s:s + 32], z=z[s:s + 32, :gen.nets["G"].z_dim])
                       for s in range(0, n, 32)])
    return face_scores(faces, lm, reference_photos(n, gen.cfg.image_size))


def write_card(path, title: str, sections: dict) -> None:
    """MODEL_CARD.md from ``sections`` = {heading: markdown text}."""
    text = f"# {title}\n\n" + "\n\n".join(f"## {h}\n\n{body.strip()}" for h, body in sections.items()) + "\n"
    atomic_write_bytes(path, text.encode())


def load_card_numbers(name: str = "flagship") -> dict:
    return json.loads(json.dumps(load_pretrained(name).card))
