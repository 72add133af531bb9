"""``edown search``: find images and describe their native grids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edown.cli.console import echo_json, stderr_console, stdout_console
from edown.cli.errors import handle_errors
from edown.cli.options import search_kwargs, search_options
from edown.stores import StoreURL, location


@click.command()
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

    config = SearchConfig(**search_kwargs(params))
    target = location(manifest_path, "manifest_path") if manifest_path else None
    if isinstance(target, Path):
        check_parent_folder(target, "manifest_path")
    result = search_images(config)
    if isinstance(target, StoreURL):
        from edown.storeroot import mirrored, staging
        from edown.stores import ObjectStore

        # Written in a staging folder and uploaded whole, as every manifest on a store is.
        with staging() as stage, mirrored(stage / target.name, ObjectStore(target.parent), target.name):
            manifest = new_manifest(stage / target.name, None)
            set_search(manifest, config, result)
            manifest.write()
    elif target is not None:
        manifest = new_manifest(target, None)
        set_search(manifest, config, result)
        with user_folder(target.parent, "manifest folder", "--manifest-path"):
            manifest.write()
    if as_json:
        echo_json(result.to_dict())
        return
    _print_search_table(result)
    if manifest_path:
        stderr_console().print(f"manifest: {manifest_path}")


def _print_search_table(result: Any) -> None:
    from rich.table import Table

    table = Table(
        title=f"{result.collection_id}: {len(result.images)} image record(s), "
        f"{len(result.alignment_groups)} alignment group(s)",
        title_justify="left",
    )
    clouds = any(r.cloud_fraction is not None for r in result.images)
    columns = ("time (UTC)", "image", "CRS", "pixel", "window (px)", "group", *(("cloud",) if clouds else ()))
    for column in (*columns, "note"):
        table.add_column(column, no_wrap=True, min_width=12 if column == "image" else None)
    for r in result.images:
        note = (
            "missing " + ",".join(r.missing_bands)
            if r.missing_bands
            else "outside AOI"
            if r.outside_aoi
            else "cloudy (above --max-cloud-fraction)"
            if r.cloud_fraction is not None and result.group_of(r) is None
            else ""
        )
        label = f" [{r.grid_label}]" if r.grid_label else ""
        table.add_row(
            r.acquisition_time_utc.strftime("%Y-%m-%d %H:%M"),
            _shorten(r.image_id, result.collection_id) + label,
            r.native_crs,
            f"{abs(r.native_transform[0]):g}",
            f"{r.window[2]}x{r.window[3]}",
            r.alignment_signature,
            *((cloud_text(r.cloud_fraction),) if clouds else ()),
            note,
        )
    console = stdout_console()
    console.print(table)
    console.print(
        f"bands: {', '.join(result.selected_band_ids)} -> {', '.join(result.output_band_names)}; "
        f"{result.requests} Earth Engine request(s) in {result.elapsed_seconds:.2f} s"
    )
    for warning in result.warnings:
        stderr_console().print(f"[yellow]warning:[/] {warning}", markup=True)


def cloud_text(fraction: float | None) -> str:
    """A cloud fraction as the tables show it (``-``: the mask band has no data in the AOI)."""
    return "-" if fraction is None else f"{100 * fraction:.1f}%"


def _shorten(image_id: str, collection_id: str) -> str:
    prefix = collection_id + "/"
    return image_id[len(prefix) :] if image_id.startswith(prefix) else image_id
