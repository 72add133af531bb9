"""``edown emulator``: run the local Earth Engine."""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any

import click

from edown.cli.errors import handle_errors
from edown.errors import ConfigError


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on (keep it loopback: the emulator has no authentication).",
)
@click.option("--port", default=0, type=int, help="Port (0 picks a free one).")
@click.option(
    "--latency",
    default="none",
    show_default=True,
    help="Latency preset: none, fast, ee (0.3 s + 2 MB/s per pixel request, like Earth Engine) or ee-model "
    "(0.25 s + 40 MB/s, no jitter: the model bench/download.py measures with).",
)
@click.option(
    "--latency-base", type=float, help="Override the preset: seconds per pixel request before data flows."
)
@click.option("--bandwidth", type=float, help="Override the preset: MB/s of one pixel request's body.")
@click.option(
    "--max-concurrent", default=40, show_default=True, help="Concurrent compute requests per project."
)
@click.option("--rps", default=100.0, show_default=True, help="Requests per second per project.")
@click.option("--retry-after", type=float, default=None, help="Send Retry-After (seconds) with 429s.")
@click.option("--faults", default=None, help="Fault plan: JSON text or a path to a JSON file.")
@click.option(
    "--allowed-project", "allowed_projects", multiple=True, help="Only these projects may call the API."
)
@click.option("--log-requests", is_flag=True, help="Log every request to stderr.")
@click.option(
    "--capture-bodies", is_flag=True, help="Keep pixel request bodies in /_emulator/stats (for replays)."
)
@click.option(
    "--cache-responses", "cache_mb", type=int, default=0, help="Memoise pixel responses up to this many MiB."
)
@click.option(
    "--allow-remote-control",
    is_flag=True,
    help="Accept /_emulator/* control calls from other machines too (only with a non-loopback --host).",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"url": ...} as the first line instead of text.')
@handle_errors
def emulator(
    host: str,
    port: int,
    latency: str,
    max_concurrent: int,
    rps: float,
    retry_after: float | None,
    faults: str | None,
    allowed_projects: tuple[str, ...],
    log_requests: bool,
    latency_base: float | None,
    bandwidth: float | None,
    capture_bodies: bool,
    cache_mb: int,
    allow_remote_control: bool,
    as_json: bool,
) -> None:
    """Run a local Earth Engine that the real ``ee`` client talks to.

    \b
    Examples:
      edown emulator --port 8765
      edown emulator --latency ee --faults '{"rules": [{"kind": "error", "rate": 0.05}]}'
    Point clients at it with: ee.Initialize(credentials=None, project="any", opt_url=URL) (credentials=None:
    no stored Google credentials are needed), or edown's --server-url URL.
    """

    from edown.emulator import Emulator, EmulatorConfig, FaultPlan, Limits

    try:
        plan = FaultPlan.from_json(faults) if faults else FaultPlan()
        config = EmulatorConfig(
            host=host,
            port=port,
            latency=_latency(latency, latency_base, bandwidth),
            limits=Limits(
                max_concurrent=max_concurrent, requests_per_second=rps, retry_after_seconds=retry_after
            ),
            faults=plan,
            allowed_projects=allowed_projects or None,
            log_requests=log_requests,
            capture_bodies=capture_bodies,
            response_cache_mb=cache_mb,
            allow_remote_control=allow_remote_control,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError("faults" if faults else "latency", str(exc)) from None
    if log_requests:
        logging.getLogger("edown.emulator").setLevel(logging.INFO)
    emu = Emulator(config)
    try:
        emu.start()
    except OSError as exc:
        raise _listen_error(exc, host, port) from None
    click.echo(json.dumps({"url": emu.url}) if as_json else f"edown emulator listening on {emu.url}")
    click.echo(
        f"  use it with: import ee; ee.Initialize(credentials=None, project='any-project', opt_url='{emu.url}')",
        err=True,
    )
    sys.stdout.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()


def _listen_error(exc: OSError, host: str, port: int) -> ConfigError:
    """Why the emulator could not listen, as bad input naming the address and the way out."""
    import errno

    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            "--port",
            f"port {port} on {host} is already in use",
            "stop what is using it, choose another --port, or use --port 0 to pick a free one",
        )
    if exc.errno == errno.EACCES:
        return ConfigError(
            "--port", f"no permission to listen on port {port} on {host}", "use a port above 1023 or --port 0"
        )
    return ConfigError(
        "--host", f"cannot listen on {host}:{port}: {exc.strerror}", "use --host 127.0.0.1 and --port 0"
    )


def _latency(preset: str, base: float | None, bandwidth_mb: float | None) -> Any:
    from dataclasses import replace

    from edown.emulator import Latency

    latency = Latency.preset(preset)
    if base is not None:
        latency = replace(latency, base_seconds=base)
    if bandwidth_mb is not None:
        latency = replace(latency, bandwidth_bytes_per_second=bandwidth_mb * 1e6)
    return latency
