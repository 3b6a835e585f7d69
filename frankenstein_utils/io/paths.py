"""Where the data lives: ``$FRANKENSTEIN_DATA``, then ``data/``, then ``../shared/data``.

Each dataset is looked up on its own, so a user can keep the face model in ``data/`` and CelebA elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_VAR = "FRANKENSTEIN_DATA"

# What to download, from where, for each dataset (also in data/README.md).
DOWNLOAD_HINTS = {
    "ict_facekit": (
        "the ICT-FaceKit identity model. Get it from the official repository "
        "https://github.com/ICT-VGL/ICT-FaceKit (MIT licence): clone it and either put "
        "ict_identity_model.npz (export it with `python -m frankenstein_utils.facemodel.model --from-obj "
        "<ICT-FaceKit>/FaceXModel --out data/ict_facekit/ict_identity_model.npz`) or the FaceXModel .obj files "
        "(generic_neutral_mesh.obj, identity000.obj ... identity099.obj) in data/ict_facekit/"
    ),
    "celeba_10k": (
        "aligned CelebA photos. CelebA may not be redistributed: download img_align_celeba from the official page "
        "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (non-commercial research use only) and put the first "
        "10,000 images, resized to 89x109, in data/celeba_10k/images/ with landmarks_mediapipe.npz beside them "
        "(see data/README.md)"
    ),
    "orl_faces": (
        "the AT&T (ORL) Database of Faces: 400 greyscale PNGs named sNN_K.png in data/orl_faces/images/ "
        "(see data/README.md for the source)"
    ),
}


class DataNotFoundError(FileNotFoundError):
    """A dataset is in none of the searched places; the message says what to download and where to put it."""


def data_roots() -> list[Path]:
    """The candidate data roots, in search order."""
    roots = []
    env = os.environ.get(ENV_VAR)
    if env:
        roots.append(Path(env).expanduser())
    roots.append(REPO_ROOT / "data")
    roots.append(REPO_ROOT.parent / "shared" / "data")
    return roots


def find_dataset(name: str, must_contain: str | None = None) -> Path:
    """Return ``<root>/<name>`` for the first root that holds it (and ``must_contain`` inside it, if given)."""
    searched = []
    for root in data_roots():
        cand = root / name
        searched.append(str(cand))
        if cand.is_dir() and (must_contain is None or (cand / must_contain).exists()):
            return cand
    hint = DOWNLOAD_HINTS.get(name, f"the dataset '{name}'")
    what = f"{name}/{must_contain}" if must_contain else name
    raise DataNotFoundError(
        f"Could not find {what}. Searched (in order): {', '.join(searched)}. "
        f"Set ${ENV_VAR} to a folder that contains '{name}/', or download {hint}."
    )


def find_data_root() -> Path:
    """The first existing data root (``$FRANKENSTEIN_DATA``, ``data/``, ``../shared/data``) that holds the face
    model."""
    return find_dataset("ict_facekit").parent
