"""A download whose output root is an object store: the local guarantees of :mod:`edown.rootstate`,
kept on a store that has no rename.

Layout under ``s3://bucket/prefix`` (or ``gs://``) is the local one::

    images/<collection>/<image>.tif(.json)       finished COGs and sidecars: uploaded whole, verified
    images/<collection>/<image>.tif.partial/     chunks (one ``.npy`` object each) of unfinished images
    manifests/run-<UTC timestamp>.json           run manifests
    .edown/lock                                  the run lock, created only if absent
    .edown/root.json                             the marker that edown made this root

How each guarantee is kept:

- **Nothing partial under a final name.** Every object is built in a local *staging* folder (a temporary
  folder edown creates for the run and deletes after it) and uploaded only when complete: a single PUT,
  or a multipart upload that the store makes visible only when it is completed. GeoTIFFs are always
  Cloud-Optimized (GDAL cannot random-write to a store, and a COG is what readers of a store want).
- **Resume fetches only what is missing.** A chunk is uploaded to the image's ``.partial/`` prefix as
  soon as it arrives, and its local copy dropped; a new run lists the prefix, checks each chunk's header
  with a ranged read, and fetches only the rest. An image's chunks come back to the staging folder only
  while it is assembled, so staging holds at most one image per writer thread.
- **One run at a time.** ``.edown/lock`` is created with a conditional write (``If-None-Match: *`` on S3,
  ``ifGenerationMatch=0`` on GCS); a second run gets "already exists" and is refused. A lock left by a
  run that was killed on *this* machine (its process is gone) is taken over; one from another machine
  must be deleted by hand (the message names it). On a store that ignores conditional writes, edown
  reads the lock back and refuses when another run's token is there, which narrows but does not close
  the race: run one edown per root there.
- **Other writers** (a STAC catalog beside the outputs, say) write their files under the staged root
  as they would locally and call :func:`publish` on each finished file: it is uploaded whole under the
  same relative key, and the local copy dropped. Outside a staging folder :func:`publish` does nothing.
- **Do no harm.** edown deletes only chunk objects (named as edown names chunks) under an image's
  ``.partial/`` prefix, and its own lock; nothing else under the prefix is listed for deletion.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edown._version import __version__
from edown.errors import OutputLockedError
from edown.grid import Window
from edown.outputs import ChunkStore, PendingChunk, StoredChunk, read_npy_header
from edown.rootstate import MARKER_SCHEMA
from edown.stores import ObjectStore, Store, StoreURL

log = logging.getLogger("edown.storeroot")

LOCK_KEY = ".edown/lock"
MARKER_KEY = ".edown/root.json"
#: Bytes read from a stored chunk to check its NPY header.
HEADER_BYTES = 4096


class Uploads:
    """Bytes uploaded to a store during a run (what progress and the run's stats report)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.objects = 0
        self.listeners: list[Callable[[int], None]] = []
        self._guard = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._guard:
            self.bytes += nbytes
            self.objects += 1
            listeners = list(self.listeners)
        for listener in listeners:
            listener(nbytes)


@dataclass(frozen=True)
class _Mirror:
    store: Store
    key: str
    uploads: Uploads


# Local files and folders that stand for objects on a store while a run lasts.
_mirrors: dict[Path, _Mirror] = {}
_mirrors_guard = threading.Lock()


def _mirror_of(path: Path) -> tuple[_Mirror, str] | None:
    path = Path(path).absolute()
    with _mirrors_guard:
        for local, mirror in _mirrors.items():
            if path == local:
                return mirror, mirror.key
            if local in path.parents:
                return mirror, "/".join(p for p in (mirror.key, path.relative_to(local).as_posix()) if p)
    return None


def remote_of(path: Path) -> tuple[Store, str] | None:
    """The store and key that the local ``path`` stands for, if it lies in a staging folder."""
    found = _mirror_of(path)
    return None if found is None else (found[0].store, found[1])


def uploads_of(path: Path) -> Uploads | None:
    """The upload tally of the staging folder ``path`` lies in (None for local outputs)."""
    found = _mirror_of(path)
    return None if found is None else found[0].uploads


@contextlib.contextmanager
def mirrored(local: Path, store: Store, key: str = "") -> Iterator[Uploads]:
    """Let ``local`` (a staging folder or file) stand for ``key`` on ``store`` during the block."""
    local = Path(local).absolute()
    uploads = Uploads()
    with _mirrors_guard:
        _mirrors[local] = _Mirror(store, key, uploads)
    try:
        yield uploads
    finally:
        with _mirrors_guard:
            _mirrors.pop(local, None)


def upload(path: Path) -> bool:
    """Upload the local file ``path`` to the object it stands for (False outside a staging folder)."""
    found = _mirror_of(path)
    if found is None:
        return False
    mirror, key = found
    size = Path(path).stat().st_size
    mirror.store.upload(key, path)
    mirror.uploads.add(size)
    return True


def publish(path: Path) -> None:
    """Upload a finished local file to the object it stands for, then drop the local copy (a no-op for
    paths outside a staging folder: local outputs are already in place)."""
    if upload(path):
        Path(path).unlink(missing_ok=True)


def exists(path: Path) -> bool:
    """Whether ``path``'s output exists: on the store for a staged path, on disk otherwise."""
    remote = remote_of(path)
    if remote is None:
        return path.exists()
    store, key = remote
    return store.exists(key)


def pull_tree(folder: Path) -> None:
    """Copy every object under the staged ``folder``'s prefix into it, so that code that reads local files
    (the STAC catalog's merge) sees what the store holds; a no-op outside a staging folder."""
    remote = remote_of(folder)
    if remote is not None:
        download_tree(remote[0], remote[1], folder)


def download_tree(store: Store, key: str, folder: Path) -> dict[str, str]:
    """Download the objects under ``key/`` into ``folder``; returns each object's key and SHA-256.

    Keys with empty, ``.`` or ``..`` parts are skipped: an object name never steers a write out of
    ``folder``.
    """
    prefix = f"{key.rstrip('/')}/" if key else ""
    digests: dict[str, str] = {}
    for info in store.list(prefix):
        relative = info.key[len(prefix) :]
        parts = relative.split("/")
        if not info.key.startswith(prefix) or not relative or any(p in ("", ".", "..") for p in parts):
            continue
        target = Path(folder).joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        store.download(info.key, target)
        digests[info.key] = hashlib.sha256(target.read_bytes()).hexdigest()
    return digests


@contextlib.contextmanager
def fetched(path: Path) -> Iterator[Path]:
    """``path`` readable on disk for the block: a staged output is downloaded, and removed afterwards."""
    remote = remote_of(path)
    if remote is None:
        yield path
        return
    store, key = remote
    path.parent.mkdir(parents=True, exist_ok=True)
    store.download(key, path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


# ---- staging ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def staging() -> Iterator[Path]:
    """A local folder edown creates for one run and deletes after it (only what it made is in it)."""
    folder = Path(tempfile.mkdtemp(prefix="edown-staging-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---- lock and marker ----------------------------------------------------------------------------------


def _process_gone(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _read_json(store: Store, key: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(store.read_bytes(key))
    except (FileNotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


@contextlib.contextmanager
def locked_store_root(url: StoreURL, purpose: str) -> Iterator[tuple[ObjectStore, str]]:
    """Hold ``url``'s run lock for the block; yields the store and the root's id (its marker's)."""
    store = ObjectStore(url)
    token = uuid.uuid4().hex
    body = {"host": socket.gethostname(), "pid": os.getpid(), "purpose": purpose, "token": token}
    for attempt in (1, 2):
        try:
            store.write_bytes(LOCK_KEY, json.dumps(body).encode(), create_only=True)
            break
        except FileExistsError:
            holder = _read_json(store, LOCK_KEY) or {}
            stale = holder.get("host") == socket.gethostname() and _process_gone(holder.get("pid"))
            if stale and attempt == 1:
                log.info("taking over the lock of an interrupted run (pid %s)", holder.get("pid"))
                store.delete(LOCK_KEY)
                continue
            raise OutputLockedError(
                f"{url} is in use by another edown run (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}: {holder.get('purpose', '?')})",
                hint=f"wait for it to finish; if that run died on another machine, delete {url / LOCK_KEY}",
            ) from None
    held = _read_json(store, LOCK_KEY) or {}
    if held.get("token") != token:  # a store that ignored the conditional write, and another run won
        raise OutputLockedError(
            f"{url} is in use by another edown run (pid {held.get('pid', '?')} on {held.get('host', '?')})",
            hint="wait for it to finish, or give a different --output-root",
        )
    try:
        yield store, _ensure_marker(store)
    finally:
        held = _read_json(store, LOCK_KEY) or {}
        if held.get("token") == token:
            store.delete(LOCK_KEY)


def _ensure_marker(store: Store) -> str:
    doc = _read_json(store, MARKER_KEY)
    if doc is not None and doc.get("schema") == MARKER_SCHEMA and doc.get("root_id"):
        return str(doc["root_id"])
    root_id = uuid.uuid4().hex
    text = json.dumps({"schema": MARKER_SCHEMA, "root_id": root_id, "edown_version": __version__}) + "\n"
    try:
        store.write_bytes(MARKER_KEY, text.encode(), create_only=True)
    except FileExistsError:
        doc = _read_json(store, MARKER_KEY) or {}
        return str(doc.get("root_id") or root_id)
    return root_id


def store_marker(url: StoreURL) -> dict[str, Any] | None:
    """The marker document of a store root, or None when edown never ran there."""
    doc = _read_json(ObjectStore(url), MARKER_KEY)
    if doc is None or doc.get("schema") != MARKER_SCHEMA or not doc.get("root_id"):
        return None
    return doc


# ---- chunks as objects --------------------------------------------------------------------------------


class _UploadingChunk(PendingChunk):
    """A chunk written locally, then uploaded whole to its object; the local copy goes once it is there."""

    def __init__(self, pending: PendingChunk) -> None:
        super().__init__(pending.handle, pending.tmp, pending.target)

    def commit(self) -> Path:
        target = super().commit()
        try:
            if not upload(target):
                raise RuntimeError(f"{target} is not in a staging folder")
        finally:
            target.unlink(missing_ok=True)
        return target


class ObjectChunkStore(ChunkStore):
    """The chunks of one image as objects under its ``.partial/`` prefix on a store.

    ``directory`` is the image's staging folder: chunks pass through it on their way up, and come back
    to it while the image is assembled.
    """

    def __init__(
        self, directory: Path, root: Path, store: Store, prefix: str, identity: str = "none"
    ) -> None:
        super().__init__(directory, root, identity)
        self.store, self.prefix = store, prefix

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def begin(self, window: Window) -> PendingChunk:
        return _UploadingChunk(super().begin(window))

    def _own_objects(self) -> list[tuple[str, int]]:
        found = []
        for info in self.store.list(self.prefix):
            name = info.key.rsplit("/", 1)[-1]
            if info.key == self._key(name) and self._CHUNK.fullmatch(name):
                found.append((name, info.size))
        return found

    def existing(self, bands: int, dtype: str, cleanup: bool = True) -> list[StoredChunk]:
        """Chunk objects whose header and size match the expected shape and dtype (others deleted)."""
        found = []
        for name, size in self._own_objects():
            match = self._CHUNK.fullmatch(name)
            assert match is not None
            window = Window(*(int(g) for g in match.groups()[:4]))
            if (match.group(5) or "none") == self.identity and self._usable(
                name, size, (bands, window.height, window.width), np.dtype(dtype)
            ):
                found.append(StoredChunk(window, self.path_for(window)))
            elif cleanup:
                self.store.delete(self._key(name))
        return found

    def _usable(self, name: str, size: int, shape: tuple[int, int, int], dtype: np.dtype[Any]) -> bool:
        try:
            head = io.BytesIO(self.store.read_range(self._key(name), 0, min(size, HEADER_BYTES)))
            found_shape, _, found_dtype = read_npy_header(head)
        except (ValueError, EOFError, OSError):
            return False
        expected = head.tell() + int(np.prod(shape)) * dtype.itemsize
        return found_shape == shape and found_dtype == dtype and size == expected

    def load(self, chunk: StoredChunk) -> np.ndarray:
        if not chunk.path.exists():
            self.check()
            self.directory.mkdir(parents=True, exist_ok=True)
            part = chunk.path.with_name(f".tmp-{uuid.uuid4().hex[:8]}.npy")
            self.store.download(self._key(chunk.path.name), part)
            part.replace(chunk.path)
        return super().load(chunk)

    def discard(self, chunk: StoredChunk) -> None:
        self.store.delete(self._key(chunk.path.name))
        super().discard(chunk)

    def remove(self) -> None:
        for name, _ in self._own_objects():
            self.store.delete(self._key(name))
        super().remove()


def chunk_store(directory: Path, root: Path, identity: str = "none") -> ChunkStore:
    """The chunk store for an image's partial folder: objects on the store when it is staged.
    ``identity`` is the run's cloud settings (:func:`edown.clouds.mask_identity`)."""
    remote = remote_of(directory)
    if remote is None:
        return ChunkStore(directory, root, identity)
    store, key = remote
    return ObjectChunkStore(directory, root, store, key, identity)
