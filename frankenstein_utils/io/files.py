"""Safe files: atomic writes, folder locks, orphaned temporary files, .npz and .png reading and checks.

Safe files: atomic writes (a crash mid-write never leaves a half-written file under the final name), a folder
lock so two writers cannot mix their outputs in one folder, clean-up of the temporary files a killed write leaves,
and PNG verification for resuming."""

from __future__ import annotations

import fcntl
import io
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to a temporary file in the same folder, fsync it, then rename it over ``path``.
    ``durable=False`` skips the fsync (several ms each): only for files whose completeness a resume verifies anyway
    (``png_is_complete``), where a power loss can at worst leave a short file that is then redone."""
    atomic_write_with(path, lambda f: f.write(data), durable)


def atomic_write_with(path: str | os.PathLike, write, durable: bool = True) -> None:
    """Atomically create ``path`` from ``write(file)`` (for data too big to hold as bytes first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would have
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    old = os.umask(0)  # the only portable way to read it is to set it
    os.umask(old)
    return old


TMP_GLOB = ".*.tmp"  # what atomic_write_bytes leaves behind when the process is killed mid-write


def remove_orphan_tmp(folder, recursive: bool = True) -> int:
    """Delete temporary files left by killed atomic writes under ``folder``; returns how many. Call it only while
    holding the folder's lock (``FolderLock``): another writer's temporary file is not an orphan."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    found = folder.rglob(TMP_GLOB) if recursive else folder.glob(TMP_GLOB)
    n = 0
    for p in found:
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock."""


class FolderLock:
    """An exclusive, non-blocking lock on a folder (``fcntl.flock`` on ``<folder>/.lock``), held while writing into
    it: a second writer fails at once with a message instead of mixing its files with the first's. The kernel drops
    the lock when the holder dies (kill -9 included), so a stale lock never blocks a resume.

        with FolderLock(out_dir, "training"):
            ...
    """

    def __init__(self, folder, what: str = "writing"):
        self.folder, self.what, self.fd = Path(folder), what, None

    def acquire(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderBusyError(f"{self.folder}: another process is writing here ({holder}); wait for it to "
                                  f"finish or use another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {self.what}".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # an empty file: a finished folder's bytes do not depend on who wrote it
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def holds_folder_lock(arg: str, what: str):
    """Decorator: hold ``FolderLock`` on the folder passed as argument ``arg`` for the whole call, and first remove
    the temporary files that killed writes left there (safe: no other writer can hold the folder meanwhile)."""
    import functools
    import inspect

    def deco(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            folder = Path(sig.bind(*args, **kwargs).arguments[arg])
            with FolderLock(folder, what):
                remove_orphan_tmp(folder)
                return fn(*args, **kwargs)
        return wrapper
    return deco


class NpzArrays(dict):
    """The arrays of an ``.npz`` file by name; ``.files`` lists them, as numpy's ``NpzFile`` does."""

    @property
    def files(self) -> list[str]:
        return list(self)


def load_npz(path) -> NpzArrays:
    """All arrays of an ``.npz`` file, read now; a damaged file raises ``ValueError`` naming it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return NpzArrays({k: z[k] for k in z.files})
    except FileNotFoundError:
        raise
    except Exception as e:  # zipfile, zlib and numpy raise several types for damaged files
        raise ValueError(f"{path}: damaged or not an .npz file ({type(e).__name__}: {e}); delete it to rebuild") \
            from e


def png_is_complete(path) -> bool:
    """True if ``path`` is a PNG that decodes to the end (a truncated or zero-byte file from a crash is not)."""
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except Exception:  # Pillow raises several types for damaged files
        return False


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}


@dataclass(frozen=True)
class PngHeader:
    """What a PNG's IHDR chunk says: size, bits per sample and colour type (0 greyscale, 2 RGB, 3 palette,
    4 greyscale+alpha, 6 RGBA). Read from the bytes, not from Pillow's mode, which does not tell 1-, 2-, 4- and
    8-bit greyscale apart and names 16-bit greyscale differently across versions."""

    width: int
    height: int
    bit_depth: int
    colour_type: int

    @property
    def greyscale(self) -> bool:
        return self.colour_type == 0

    def describe(self) -> str:
        kind = PNG_COLOUR_TYPES.get(self.colour_type, f"colour type {self.colour_type}")
        return f"{self.bit_depth}-bit {kind} {self.width}x{self.height}"


def png_header(path) -> PngHeader:
    """The IHDR of the PNG file ``path``; ``ValueError`` naming the file when it is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(33)  # signature (8), chunk length (4), "IHDR" (4), its 13 bytes, CRC (4)
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: cannot read image (not a PNG file)")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", head[16:26])
    return PngHeader(width, height, bit_depth, colour_type)


def png_matches(path, size: tuple[int, int], bit_depth: int, colour_type: int = 0) -> bool:
    """True if ``path`` is a complete PNG (``png_is_complete``) of ``size`` (height, width), ``bit_depth`` bits per
    sample and ``colour_type`` (0: greyscale): what a resume may keep. A valid PNG of another mode or size
    (an 8-bit depth map, an RGB mask, another resolution's map) is not."""
    try:
        h = png_header(path)
    except (OSError, ValueError):
        return False
    return ((h.height, h.width) == tuple(size) and (h.bit_depth, h.colour_type) == (bit_depth, colour_type)
            and png_is_complete(path))


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def update_json(path, entries: dict) -> dict:
    """Merge ``entries`` into the JSON object at ``path`` (created if absent) and write it atomically, holding a
    blocking ``flock`` on ``<path>.lock`` from the read to the write: processes that share one results file (runs of
    one study split over cores) each add their rows without dropping the others'. Returns the merged object."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        merged = {**(json.loads(path.read_text()) if path.exists() else {}), **entries}
        atomic_write_json(path, merged)
        return merged
    finally:
        os.close(fd)  # closing drops the lock


def atomic_savez(path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a 2-D uint8 or uint16 array (or HxWx3 uint8) as PNG; uint16 stays 16-bit."""
    img = Image.fromarray(np.ascontiguousarray(array))  # uint16 -> mode "I;16", a 16-bit PNG
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_png(path, array: np.ndarray) -> None:
    atomic_write_bytes(path, png_bytes(array))


def load_png(path, expect_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a PNG as a numpy array (uint16 stays uint16); errors name the file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.array(img)
    except FileNotFoundError:
        raise
    except Exception as e:  # Pillow raises several types for corrupt files
        raise ValueError(f"{path}: cannot read image ({e})") from e
    if expect_size is not None and arr.shape[:2] != tuple(expect_size):
        raise ValueError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, expected {expect_size[1]}x{expect_size[0]}")
    return arr
