"""Experience replay of generated images for the discriminator (Shrivastava et al. 2017; CycleGAN's ImagePool)."""

from __future__ import annotations

import io

import numpy as np
import torch


class ReplayBuffer:
    """A pool of earlier fakes. ``query(fakes)`` returns as many images as it is given: while the pool is not full
    each fake is stored and returned as is; once full, each fake is, with probability 1/2, swapped for a random
    stored one (which is returned, the new fake taking its place), else returned as is. So about half of each
    discriminator batch comes from the history. Size 0 turns it off (pass-through).

    Images are stored detached, on the CPU, in RAM or (``memmap_path``) in a disk-backed numpy memmap so large pools
    do not use RAM. Sampling uses its own seeded ``torch.Generator``. ``save(prefix)`` snapshots the pool and its RNG
    to files (``prefix.npy``, ``prefix.pt``; a memmap pool is streamed, never copied into RAM) and ``load(prefix)``
    restores it, so a resumed run continues exactly; both files are read without unpickling (``prefix.pt`` holds
    plain numbers and the RNG state tensor, ``torch.load(weights_only=True)``). Only a training process opens
    ``memmap_path`` (for writing).
    """

    def __init__(self, size: int, seed: int = 0, memmap_path: str | None = None):
        self.size = size
        self.count = 0
        self.gen = torch.Generator().manual_seed(seed)
        self.memmap_path = memmap_path
        self.store = None  # (size, C, H, W) float32 tensor or np.memmap

    def _alloc(self, shape):
        if self.memmap_path:
            self.store = np.lib.format.open_memmap(self.memmap_path, mode="w+", dtype=np.float32,
                                                   shape=(self.size, *shape))
        else:
            self.store = torch.zeros((self.size, *shape), dtype=torch.float32)

    def _get(self, i):
        x = self.store[i]
        return torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x.clone()

    def _set(self, i, img):
        self.store[i] = img.numpy() if isinstance(self.store, np.ndarray) else img

    @torch.no_grad()
    def query(self, fakes: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return fakes
        device = fakes.device
        fakes = fakes.detach().float().cpu()
        if self.store is None:
            self._alloc(fakes.shape[1:])
        out = []
        for img in fakes:
            if self.count < self.size:
                self._set(self.count, img)
                self.count += 1
                out.append(img)
            elif torch.rand(1, generator=self.gen).item() < 0.5:
                j = int(torch.randint(0, self.size, (1,), generator=self.gen))
                old = self._get(j)
                self._set(j, img)
                out.append(old)
            else:
                out.append(img)
        return torch.stack(out).to(device)

    def save(self, prefix) -> None:
        """Write the pool's images (``prefix.npy``) and then its counters and RNG (``prefix.pt``), atomically."""
        from ..io.files import atomic_write_bytes, atomic_write_with

        images = self.store[: self.count] if self.store is not None else np.zeros((0,), np.float32)
        if torch.is_tensor(images):
            images = images.numpy()
        atomic_write_with(f"{prefix}.npy", lambda f: np.save(f, images))  # a memmap slice streams from disk
        buf = io.BytesIO()
        torch.save({"size": self.size, "count": self.count, "rng": self.gen.get_state()}, buf)
        atomic_write_bytes(f"{prefix}.pt", buf.getvalue())

    def load(self, prefix) -> None:
        """Restore a pool written by ``save``; errors name the file."""
        from .checkpoint import load_tensors_only

        # tensors and plain values only: nothing inside the file runs (a file that needs unpickling is refused)
        meta = load_tensors_only(f"{prefix}.pt", "replay pool", "it was not written by this package's trainer: "
                                 "restore the pool or start over in a new out_dir")
        try:
            images = np.load(f"{prefix}.npy", mmap_mode="r")  # allow_pickle=False: an object array is refused
        except Exception as e:
            raise ValueError(f"{prefix}.npy: not a readable replay pool ({type(e).__name__}: {e})") from e
        if meta["size"] != self.size:
            raise ValueError(f"{prefix}.pt: replay buffer size {meta['size']} saved, {self.size} configured")
        if len(images) != meta["count"] and meta["count"]:
            raise ValueError(f"{prefix}.npy: {len(images)} images, {meta['count']} expected")
        self.count = meta["count"]
        self.gen.set_state(meta["rng"])
        if self.count:
            self._alloc(images.shape[1:])
            if isinstance(self.store, np.ndarray):
                for s in range(0, self.count, 256):  # chunks: a big pool never sits in RAM whole
                    e = min(s + 256, self.count)
                    self.store[s:e] = images[s:e]
                self.store.flush()
            else:
                self.store[: self.count] = torch.from_numpy(np.array(images))

    def state_dict(self) -> dict:
        images = None
        if self.store is not None:
            images = torch.from_numpy(np.array(self.store[: self.count])) if isinstance(self.store, np.ndarray) \
                else self.store[: self.count].clone()
        return {"size": self.size, "count": self.count, "rng": self.gen.get_state(), "images": images}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size:
            raise ValueError(f"replay buffer size {state['size']} in the checkpoint, {self.size} configured")
        self.count = state["count"]
        self.gen.set_state(state["rng"])
        if state["images"] is not None:
            self._alloc(state["images"].shape[1:])
            for i in range(self.count):
                self._set(i, state["images"][i])
