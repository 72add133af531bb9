"""Expected pixels: what every output must contain, computed from the emulator's documented function."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from pyproj import CRS

from edown import AOI, DownloadConfig
from edown.crs import resolve_crs
from edown.emulator.pixels import read_window
from edown.emulator.server import Emulator
from edown.records import ImageRecord


def expected_pixels(
    emu: Emulator, record: ImageRecord, nodata: float, scale: dict[str, float] | None = None
) -> np.ndarray:
    """(bands, h, w) of the record's window in the output dtype, ``nodata`` where the image has no data."""
    asset = emu.catalog.image(record.image_id)
    col, row, width, height = record.window
    bands = []
    for band in record.selected_band_ids:
        values, valid = read_window(asset, band, row, col, height, width)
        if scale and band in scale:
            out = (values.astype(np.float64) * scale[band]).astype(record.output_dtype)
        else:
            out = values.astype(record.output_dtype)
        bands.append(np.where(valid, out, np.array(nodata, dtype=record.output_dtype)))
    return np.stack(bands)


def assert_tiff_exact(
    emu: Emulator, record: ImageRecord, path: Path, nodata: float, scale: dict[str, float] | None = None
) -> np.ndarray:
    """Check a written GeoTIFF pixel by pixel, plus its CRS, transform, dtype, nodata and band names."""
    with rasterio.open(path) as src:
        data = src.read()
        assert src.dtypes[0] == record.output_dtype
        assert tuple(src.transform)[:6] == record.window_transform
        assert src.descriptions == record.output_band_names
        assert (src.width, src.height) == tuple(record.window[2:])
        if np.isnan(nodata):
            assert src.nodata is not None and np.isnan(src.nodata)
        else:
            assert src.nodata == nodata
        written_crs = CRS.from_wkt(src.crs.to_wkt())
    assert written_crs.equals(resolve_crs(record.native_crs), ignore_axis_order=True), written_crs.to_proj4()
    np.testing.assert_array_equal(data, expected_pixels(emu, record, nodata, scale))
    return data


S2 = "COPERNICUS/S2_SR_HARMONIZED"
WEST_LONDON = (-0.60, 51.48, -0.43, 51.56)  # inside the single tile T30UXC


def config(emu: Emulator, tmp_path: Path, **kw: Any) -> DownloadConfig:
    base: dict[str, Any] = {
        "collection_id": S2,
        "start_date": "2024-06-01",
        "end_date": "2024-06-10",
        "aoi": AOI.from_bbox(WEST_LONDON),
        "bands": ("B2", "B3", "B4", "B8"),
        "server_url": emu.url,
        "output_root": tmp_path / "data",
        "retry_delay_seconds": 0.05,
    }
    base.update(kw)
    return DownloadConfig(**base)


def check_all_exact(emu: Emulator, summary: Any, scale: dict[str, float] | None = None) -> None:
    assert summary.failed == 0, [r.error for r in summary.results if r.status == "failed"]
    records = {r.record_key: r for r in summary.search.images}
    for result in summary.results:
        assert result.status == "downloaded", result
        assert_tiff_exact(emu, records[result.record_key], result.tiff_path, result.nodata, scale)


EDOWN = Path(sys.executable).with_name("edown")


def run_edown(
    *args: str, cwd: Path, umask: int | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``edown`` entry point in a subprocess, as a user at a shell would.

    ``umask`` is set in the child only (``os.umask`` in this process would race with other threads).
    """
    command = [str(EDOWN), *args]
    if umask is not None:
        command = ["bash", "-c", f'umask {umask:03o} && exec "$@"', "edown", *command]
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        | {"NO_COLOR": "1"}
        | (env or {}),
    )


@contextlib.contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Make ``paths`` unwritable for real; put them back afterwards.

    The tests run as root in CI and root ignores permission bits, so as root a path is made immutable
    (``chattr +i``, refused even to root); as another user its write bits are removed.
    """
    as_root = os.geteuid() == 0
    done: list[tuple[Path, int]] = []
    try:
        for path in paths:
            original = stat.S_IMODE(path.stat().st_mode)
            if as_root:
                flagged = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
                if flagged.returncode != 0:
                    pytest.skip(f"running as root and chattr +i fails here ({flagged.stderr.strip()})")
            else:
                path.chmod(original & ~0o222)
            done.append((path, original))
        yield
    finally:
        for path, original in reversed(done):
            if as_root:
                subprocess.run(["chattr", "-i", str(path)], check=True)
            else:
                path.chmod(original)
