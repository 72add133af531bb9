"""Every error edown raises on purpose: one line that names what is wrong and how to fix it.

The CLI prints ``str(error)`` as a single red line (plus the hint) and exits 2 for bad input, 1 for
failures at run time; the API raises these typed exceptions so callers can tell a typo from an outage.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path


class EdownError(Exception):
    """Base class. ``hint`` says what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(EdownError, ValueError):
    """Bad input in a config field (or CLI option) named by ``field``."""

    exit_code = 2

    def __init__(self, field: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"{field}: {message}", hint)
        self.field = field


class AuthenticationError(EdownError):
    """No way to authenticate to Earth Engine worked; the message lists what was tried."""

    exit_code = 2


class EarthEngineError(EdownError):
    """Earth Engine refused or failed a request. ``status`` is the HTTP status when there was one."""

    def __init__(
        self, message: str, status: int | None = None, transient: bool = False, hint: str | None = None
    ):
        super().__init__(message, hint)
        self.status = status
        self.transient = transient


class RequestTooLargeError(EarthEngineError):
    """A pixel request over Earth Engine's size or memory limits: split it and try again."""


class CollectionNotFoundError(EarthEngineError):
    exit_code = 2


class NoImagesFoundError(EdownError):
    """The search matched nothing; the message repeats the filters used."""

    exit_code = 1


class ManifestError(EdownError):
    """A manifest that cannot be read back (wrong tool, unknown schema version, corrupt JSON)."""

    exit_code = 2


class OutputExistsError(EdownError):
    """An output would be overwritten without ``overwrite=True``."""

    exit_code = 2


class OutputLockedError(EdownError):
    """Another edown process is writing into the same output root."""

    exit_code = 1


class UnsafePathError(EdownError):
    """A path edown refuses to follow: a symbolic link in its own folders, or a place outside the output
    root that a file (rather than the user) named."""

    exit_code = 2


class DiskFullError(EdownError):
    """The output file system ran out of space; what was finished is kept and a re-run resumes."""

    def __init__(self, where: str) -> None:
        super().__init__(
            f"no space left on the device holding {where}",
            hint="free some space (or choose another --output-root) and run the same command again to resume",
        )


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def as_disk_full(exc: BaseException, directory: Path, needed: int, what: str) -> OSError | None:
    """An ENOSPC error for a write into ``directory`` that failed without saying why, when the disk has
    less than ``needed`` bytes free; else None.

    Some writers lose the errno: numpy reports a short write as a bare OSError, and libtiff only prints
    "No space left on device" while GDAL carries on and later cannot read its own file. Free space is
    then what tells a full disk (one line, resumable) from a bug.
    """
    if is_disk_full(exc) or not isinstance(exc, Exception):
        return None
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return None
    if free >= needed:
        return None
    return OSError(errno.ENOSPC, f"No space left on device writing {what}")


class StackError(EdownError):
    """A manifest cannot be stacked (nothing downloaded, mixed grids in a group...)."""

    exit_code = 2


class OutputPathError(EdownError):
    """The operating system refused a folder or file edown must write: missing, a file, or read-only.

    Raised where edown first touches the user's folder (see :func:`user_folder`), so an unwritable output
    root is one line naming it and the fix, while an OSError deeper inside a run still reads as a bug.
    """

    exit_code = 2

    @classmethod
    def from_os_error(cls, exc: OSError, path: Path, what: str, option: str) -> EdownError | None:
        """The error to raise for ``exc`` met while preparing ``path``, or None when it is no bad input."""
        if is_disk_full(exc):
            return DiskFullError(str(path))
        other = f"choose another {option}"
        if isinstance(exc, NotADirectoryError | FileExistsError):
            blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
            return cls(f"{what} {path}: {blocker} is a file, not a folder", hint=f"move it away or {other}")
        if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
            reason = (exc.strerror or "permission denied").lower()
            return cls(
                f"{what} {path} is not writable ({reason}: {exc.filename or path})",
                hint=f"make it writable or {other}",
            )
        if isinstance(exc, FileNotFoundError):
            return cls(f"{what} {path}: {exc.filename or path} does not exist", hint=f"create it or {other}")
        return None


@contextlib.contextmanager
def user_folder(path: Path, what: str, option: str) -> Iterator[None]:
    """Turn the OS refusing ``path`` (a file in the way, no permission, read-only) into bad input."""
    try:
        yield
    except OSError as exc:
        error = OutputPathError.from_os_error(exc, Path(path), what, option)
        if error is None:
            raise
        raise error from None
