"""``edown doctor`` (and its alias ``auth``): the credentials and project in use; does the endpoint answer."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from edown._version import __version__
from edown.cli.console import echo_json, stdout_console
from edown.cli.errors import handle_errors
from edown.errors import EdownError
from edown.redaction import redact

F = TypeVar("F", bound=Callable[..., Any])


def _doctor(
    server_url: str | None, project: str | None, as_json: bool, output_root: str | None = None
) -> None:
    import platform
    import time

    import ee

    from edown import earthengine
    from edown.config import HIGH_VOLUME_URL, check_url

    url = check_url(server_url or os.environ.get("EDOWN_SERVER_URL") or HIGH_VOLUME_URL)
    report: dict[str, Any] = {
        "edown": __version__,
        "python": platform.python_version(),
        "earthengine-api": ee.__version__,
        "server_url": redact(url),
    }
    ok = True
    try:
        _, resolved_project, method = earthengine.resolve_credentials(url, project, None)
        report["credentials"] = method
        report["project"] = resolved_project
    except EdownError as exc:
        report["credentials"] = f"none: {exc}"
        ok = False
    if ok:
        started = time.monotonic()
        try:
            conn = earthengine.connect(url, project)
            earthengine.call(
                conn,
                lambda: ee.data.getAsset("COPERNICUS/S2_SR_HARMONIZED"),
                earthengine.RetryPolicy(max_retries=1, base_delay=0.5),
            )
            report["endpoint"] = (
                f"answers ({(time.monotonic() - started) * 1000:.0f} ms for Initialize + one request)"
            )
        except EdownError as exc:
            report["endpoint"] = f"failed: {exc}"
            ok = False
    if output_root is not None:
        ok = _check_output_root(output_root, report) and ok
    report["ok"] = ok
    report = {key: redact(value) if isinstance(value, str) else value for key, value in report.items()}
    if as_json:
        echo_json(report)
    else:
        from rich.table import Table

        table = Table(title="edown doctor", title_justify="left", show_header=False)
        table.add_column("what")
        table.add_column("value")
        for key, value in report.items():
            table.add_row(key, str(value))
        stdout_console().print(table)
    if not ok:
        sys.exit(1)


def _check_output_root(output_root: str, report: dict[str, Any]) -> bool:
    """Can edown write to ``output_root`` (a folder or a store)? Reports which, never the credentials."""
    from edown.stores import StoreURL, location, probe

    try:
        where = location(output_root, "--output-root")
    except EdownError as exc:
        report["output_root"] = f"failed: {exc}"
        return False
    report["output_root"] = str(where)
    report["store"] = (
        f"{'S3' if where.scheme == 's3' else 'Google Cloud Storage'}"
        + (f" at {_endpoint_shown(where.scheme)}" if _endpoint_shown(where.scheme) else "")
        if isinstance(where, StoreURL)
        else "local folder"
    )
    try:
        report["output_root_check"] = probe(where)
    except (EdownError, OSError) as exc:
        report["output_root_check"] = f"failed: {exc}"
        return False
    return True


def _endpoint_shown(scheme: str) -> str:
    name = "AWS_ENDPOINT_URL" if scheme == "s3" else "STORAGE_EMULATOR_HOST"
    value = os.environ.get(name) or (os.environ.get("AWS_ENDPOINT_URL_S3") if scheme == "s3" else None)
    return f"{value} ({name})" if value else ""


_DOCTOR_OPTIONS = [
    click.option(
        "--server-url",
        envvar="EDOWN_SERVER_URL",
        help="Endpoint to check (default: the high-volume endpoint).",
    ),
    click.option("--project", envvar="EE_PROJECT", help="Google Cloud project."),
    click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
    click.option(
        "-o",
        "--output-root",
        help="Also check that this folder, s3://bucket/prefix or gs://bucket/prefix is reachable and "
        "writable (a probe object .edown/doctor-probe-* is written and deleted).",
    ),
]


def _with_doctor_options(func: F) -> F:
    for option in reversed(_DOCTOR_OPTIONS):
        func = option(func)
    return func


@click.command()
@_with_doctor_options
@handle_errors
def doctor(server_url: str | None, project: str | None, as_json: bool, output_root: str | None) -> None:
    """Check which credentials and project edown would use, and whether the endpoint answers.

    Never prints secrets: only the kind of credentials (and a service account's e-mail). Exit code 1 when
    something does not work.
    """
    _doctor(server_url, project, as_json, output_root)


@click.command()
@_with_doctor_options
@handle_errors
def auth(server_url: str | None, project: str | None, as_json: bool, output_root: str | None) -> None:
    """Same as ``edown doctor``: show the credentials and project in use, and test the endpoint."""
    _doctor(server_url, project, as_json, output_root)
