"""The ``edown`` command line: ``search``, ``download``, ``stack``, ``emulator`` and friends.

Conventions (as rasterio's ``rio``): options are named after the config fields (``--collection-id``,
``--start-date``...), ``--json`` prints machine-readable output on stdout, progress goes to stderr and only
on a terminal, ``NO_COLOR`` is honoured. Exit codes: 0 success, 1 some images failed (or Earth Engine
failed), 2 bad input. Errors are one line plus a hint; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import click

from edown._version import __version__
from edown.errors import ConfigError, EdownError
from edown.redaction import guard_handlers, redact

F = TypeVar("F", bound=Callable[..., Any])


def _stderr_console() -> Any:
    return _console(sys.stderr)


def _stdout_console() -> Any:
    return _console(sys.stdout)


def _console(stream: Any) -> Any:
    """Rich output on ``stream``: on a terminal as wide as the terminal; elsewhere (pipes, CI and SLURM
    logs) lines are never wrapped at 80 columns nor padded with spaces, and tables get 200 columns to lay
    out in (rich would assume 80 and squeeze the ids away)."""
    from rich.console import Console

    terminal = stream.isatty()
    return Console(
        file=stream if terminal else cast(IO[str], _Unpadded(stream)),
        no_color=bool(os.environ.get("NO_COLOR")),
        highlight=False,
        width=None if terminal else 200,
        soft_wrap=not terminal,
    )


class _Unpadded(io.TextIOBase):
    """A text stream that drops the spaces rich pads lines with (table titles, justified cells)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(_TRAILING_SPACES.sub("\n", text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


_TRAILING_SPACES = re.compile(r"[ \t]+\n")


def handle_errors(func: F) -> F:
    """Turn edown errors into one red line, a hint and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = bool(click.get_current_context().meta.get(VERBOSE))
        try:
            return func(*args, **kwargs)
        except EdownError as exc:
            if verbose:
                _print_traceback()
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
                _print_traceback()
            _print_error(
                f"{type(exc).__name__}: {exc}",
                "please report it with the traceback above"
                if verbose
                else "run with --verbose for the traceback and report it",
            )
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _print_error(message: str, hint: str | None) -> None:
    from rich.markup import escape

    console = _stderr_console()
    console.print(f"[bold red]error:[/] {escape(redact(message))}", markup=True, soft_wrap=True)
    if hint:
        console.print(f"[dim]hint:[/] {escape(redact(hint))}", markup=True, soft_wrap=True)


def _print_traceback() -> None:
    """The current exception's traceback (``--verbose``), with any secret it quotes removed."""
    sys.stderr.write(redact(traceback.format_exc()))


def _echo_json(obj: Any) -> None:
    click.echo(redact(json.dumps(obj, indent=1, default=str)))


#: Key in the click context's ``meta`` (shared by the group and its command) set by ``-v``.
VERBOSE = "edown.verbose"


def _set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[VERBOSE] = True
        logging.getLogger().setLevel(logging.DEBUG)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="edown")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    expose_value=False,
    callback=_set_verbose,
    help="Show tracebacks and debug logs (also accepted after the command).",
)
def cli() -> None:
    """Native-grid Earth Engine downloads, Zarr datacubes, and a local Earth Engine emulator.

    \b
    Typical run:
      edown search   -c COPERNICUS/S2_SR_HARMONIZED --start-date 2024-06-01 --end-date 2024-06-30 \\
                     --bbox -0.15,51.48,0.02,51.56 --band B4 --band B8
      edown download ...same options... --output-root data
      edown stack    -m data/manifests/run-*.json
    """
    logging.basicConfig(
        level=logging.DEBUG if click.get_current_context().meta.get(VERBOSE) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    guard_handlers(logging.getLogger().handlers)


def _finish_commands(group: click.Group) -> None:
    """Accept ``edown download ... -v`` as well as ``edown -v download ...``, and show docstrings as help
    without the reStructuredText literals (double backticks) that the API docs need."""
    for command in (group, *group.commands.values()):
        if command.help:
            command.help = command.help.replace("``", "")
    for command in group.commands.values():
        command.params.append(
            click.Option(
                ["-v", "--verbose"],
                is_flag=True,
                expose_value=False,
                callback=_set_verbose,
                help="Show tracebacks and debug logs.",
            )
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
            help="Metadata filter NAME OP VALUE, OP one of < <= > >= = != (repeatable), "
            "e.g. 'CLOUDY_PIXEL_PERCENTAGE < 20'.",
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
    from edown.config import SearchConfig, check_parent_folder
    from edown.errors import user_folder
    from edown.manifest import new_manifest, set_search
    from edown.search import search_images

    config = SearchConfig(**_search_kwargs(params))
    if manifest_path:
        check_parent_folder(Path(manifest_path), "manifest_path")
    result = search_images(config)
    if manifest_path:
        manifest = new_manifest(Path(manifest_path), None)
        set_search(manifest, config, result)
        with user_folder(Path(manifest_path).parent, "manifest folder", "--manifest-path"):
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


# ---- download -------------------------------------------------------------------------------------------


def download_options(func: F) -> F:
    options = [
        click.option(
            "-o",
            "--output-root",
            type=click.Path(file_okay=False),
            default="data",
            show_default=True,
            help="Root folder for images/, stacks/ and manifests/.",
        ),
        click.option(
            "--manifest-path",
            type=click.Path(dir_okay=False),
            help="Where to write the run manifest (default: OUTPUT_ROOT/manifests/run-<UTC>.json).",
        ),
        click.option(
            "--from-manifest",
            "search_manifest",
            type=click.Path(),
            help="Download the images of a saved search manifest instead of searching again.",
        ),
        click.option(
            "--chunk-size", type=int, help="Chunk side in pixels (default: chosen to fill requests)."
        ),
        click.option(
            "--chunk-size-mode", type=click.Choice(["auto", "fixed"]), default="auto", show_default=True
        ),
        click.option(
            "--prepare-workers", type=int, default=10, show_default=True, help="Threads for planning."
        ),
        click.option(
            "--download-workers",
            type=int,
            default=10,
            show_default=True,
            help="Threads writing chunks and GeoTIFFs.",
        ),
        click.option(
            "--max-inflight-chunks",
            type=int,
            default=32,
            show_default=True,
            help="Bound on response bytes in flight or queued for the writer, in largest-size requests "
            "(requests in flight follow --max-concurrent-requests).",
        ),
        click.option(
            "--max-retries",
            type=int,
            default=4,
            show_default=True,
            help="Retries of a transient failure per chunk.",
        ),
        click.option(
            "--retry-delay-seconds", type=float, default=2.0, show_default=True, help="Initial backoff."
        ),
        click.option(
            "--request-byte-limit",
            type=int,
            default=48 * 1024 * 1024,
            show_default=True,
            help="Max uncompressed bytes per request (Earth Engine's limit, mask byte included).",
        ),
        click.option("--overwrite", is_flag=True, help="Replace existing outputs."),
        click.option(
            "--resume/--no-resume",
            default=True,
            show_default=True,
            help="Keep finished outputs and stored chunks.",
        ),
        click.option(
            "--nodata",
            type=float,
            help="Nodata value (default: NaN for floats, the dtype maximum for integers).",
        ),
        click.option(
            "--compression",
            type=click.Choice(["zstd", "deflate", "lzw", "none"]),
            default="zstd",
            show_default=True,
        ),
        click.option("--cog", is_flag=True, help="Write Cloud Optimized GeoTIFFs (with overviews)."),
        click.option(
            "--max-concurrent-requests",
            type=int,
            default=40,
            show_default=True,
            help="Your project's Earth Engine concurrency quota.",
        ),
        click.option(
            "--max-requests-per-second",
            type=float,
            default=100.0,
            show_default=True,
            help="Your project's request-rate quota.",
        ),
        click.option(
            "--request-timeout-seconds",
            type=float,
            default=300.0,
            show_default=True,
            help="Deadline of one request.",
        ),
        click.option("--dry-run", is_flag=True, help="Plan and print what would be fetched; fetch nothing."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


DOWNLOAD_FIELDS = (
    "output_root",
    "manifest_path",
    "search_manifest",
    "chunk_size",
    "chunk_size_mode",
    "prepare_workers",
    "download_workers",
    "max_inflight_chunks",
    "max_retries",
    "retry_delay_seconds",
    "request_byte_limit",
    "overwrite",
    "resume",
    "nodata",
    "compression",
    "cog",
    "max_concurrent_requests",
    "max_requests_per_second",
    "request_timeout_seconds",
    "dry_run",
)


def _download_config(params: dict[str, Any]) -> Any:
    from edown.config import DownloadConfig
    from edown.manifest import load_manifest, search_config_from_dict

    extra = {name: params[name] for name in DOWNLOAD_FIELDS if params.get(name) is not None}
    extra["progress"] = True  # a live display on a terminal, a plain line every 10 s otherwise
    if params.get("search_manifest"):
        source = params["search_manifest"]
        saved = load_manifest(Path(source), "--from-manifest").search_config
        if saved is None:
            raise ConfigError("--from-manifest", f"{source} has no search section")
        mine = {
            k: params[k] for k in ("server_url", "project", "transform_plugin") if params.get(k) is not None
        }
        base = search_config_from_dict(saved, **mine)
        _check_saved_user_fields(source, saved, base)
        values = {**{k: getattr(base, k) for k in saved if hasattr(base, k)}, **mine, **extra}
        return DownloadConfig(**values)
    return DownloadConfig(**_search_kwargs(params), **extra)


def _check_saved_user_fields(source: str, saved: dict[str, Any], config: Any) -> None:
    """A manifest never picks the endpoint, the project or code to run: say so where it tried."""
    from urllib.parse import urlsplit

    plugin = saved.get("transform_plugin")
    if plugin and plugin != config.transform_plugin:
        raise ConfigError(
            "--from-manifest",
            f"{source} was made with the transform plugin {plugin!r}, and edown runs code only when you name it",
            hint=f"pass --transform-plugin {plugin} if you trust it",
        )
    url = saved.get("server_url")
    # Manifests store the endpoint redacted (no credentials): compare it so.
    if isinstance(url, str) and redact(url).rstrip("/") != redact(config.server_url).rstrip("/"):
        made = urlsplit(url).hostname or "another endpoint"
        using = urlsplit(config.server_url).hostname or config.server_url
        _stderr_console().print(
            f"note: {source} was made against {made}; using {using} (your --server-url or "
            "$EDOWN_SERVER_URL; a manifest never chooses where your credentials go)",
            markup=False,
        )


@cli.command()
@search_options
@download_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@handle_errors
def download(as_json: bool, **params: Any) -> None:
    """Search and download native-grid GeoTIFFs (resumable; exit code 1 if any image failed).

    \b
    Examples:
      edown download -c COPERNICUS/S2_SR_HARMONIZED --start-date 2024-06-01 --end-date 2024-06-30 \\
        --bbox -0.15,51.48,0.02,51.56 -b B2 -b B3 -b B4 -b B8 --output-root data
      edown download --from-manifest search.json --output-root data --dry-run
    """
    from edown.download import download_images

    config = _download_config(params)
    summary = download_images(config)
    if as_json:
        _echo_json(_summary_json(summary))
    elif summary.dry_run:
        _print_plan(summary)
    else:
        _print_summary(summary)
    if summary.failed:
        sys.exit(1)


def _summary_json(summary: Any) -> dict[str, Any]:
    return {
        "manifest_path": str(summary.manifest_path),
        "dry_run": summary.dry_run,
        "downloaded": summary.downloaded,
        "skipped": summary.skipped,
        "failed": summary.failed,
        "plan": summary.plan,
        "stats": summary.stats,
        "results": [r.to_dict() for r in summary.results],
    }


def _print_plan(summary: Any) -> None:
    from rich.table import Table

    plan = summary.plan
    table = Table(title="dry run: nothing was fetched", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("images to download", plan["images"]),
        ("images skipped", plan["skipped"]),
        ("chunks", plan["chunks"]),
        ("requests to send", plan["requests"]),
        ("request bytes (as EE counts)", f"{plan['request_bytes'] / 1e6:.1f} MB"),
        ("output pixels", f"{plan['output_pixels'] / 1e6:.2f} Mpx"),
        ("estimated time at quota", f"{plan['estimated_seconds']:.0f} s"),
    ]
    for what, value in rows:
        table.add_row(what, str(value))
    console = _stdout_console()
    console.print(table)
    console.print(f"[dim]estimate assumes {plan['assumptions']}[/]", markup=True)


def _print_summary(summary: Any) -> None:
    from rich.table import Table

    console = _stdout_console()
    problems = [r for r in summary.results if r.status == "failed" or r.status == "skipped_missing_bands"]
    if problems:
        table = Table(title="images not downloaded", title_justify="left")
        for column in ("image", "status", "error"):
            table.add_column(column)
        for r in problems:
            table.add_row(r.record_key, r.status, r.error or "")
        console.print(table)
    stats = summary.stats
    table = Table(title="download summary", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for what, value in (
        ("downloaded", summary.downloaded),
        ("skipped", summary.skipped),
        ("failed", summary.failed),
        (
            "requests (retries, 429s)",
            f"{stats.get('requests', 0)} ({stats.get('retries', 0)}, {stats.get('throttled', 0)})",
        ),
        ("data received", f"{stats.get('bytes_downloaded', 0) / 1e6:.1f} MB"),
        (
            "output",
            f"{stats.get('output_megapixels', 0):.2f} Mpx at {stats.get('megapixels_per_second') or 0:.2f} Mpx/s",
        ),
        ("elapsed", f"{summary.elapsed_seconds:.1f} s"),
        ("manifest", str(summary.manifest_path)),
    ):
        table.add_row(what, str(value))
    console.print(table)


# ---- stack ----------------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "-m",
    "--manifest-path",
    "manifest_paths",
    multiple=True,
    metavar="PATH",
    help="Download manifest(s): files (a shell glob such as OUTPUT_ROOT/manifests/run-*.json), "
    "a manifests folder, or 'latest' (the newest run under --output-root, default data). Repeatable.",
)
@click.argument("more_manifests", nargs=-1, type=click.Path())
@click.option(
    "-o",
    "--output-root",
    type=click.Path(file_okay=False),
    help="Where the datacubes go (default: the manifests' output root).",
)
@click.option(
    "--backend",
    type=click.Choice(["threads", "dask-local", "dask-slurm"]),
    default="threads",
    show_default=True,
)
@click.option("--overwrite", is_flag=True, help="Rebuild stores instead of appending new dates.")
@click.option(
    "--n-workers", type=int, default=4, show_default=True, help="Dask workers (SLURM jobs for dask-slurm)."
)
@click.option("--cores-per-worker", type=int, default=1, show_default=True)
@click.option("--memory-per-worker", default="1GB", show_default=True)
@click.option("--slurm-queue", help="SLURM partition.")
@click.option("--slurm-account", help="SLURM account.")
@click.option("--walltime", default="01:00:00", show_default=True, help="SLURM job walltime.")
@click.option("--scheduler-host", help="Address SLURM workers use to reach the Dask scheduler.")
@click.option("--threads", type=int, help="Threads for the threads backend (default: CPU count).")
@click.option(
    "--chunk-size", type=int, default=512, show_default=True, help="Spatial chunk side of the Zarr arrays."
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@handle_errors
def stack(
    manifest_paths: tuple[str, ...], more_manifests: tuple[str, ...], as_json: bool, **params: Any
) -> None:
    """Build one Zarr datacube per alignment group of download manifests (appends new dates).

    Several manifests (e.g. one per month downloaded into the same root) are stacked together; an image
    found in several is taken once, from the newest run.

    \b
    Examples:
      edown stack -m data/manifests/run-*.json
      edown stack -m data/manifests
      edown stack -m latest -o data
      edown stack -m run.json --backend dask-slurm --slurm-queue normal --n-workers 8
    Open a result with: edown.open_stack("data/stacks/<collection>/<group>.zarr")
    """
    from edown.config import StackConfig
    from edown.stack import manifest_files, stack_images

    paths = manifest_files(_stack_manifests((*manifest_paths, *more_manifests), params.get("output_root")))
    config = StackConfig(
        manifest_path=paths[0],
        manifest_paths=tuple(paths[1:]),
        **{k: v for k, v in params.items() if v is not None},
        progress=True,
    )
    if not click.get_current_context().meta.get(VERBOSE):
        # Dask's scheduler and workers (other processes too) log every start at INFO; -v shows them.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    results = stack_images(config)
    _stderr_console().print(
        f"manifests: {', '.join(str(_relative(p)) for p in paths)}"
        + (" (an image in several is taken from the newest)" if len(paths) > 1 else ""),
        markup=False,
        soft_wrap=True,
    )
    if as_json:
        _echo_json([r.to_dict() for r in results])
    else:
        from rich.table import Table

        table = Table(title="stacks", title_justify="left")
        for column in ("group", "images", "appended", "shape (t, band, y, x)", "store / reason"):
            table.add_column(column)
        for r in results:
            where = (
                str(r.output_path)
                if r.output_path
                else (r.error and f"error: {r.error}") or r.skipped_reason or ""
            )
            table.add_row(r.group_id, str(r.image_count), str(r.appended), "x".join(map(str, r.shape)), where)
        _stdout_console().print(table)
    if any(r.error for r in results):
        sys.exit(1)


def _stack_manifests(given: tuple[str, ...], output_root: str | None) -> list[Path]:
    """``-m`` values as paths: ``latest`` is the newest run under the output root (unless a file of that
    name exists)."""
    from edown.stack import latest_manifest

    if not given:
        raise ConfigError(
            "manifest_path",
            "give at least one download manifest",
            "e.g. -m data/manifests/run-*.json, -m data/manifests or -m latest",
        )
    return [
        latest_manifest(Path(output_root or "data"))
        if value == "latest" and not Path(value).exists()
        else Path(value)
        for value in given
    ]


def _relative(path: Path) -> Path:
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


# ---- demo and quicklook ------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "-o", "--output-root", type=click.Path(file_okay=False), default="edown-demo", show_default=True
)
@click.option(
    "--latency", default="fast", show_default=True, help="Emulator latency preset: none, fast or ee."
)
@click.option("--json", "as_json", is_flag=True, help="Print where everything is as JSON.")
@handle_errors
def demo(output_root: str, latency: str, as_json: bool) -> None:
    """Run search -> download -> stack offline against the embedded Earth Engine emulator.

    \b
    Writes GeoTIFFs, a Zarr datacube, a manifest and quicklook PNGs under OUTPUT_ROOT, then prints how to
    open them. Nothing leaves the machine.
    """
    from edown.demo import open_snippet, run_demo

    root = Path(output_root)
    console = _stderr_console()
    outcome = run_demo(
        root,
        say=lambda line: console.print(line, markup=False),
        progress=sys.stderr.isatty(),
        latency=latency,
    )
    stores = [str(s.output_path) for s in outcome.stacks if s.output_path]
    if as_json:
        _echo_json(
            {
                "manifest": str(outcome.summary.manifest_path),
                "geotiffs": [str(r.tiff_path) for r in outcome.summary.results if r.tiff_path],
                "stacks": stores,
                "quicklooks": [str(p) for p in outcome.pictures],
                "seconds": outcome.seconds,
            }
        )
        return
    out = _stdout_console()
    out.print(f"\n[bold]done in {outcome.seconds:.1f} s[/]  everything is under {root}/", markup=True)
    out.print(f"  GeoTIFFs:   {root}/images/")
    out.print(f"  manifest:   {outcome.summary.manifest_path}")
    for store in stores:
        out.print(f"  datacube:   {store}")
    for picture in outcome.pictures:
        out.print(f"  quicklook:  {picture}")
    if stores:
        out.print("\nopen the datacube in Python:", markup=False)
        out.print(open_snippet(Path(stores[0])), markup=False, emoji=False, soft_wrap=True, end="")


@cli.command()
@click.argument("path", type=click.Path(exists=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="PNG to write, in an existing folder (default: next to PATH).",
)
@click.option(
    "-b",
    "--band",
    "bands",
    multiple=True,
    help="One band to draw in grey, or three as R, G, B (default: true colour, or the first three; of two "
    "bands the first in grey).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the PNG's path as JSON.")
@handle_errors
def quicklook(path: str, output: str | None, bands: tuple[str, ...], as_json: bool) -> None:
    """Render a PNG of a GeoTIFF, or a dated time strip of a Zarr datacube (nodata transparent).

    One band is drawn in grey, three as red, green, blue; when bands are left out a note says which are
    drawn and how to choose.

    \b
    Examples:
      edown quicklook data/images/COPERNICUS.S2_SR_HARMONIZED/20240603T104058_20240603T104237_T30UXC.tif
      edown quicklook data/stacks/COPERNICUS.S2_SR_HARMONIZED/<group>.zarr -b B8 -b B4 -b B3
    """
    from edown.quicklook import render

    def notify(notice: str) -> None:
        _stderr_console().print(f"note: {notice}", markup=False, soft_wrap=True)

    out = render(Path(path), Path(output) if output else None, bands or None, notify=notify)
    if as_json:
        _echo_json({"png": str(out)})
    else:
        click.echo(str(out))


# ---- doctor -----------------------------------------------------------------------------------------------


def _doctor(server_url: str | None, project: str | None, as_json: bool) -> None:
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
    report["ok"] = ok
    report = {key: redact(value) if isinstance(value, str) else value for key, value in report.items()}
    if as_json:
        _echo_json(report)
    else:
        from rich.table import Table

        table = Table(title="edown doctor", title_justify="left", show_header=False)
        table.add_column("what")
        table.add_column("value")
        for key, value in report.items():
            table.add_row(key, str(value))
        _stdout_console().print(table)
    if not ok:
        sys.exit(1)


_DOCTOR_OPTIONS = [
    click.option(
        "--server-url",
        envvar="EDOWN_SERVER_URL",
        help="Endpoint to check (default: the high-volume endpoint).",
    ),
    click.option("--project", envvar="EE_PROJECT", help="Google Cloud project."),
    click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
]


def _with_doctor_options(func: F) -> F:
    for option in reversed(_DOCTOR_OPTIONS):
        func = option(func)
    return func


@cli.command()
@_with_doctor_options
@handle_errors
def doctor(server_url: str | None, project: str | None, as_json: bool) -> None:
    """Check which credentials and project edown would use, and whether the endpoint answers.

    Never prints secrets: only the kind of credentials (and a service account's e-mail). Exit code 1 when
    something does not work.
    """
    _doctor(server_url, project, as_json)


@cli.command()
@_with_doctor_options
@handle_errors
def auth(server_url: str | None, project: str | None, as_json: bool) -> None:
    """Same as ``edown doctor``: show the credentials and project in use, and test the endpoint."""
    _doctor(server_url, project, as_json)


# ---- emulator -------------------------------------------------------------------------------------------


@cli.command()
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
    help="Latency preset: none, fast or ee (0.3 s + 2 MB/s per pixel request, like Earth Engine).",
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
    import logging

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
        latency = replace(latency, bandwidth_bytes_per_second=bandwidth_mb * 1024 * 1024)
    return latency


_finish_commands(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
