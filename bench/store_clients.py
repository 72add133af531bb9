"""Choose edown's object-store library by measurement: obstore vs fsspec (s3fs / gcsfs).

Starts a real S3 API server (moto_server) and a real GCS emulator (fake-gcs-server) on loopback and, for
each library and server, times PUTs of 1, 10 and 50 MB objects, a listing of 200 objects, and checks
whether a conditional create (``If-None-Match: *`` on S3, ``ifGenerationMatch=0`` on GCS) of an existing
object is refused. Prints one table; docs/stores.md records the numbers and the decision.

    .venv/bin/python bench/store_clients.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edown.emulator.object_stores import StoreServer, start_server

SIZES_MB = (1, 10, 50)
LISTED = 200


class Client:
    """The four operations measured, for one library against one server."""

    def __init__(
        self,
        name: str,
        put: Callable[[str, bytes], None],
        create: Callable[[str, bytes], None],
        listing: Callable[[str], int],
    ) -> None:
        self.name, self.put, self.create, self.listing = name, put, create, listing


def obstore_client(server: StoreServer, bucket: str) -> Client:
    import obstore
    from obstore.store import GCSStore, S3Store

    store: Any
    if server.kind == "s3":
        store = S3Store(
            bucket,
            endpoint=server.url,
            region="us-east-1",
            client_options={"allow_http": True},
            access_key_id="k",
            secret_access_key="s",
        )
    else:
        store = GCSStore(
            bucket, base_url=server.url, skip_signature=True, client_options={"allow_http": True}
        )

    def put(key: str, data: bytes) -> None:
        obstore.put(store, key, data)

    def create(key: str, data: bytes) -> None:
        obstore.put(store, key, data, mode="create")

    def listing(prefix: str) -> int:
        return sum(len(batch) for batch in obstore.list(store, prefix=prefix))

    return Client("obstore", put, create, listing)


def fsspec_client(server: StoreServer, bucket: str) -> Client:
    fs: Any
    if server.kind == "s3":
        import s3fs

        fs = s3fs.S3FileSystem(key="k", secret="s", endpoint_url=server.url, skip_instance_cache=True)
        name = "s3fs"
    else:
        from gcsfs.core import GCSFileSystem  # not the "extended" class: it probes gRPC APIs first

        fs = GCSFileSystem(endpoint_url=server.url, token="anon", skip_instance_cache=True)
        name = "gcsfs"

    def put(key: str, data: bytes) -> None:
        fs.pipe_file(f"{bucket}/{key}", data)

    def create(key: str, data: bytes) -> None:
        fs.pipe_file(f"{bucket}/{key}", data, mode="create")

    def listing(prefix: str) -> int:
        fs.invalidate_cache()
        return len(fs.find(f"{bucket}/{prefix}"))

    return Client(name, put, create, listing)


def measure(client: Client, repeat: int) -> dict[str, str]:
    row: dict[str, str] = {"library": client.name}
    for mb in SIZES_MB:
        data = os.urandom(mb * 1024 * 1024)
        times = []
        for _ in range(repeat):
            began = time.perf_counter()
            client.put(f"put/{uuid.uuid4().hex}", data)
            times.append(time.perf_counter() - began)
        row[f"put {mb} MB (MB/s)"] = f"{mb / statistics.median(times):.0f}"
    prefix = f"list-{uuid.uuid4().hex[:6]}/"
    for i in range(LISTED):
        client.put(f"{prefix}{i:04d}", b"x")
    began = time.perf_counter()
    count = client.listing(prefix)
    row[f"list {LISTED} (ms)"] = f"{(time.perf_counter() - began) * 1000:.0f}" + (
        "" if count == LISTED else f" ({count}!)"
    )
    key = f"lock-{uuid.uuid4().hex[:6]}"
    try:
        client.create(key, b"first")
    except Exception as exc:
        row["create-if-absent"] = f"unsupported ({type(exc).__name__})"
        return row
    try:
        client.create(key, b"second")
        row["create-if-absent"] = "NOT honoured"
    except Exception as exc:
        row["create-if-absent"] = f"honoured ({type(exc).__name__})"
    return row


def _first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:110]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edown-bench-stores-") as tmp:
        for kind in ("s3", "gcs"):
            server = start_server(kind, Path(tmp) / f"{kind}.log")  # type: ignore[arg-type]
            try:
                for make in (obstore_client, fsspec_client):
                    bucket = f"bench-{make.__name__[:3]}-{uuid.uuid4().hex[:6]}"
                    server.create_bucket(bucket)
                    try:
                        row = measure(make(server, bucket), args.repeat)
                    except Exception as exc:  # a library that cannot talk to this server is a result too
                        row = {"library": make.__name__.split("_")[0], "error": _first_line(exc)}
                    rows.append({"server": server.kind, **row})
            finally:
                server.stop()
    columns = list(dict.fromkeys(c for r in rows for c in r))
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(r.get(c, "").ljust(widths[c]) for c in columns))


if __name__ == "__main__":
    main()
