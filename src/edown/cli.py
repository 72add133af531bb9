"""The ``edown`` command line: ``search``, ``download``, ``stack``, ``emulator`` and friends.

Conventions (as rasterio's ``rio``): options are named after the config fields (``--collection-id``,
``--start-date``...), ``--json`` prints machine-readable output on stdout, progress goes to stderr and only
on a terminal, ``NO_COLOR`` is honoured. Exit codes: 0 success, 1 some images failed (or Earth Engine
failed), 2 bad input. Errors are one line plus a hint; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edown import __version__
from edown.errors import ConfigError, EdownError

F = TypeVar("F", bound=Callable[..., Any])


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)


def _stdout_console() -> Any:
    from rich.console import Console

    # Off a terminal (pipes, CI logs) rich would assume 80 columns and squeeze the ids away.
    width = None if sys.stdout.isatty() else 200
    return Console(no_color=bool(os.environ.get("NO_COLOR")), highlight=False, width=width)


def handle_errors(func: F) -> F:
    """Turn edown errors into one red line, a hint and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = bool(click.get_current_context().find_root().params.get("verbose"))
        try:
            return func(*args, **kwargs)
        except EdownError as exc:
            if verbose:
                traceback.print_exc()
            _print_error(exc.message, exc.hint)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            _print_error("interrupted", "run the same command again to resume where it stopped")
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except Exception as exc:  # unexpected: still one line, the traceback only with --verbose
            if verbose:
                traceback.print_exc()
            _print_error(f"{type(exc).__name__}: {exc}", "run with --verbose for the traceback and report it")
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _print_error(message: str, hint: str | None) -> None:
    console = _stderr_console()
    console.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    if hint:
        console.print(f"[dim]hint:[/] {hint}", markup=True, soft_wrap=True)


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=1, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="edown")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and debug logs.")
def cli(verbose: bool) -> None:
    """Native-grid Earth Engine downloads, Zarr datacubes, and a local Earth Engine emulator.

    \b
    Typical run:
      edown search   -c COPERNICUS/S2_SR_HARMONIZED --start-date 2024-06-01 --end-date 2024-06-30 \\
                     --bbox -0.15,51.48,0.02,51.56 --band B4 --band B8
      edown download ...same options... --output-root data
      edown stack    --manifest-path data/manifests/run-*.json
    """
    import logging

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


# ---- shared options -----------------------------------------------------------------------------------


def search_options(func: F) -> F:
    options = [
        click.option(
            "-c", "--collection-id", help="Earth Engine ImageCollection id, e.g. COPERNICUS/S2_SR_HARMONIZED."
        ),
        click.option("--start-date", help="First day, YYYY-MM-DD (inclusive)."),
        click.option("--end-date", help="Last day, YYYY-MM-DD (inclusive)."),
        click.option("--bbox", help="AOI as xmin,ymin,xmax,ymax in degrees (EPSG:4326)."),
        click.option(
            "--geojson",
            type=click.Path(dir_okay=False),
            help="AOI as a GeoJSON file (Polygon/MultiPolygon/Feature[Collection]).",
        ),
        click.option(
            "-b", "--band", "bands", multiple=True, help="Band id to keep (repeatable; B04 finds B4)."
        ),
        click.option(
            "--band-include", multiple=True, help="Regex of band ids to keep (repeatable, whole-name match)."
        ),
        click.option("--band-exclude", multiple=True, help="Regex of band ids to drop (repeatable)."),
        click.option("--rename-map", help='JSON object of new band names, e.g. \'{"B4": "red"}\'.'),
        click.option(
            "--scale-map",
            help="JSON object of scale factors, e.g. '{\"B4\": 0.0001}' (output becomes float32).",
        ),
        click.option("--transform-plugin", help="Server-side transform as module:function."),
        click.option(
            "--filter",
            "property_filters",
            multiple=True,
            help="Metadata filter, e.g. 'CLOUDY_PIXEL_PERCENTAGE < 20' (repeatable).",
        ),
        click.option(
            "--resample",
            type=click.Choice(["none", "finest"]),
            default="none",
            show_default=True,
            help="none: one output per native resolution; finest: resample onto the finest grid.",
        ),
        click.option(
            "--output-dtype",
            help="Override the output dtype (default: from Earth Engine; float32 when scaled).",
        ),
        click.option("--max-images", type=int, help="Keep at most this many images (oldest first)."),
        click.option(
            "--server-url",
            envvar="EDOWN_SERVER_URL",
            help="Earth Engine endpoint (default: the high-volume endpoint).",
        ),
        click.option(
            "--project", envvar="EE_PROJECT", help="Google Cloud project for Earth Engine quota and billing."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _aoi(bbox: str | None, geojson: str | None) -> Any:
    from edown.config import AOI

    if bool(bbox) == bool(geojson):
        raise ConfigError(
            "bbox", "give exactly one of --bbox or --geojson", "e.g. --bbox -0.15,51.48,0.02,51.56"
        )
    if bbox:
        parts = [p for p in bbox.replace(",", " ").split() if p]
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            raise ConfigError("bbox", f"{bbox!r} is not four numbers", "write xmin,ymin,xmax,ymax") from None
        return AOI.from_bbox(numbers, "bbox")
    return AOI.from_geojson(Path(str(geojson)), "geojson")


def _search_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    from edown.config import HIGH_VOLUME_URL

    for name in ("collection_id", "start_date", "end_date"):
        if not params.get(name):
            raise ConfigError(name, "is required", f"pass --{name.replace('_', '-')}")
    return {
        "collection_id": params["collection_id"],
        "start_date": params["start_date"],
        "end_date": params["end_date"],
        "aoi": _aoi(params.get("bbox"), params.get("geojson")),
        "bands": params.get("bands") or (),
        "band_include": params.get("band_include") or (),
        "band_exclude": params.get("band_exclude") or (),
        "rename_map": params.get("rename_map") or {},
        "scale_map": params.get("scale_map") or {},
        "transform_plugin": params.get("transform_plugin"),
        "property_filters": params.get("property_filters") or (),
        "resample": params.get("resample") or "none",
        "output_dtype": params.get("output_dtype"),
        "max_images": params.get("max_images"),
        "server_url": params.get("server_url") or HIGH_VOLUME_URL,
        "project": params.get("project"),
    }


def _shorten(image_id: str, collection_id: str) -> str:
    prefix = collection_id + "/"
    return image_id[len(prefix) :] if image_id.startswith(prefix) else image_id


# ---- search ---------------------------------------------------------------------------------------------


@cli.command()
@search_options
@click.option(
    "--manifest-path",
    type=click.Path(dir_okay=False),
    help="Also write the search as a manifest (reusable by download).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def search(manifest_path: str | None, as_json: bool, **params: Any) -> None:
    """Find images and describe their native grids, without downloading.

    \b
    Example:
      edown search -c COPERNICUS/S2_SR_HARMONIZED --start-date 2024-06-01 --end-date 2024-06-30 \\
        --bbox -0.15,51.48,0.02,51.56 --band B4 --band B8 --filter 'CLOUDY_PIXEL_PERCENTAGE < 20'
    """
    from edown.config import SearchConfig
    from edown.manifest import new_manifest, set_search
    from edown.search import search_images

    config = SearchConfig(**_search_kwargs(params))
    result = search_images(config)
    if manifest_path:
        manifest = new_manifest(Path(manifest_path), None)
        set_search(manifest, config, result)
        manifest.write()
    if as_json:
        _echo_json(result.to_dict())
        return
    _print_search_table(result)
    if manifest_path:
        _stderr_console().print(f"manifest: {manifest_path}")


def _print_search_table(result: Any) -> None:
    from rich.table import Table

    table = Table(
        title=f"{result.collection_id}: {len(result.images)} image record(s), "
        f"{len(result.alignment_groups)} alignment group(s)",
        title_justify="left",
    )
    for column in ("time (UTC)", "image", "CRS", "pixel", "window (px)", "group", "note"):
        table.add_column(column, no_wrap=True, min_width=12 if column == "image" else None)
    for r in result.images:
        note = (
            "missing " + ",".join(r.missing_bands)
            if r.missing_bands
            else ("outside AOI" if r.outside_aoi else "")
        )
        label = f" [{r.grid_label}]" if r.grid_label else ""
        table.add_row(
            r.acquisition_time_utc.strftime("%Y-%m-%d %H:%M"),
            _shorten(r.image_id, result.collection_id) + label,
            r.native_crs,
            f"{abs(r.native_transform[0]):g}",
            f"{r.window[2]}x{r.window[3]}",
            r.alignment_signature,
            note,
        )
    console = _stdout_console()
    console.print(table)
    console.print(
        f"bands: {', '.join(result.selected_band_ids)} -> {', '.join(result.output_band_names)}; "
        f"{result.requests} Earth Engine request(s) in {result.elapsed_seconds:.2f} s"
    )
    for warning in result.warnings:
        _stderr_console().print(f"[yellow]warning:[/] {warning}", markup=True)


# ---- emulator -------------------------------------------------------------------------------------------


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
) -> None:
    """Run a local Earth Engine that the real ``ee`` client talks to.

    \b
    Examples:
      edown emulator --port 8765
      edown emulator --latency ee --faults '{"rules": [{"kind": "error", "rate": 0.05}]}'
    Point clients at it with: ee.Initialize(project="any", opt_url=URL), or edown's --server-url URL.
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
    except (ValueError, TypeError) as exc:
        raise ConfigError("faults" if faults else "latency", str(exc)) from None
    if log_requests:
        logging.getLogger("edown.emulator").setLevel(logging.INFO)
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
