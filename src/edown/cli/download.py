"""``edown download``: native-grid GeoTIFFs and a run manifest."""

from __future__ import annotations

import sys
from typing import Any

import click

from edown.cli.console import echo_json, stderr_console, stdout_console
from edown.cli.errors import handle_errors
from edown.cli.options import DOWNLOAD_FIELDS, cloud_kwargs, download_options, search_kwargs, search_options
from edown.errors import ConfigError
from edown.redaction import redact


def _download_config(params: dict[str, Any]) -> Any:
    from edown.config import DownloadConfig
    from edown.manifest import load_manifest, search_config_from_dict
    from edown.stores import location

    extra = {name: params[name] for name in DOWNLOAD_FIELDS if params.get(name) is not None}
    extra["progress"] = True  # a live display on a terminal, a plain line every 10 s otherwise
    if params.get("search_manifest"):
        source = params["search_manifest"]
        saved = load_manifest(location(source, "--from-manifest"), "--from-manifest").search_config
        if saved is None:
            raise ConfigError("--from-manifest", f"{source} has no search section")
        mine = {
            k: params[k] for k in ("server_url", "project", "transform_plugin") if params.get(k) is not None
        } | cloud_kwargs(params)
        if "cloud_mask" in mine and mine["cloud_mask"] != saved.get("cloud_mask"):
            # Another mask starts its cloud settings afresh: the saved threshold and maximum were chosen for
            # the saved mask (given again on the command line, they count).
            saved = {
                k: v for k, v in saved.items() if k not in ("cloud_score_threshold", "max_cloud_fraction")
            }
        base = search_config_from_dict(saved, **mine)
        _check_saved_user_fields(source, saved, base)
        values = {**{k: getattr(base, k) for k in saved if hasattr(base, k)}, **mine, **extra}
        return DownloadConfig(**values)
    return DownloadConfig(**search_kwargs(params), **extra)


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
        stderr_console().print(
            f"note: {source} was made against {made}; using {using} (your --server-url or "
            "$EDOWN_SERVER_URL; a manifest never chooses where your credentials go)",
            markup=False,
        )


@click.command()
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
        echo_json(_summary_json(summary))
    elif summary.dry_run:
        _print_plan(summary)
    else:
        _print_summary(summary)
    if summary.failed:
        sys.exit(1)


def _summary_json(summary: Any) -> dict[str, Any]:
    return {
        "manifest_path": str(summary.manifest_path),
        "stac_catalog": str(summary.stac_catalog) if summary.stac_catalog else None,
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
    if "store_upload_bytes_max" in plan:
        rows.append(("bytes to the store (at most)", f"{plan['store_upload_bytes_max'] / 1e6:.1f} MB"))
    for what, value in rows:
        table.add_row(what, str(value))
    console = stdout_console()
    console.print(table)
    console.print(f"[dim]estimate assumes {plan['assumptions']}[/]", markup=True)
    _print_cloud_fractions(summary)


def _print_cloud_fractions(summary: Any) -> None:
    """The cloud fraction inside the AOI of every image, when they were computed (--max-cloud-fraction)."""
    from rich.table import Table

    from edown.cli.search import cloud_text

    measured = [r for r in summary.results if r.cloud_fraction is not None]
    if not measured:
        return
    table = Table(title="cloud fraction inside the AOI", title_justify="left")
    for column in ("image", "cloud", "status"):
        table.add_column(column, no_wrap=True)
    for r in measured:
        table.add_row(r.record_key, cloud_text(r.cloud_fraction), r.status)
    stdout_console().print(table)


def _print_summary(summary: Any) -> None:
    from rich.table import Table

    console = stdout_console()
    problems = [r for r in summary.results if r.status in ("failed", "skipped_missing_bands", "cloudy")]
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
        *(
            [("data stored", f"{stats['bytes_to_store'] / 1e6:.1f} MB")]
            if stats.get("bytes_to_store")
            else []
        ),
        (
            "output",
            f"{stats.get('output_megapixels', 0):.2f} Mpx at {stats.get('megapixels_per_second') or 0:.2f} Mpx/s",
        ),
        ("elapsed", f"{summary.elapsed_seconds:.1f} s"),
        ("manifest", str(summary.manifest_path)),
        ("STAC catalog", str(summary.stac_catalog)),
    ):
        table.add_row(what, str(value))
    console.print(table)
