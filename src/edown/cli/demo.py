"""``edown demo``: search, download and stack offline against the embedded emulator."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edown.cli.console import echo_json, stderr_console, stdout_console
from edown.cli.errors import handle_errors


@click.command()
@click.option(
    "-o", "--output-root", type=click.Path(file_okay=False), default="edown-demo", show_default=True
)
@click.option(
    "--latency", default="fast", show_default=True, help="Emulator latency preset: none, fast or ee."
)
@click.option(
    "--cloud-mask",
    default="auto",
    show_default=True,
    help="Cloud mask for the download (cloud-score-plus, scl, auto) or none to keep the clouds.",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace GeoTIFFs an earlier demo made (e.g. with another cloud mask)."
)
@click.option("--json", "as_json", is_flag=True, help="Print where everything is as JSON.")
@handle_errors
def demo(output_root: str, latency: str, cloud_mask: str, overwrite: bool, as_json: bool) -> None:
    """Run search -> download -> stack offline against the embedded Earth Engine emulator.

    \b
    Writes GeoTIFFs, a Zarr datacube, a manifest and quicklook PNGs under OUTPUT_ROOT, then prints how to
    open them. Clouds are masked (Cloud Score+) unless --cloud-mask none. Nothing leaves the machine.
    """
    from edown.demo import open_snippet, run_demo

    root = Path(output_root)
    console = stderr_console()
    outcome = run_demo(
        root,
        say=lambda line: console.print(line, markup=False),
        progress=sys.stderr.isatty(),
        latency=latency,
        cloud_mask=None if cloud_mask == "none" else cloud_mask,
        overwrite=overwrite,
    )
    stores = [str(s.output_path) for s in outcome.stacks if s.output_path]
    if as_json:
        echo_json(
            {
                "manifest": str(outcome.summary.manifest_path),
                "geotiffs": [str(r.tiff_path) for r in outcome.summary.results if r.tiff_path],
                "stacks": stores,
                "quicklooks": [str(p) for p in outcome.pictures],
                "seconds": outcome.seconds,
            }
        )
        return
    out = stdout_console()
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
