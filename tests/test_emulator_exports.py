"""Export paths of the unmodified ``ee`` client: ``getDownloadURL`` (GeoTIFF, NPY, zips), ``getThumbURL``,
and the grid operations they are built from (``clipToBoundsAndScale``, ``reproject``, ``resample``,
``setDefaultProjection``). Every pixel is checked against the emulator's documented pixel function.
"""

from __future__ import annotations

import io
import math
import urllib.request
import zipfile
from typing import Any

import ee
import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer

from edown.emulator.model import ImageAsset
from edown.emulator.pixels import Positions, read_band, read_window
from edown.emulator.server import Emulator

S2 = "COPERNICUS/S2_SR_HARMONIZED"
REGION = (-0.55, 51.49, -0.545, 51.493)
METRES_PER_DEGREE = 111319.49079327357


def _asset(emu: Emulator) -> ImageAsset:
    coll = (
        ee.ImageCollection(S2)
        .filterDate("2024-06-01", "2024-06-10")
        .filterBounds(ee.Geometry.Point(REGION[:2]))
    )
    index = coll.first().get("system:index").getInfo()
    return emu.catalog.image(f"{S2}/{index}")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return bytes(resp.read())


def _utm_window(asset: ImageAsset, res: float) -> tuple[int, int, int, int]:
    """(col0, row0, width, height) of the ``res`` grid (native origin) covering REGION's corners in UTM."""
    grid = asset.band("B4").grid
    tx, ty = grid.transform[2], grid.transform[5]
    to_utm = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    x0, y0, x1, y1 = REGION
    xs, ys = to_utm.transform([x0, x1, x1, x0], [y0, y0, y1, y1])
    c0, c1 = math.floor((min(xs) - tx) / res), math.ceil((max(xs) - tx) / res)
    r0, r1 = math.floor((ty - max(ys)) / res), math.ceil((ty - min(ys)) / res)
    return c0, r0, c1 - c0, r1 - r0


def _sample(asset: ImageAsset, band: str, crs: str, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Nearest-neighbour native values at points given in ``crs``."""
    grid = asset.band(band).grid
    if crs != grid.crs:
        xs, ys = Transformer.from_crs(crs, grid.crs, always_xy=True).transform(xs, ys)
    cols = np.floor((np.asarray(xs) - grid.transform[2]) / grid.transform[0]).astype(np.int64)
    rows = np.floor((np.asarray(ys) - grid.transform[5]) / grid.transform[4]).astype(np.int64)
    values, _ = read_band(asset, band, Positions(rows, cols, False))
    return np.asarray(values)


def test_download_url_geotiff_is_the_native_grid_clipped_to_the_region_bounds(
    ee_emulator_session: Emulator,
) -> None:
    asset = _asset(ee_emulator_session)
    image = ee.Image(asset.id).select(["B4", "B8"])
    url = image.getDownloadURL(
        {"format": "GEO_TIFF", "region": ee.Geometry.Rectangle(list(REGION)), "scale": 10}
    )
    c0, r0, w, h = _utm_window(asset, 10)
    with rasterio.open(io.BytesIO(_get(url))) as src:
        assert src.crs.to_epsg() == 32630
        assert (src.width, src.height) == (w, h)
        tx, ty = asset.band("B4").grid.transform[2], asset.band("B4").grid.transform[5]
        assert tuple(src.transform)[:6] == (10.0, 0.0, tx + c0 * 10, 0.0, -10.0, ty - r0 * 10)
        assert src.dtypes == ("uint16", "uint16") and src.descriptions == ("B4", "B8")
        data = src.read()
    for i, band in enumerate(("B4", "B8")):
        np.testing.assert_array_equal(data[i], read_window(asset, band, r0, c0, h, w)[0])


def test_download_url_npy_in_epsg4326_at_30_m_is_nearest_neighbour(ee_emulator_session: Emulator) -> None:
    asset = _asset(ee_emulator_session)
    image = ee.Image(asset.id).select(["B4"])
    params = {"format": "NPY", "region": ee.Geometry.Rectangle(list(REGION)), "scale": 30, "crs": "EPSG:4326"}
    array = np.load(io.BytesIO(_get(image.getDownloadURL(params))))
    step = 30 / METRES_PER_DEGREE
    c0, c1 = math.floor(REGION[0] / step), math.ceil(REGION[2] / step)
    r0, r1 = math.floor(-REGION[3] / step), math.ceil(-REGION[1] / step)
    assert (
        array.shape == (r1 - r0, c1 - c0) and array.dtype.names == ("B4",) and array["B4"].dtype == np.uint16
    )
    lon = (np.arange(c0, c1) + 0.5) * step
    lat = -(np.arange(r0, r1) + 0.5) * step
    gx, gy = np.meshgrid(lon, lat)
    np.testing.assert_array_equal(array["B4"], _sample(asset, "B4", "EPSG:4326", gx, gy))


def test_download_url_zips_one_geotiff_per_band_or_one_for_all(ee_emulator_session: Emulator) -> None:
    asset = _asset(ee_emulator_session)
    image = ee.Image(asset.id).select(["B4", "B8"])
    region = ee.Geometry.Rectangle(list(REGION))
    c0, r0, w, h = _utm_window(asset, 20)
    per_band = zipfile.ZipFile(io.BytesIO(_get(image.getDownloadURL({"region": region, "scale": 20}))))
    prefix = asset.id.replace("/", "_")
    assert sorted(per_band.namelist()) == [f"{prefix}.B4.tif", f"{prefix}.B8.tif"]
    with rasterio.open(io.BytesIO(per_band.read(f"{prefix}.B8.tif"))) as src:
        assert (src.width, src.height, src.count) == (w, h, 1)
        rows = r0 * 2 + 1 + 2 * np.arange(h)  # a 20 m pixel centre falls in the 10 m pixel 2k+1
        cols = c0 * 2 + 1 + 2 * np.arange(w)
        expected = read_band(asset, "B8", Positions(rows, cols, True))[0]
        np.testing.assert_array_equal(src.read(1), expected)
    single = {"region": region, "scale": 20, "filePerBand": False, "name": "london"}
    together = zipfile.ZipFile(io.BytesIO(_get(image.getDownloadURL(single))))
    assert together.namelist() == ["london.tif"]
    with rasterio.open(io.BytesIO(together.read("london.tif"))) as src:
        assert src.count == 2 and src.descriptions == ("B4", "B8")


def _stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.floor(np.clip((values.astype(np.float64) - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


def _sized_centres(asset: ImageAsset, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    grid = asset.band("B4").grid
    x0, y0, x1, y1 = REGION
    xs, ys = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(
        [x0, x1, x1, x0], [y0, y0, y1, y1]
    )
    sx, sy = (max(xs) - min(xs)) / width, (max(ys) - min(ys)) / height
    gx, gy = np.meshgrid(min(xs) + (np.arange(width) + 0.5) * sx, max(ys) - (np.arange(height) + 0.5) * sy)
    return gx, gy


def test_thumb_url_png_rgb_stretches_min_max(ee_emulator_session: Emulator) -> None:
    asset = _asset(ee_emulator_session)
    image = ee.Image(asset.id)
    url = image.getThumbURL(
        {
            "region": ee.Geometry.Rectangle(list(REGION)),
            "dimensions": 64,
            "min": 0,
            "max": 3000,
            "bands": ["B4", "B8", "B3"],
        }
    )
    picture = Image.open(io.BytesIO(_get(url)))
    assert picture.format == "PNG" and picture.mode == "RGBA"
    pixels = np.asarray(picture)
    height, width = pixels.shape[:2]
    assert width == 64 and 30 < height < 64  # the longer side is maxDimension
    gx, gy = _sized_centres(asset, width, height)
    crs = asset.band("B4").grid.crs
    for channel, band in enumerate(("B4", "B8", "B3")):
        np.testing.assert_array_equal(
            pixels[..., channel], _stretch(_sample(asset, band, crs, gx, gy), 0, 3000)
        )
    assert np.all(pixels[..., 3] == 255)


def test_thumb_url_palette_on_one_band(ee_emulator_session: Emulator) -> None:
    asset = _asset(ee_emulator_session)
    params: dict[str, Any] = {
        "region": ee.Geometry.Rectangle(list(REGION)),
        "dimensions": "40x20",
        "min": 0,
        "max": 4000,
        "palette": ["000000", "00ff00"],
    }
    pixels = np.asarray(Image.open(io.BytesIO(_get(ee.Image(asset.id).select("B8").getThumbURL(params)))))
    assert pixels.shape == (20, 40, 4)
    gx, gy = _sized_centres(asset, 40, 20)
    unit = np.clip(_sample(asset, "B8", asset.band("B8").grid.crs, gx, gy) / 4000, 0, 1)
    np.testing.assert_array_equal(pixels[..., 1], np.floor(unit * 255 + 0.5).astype(np.uint8))
    assert np.all(pixels[..., 0] == 0) and np.all(pixels[..., 2] == 0)


def _native_request(asset: ImageAsset, row0: int, col0: int, size: int, shift: float = 0.0) -> dict[str, Any]:
    sx, _, tx, _, sy, ty = asset.band("B4").grid.transform
    return {
        "dimensions": {"width": size, "height": size},
        "affineTransform": {
            "scaleX": sx,
            "translateX": tx + col0 * sx + shift,
            "scaleY": sy,
            "translateY": ty + row0 * sy - shift,
        },
        "crsCode": asset.band("B4").grid.crs,
    }


def _pixels(expression: ee.Image, grid: dict[str, Any]) -> np.ndarray:
    out = ee.data.computePixels({"expression": expression, "fileFormat": "NUMPY_NDARRAY", "grid": grid})
    return np.asarray(out[out.dtype.names[0]])


def test_reproject_to_60_m_really_coarsens(ee_emulator_session: Emulator) -> None:
    asset = _asset(ee_emulator_session)
    b4 = ee.Image(asset.id).select("B4")
    coarse = _pixels(b4.reproject(crs="EPSG:32630", scale=60), _native_request(asset, 600, 600, 24))
    # 10 m pixel (600 + i) lies in 60 m cell (600 + i) // 6, whose centre is native pixel 6 * cell + 3.
    index = (600 + np.arange(24)) // 6 * 6 + 3
    expected = read_band(asset, "B4", Positions(index, index, True))[0]
    np.testing.assert_array_equal(coarse, expected)
    info = b4.reproject(crs="EPSG:4326", scale=100).getInfo()["bands"][0]
    assert info["crs"] == "EPSG:4326"
    assert info["crs_transform"] == pytest.approx(
        [100 / METRES_PER_DEGREE, 0, 0, 0, -100 / METRES_PER_DEGREE, 0]
    )


def test_resample_bilinear_interpolates_and_nearest_is_the_default(ee_emulator_session: Emulator) -> None:
    asset = _asset(ee_emulator_session)
    b4 = ee.Image(asset.id).select("B4")
    grid = _native_request(asset, 700, 700, 16, shift=5.0)  # half a pixel right and down
    values = read_window(asset, "B4", 700, 700, 17, 17)[0].astype(np.float64)
    average = (values[:-1, :-1] + values[:-1, 1:] + values[1:, :-1] + values[1:, 1:]) / 4
    bilinear = _pixels(b4.resample("bilinear"), grid)
    assert bilinear.dtype == np.uint16
    np.testing.assert_array_equal(bilinear, np.floor(average + 0.5).astype(np.uint16))
    nearest = _pixels(b4, grid)
    np.testing.assert_array_equal(nearest, values[1:, 1:].astype(np.uint16))
    with pytest.raises(ee.EEException, match="mode 'bicubic' is not supported"):
        _pixels(b4.resample("bicubic"), grid)


def test_set_default_projection_declares_a_grid_without_changing_pixels(
    ee_emulator_session: Emulator,
) -> None:
    asset = _asset(ee_emulator_session)
    b4 = ee.Image(asset.id).select("B4")
    moved = b4.setDefaultProjection(crs="EPSG:3857", scale=50)
    info = moved.getInfo()["bands"][0]
    # A projection's default transform is [1, 0, 0, 0, 1, 0]; a scale keeps its axis directions.
    assert info["crs"] == "EPSG:3857" and info["crs_transform"] == [50, 0, 0, 0, 50, 0]
    grid = _native_request(asset, 800, 800, 8)
    np.testing.assert_array_equal(_pixels(moved, grid), _pixels(b4, grid))


def test_get_map_id_serves_web_mercator_png_tiles(ee_emulator_session: Emulator) -> None:
    asset = _asset(ee_emulator_session)
    map_id = ee.Image(asset.id).getMapId({"min": 0, "max": 3000, "bands": ["B4", "B3", "B2"]})
    zoom, x, y = 15, 16338, 10893  # a tile west of London, inside T30UXC
    pixels = np.asarray(Image.open(io.BytesIO(_get(map_id["tile_fetcher"].format_tile_url(x, y, zoom)))))
    assert pixels.shape == (256, 256, 4)
    half = 20037508.342789244
    side = 2 * half / 2**zoom
    centres = -half + x * side + (np.arange(256) + 0.5) * side / 256
    rows = half - y * side - (np.arange(256) + 0.5) * side / 256
    gx, gy = np.meshgrid(centres, rows)
    for channel, band in enumerate(("B4", "B3", "B2")):
        np.testing.assert_array_equal(
            pixels[..., channel], _stretch(_sample(asset, band, "EPSG:3857", gx, gy), 0, 3000)
        )
    assert np.all(pixels[..., 3] == 255)
