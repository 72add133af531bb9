"""Every error edown raises on purpose: one line that names what is wrong and how to fix it.

The CLI prints ``str(error)`` as a single red line (plus the hint) and exits 2 for bad input, 1 for
failures at run time; the API raises these typed exceptions so callers can tell a typo from an outage.
"""

from __future__ import annotations


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


class OutputPathError(EdownError):
    """An output folder edown cannot use as it is: read-only, under a file, missing its parent."""

    exit_code = 2


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
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class StackError(EdownError):
    """A manifest cannot be stacked (nothing downloaded, mixed grids in a group...)."""

    exit_code = 2
