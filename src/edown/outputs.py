"""Where outputs live on disk and how partial work is kept: paths, names and the chunk store.

Layout under ``output_root``::

    images/<collection>/<image>[_<grid>].tif      finished GeoTIFFs (+ .json sidecars)
    images/<collection>/<image>.tif.partial/       work in progress: one .npy per finished chunk
    stacks/<collection>/<group_id>.zarr            datacubes
    manifests/run-<UTC timestamp>.json             run manifests
    stac/catalog.json                              STAC catalog of all of the above (:mod:`edown.stac`)
    .edown/                                        lock, marker and journal (:mod:`edown.rootstate`)

Everything appears under its final name only when complete. Inside these folders edown never follows a
symbolic link (:func:`edown.rootstate.check_no_links`), and it deletes only what it created.

Ids become file names injectively: a collection id's ``/`` becomes ``.`` (Earth Engine ids never contain
a dot), and any other id that is not already a plain name (letters, digits, ``_``, ``-``, single dots) is
cleaned and gets ``~`` plus a hash of the original. Plain names never contain ``~``, so two ids never
share a file, ``..`` can never appear, and nothing is written outside ``output_root``.

A chunk file appears atomically (written under a temporary name, then renamed): its presence *is* the
journal entry, so a crash never leaves a chunk that looks finished but is not.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from edown.errors import as_disk_full
from edown.grid import Window
from edown.rootstate import check_no_links

log = logging.getLogger("edown.outputs")

MAX_NAME = 120
_PLAIN = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name component for ``text`` that stays inside its directory and is unique per ``text``."""
    if _PLAIN.fullmatch(text) and len(text) <= MAX_NAME:
        return text
    return _hashed_name(text)


def _hashed_name(text: str) -> str:
    cleaned = re.sub(r"\.{2,}", ".", _UNSAFE.sub("_", text)).strip("._-") or "_"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"{cleaned[:MAX_NAME]}~{digest}"


def collection_dir(collection_id: str) -> str:
    """``COPERNICUS/S2_SR_HARMONIZED`` -> ``COPERNICUS.S2_SR_HARMONIZED``; injective for every id."""
    if "." in collection_id:
        return _hashed_name(collection_id)  # not a plain Earth Engine id: never equal to a mapped one
    return safe_name(collection_id.replace("/", "."))


def image_tiff_path(output_root: Path, collection_id: str, system_index: str, grid_label: str) -> Path:
    name = safe_name(system_index if not grid_label else f"{system_index}_{grid_label}")
    return output_root / "images" / collection_dir(collection_id) / f"{name}.tif"


def stack_path(output_root: Path, collection_id: str, group_id: str) -> Path:
    return output_root / "stacks" / collection_dir(collection_id) / f"{safe_name(group_id)}.zarr"


def sidecar_path(tiff: Path) -> Path:
    return tiff.with_suffix(".json")


def partial_dir(tiff: Path) -> Path:
    return tiff.with_name(tiff.name + ".partial")


# ---- chunk store ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredChunk:
    window: Window
    path: Path


def read_npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """``(shape, fortran_order, dtype)`` of the NPY header at ``stream``'s position, which is left at the
    first data byte; ``ValueError``/``EOFError`` when it is not one (or is cut short)."""
    version = np.lib.format.read_magic(stream)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = reader(stream)
    return tuple(shape), bool(fortran_order), dtype


class PendingChunk:
    """A chunk file under construction: written through ``handle``, then committed (fsync, rename) or
    aborted (deleted)."""

    def __init__(self, handle: BinaryIO, tmp: Path, target: Path) -> None:
        self.handle = handle
        self.tmp = tmp
        self.target = target

    def commit(self) -> Path:
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            self.tmp.replace(self.target)
        except BaseException:
            self.abort()
            raise
        return self.target

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()
        self.tmp.unlink(missing_ok=True)


class ChunkStore:
    """Finished chunks of one image, one ``.npy`` each, named by their window (and the cloud mask that
    made them, when there is one: ``c0_r0_w256_h256_mscl.npy``).

    A chunk made under another ``identity`` (another cloud mask or threshold) is unusable like one of
    another shape: :meth:`existing` ignores it and, with ``cleanup``, deletes it, so a resumed run with
    other cloud settings refetches rather than assembling a half-masked image.

    The directory lives in edown's own folders under ``root``; every operation first checks that no
    component below ``root`` is a symbolic link, so a planted link can neither receive chunks nor lose
    its target's files when the store is cleaned.
    """

    _CHUNK = re.compile(r"c(-?\d+)_r(-?\d+)_w(\d+)_h(\d+)(?:_m([A-Za-z0-9@.-]+))?\.npy")
    _TEMP = re.compile(r"\.tmp-[A-Za-z0-9_]+\.npy")

    def __init__(self, directory: Path, root: Path, identity: str = "none") -> None:
        self.directory = directory
        self.root = root
        #: :func:`edown.clouds.mask_identity` of the run; ``none`` keeps the names chunks always had.
        self.identity = identity

    def file_name(self, window: Window) -> str:
        mark = "" if self.identity == "none" else f"_m{self.identity}"
        return f"c{window.col_off}_r{window.row_off}_w{window.width}_h{window.height}{mark}.npy"

    def path_for(self, window: Window) -> Path:
        return self.directory / self.file_name(window)

    def check(self) -> None:
        """Refuse a store reached through a symbolic link (bad input: exit 2)."""
        check_no_links(self.root, self.directory)

    def save(self, window: Window, data: np.ndarray) -> Path:
        """Store a chunk atomically (temp name, fsync, rename)."""
        pending = self.begin(window)
        try:
            np.save(pending.handle, np.ascontiguousarray(data), allow_pickle=False)
        except BaseException as exc:
            pending.abort()
            full = as_disk_full(exc, self.directory, data.nbytes, pending.target.name)
            if full is not None:
                raise full from exc
            raise
        return pending.commit()

    def begin(self, window: Window) -> PendingChunk:
        """A chunk file being written under a temporary name; it appears as ``window``'s chunk on commit."""
        self.check()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.check()
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=self.directory)
        return PendingChunk(os.fdopen(fd, "w+b"), Path(tmp), self.path_for(window))

    def _own_files(self) -> list[Path]:
        """Regular files in the store named as edown names chunks and their temporaries (never links)."""
        self.check()
        if not self.directory.is_dir():
            return []
        return sorted(
            path
            for path in self.directory.iterdir()
            if (self._CHUNK.fullmatch(path.name) or self._TEMP.fullmatch(path.name))
            and not path.is_symlink()
            and path.is_file()
        )

    def existing(self, bands: int, dtype: str, cleanup: bool = True) -> list[StoredChunk]:
        """Chunks already on disk whose header matches the expected shape and dtype.

        With ``cleanup`` unusable chunk files and leftover chunk temporaries are deleted.
        """
        found = []
        for path in self._own_files():
            m = self._CHUNK.fullmatch(path.name)
            if not m:
                if cleanup:
                    path.unlink(missing_ok=True)
                continue
            window = Window(*(int(g) for g in m.groups()[:4]))
            if (m.group(5) or "none") != self.identity:
                log.info("discarding %s: made with cloud mask %s", path.name, m.group(5) or "none")
                ok = False
            else:
                try:
                    arr = np.load(path, mmap_mode="r", allow_pickle=False)
                    ok = arr.shape == (bands, window.height, window.width) and arr.dtype == np.dtype(dtype)
                except (ValueError, OSError, EOFError):
                    ok = False
            if ok:
                found.append(StoredChunk(window, path))
            elif cleanup:
                path.unlink(missing_ok=True)
        return found

    def load(self, chunk: StoredChunk) -> np.ndarray:
        data: np.ndarray = np.load(chunk.path, mmap_mode="r", allow_pickle=False)
        return data

    def discard(self, chunk: StoredChunk) -> None:
        """Delete one stored chunk (one that no longer tiles the plan)."""
        chunk.path.unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete the chunks and the folder; anything else someone put in there is left (with the folder)."""
        for path in self._own_files():
            path.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            log.warning("left %s in place: it holds files edown did not write", self.directory)


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


# ---- temporaries --------------------------------------------------------------------------------------


def store_temporary(store: Path, kind: Literal["tmp", "old"]) -> Path:
    """A unique sibling name for ``store`` while it is built (``tmp``) or swapped out (``old``); the name
    matches what :func:`edown.rootstate.sweep` accepts from the journal."""
    return store.with_name(f"{store.name}.{kind}-{uuid.uuid4().hex[:8]}")
