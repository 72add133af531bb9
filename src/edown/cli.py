"""The ``edown`` command line: ``search``, ``download``, ``stack``, ``emulator`` and friends."""

from __future__ import annotations

import sys
import threading

import click

from edown import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="edown")
def cli() -> None:
    """Native-grid Earth Engine downloads, Zarr datacubes, and a local Earth Engine emulator."""


@cli.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to listen on (keep it loopback)."
)
@click.option("--port", default=0, type=int, help="Port (0 picks a free one).")
@click.option(
    "--latency",
    default="none",
    show_default=True,
    help="Latency preset: none, fast or ee (0.3 s + 2 MB/s per pixel request, like Earth Engine).",
)
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
) -> None:
    """Run a local Earth Engine that the real ``ee`` client talks to.

    \b
    Examples:
      edown emulator --port 8765
      edown emulator --latency ee --faults '{"rules": [{"kind": "error", "rate": 0.05}]}'
    Point clients at it with: ee.Initialize(project="any", opt_url=URL)
    """
    import logging

    from edown.emulator import Emulator, EmulatorConfig, FaultPlan, Latency, Limits

    try:
        plan = FaultPlan.from_json(faults) if faults else FaultPlan()
        config = EmulatorConfig(
            host=host,
            port=port,
            latency=Latency.preset(latency),
            limits=Limits(
                max_concurrent=max_concurrent, requests_per_second=rps, retry_after_seconds=retry_after
            ),
            faults=plan,
            allowed_projects=allowed_projects or None,
            log_requests=log_requests,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if log_requests:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    emu = Emulator(config)
    emu.start()
    click.echo(f"edown emulator listening on {emu.url}")
    click.echo(f"  use it with: ee.Initialize(project='any-project', opt_url='{emu.url}')", err=True)
    sys.stdout.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()


def main() -> None:
    cli()
