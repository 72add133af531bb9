"""Where outputs live on disk, how partial work is kept, and who may write: paths, chunk store, lock.

Layout under ``output_root``::

    images/<collection>/<image>[_<grid>].tif      finished GeoTIFFs (+ .json sidecars)
    images/<collection>/<image>.tif.partial/       work in progress: one .npy per finished chunk
    stacks/<collection>/<group_id>.zarr            datacubes
    manifests/run-<UTC timestamp>.json             run manifests
    .edown.lock                                    held by the edown process writing here

Everything appears under its final name only when complete; the temporaries of a killed run are swept
away by the next run that takes the lock.

Ids become file names safely: anything but letters, digits, ``.``, ``_`` and ``-`` is replaced, ``..`` can
never appear, long names are shortened, and whenever the name had to change a hash of the original id is
appended, so two ids never share a file and nothing is written outside ``output_root``.

A chunk file appears atomically (written under a temporary name, then renamed): its presence *is* the
journal entry, so a crash never leaves a chunk that looks finished but is not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from edown.errors import OutputLockedError, user_folder
from edown.grid import Window

MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name component for ``text`` that stays inside its directory and is unique per ``text``."""
    cleaned = _UNSAFE.sub("_", text).strip("._-") or "_"
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    if cleaned == text and len(cleaned) <= MAX_NAME:
        return cleaned
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    return f"{cleaned[:MAX_NAME]}-{digest}"


def collection_dir(collection_id: str) -> str:
    return safe_name(collection_id.replace("/", "_"))


def image_tiff_path(output_root: Path, collection_id: str, system_index: str, grid_label: str) -> Path:
    name = safe_name(system_index if not grid_label else f"{system_index}_{grid_label}")
    path = output_root / "images" / collection_dir(collection_id) / f"{name}.tif"
    _check_inside(output_root, path)
    return path


def stack_path(output_root: Path, collection_id: str, group_id: str) -> Path:
    path = output_root / "stacks" / collection_dir(collection_id) / f"{safe_name(group_id)}.zarr"
    _check_inside(output_root, path)
    return path


def _check_inside(root: Path, path: Path) -> None:
    resolved_root = root.resolve()
    if resolved_root not in path.resolve().parents:
        raise ValueError(f"refusing to write outside {root}: {path}")


def sidecar_path(tiff: Path) -> Path:
    return tiff.with_suffix(".json")


def partial_dir(tiff: Path) -> Path:
    return tiff.with_name(tiff.name + ".partial")


# ---- chunk store ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredChunk:
    window: Window
    path: Path


class ChunkStore:
    """Finished chunks of one image, one ``.npy`` each, named by their window."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def file_name(window: Window) -> str:
        return f"c{window.col_off}_r{window.row_off}_w{window.width}_h{window.height}.npy"

    def path_for(self, window: Window) -> Path:
        return self.directory / self.file_name(window)

    def save(self, window: Window, data: np.ndarray) -> Path:
        """Store a chunk atomically (temp name, fsync, rename)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path_for(window)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, np.ascontiguousarray(data), allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            Path(tmp).replace(target)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            # numpy reports a short write as a bare OSError ("N requested and M written"), without errno.
            if (
                isinstance(exc, OSError)
                and exc.errno is None
                and shutil.disk_usage(self.directory).free < data.nbytes
            ):
                raise OSError(errno.ENOSPC, f"No space left on device writing {target.name}") from exc
            raise
        return target

    def existing(self, bands: int, dtype: str, cleanup: bool = True) -> list[StoredChunk]:
        """Chunks already on disk whose header matches the expected shape and dtype.

        With ``cleanup`` unusable files (wrong header, leftover temporaries) are deleted.
        """
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.glob("c*_r*_w*_h*.npy")):
            m = re.fullmatch(r"c(-?\d+)_r(-?\d+)_w(\d+)_h(\d+)\.npy", path.name)
            if not m:
                continue
            window = Window(*(int(g) for g in m.groups()))
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
                ok = arr.shape == (bands, window.height, window.width) and arr.dtype == np.dtype(dtype)
            except (ValueError, OSError, EOFError):
                ok = False
            if ok:
                found.append(StoredChunk(window, path))
            elif cleanup:
                path.unlink(missing_ok=True)
        if cleanup:
            for stale in self.directory.glob(".tmp-*"):
                stale.unlink(missing_ok=True)
        return found

    def load(self, chunk: StoredChunk) -> np.ndarray:
        data: np.ndarray = np.load(chunk.path, mmap_mode="r", allow_pickle=False)
        return data

    def remove(self) -> None:
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                path.unlink(missing_ok=True)
            self.directory.rmdir()


def covered_by(window: Window, chunks: list[StoredChunk]) -> list[StoredChunk] | None:
    """The stored chunks that exactly tile ``window`` (e.g. halves of an earlier split), or None."""
    inside = [c for c in chunks if c.window.intersection(window) == c.window]
    if sum(c.window.pixels for c in inside) != window.pixels:
        return None
    for i, a in enumerate(inside):
        for b in inside[i + 1 :]:
            if not a.window.intersection(b.window).is_empty:
                return None
    return inside


# ---- lock -------------------------------------------------------------------------------------------

# What edown itself creates half-made and only renames into place when complete: atomic JSON/GeoTIFF
# writes (``.<name>.tmp``, ``.<name>.<random>.tmp``) and stores being built or swapped out
# (``<group>.zarr.tmp-<hex>``, ``<group>.zarr.old-<hex>``). Partial-download directories are not here:
# they are resume state.
_TEMPORARY = re.compile(r"^\..+\.tmp$|\.zarr\.(?:tmp|old)-[0-9a-f]{8}$")


def store_temporary(store: Path, kind: Literal["tmp", "old"]) -> Path:
    """A unique sibling name for ``store`` while it is built (``tmp``) or swapped out (``old``); named
    here, beside the sweep, so that whatever a killed run leaves is recognised."""
    return store.with_name(f"{store.name}.{kind}-{uuid.uuid4().hex[:8]}")


def sweep_temporaries(output_root: Path) -> list[Path]:
    """Remove what a killed edown run left half-made under ``output_root``; return what was removed.

    Only safe while holding the output lock: then no live edown process owns any of these names.
    """
    removed = []
    for dirpath, dirnames, filenames in os.walk(output_root):
        here = Path(dirpath)
        for name in [d for d in dirnames if _TEMPORARY.search(d)]:
            shutil.rmtree(here / name, ignore_errors=True)
            removed.append(here / name)
        # Finished stores and partial downloads hold thousands of files and never a temporary of ours.
        dirnames[:] = [
            d for d in dirnames if not _TEMPORARY.search(d) and not d.endswith((".zarr", ".partial"))
        ]
        for name in filenames:
            if _TEMPORARY.search(name):
                (here / name).unlink(missing_ok=True)
                removed.append(here / name)
    return removed


@contextlib.contextmanager
def output_lock(output_root: Path, purpose: str) -> Iterator[None]:
    """Hold ``output_root/.edown.lock`` for the duration; another holder means a clear refusal.

    Taking the lock also sweeps away the temporaries of an earlier run that was killed, so a crash
    never leaves litter that later runs would not clean.
    """
    lock_path = output_root / ".edown.lock"
    with user_folder(output_root, "output root", "--output-root / output_root"):
        output_root.mkdir(parents=True, exist_ok=True)
        handle = lock_path.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputLockedError(
                f"{output_root} is in use by another edown run ({holder})",
                hint="wait for it to finish, or give a different --output-root",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, {purpose}")
        handle.flush()
        sweep_temporaries(output_root)
        yield
    finally:
        with contextlib.suppress(OSError):
            handle.seek(0)
            handle.truncate()
        handle.close()
