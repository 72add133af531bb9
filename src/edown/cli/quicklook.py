"""``edown quicklook``: a PNG of a GeoTIFF or a dated strip of a datacube."""

from __future__ import annotations

from pathlib import Path

import click

from edown.cli.console import echo_json, stderr_console
from edown.cli.errors import handle_errors


@click.command()
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
    """Render a PNG of a GeoTIFF, or a dated time strip of a Zarr or icechunk datacube (nodata transparent).

    One band is drawn in grey, three as red, green, blue; when bands are left out a note says which are
    drawn and how to choose.

    \b
    Examples:
      edown quicklook data/images/COPERNICUS.S2_SR_HARMONIZED/20240603T104058_20240603T104237_T30UXC.tif
      edown quicklook data/stacks/COPERNICUS.S2_SR_HARMONIZED/<group>.zarr -b B8 -b B4 -b B3
    """
    from edown.quicklook import render

    def notify(notice: str) -> None:
        stderr_console().print(f"note: {notice}", markup=False, soft_wrap=True)

    out = render(Path(path), Path(output) if output else None, bands or None, notify=notify)
    if as_json:
        echo_json({"png": str(out)})
    else:
        click.echo(str(out))
