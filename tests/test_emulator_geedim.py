"""geedim, unmodified, against the emulator: ``prepareForExport`` then ``toNumPy``/``toGeoTIFF``, Landsat
cloud masking and a masked median composite, every pixel checked against the emulator's pixel function.

Needs the ``clients`` extra; skipped only where geedim is not installed. geedim's ``toGeoTIFF`` looks up
STAC metadata on the internet for images with an id; offline, the test tells geedim's own STAC cache
that there is none (the documented offline recipe, see docs/emulator.md).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import ee
import numpy as np
import pytest
import rasterio
from pyproj import Transformer

from edown.emulator.model import ImageAsset
from edown.emulator.pixels import Positions, read_band, read_window
from edown.emulator.server import Emulator

geedim = pytest.importorskip(
    "geedim", reason="geedim is in the 'clients' extra: pip install 'edown[clients]'"
)

S2 = "COPERNICUS/S2_SR_HARMONIZED"
L9 = "LANDSAT/LC09/C02/T1_L2"
POINT = (-0.5, 51.5)
REGION = (-0.55, 51.49, -0.545, 51.493)
METRES_PER_DEGREE = 111319.49079327357


def _assets(
    emu: Emulator, collection_id: str, start: str, end: str
) -> tuple[ee.ImageCollection, list[ImageAsset]]:
    coll = ee.ImageCollection(collection_id).filterDate(start, end).filterBounds(ee.Geometry.Point(POINT))
    ids: list[str] = coll.aggregate_array("system:index").getInfo()
    assert ids
    return coll, [emu.catalog.image(f"{collection_id}/{i}") for i in ids]


def _no_stac(image_id: str) -> None:
    """Offline: geedim would fetch STAC metadata for ``image_id`` from the internet; there is none."""
    from geedim.stac import STACClient

    STACClient()._cache[image_id] = None


def _window(asset: ImageAsset, band: str, res: float) -> tuple[int, int, int, int]:
    grid = asset.band(band).grid
    tx, ty = grid.transform[2], grid.transform[5]
    xs, ys = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(
        [REGION[0], REGION[2], REGION[2], REGION[0]], [REGION[1], REGION[1], REGION[3], REGION[3]]
    )
    c0, c1 = math.floor((min(xs) - tx) / res), math.ceil((max(xs) - tx) / res)
    r0, r1 = math.floor((ty - max(ys)) / res), math.ceil((ty - min(ys)) / res)
    return c0, r0, c1 - c0, r1 - r0


def test_prepare_for_export_to_numpy_on_the_native_grid_as_float32(ee_emulator_session: Emulator) -> None:
    _, assets = _assets(ee_emulator_session, S2, "2024-06-01", "2024-06-10")
    asset = assets[0]
    image = ee.Image(asset.id).select(["B4", "B8"])
    prepared = image.gd.prepareForExport(region=ee.Geometry.Rectangle(list(REGION)), dtype="float32")
    c0, r0, w, h = _window(asset, "B4", 10)
    tx, ty = asset.band("B4").grid.transform[2], asset.band("B4").grid.transform[5]
    assert prepared.gd.crs == "EPSG:32630"
    assert tuple(prepared.gd.transform)[:6] == (10.0, 0.0, tx + c0 * 10, 0.0, -10.0, ty - r0 * 10)
    array = prepared.gd.toNumPy()
    assert array.shape == (h, w, 2) and array.dtype == np.float32
    for i, band in enumerate(("B4", "B8")):
        np.testing.assert_array_equal(
            array[..., i], read_window(asset, band, r0, c0, h, w)[0].astype(np.float32)
        )


def test_prepare_for_export_to_geotiff_in_epsg4326(ee_emulator_session: Emulator, tmp_path: Path) -> None:
    _, assets = _assets(ee_emulator_session, S2, "2024-06-01", "2024-06-10")
    asset = assets[0]
    _no_stac(asset.id)
    image = ee.Image(asset.id).select(["B4"])
    prepared = image.gd.prepareForExport(
        region=ee.Geometry.Rectangle(list(REGION)), crs="EPSG:4326", scale=30, dtype="float32"
    )
    target = tmp_path / "b4.tif"
    prepared.gd.toGeoTIFF(target)
    with rasterio.open(target) as src:
        assert src.crs.to_epsg() == 4326 and src.dtypes == ("float32",)
        data = src.read(1)
        transform = src.transform
    step = 30 / METRES_PER_DEGREE
    assert transform.a == pytest.approx(step) and transform.e == pytest.approx(-step)
    cols = transform.c + (np.arange(data.shape[1]) + 0.5) * transform.a
    rows = transform.f + (np.arange(data.shape[0]) + 0.5) * transform.e
    gx, gy = np.meshgrid(cols, rows)
    grid = asset.band("B4").grid
    x, y = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(gx, gy)
    native_cols = np.floor((x - grid.transform[2]) / 10).astype(np.int64)
    native_rows = np.floor((y - grid.transform[5]) / -10).astype(np.int64)
    expected = read_band(asset, "B4", Positions(native_rows, native_cols, False))[0]
    np.testing.assert_array_equal(data, expected.astype(np.float32))


def _landsat_cloudless(asset: ImageAsset, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """geedim's Landsat rule: not (mid cloud | dilated | cirrus | shadow) and every SR band valid."""
    qa, qa_valid = read_window(asset, "QA_PIXEL", r0, c0, h, w)
    qa = qa.astype(np.int64)
    cloud = ((qa >> 9) & 1) | ((qa >> 1) & 1) | ((qa >> 15) & 1) | ((qa >> 11) & 1)
    fill = np.logical_and.reduce(
        [read_window(asset, b, r0, c0, h, w)[1] for b in asset.band_ids() if b.startswith("SR_B")]
    )
    return (cloud == 0) & fill & qa_valid


def _native_export(asset: ImageAsset, band: str, c0: int, r0: int, w: int, h: int) -> dict[str, Any]:
    grid = asset.band(band).grid
    sx, _, tx, _, sy, ty = grid.transform
    return {"crs": grid.crs, "crs_transform": [sx, 0, tx + c0 * sx, 0, sy, ty + r0 * sy], "shape": (h, w)}


def test_landsat_mask_clouds_masks_exactly_the_qa_pixel_clouds(ee_emulator_session: Emulator) -> None:
    _, assets = _assets(ee_emulator_session, L9, "2024-06-01", "2024-06-30")
    asset = assets[0]
    c0, r0, w, h = 6000, 1000, 40, 30
    masked = ee.Image(asset.id).gd.addMaskBands().gd.maskClouds()
    prepared = masked.gd.prepareForExport(bands=["SR_B4"], **_native_export(asset, "SR_B4", c0, r0, w, h))
    array = prepared.gd.toNumPy(masked=True)
    assert array.shape == (h, w, 1)
    cloudless = _landsat_cloudless(asset, r0, c0, h, w)
    assert 0 < cloudless.sum() < cloudless.size, "the window should hold both clouds and clear pixels"
    np.testing.assert_array_equal(~np.ma.getmaskarray(array[..., 0]), cloudless)
    values = read_window(asset, "SR_B4", r0, c0, h, w)[0]
    np.testing.assert_array_equal(array[..., 0].compressed(), values[cloudless])


def test_landsat_median_composite_of_masked_images(ee_emulator_session: Emulator) -> None:
    coll, assets = _assets(ee_emulator_session, L9, "2024-06-01", "2024-06-30")
    grids = {a.band("SR_B4").grid for a in assets}
    if len(grids) > 1:  # keep one native grid so that every image lines up pixel for pixel
        first = assets[0].band("SR_B4").grid
        assets = [a for a in assets if a.band("SR_B4").grid == first]
        coll = coll.filter(ee.Filter.inList("system:index", [a.system_index for a in assets]))
    c0, r0, w, h = 6000, 1000, 24, 20
    composite = coll.gd.composite(method="median")
    prepared = composite.gd.prepareForExport(
        bands=["SR_B4"], **_native_export(assets[0], "SR_B4", c0, r0, w, h)
    )
    array = prepared.gd.toNumPy(masked=True)[..., 0]
    stack = []
    for asset in assets:
        values = read_window(asset, "SR_B4", r0, c0, h, w)[0].astype(np.float64)
        stack.append(np.where(_landsat_cloudless(asset, r0, c0, h, w), values, np.nan))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: cloudy in every image
        expected = np.nanmedian(np.stack(stack), axis=0)
    valid = ~np.isnan(expected)
    np.testing.assert_array_equal(~np.ma.getmaskarray(array), valid)
    np.testing.assert_array_equal(array.compressed(), np.trunc(expected[valid]).astype(array.dtype))


def test_sentinel2_mask_clouds_uses_cloud_score_plus(ee_emulator_session: Emulator) -> None:
    _, assets = _assets(ee_emulator_session, S2, "2024-06-01", "2024-06-30")
    w = h = 32
    asset, r0, c0 = next(
        (a, r, c)
        for a in sorted(assets, key=lambda a: -a.properties["CLOUDY_PIXEL_PERCENTAGE"])
        for r in range(500, 10000, 1500)
        for c in range(500, 10000, 1500)
        if 0.2 < (read_window(a, "MSK_CLDPRB", r // 2, c // 2, h // 2, w // 2)[0] > 0).mean() < 0.8
    )
    scores = ee_emulator_session.catalog.image(
        f"GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED/{asset.system_index}"
    )
    masked = ee.Image(asset.id).gd.addMaskBands().gd.maskClouds()
    prepared = masked.gd.prepareForExport(bands=["B4"], **_native_export(asset, "B4", c0, r0, w, h))
    array = prepared.gd.toNumPy(masked=True)[..., 0]
    # geedim's rule: cloudy where cs <= 0.6; and every B* band must have data.
    cs = read_window(scores, "cs", r0, c0, h, w)[0]
    fill = np.logical_and.reduce(
        [
            read_band(asset, b, _positions(asset, b, r0, c0, h, w))[1]
            for b in asset.band_ids()
            if b.startswith("B")
        ]
    )
    cloudless = (cs > np.float32(0.6)) & fill
    assert 0 < cloudless.sum() < cloudless.size
    np.testing.assert_array_equal(~np.ma.getmaskarray(array), cloudless)
    np.testing.assert_array_equal(array.compressed(), read_window(asset, "B4", r0, c0, h, w)[0][cloudless])


def _positions(asset: ImageAsset, band: str, r0: int, c0: int, h: int, w: int) -> Positions:
    """Native positions of ``band`` under the 10 m pixels (r0, c0, h, w): 20/60 m bands by nearest neighbour."""
    factor = int(asset.band(band).grid.transform[0] // 10)
    rows = (r0 + np.arange(h)) // factor
    cols = (c0 + np.arange(w)) // factor
    return Positions(rows, cols, True)
