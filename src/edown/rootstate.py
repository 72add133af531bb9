"""An output root's own state: the run lock, the marker that edown made the root, and the journal of
temporaries — the only record edown trusts when it deletes anything.

Layout of ``<output_root>/.edown/``::

    lock                 flock()ed by the one edown process writing this root (its purpose inside)
    root.json            {"schema": "edown.root", "root_id": ...}: written on the first run here
    journal/<id>.json    one entry per temporary in existence: {"path": <relative>, "kind": file|dir}

Why a journal: a killed run leaves half-made files, and the next run should clean them up — but a name
alone proves nothing (``.draft.tmp`` may be the user's). So every temporary is *recorded before it is
created* and its record removed after it was renamed into place or deleted; the sweep, run only while
holding the lock, deletes exactly what the journal names, only inside edown's own folders, never through
a symbolic link, and never walks the root. A temporary created outside a locked root (e.g. a search
manifest written elsewhere) is not journalled: it is removed by its own ``finally`` or left alone.

Why a marker: a manifest names its output root, and a manifest is just a file anyone can edit. When a root
comes from a manifest rather than from the user, edown only uses it if the marker edown wrote there on its
first run is present (``trusted_root``), so a hand-edited manifest cannot send writes elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edown._version import __version__
from edown.errors import OutputLockedError, OutputPathError, UnsafePathError, user_folder

log = logging.getLogger("edown.rootstate")

STATE_DIR = ".edown"
#: The folders of a root that edown owns; nothing outside them is ever written or deleted.
OWN_FOLDERS = ("images", "stacks", "manifests", "stac", STATE_DIR)
MARKER_SCHEMA = "edown.root"

# What a journalled temporary may be called: ``.<name>.<random>.tmp`` files and ``<store>.{tmp,old}-<hex>``
# stores. Checked again at sweep time, so a corrupted journal entry cannot name a user's file.
_TEMPORARY_NAME = re.compile(r"^\..+\.tmp$|^.+\.(?:tmp|old)-[0-9a-f]{8}$")


def check_no_links(root: Path, path: Path) -> None:
    """Refuse ``path`` if any existing component of it below ``root`` is a symbolic link.

    ``root`` itself may be a link: the user named it. Inside it edown never follows links, so a link
    planted in its folders cannot redirect a write or a delete elsewhere. Relative paths are taken from
    the working directory, as the user's relative output root is.
    """
    root, path = root.absolute(), path.absolute()
    try:
        relative = path.relative_to(root)
    except ValueError:
        raise UnsafePathError(
            f"{path} is outside the output root {root}", hint="this is refused to keep writes inside it"
        ) from None
    current = root
    for part in relative.parts:
        if part in ("..", ""):
            raise UnsafePathError(f"{path} leaves the output root {root}")
        current = current / part
        try:
            mode = current.lstat().st_mode
        except FileNotFoundError:
            return
        except NotADirectoryError:
            raise OutputPathError(
                f"{current.parent} is a file where edown needs a folder",
                hint="move it away or choose another --output-root",
            ) from None
        if stat.S_ISLNK(mode):
            raise UnsafePathError(
                f"{current} is a symbolic link inside edown's output folder",
                hint="edown never follows links in its own folders: replace the link with a real folder, "
                "or choose another --output-root",
            )


def _safe_mkdir(root: Path, path: Path) -> None:
    check_no_links(root, path)
    path.mkdir(parents=True, exist_ok=True)
    check_no_links(root, path)  # nothing swapped a component for a link while we created it


@dataclass(frozen=True)
class HeldRoot:
    """An output root whose lock this process holds."""

    path: Path
    root_id: str

    @property
    def state(self) -> Path:
        return self.path / STATE_DIR

    @property
    def journal(self) -> Path:
        return self.state / "journal"

    def contains(self, path: Path) -> bool:
        try:
            path.relative_to(self.path)
        except ValueError:
            return False
        return True


_held: dict[Path, HeldRoot] = {}
_held_guard = threading.Lock()


def held_root_of(path: Path) -> HeldRoot | None:
    """The locked root (of this process) that ``path`` lies in, if any."""
    absolute = Path(path).absolute()
    with _held_guard:
        for root in _held.values():
            if root.contains(absolute):
                return root
    return None


# ---- marker -------------------------------------------------------------------------------------------


def read_marker(root: Path) -> dict[str, Any] | None:
    """The root's marker document, or None when edown never ran there (or it is not a real file)."""
    marker = root / STATE_DIR / "root.json"
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "r", encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("schema") != MARKER_SCHEMA or not doc.get("root_id"):
        return None
    return doc


def _ensure_marker(root: Path) -> str:
    doc = read_marker(root)
    if doc is not None:
        return str(doc["root_id"])
    root_id = uuid.uuid4().hex
    text = json.dumps({"schema": MARKER_SCHEMA, "root_id": root_id, "edown_version": __version__}) + "\n"
    atomic_write_text(root / STATE_DIR / "root.json", text)
    return root_id


def trusted_root(root: Path, root_id: str | None, source: str) -> Path:
    """``root`` as named by a manifest (``source``), if edown's own marker there says it made it.

    A manifest that records its root's id must match it; older manifests (no id) are accepted when the
    marker is there. Anything else is refused: a file must not choose where edown writes.
    """
    doc = read_marker(root)
    if doc is None:
        raise UnsafePathError(
            f"{source} names the output root {root}, which edown did not create",
            hint="pass the root yourself with --output-root (output_root=) if you mean it",
        )
    if root_id is not None and doc["root_id"] != root_id:
        raise UnsafePathError(
            f"{source} belongs to another output root than the one at {root}",
            hint="pass the root yourself with --output-root (output_root=) if you mean it",
        )
    return root


# ---- files edown writes -------------------------------------------------------------------------------


def special_file_kind(path: Path, follow: bool = False) -> str | None:
    """What ``path`` is when it exists as a folder, device, pipe or socket (else None): things a write by
    rename would replace — ``/dev/null`` among them, for a user running as root."""
    try:
        mode = path.stat().st_mode if follow else path.lstat().st_mode
    except OSError:
        return None
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return None


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a mix.

    The temporary is journalled when ``path`` lies in a locked output root (a killed run's temporary is
    then removed by the next run), created with the umask's permissions like every other output (not
    ``mkstemp``'s 0600, which would hide manifests from collaborators), and never through a link.
    """
    kind = special_file_kind(path)
    if kind is not None:  # a rename would replace a device (``/dev/null`` as root!) or a pipe
        raise OutputPathError(f"{path} is {kind}, not a file edown may replace", hint="choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with journalled(tmp):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- journal ------------------------------------------------------------------------------------------


def _write_entry(root: HeldRoot, temporary: Path, kind: Literal["file", "dir"]) -> Path:
    entry = root.journal / f"{uuid.uuid4().hex}.json"
    body = json.dumps({"path": temporary.relative_to(root.path).as_posix(), "kind": kind})
    fd = os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_dir(root.journal)
    return entry


@contextlib.contextmanager
def journalled(temporary: Path, kind: Literal["file", "dir"] = "file") -> Iterator[Path]:
    """Record ``temporary`` in its locked root's journal for as long as the block runs.

    The caller creates the temporary inside the block and renames or deletes it before leaving; if the
    process dies instead, the next run that takes the lock deletes it. Outside a locked root this only
    checks nothing (there is no journal to keep), and the caller's own cleanup is all there is.
    """
    root = held_root_of(temporary)
    if root is None:
        yield temporary
        return
    check_no_links(root.path, Path(temporary).absolute().parent)
    entry = _write_entry(root, Path(temporary).absolute(), kind)
    try:
        yield temporary
    finally:
        entry.unlink(missing_ok=True)


def sweep(root: HeldRoot) -> list[Path]:
    """Delete the temporaries a killed run recorded; return them. Only with the lock held."""
    removed: list[Path] = []
    if not root.journal.is_dir():
        return removed
    for entry in sorted(root.journal.iterdir()):
        if entry.is_symlink() or not entry.name.endswith(".json"):
            continue
        target = _entry_target(root, entry)
        if target is not None and _remove_temporary(root, target):
            removed.append(target)
        entry.unlink(missing_ok=True)
    return removed


def _entry_target(root: HeldRoot, entry: Path) -> Path | None:
    try:
        doc = json.loads(entry.read_text(encoding="utf-8"))
        relative = Path(doc["path"])
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("ignoring an unreadable journal entry %s", entry.name)
        return None
    if (
        relative.is_absolute()
        or ".." in relative.parts
        or not relative.parts
        or relative.parts[0] not in OWN_FOLDERS
        or not _TEMPORARY_NAME.match(relative.name)
    ):
        log.warning("ignoring journal entry %s naming %s", entry.name, relative)
        return None
    return root.path / relative


def _remove_temporary(root: HeldRoot, target: Path) -> bool:
    try:
        check_no_links(root.path, target.parent)
        mode = target.lstat().st_mode
    except (FileNotFoundError, UnsafePathError, OutputPathError):
        return False
    if stat.S_ISLNK(mode):
        return False  # not what edown created there
    if stat.S_ISDIR(mode):
        shutil.rmtree(target, ignore_errors=True)  # rmtree never follows links inside the tree
    else:
        target.unlink(missing_ok=True)
    return True


# ---- lock ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def locked_root(output_root: Path, purpose: str, writes: tuple[str, ...] = ()) -> Iterator[HeldRoot]:
    """Hold ``output_root/.edown/lock`` for the duration; another holder means a clear refusal.

    Taking the lock makes sure the root is edown's (creating it and its marker on the first run) and
    that the folders named in ``writes`` can be written, so an unusable root is one line of bad input
    before any work; then it sweeps what the journal says an earlier, killed run left half-made.
    Nothing else in the root is looked at.
    """
    given = Path(output_root)
    path = given.absolute()
    what, option = "output root", "--output-root / output_root"
    with user_folder(given, what, option):
        given.mkdir(parents=True, exist_ok=True)
        state = given / STATE_DIR
        _safe_mkdir(given, state / "journal")
        try:
            fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(
                    f"{state / 'lock'} is a symbolic link", hint="remove it; edown never follows links"
                ) from None
            raise
    handle = os.fdopen(fd, "r+", encoding="utf-8")
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
        with user_folder(given, what, option):
            root = HeldRoot(path, _ensure_marker(path))
        with _held_guard:
            _held[path] = root
        try:
            removed = sweep(root)
            if removed:
                log.info("removed %d temporaries of an interrupted run", len(removed))
            with user_folder(given, what, option):
                for folder in writes:
                    _probe_writable(root, given / folder)
            yield root
        finally:
            with _held_guard:
                _held.pop(path, None)
    finally:
        with contextlib.suppress(OSError):
            handle.seek(0)
            handle.truncate()
        handle.close()


def _probe_writable(root: HeldRoot, folder: Path) -> None:
    """Create ``folder`` (one of edown's own) and a journalled file in it: root ignores permission bits,
    so only trying tells whether the file system (read-only, immutable, full quota) will take writes."""
    _safe_mkdir(root.path, folder.absolute())
    probe = folder / f".probe.{uuid.uuid4().hex[:8]}.tmp"
    with journalled(probe):
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        os.close(fd)
        probe.unlink()
