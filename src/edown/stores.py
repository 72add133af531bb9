"""Where outputs go: a local folder or an object store (``s3://bucket/prefix``, ``gs://bucket/prefix``).

One interface, :class:`Store`, over two backends: :class:`LocalStore` (a folder; writes by temporary
file and rename) and :class:`ObjectStore` (fsspec: s3fs for S3 and S3-compatible servers, gcsfs for
Google Cloud Storage). fsspec was chosen over obstore by measurement (``bench/store_clients.py``,
``docs/stores.md``): both honour conditional creates on the S3 server, but obstore's GCS backend
speaks the XML API, which the GCS emulator does not serve, and fetches a metadata-server token even with
``skip_signature``; s3fs and gcsfs ran at the same or better throughput, and xarray and zarr open
fsspec URLs with ``storage_options`` directly.

Credentials and endpoints come only from each store's standard environment: ``AWS_*`` (incl.
``AWS_ENDPOINT_URL``) for S3; ``GOOGLE_APPLICATION_CREDENTIALS`` (or the default credentials) for GCS,
and ``STORAGE_EMULATOR_HOST`` for a GCS emulator, to which no Google credentials are ever sent. A manifest
names a bucket and a prefix, never an endpoint, so a file cannot send the user's keys elsewhere.

A store has no rename: an object appears whole when its single PUT, or its multipart upload, completes.
edown therefore builds each object locally and uploads it only when it is complete and verified, so no
partial object ever sits under a final name (see :mod:`edown.storeroot` for the run on a store).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edown.errors import ConfigError, EdownError

#: The URL schemes of object stores edown writes to.
STORE_SCHEMES = ("s3", "gs")


class StoreError(EdownError):
    """An object store cannot be reached, or refused a request (bad input: exit code 2)."""

    exit_code = 2


class StoreURL(str):
    """``scheme://bucket/key``: an object-store location, kept as text (a :class:`~pathlib.Path` would
    fold the ``//``). ``url / "part"`` joins like a path does."""

    @property
    def scheme(self) -> str:
        return self.split("://", 1)[0]

    @property
    def bucket(self) -> str:
        return self.split("://", 1)[1].split("/", 1)[0]

    @property
    def key(self) -> str:
        """The part after the bucket, without leading or trailing slashes ('' for the bucket itself)."""
        rest = self.split("://", 1)[1].split("/", 1)
        return rest[1].strip("/") if len(rest) > 1 else ""

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> StoreURL:
        key = self.key.rsplit("/", 1)[0] if "/" in self.key else ""
        return StoreURL(f"{self.scheme}://{self.bucket}/{key}".rstrip("/"))

    def __truediv__(self, part: str | Path) -> StoreURL:
        part = str(part).strip("/")
        return StoreURL(f"{self.rstrip('/')}/{part}") if part else self

    def relative_to(self, other: StoreURL) -> str:
        prefix = other.rstrip("/") + "/"
        if not self.startswith(prefix):
            raise ValueError(f"{self} is not under {other}")
        return self[len(prefix) :]


#: A place edown reads or writes: a local path or an object-store URL.
Location = Path | StoreURL


#: A relative path that starts like a URL scheme (``s3:/x``, ``gs:x``, ``https:/y``, ``/vsis3/``-style ``vsis3:``).
_SCHEME_LIKE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def is_store_url(value: object) -> bool:
    return isinstance(value, str) and "://" in value and value.split("://", 1)[0].lower() in STORE_SCHEMES


def location(value: str | os.PathLike[str], field: str) -> Location:
    """``value`` as a local path or a store URL; any other ``scheme://`` is bad input for ``field``.

    ``file://`` URLs are local paths. Store URLs need a bucket; ``..`` and empty components are refused,
    so a prefix can never name something above itself.
    """
    if isinstance(value, StoreURL):
        return value
    text = os.fspath(value)
    if "://" not in text:
        looks_like = _SCHEME_LIKE.match(text)
        if looks_like:
            # GDAL reads "s3:/x" or "vsis3:/x" as a URL, and would send the environment's credentials to
            # the provider's public endpoint: a path that only looks like one is refused, not written.
            scheme = looks_like.group(1).lower()
            store = (
                f"write {scheme}://bucket/prefix for a store, or " if scheme in STORE_SCHEMES else "write "
            )
            raise ConfigError(
                field,
                f"{text} starts like a URL ({looks_like.group(0)}) but is not one",
                f"{store}./{text} for a local folder",
            )
        path = Path(text).expanduser()
        # "./s3:/x" is a folder; absolute, GDAL can never read it as a URL.
        return path.absolute() if path.parts and ":" in path.parts[0] else path
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme == "file":
        return Path(rest if rest.startswith("/") else "/" + rest)
    if scheme not in STORE_SCHEMES:
        raise ConfigError(
            field,
            f"{text} uses {scheme}://, which edown cannot write to",
            "give a local folder, file://, s3://bucket/prefix or gs://bucket/prefix",
        )
    parts = rest.split("/")
    if not parts[0]:
        raise ConfigError(field, f"{text} names no bucket", f"write it as {scheme}://bucket/prefix")
    inner = [p for p in parts[1:] if p]
    if any(p in (".", "..") for p in inner):
        raise ConfigError(field, f"{text} contains '.' or '..'", "give the prefix without them")
    return StoreURL("/".join([f"{scheme}://{parts[0]}", *inner]))


def on_disk(where: Location) -> Path:
    """``where`` as a local path, for code that runs after store locations were staged."""
    if isinstance(where, StoreURL):
        raise AssertionError(f"{where} should have been staged to a local folder first")
    return where


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class Store(Protocol):
    """What edown needs from a place that holds its outputs. Keys are ``/``-separated and relative to the
    store's root; a write is atomic (readers see the whole object or none)."""

    @property
    def url(self) -> str: ...

    def read_bytes(self, key: str) -> bytes: ...

    def read_range(self, key: str, start: int, end: int) -> bytes: ...

    def write_bytes(self, key: str, data: bytes, create_only: bool = False) -> None: ...

    def upload(self, key: str, source: Path) -> None: ...

    def download(self, key: str, target: Path) -> None: ...

    def list(self, prefix: str) -> list[ObjectInfo]: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


def key_parts(key: str) -> list[str]:
    """The path segments of a store key, refusing one that would leave the store (``.`` or ``..``):
    keys may come from listings and manifests, which edown does not control."""
    parts = [p for p in key.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"key {key!r} leaves the store")
    return parts


class LocalStore:
    """A folder as a :class:`Store` (writes through a temporary file and a rename, as edown's local outputs
    always are)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def url(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key_parts(key))

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def read_range(self, key: str, start: int, end: int) -> bytes:
        with self._path(key).open("rb") as handle:
            handle.seek(start)
            return handle.read(end - start)

    def write_bytes(self, key: str, data: bytes, create_only: bool = False) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if create_only:
                os.link(tmp, target)  # fails with FileExistsError when the target is there
            else:
                tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)

    def upload(self, key: str, source: Path) -> None:
        self.write_bytes(key, source.read_bytes())

    def download(self, key: str, target: Path) -> None:
        target.write_bytes(self.read_bytes(key))

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return [
            ObjectInfo(p.relative_to(self.root).as_posix(), p.stat().st_size)
            for p in sorted(base.rglob("*"))
            if p.is_file() and not p.is_symlink()
        ]

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


_filesystems: dict[tuple[str, str], Any] = {}
_filesystems_guard = threading.Lock()


#: Seconds to connect to a store, to wait for each read of an S3 answer, and for a whole GCS request (an
#: upload of at most one 48 MB chunk or one COG block at a time).
CONNECT_TIMEOUT_S = 30
READ_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 300


def _endpoint(scheme: str) -> str:
    if scheme == "s3":
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    return os.environ.get("STORAGE_EMULATOR_HOST", "")


def _new_filesystem(scheme: str, asynchronous: bool) -> Any:
    endpoint = _endpoint(scheme)
    try:
        if scheme == "s3":
            import s3fs

            return s3fs.S3FileSystem(
                endpoint_url=endpoint or None,
                skip_instance_cache=True,
                asynchronous=asynchronous,
                # A server that stops answering fails the call instead of hanging the run.
                config_kwargs={
                    "connect_timeout": CONNECT_TIMEOUT_S,
                    "read_timeout": READ_TIMEOUT_S,
                    "retries": {"mode": "standard", "max_attempts": 3},
                },
            )
        # The core class: gcsfs's default "extended" one first probes gRPC control-plane APIs.
        from gcsfs.core import GCSFileSystem

        # An emulator gets no credentials: the user's Google identity is for Google only.
        return GCSFileSystem(
            endpoint_url=endpoint or None,
            token="anon" if endpoint else None,
            skip_instance_cache=True,
            requests_timeout=REQUEST_TIMEOUT_S,
            asynchronous=asynchronous,
        )
    except ImportError:
        package = "s3fs" if scheme == "s3" else "gcsfs"
        raise StoreError(
            f"{scheme}:// needs the {package} package", hint="pip install 'edown[stores]'"
        ) from None


def _filesystem(scheme: str) -> Any:
    """The fsspec filesystem for ``scheme`` configured from the environment (one per endpoint)."""
    key = (scheme, _endpoint(scheme))
    with _filesystems_guard:
        fs = _filesystems.get(key)
        if fs is None:
            fs = _filesystems[key] = _new_filesystem(scheme, asynchronous=False)
        return fs


def async_filesystem(scheme: str) -> Any:
    """A new asynchronous fsspec filesystem for ``scheme`` (what zarr's ``FsspecStore`` needs)."""
    return _new_filesystem(scheme, asynchronous=True)


def storage_options(url: str) -> dict[str, Any]:
    """What xarray / zarr / fsspec need to open ``url`` the way edown wrote it (from the environment)."""
    if not is_store_url(url):
        return {}
    if StoreURL(url).scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return {"endpoint_url": endpoint} if endpoint else {}
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    return {"endpoint_url": emulator, "token": "anon"} if emulator else {}


#: Part size of multipart (S3) and resumable (GCS) uploads: S3's minimum part is 5 MiB, GCS wants a
#: multiple of 256 KiB.
UPLOAD_PART_BYTES = 8 * 1024 * 1024


class ObjectStore:
    """An S3 or GCS prefix as a :class:`Store`."""

    def __init__(self, root: StoreURL) -> None:
        self.root = root
        self.fs = _filesystem(root.scheme)

    @property
    def url(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> str:
        return "/".join([self.root.bucket, *([self.root.key] if self.root.key else []), *key_parts(key)])

    def _key(self, path: str) -> str:
        prefix = self._path("") + "/"
        return path[len(prefix) :] if path.startswith(prefix) else path

    def read_bytes(self, key: str) -> bytes:
        with self._errors(key):
            data: bytes = self.fs.cat_file(self._path(key))
            return data

    def read_range(self, key: str, start: int, end: int) -> bytes:
        with self._errors(key):
            data: bytes = self.fs.cat_file(self._path(key), start=start, end=end)
            return data

    def write_bytes(self, key: str, data: bytes, create_only: bool = False) -> None:
        with self._errors(key, writing=True):
            self.fs.pipe_file(self._path(key), data, mode="create" if create_only else "overwrite")

    def upload(self, key: str, source: Path) -> None:
        """Upload ``source``: one PUT, or a multipart upload completed only when every part is there.

        Parts of :data:`UPLOAD_PART_BYTES`: s3fs and gcsfs otherwise read a whole object of up to 100 MB
        (S3) or 50 MB (GCS) into memory per upload, and every writer thread uploads at once (the big job
        peaked at 1.16 GB on S3 that way).
        """
        options: dict[str, Any] = {"chunksize": UPLOAD_PART_BYTES}
        if self.root.scheme == "s3":
            options["max_concurrency"] = 2
        with self._errors(key, writing=True):
            self.fs.put_file(str(source), self._path(key), **options)

    def download(self, key: str, target: Path) -> None:
        with self._errors(key):
            self.fs.get_file(self._path(key), str(target))

    def list(self, prefix: str) -> list[ObjectInfo]:
        path = self._path(prefix)
        self.fs.invalidate_cache()
        with self._errors(prefix):
            try:
                found = self.fs.find(path, detail=True)
            except FileNotFoundError:
                return []
        return sorted(
            (ObjectInfo(self._key(p), int(info.get("size") or 0)) for p, info in found.items()),
            key=lambda o: o.key,
        )

    def exists(self, key: str) -> bool:
        self.fs.invalidate_cache()
        with self._errors(key):
            return bool(self.fs.isfile(self._path(key)))

    def delete(self, key: str) -> None:
        with self._errors(key, writing=True), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    @contextlib.contextmanager
    def _errors(self, key: str, writing: bool = False) -> Iterator[None]:
        """A store's refusal becomes one line naming the object (never the credentials)."""
        try:
            yield
        except FileNotFoundError as exc:
            if not writing:
                raise
            raise StoreError(
                f"cannot write {self.root / key}: {' '.join(str(exc).split())[:200]}",
                hint=f"create the bucket {self.root.bucket} first, or give another one",
            ) from None
        except FileExistsError:
            raise
        except Exception as exc:
            library = type(exc).__module__.split(".")[0] in (
                "botocore",
                "aiobotocore",
                "aiohttp",
                "gcsfs",
                "s3fs",
            )
            # A server answering garbage surfaces as a decoding error inside the client library.
            answered = (OSError, ConnectionError, TimeoutError, UnicodeDecodeError, ValueError)
            if not (library or isinstance(exc, answered)):
                raise
            what = "write" if writing else "read"
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise StoreError(
                f"cannot {what} {self.root / key}: {reason}",
                hint="check the bucket exists and the credentials/endpoint in the environment "
                "(AWS_* / AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS / STORAGE_EMULATOR_HOST)",
            ) from None


def open_store(where: Location) -> Store:
    """The :class:`Store` for a local folder or a store URL."""
    if isinstance(where, StoreURL):
        return ObjectStore(where)
    return LocalStore(Path(where))


def probe(where: Location) -> str:
    """Check that ``where`` is reachable and writable: write, read back and delete a probe object named
    ``.edown/doctor-probe-<random>`` (nothing else is touched). Returns what was done; raises
    :class:`StoreError` (or ``OSError`` for a folder) when it cannot."""
    import time

    store = open_store(where)
    key = f".edown/doctor-probe-{uuid.uuid4().hex[:12]}"
    body = b"edown doctor probe: safe to delete\n"
    started = time.monotonic()
    store.write_bytes(key, body)
    try:
        if store.read_bytes(key) != body:
            raise StoreError(f"{store.url}: the probe object {key} read back different bytes")
    finally:
        store.delete(key)
    elapsed = (time.monotonic() - started) * 1000
    return f"writable ({key} written, read back and deleted in {elapsed:.0f} ms)"
