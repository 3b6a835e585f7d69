"""Photo datasets: an image folder, Haar-cascade face crops, and a dict of tensors as a Dataset."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..io.images import centre_square, list_images, load_image, to_tensor


class ImageFolderDataset(Dataset):
    """Every image under ``root``: centre square crop, resize to ``size``, values in [-1, 1].

    ``skip_bad=True`` drops unreadable files with a warning (checked up front) instead of raising."""

    def __init__(self, root, size: int = 64, grayscale: bool = False, skip_bad: bool = False):
        self.files = list_images(root)
        self.size, self.grayscale = size, grayscale
        if skip_bad:
            good = []
            for f in self.files:
                try:
                    load_image(f, grayscale)
                    good.append(f)
                except ValueError as e:
                    warnings.warn(f"skipping {e}")
            self.skipped = len(self.files) - len(good)
            self.files = good

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        img = load_image(self.files[i], self.grayscale)
        img = img.resize((self.size, self.size), Image.BICUBIC, box=centre_square(*img.size))
        return to_tensor(img)


class HaarFaceDataset(Dataset):
    """Face crops of arbitrary photos, found with OpenCV's frontal-face Haar cascade (as the original pipeline did).

    The largest detection is enlarged by ``margin`` on each side and made square. Photos with no face are skipped
    and counted (``n_no_face``), not fatal; so are unreadable files (``skip_bad=True``, the default: counted in
    ``n_unreadable`` with a warning; ``False``: the first one raises). Detection runs once, up front; finding no face
    at all warns."""

    def __init__(self, root, size: int = 64, grayscale: bool = False, margin: float = 0.2, min_face: int = 24,
                 progress: bool = False, skip_bad: bool = True):
        import cv2

        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if cascade.empty():
            raise RuntimeError("OpenCV's haarcascade_frontalface_default.xml did not load")
        self.size, self.grayscale = size, grayscale
        self.items, self.no_face, self.unreadable = [], [], []
        for f in tqdm(list_images(root), desc="Haar face detection", disable=not progress):
            try:
                grey = np.asarray(load_image(f, grayscale=True))
            except ValueError as e:
                if not skip_bad:
                    raise
                warnings.warn(f"skipping {e}")
                self.unreadable.append(f)
                continue
            found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=3, minSize=(min_face, min_face))
            if len(found) == 0:
                self.no_face.append(f)
                continue
            x, y, w, h = max(found, key=lambda r: r[2] * r[3])
            s = max(w, h) * (1 + 2 * margin)
            cx, cy = x + w / 2, y + h / 2
            self.items.append((f, (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)))
        self.n_no_face, self.n_unreadable = len(self.no_face), len(self.unreadable)
        if not self.items:
            warnings.warn(f"{root}: no face found in any of {self.n_no_face + self.n_unreadable} images "
                          f"({self.n_unreadable} unreadable)")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        f, box = self.items[i]
        img = load_image(f, self.grayscale).crop(tuple(int(round(b)) for b in box))  # pads with black outside
        return to_tensor(img.resize((self.size, self.size), Image.BICUBIC))


def mask_boxes(mask: torch.Tensor) -> np.ndarray:
    """Bounding boxes of (N, H, W) or (N, 1, H, W) masks as (N, 4): centre x, centre y, width, height in pixels
    (NaN for an empty mask)."""
    m = mask.reshape(len(mask), *mask.shape[-2:]) > 0
    out = np.full((len(m), 4), np.nan)
    for i, mi in enumerate(m):
        rows = torch.nonzero(mi.any(1)).squeeze(1)
        cols = torch.nonzero(mi.any(0)).squeeze(1)
        if len(rows):
            out[i] = [(cols[0] + cols[-1] + 1).item() / 2, (rows[0] + rows[-1] + 1).item() / 2,
                      (cols[-1] - cols[0] + 1).item(), (rows[-1] - rows[0] + 1).item()]
    return out


class TensorDictDataset(Dataset):
    """Items ``{key: tensors[key][i]}`` (plus ``index``) from equal-length tensors held in memory."""

    def __init__(self, **tensors):
        lengths = {len(v) for v in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors of different lengths: { {k: len(v) for k, v in tensors.items()} }")
        self.tensors = tensors

    def __len__(self):
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i):
        return {**{k: v[i] for k, v in self.tensors.items()}, "index": i}
