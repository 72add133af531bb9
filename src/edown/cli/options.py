"""Options shared by ``search`` and ``download``, named after the config fields they fill."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edown.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


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
        # Values are parsed by the config (not click), so a bad one is one line naming the option.
        click.option(
            "--cloud-mask",
            metavar="[scl|cloud-score-plus|qa-pixel|auto|none]",
            help="Mask clouds and shadows on Earth Engine (masked pixels become nodata); auto: the"
            " collection's default (Cloud Score+ for Sentinel-2, QA_PIXEL for Landsat); none: keep them.",
        ),
        click.option(
            "--cloud-score-threshold",
            metavar="FLOAT",
            help="cloud-score-plus: mask pixels whose cs_cdf is below this (0..1, default 0.6; an error"
            " with another mask).",
        ),
        click.option(
            "--max-cloud-fraction",
            metavar="FLOAT",
            help="Keep only images whose masked share of the AOI is at most this (0..1; costs one"
            " request per 100 images; needs --cloud-mask).",
        ),
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


def cloud_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """The cloud options given on the command line (also what overrides a saved search's)."""
    out: dict[str, Any] = {}
    if params.get("cloud_mask") is not None:
        out["cloud_mask"] = params["cloud_mask"]
    for name in ("cloud_score_threshold", "max_cloud_fraction"):
        text = params.get(name)
        if text is not None:
            try:
                out[name] = float(text)
            except ValueError:
                raise ConfigError(
                    name, f"{text!r} is not a number", "give a number from 0 to 1, e.g. 0.3"
                ) from None
    return out


def search_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    from edown.clouds import DEFAULT_THRESHOLD
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
        "cloud_score_threshold": DEFAULT_THRESHOLD,
        **cloud_kwargs(params),
        "server_url": params.get("server_url") or HIGH_VOLUME_URL,
        "project": params.get("project"),
    }


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
