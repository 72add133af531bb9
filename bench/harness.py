"""Shared pieces of the benchmarks: an emulator in its own process, the peer's venv, offline credentials,
process-tree memory sampling and a plain table printer.

The emulator runs in a separate process (``edown emulator``) so that what a benchmark measures in its
own process is the client, not the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
EDOWN = str(Path(sys.executable).with_name("edown"))


class EmulatorProcess:
    """``edown emulator`` in a subprocess (its own process group), with its control endpoints."""

    def __init__(self, *args: str) -> None:
        self.args = ["--port", "0", *args]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> EmulatorProcess:
        self.proc = subprocess.Popen(
            [EDOWN, "emulator", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                return self
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError("the emulator did not start")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_emulator/stats", timeout=30) as resp:
            return dict(json.load(resp))

    def reset(self) -> None:
        request = urllib.request.Request(self.url + "/_emulator/reset", data=b"{}", method="POST")
        urllib.request.urlopen(request, timeout=30).close()

    def set_faults(self, plan: dict[str, Any]) -> None:
        request = urllib.request.Request(
            self.url + "/_emulator/faults", data=json.dumps(plan).encode(), method="POST"
        )
        urllib.request.urlopen(request, timeout=30).close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def peer_python() -> Path:
    """The python of the public edown 0.2.1's own virtualenv (created on first use)."""
    python = BENCH / ".venvs" / "edown-0.2.1" / "bin" / "python"
    if not python.exists():
        subprocess.run([str(BENCH / "peer_venv.sh")], check=True, stdout=subprocess.DEVNULL)
    return python


def compile_bytecode(python: Path | str) -> None:
    """Compile every module ``python`` can import (its site-packages, and this checkout's ``src``).

    An installed package normally has its bytecode (installers compile it, or the first import writes
    it); with ``PYTHONDONTWRITEBYTECODE`` set, as on this CI machine, every process would compile
    numpy, ee, rasterio... from source again, ~1-2 s that no user pays and that weighs on whichever
    client imports more. Quick when already compiled (compileall skips up-to-date files).
    """
    paths = subprocess.run(
        [str(python), "-c", "import site, sys; print('\\n'.join(site.getsitepackages()))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(
        [str(python), "-m", "compileall", "-q", "-j", "0", *paths, str(ROOT / "src")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )


def offline_service_account_env(tmpdir: Path, token_uri: str) -> dict[str, str]:
    """Environment for a peer that authenticates with a service account whose key's ``token_uri`` is the
    emulator (a freshly generated RSA key: never real credentials)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    email = "bench@edown-bench.iam.gserviceaccount.com"
    key_file = tmpdir / "service-account.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "edown-bench",
                "private_key_id": "bench",
                "private_key": pem.decode(),
                "client_email": email,
                "client_id": "1",
                "token_uri": token_uri,
            }
        )
    )
    home = tmpdir / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEE_", "GOOGLE_", "EE_", "EDOWN_"))}
    env.update(
        {
            "HOME": str(home),
            "CLOUDSDK_CONFIG": str(home / "gcloud"),
            "NO_GCE_CHECK": "True",
            "GEE_SERVICE_ACCOUNT": email,
            "GEE_SERVICE_ACCOUNT_KEY": str(key_file),
        }
    )
    return env


class MemorySampler:
    """Samples the summed resident memory of :meth:`processes` every ``interval``; keeps the peak (bytes)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def processes(self) -> list[Any]:
        raise NotImplementedError

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                for proc in self.processes():
                    with contextlib.suppress(psutil.Error):
                        total += proc.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


class TreeMemory(MemorySampler):
    """A process and all its descendants."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil

        super().__init__(interval)
        self.root = psutil.Process(pid)

    def processes(self) -> list[Any]:
        return [self.root, *self.root.children(recursive=True)]


def run_measured(
    argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 3600
) -> dict[str, Any]:
    """Run a command; return its wall time, CPU seconds (user + system, from ``wait4``, so waited-for
    descendants included), peak RSS of its whole process tree, exit code and output."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=out, stderr=err, text=True)
        with TreeMemory(proc.pid) as memory:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() - started > timeout:
                    proc.kill()
                time.sleep(0.05)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {
            "wall": wall,
            "cpu": usage.ru_utime + usage.ru_stime,
            "peak_rss": memory.peak,
            "code": proc.returncode,
            "stdout": out.read(),
            "stderr": err.read(),
        }


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain, aligned text table (numbers right-aligned)."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in rows) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric, strict=True)
        )

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
