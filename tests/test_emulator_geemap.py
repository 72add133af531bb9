"""geemap, unmodified, against the emulator: ``ee_to_numpy``, ``image_stats``, ``ee_export_image`` and
``download_ee_image``, every number checked against the emulator's pixel function.

Needs the ``clients`` extra; skipped only where geemap is not installed. ``download_ee_image`` goes through
geedim, which looks up STAC metadata on the internet; offline, geedim's own STAC cache is told there is
none (the documented offline recipe, see docs/emulator.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import ee
import numpy as np
import pytest
import rasterio
from pyproj import Transformer

from edown.emulator.model import ImageAsset
from edown.emulator.pixels import read_window
from edown.emulator.server import Emulator

geemap = pytest.importorskip(
    "geemap", reason="geemap is in the 'clients' extra: pip install 'edown[clients]'"
)

S2 = "COPERNICUS/S2_SR_HARMONIZED"
POINT = (-0.5, 51.5)
REGION = (-0.55, 51.49, -0.545, 51.493)


def _asset(emu: Emulator) -> ImageAsset:
    coll = (
        ee.ImageCollection(S2).filterDate("2024-06-01", "2024-06-10").filterBounds(ee.Geometry.Point(POINT))
    )
    return emu.catalog.image(f"{S2}/{coll.first().get('system:index').getInfo()}")


def _window(asset: ImageAsset) -> tuple[int, int, int, int]:
    """(col0, row0, width, height) of the native 10 m pixels covering REGION's corners."""
    grid = asset.band("B4").grid
    tx, ty = grid.transform[2], grid.transform[5]
    xs, ys = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(
        [REGION[0], REGION[2], REGION[2], REGION[0]], [REGION[1], REGION[1], REGION[3], REGION[3]]
    )
    c0, c1 = math.floor((min(xs) - tx) / 10), math.ceil((max(xs) - tx) / 10)
    r0, r1 = math.floor((ty - max(ys)) / 10), math.ceil((ty - min(ys)) / 10)
    return c0, r0, c1 - c0, r1 - r0


def _expected(asset: ImageAsset, band: str) -> np.ndarray:
    c0, r0, w, h = _window(asset)
    return read_window(asset, band, r0, c0, h, w)[0]


def test_ee_to_numpy_returns_the_native_pixels(ee_emulator_session: Emulator) -> None:
    asset = _asset(ee_emulator_session)
    image = ee.Image(asset.id).select(["B4", "B8"])
    array = geemap.ee_to_numpy(image, region=ee.Geometry.Rectangle(list(REGION)), scale=10)
    assert array.shape[-1] == 2
    np.testing.assert_array_equal(array[..., 0], _expected(asset, "B4"))
    np.testing.assert_array_equal(array[..., 1], _expected(asset, "B8"))


def test_image_stats_are_region_statistics_of_pixel_centres(ee_emulator_session: Emulator) -> None:
    asset = _asset(ee_emulator_session)
    image = ee.Image(asset.id).select(["B4"])
    stats = geemap.image_stats(image, region=ee.Geometry.Rectangle(list(REGION)), scale=10).getInfo()
    # The same pixels reduceRegion covers: centres inside the rectangle (checked pixel by pixel in
    # test_emulator_plain_ee); here the statistics must agree with each other and with those pixels.
    values = _centre_values(asset)
    assert stats["min"]["B4"] == int(values.min()) and stats["max"]["B4"] == int(values.max())
    assert stats["mean"]["B4"] == pytest.approx(values.mean(), rel=1e-12)
    assert stats["std"]["B4"] == pytest.approx(values.std(), rel=1e-9)
    assert stats["sum"]["B4"] == int(values.sum())


def _centre_values(asset: ImageAsset) -> np.ndarray:
    import shapely
    from shapely.geometry import box

    grid = asset.band("B4").grid
    c0, r0, w, h = _window(asset)
    xs = grid.transform[2] + (np.arange(c0, c0 + w) + 0.5) * 10
    ys = grid.transform[5] - (np.arange(r0, r0 + h) + 0.5) * 10
    gx, gy = np.meshgrid(xs, ys)
    lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(gx, gy)
    inside = shapely.contains_xy(box(*REGION), lon, lat)
    values, valid = read_window(asset, "B4", r0, c0, h, w)
    return np.asarray(values[inside & valid], dtype=np.float64)


def test_ee_export_image_writes_a_geotiff_of_the_native_pixels(
    ee_emulator_session: Emulator, tmp_path: Path
) -> None:
    asset = _asset(ee_emulator_session)
    image = ee.Image(asset.id).select(["B4", "B8"])
    target = tmp_path / "export.tif"
    geemap.ee_export_image(image, filename=str(target), scale=10, region=ee.Geometry.Rectangle(list(REGION)))
    with rasterio.open(target) as src:
        assert src.crs.to_epsg() == 32630 and src.count == 2 and src.dtypes[0] == "uint16"
        np.testing.assert_array_equal(src.read(1), _expected(asset, "B4"))
        np.testing.assert_array_equal(src.read(2), _expected(asset, "B8"))


def test_download_ee_image_through_geedim(ee_emulator_session: Emulator, tmp_path: Path) -> None:
    from geedim.stac import STACClient

    asset = _asset(ee_emulator_session)
    STACClient()._cache[asset.id] = None  # offline: no STAC metadata to look up
    image = ee.Image(asset.id).select(["B4", "B8"])
    target = tmp_path / "download.tif"
    geemap.download_ee_image(
        image, filename=str(target), region=ee.Geometry.Rectangle(list(REGION)), scale=10
    )
    with rasterio.open(target) as src:
        assert src.crs.to_epsg() == 32630 and src.count == 2
        np.testing.assert_array_equal(src.read(1), _expected(asset, "B4"))
        np.testing.assert_array_equal(src.read(2), _expected(asset, "B8"))
