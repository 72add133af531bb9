"""The demo: search -> download -> stack -> pictures, offline, against the embedded Earth Engine emulator.

A month of Sentinel-2 (four 10 m bands) over the London bbox of the Quickstart, which straddles the
neighbouring tiles T30UXC and T30UYC: twelve images on one 10 m lattice, so one datacube whose edge
tile is placed on the common grid. Clouds and their shadows are masked by default (``cloud_mask="auto"``:
Cloud Score+ for Sentinel-2), so they arrive as nodata and show as transparent in the quicklooks. Nothing
leaves the machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edown.clouds import MASKS, masks_for
from edown.config import AOI, DownloadConfig, StackConfig
from edown.download import download_images
from edown.emulator import EmulatorConfig, Latency, serve
from edown.errors import ConfigError
from edown.quicklook import render_geotiff, render_stack
from edown.records import DownloadSummary, StackResult
from edown.stack import stack_images

DEMO_COLLECTION = "COPERNICUS/S2_SR_HARMONIZED"
DEMO_BBOX = (-0.15, 51.48, 0.02, 51.56)
DEMO_BANDS = ("B2", "B3", "B4", "B8")


@dataclass(frozen=True)
class DemoOutcome:
    summary: DownloadSummary
    stacks: tuple[StackResult, ...]
    pictures: tuple[Path, ...]
    seconds: float


def run_demo(
    output_root: Path,
    say: Callable[[str], None] = print,
    progress: bool = False,
    latency: str = "fast",
    cloud_mask: str | None = "auto",
    overwrite: bool = False,
) -> DemoOutcome:
    """Run the whole pipeline against an in-process emulator; ``say`` narrates each step.

    ``cloud_mask`` is what the download masks (None: keep the clouds). A second run into the same folder
    reuses the first's GeoTIFFs, or refuses them when they were made with another cloud mask unless
    ``overwrite``; what the clouds became is said only once the download has settled it."""
    check_demo_mask(cloud_mask)
    started = time.monotonic()
    with serve(EmulatorConfig(latency=Latency.preset(latency))) as emulator:
        say(f"1/4 started a local Earth Engine emulator at {emulator.url} (latency preset '{latency}')")
        config = DownloadConfig(
            collection_id=DEMO_COLLECTION,
            start_date="2024-06-01",
            end_date="2024-06-30",
            aoi=AOI.from_bbox(DEMO_BBOX),
            bands=DEMO_BANDS,
            server_url=emulator.url,
            output_root=output_root,
            progress=progress,
            cloud_mask=cloud_mask,
            overwrite=overwrite,
        )
        say("2/4 searching and downloading a month of Sentinel-2 (B2, B3, B4, B8) over London...")
        summary = download_images(config)
        say(_cloud_line(config))
        search = summary.search
        assert search is not None
        say(
            f"    {len(search.images)} images in {len(search.alignment_groups)} alignment group(s); "
            f"downloaded {summary.downloaded}, skipped {summary.skipped}, failed {summary.failed} "
            f"({summary.stats.get('requests', 0)} requests, {summary.elapsed_seconds:.1f} s)"
        )
        say("3/4 stacking into a Zarr datacube...")
        assert isinstance(summary.manifest_path, Path)  # the demo writes to a local folder
        stacks = tuple(stack_images(StackConfig(manifest_path=summary.manifest_path, progress=progress)))
    say("4/4 drawing quicklooks...")
    pictures: list[Path] = []
    first = next((r for r in summary.results if r.tiff_path is not None), None)
    if first is not None and isinstance(first.tiff_path, Path):
        pictures.append(render_geotiff(first.tiff_path, output_root / "quicklooks" / "first-image.png"))
    for stack in stacks:
        if isinstance(stack.output_path, Path):
            pictures.append(
                render_stack(
                    stack.output_path, output_root / "quicklooks" / f"{stack.group_id}-time-strip.png"
                )
            )
    return DemoOutcome(summary, stacks, tuple(pictures), time.monotonic() - started)


def check_demo_mask(cloud_mask: str | None) -> None:
    """Refuse a mask the demo's Sentinel-2 cannot take before any emulator starts, naming what it can."""
    choices = (*masks_for(DEMO_COLLECTION), "auto", "none")
    if cloud_mask is not None and cloud_mask not in choices:
        raise ConfigError(
            "cloud_mask", f"{cloud_mask!r} is not one of {', '.join(choices)} (the demo is Sentinel-2)"
        )


def _cloud_line(config: DownloadConfig) -> str:
    if config.cloud_mask is None:
        return "    clouds and shadows are kept (--cloud-mask auto masks them)"
    kind = MASKS[config.cloud_mask]
    threshold = f", threshold {config.cloud_score_threshold:g}" if kind.thresholded else ""
    return (
        f"    masking clouds and shadows ({kind.name}: {kind.summary}{threshold}): they become nodata,"
        " transparent in the quicklooks (--cloud-mask none keeps them)"
    )


def open_snippet(store: Path) -> str:
    """The Python that ``edown demo`` prints last: open the datacube and draw one band of it.

    Runnable as printed after the README's demo command (matplotlib comes with the ``plot`` extra, which
    the demo installs). ``masked=True`` makes nodata NaN, so the colour scale is the imagery's; the figure
    is saved because outside Jupyter ``.plot()`` has no screen to draw on. The path is shown relative to
    the working directory when it is under it, as the user typed the output root.
    """
    shown = store.relative_to(Path.cwd()) if store.is_relative_to(Path.cwd()) else store
    return (
        "import edown\n"
        "import matplotlib.pyplot as plt\n"
        "\n"
        f'ds = edown.open_stack("{shown}", masked=True)\n'
        'ds.data.sel(band="B4").isel(time=0).plot()\n'
        'plt.savefig("B4.png")  # or plt.show(); Jupyter shows it by itself\n'
    )
