"""Xee, unmodified, against the emulator: ``xr.open_dataset(collection, engine="ee")`` then ``.load()``.

Needs the ``clients`` extra (``pip install edown[clients]``); skipped only where Xee is not installed.
Every value is checked against the emulator's pixel function, masked pixels included (Xee makes them NaN).
"""

from __future__ import annotations

from typing import Any

import ee
import numpy as np
import pytest

from edown.emulator.model import ImageAsset
from edown.emulator.pixels import read_window
from edown.emulator.server import Emulator

pytest.importorskip("xee", reason="Xee is in the 'clients' extra: pip install 'edown[clients]'")
xr = pytest.importorskip("xarray")

POINT = (-0.5, 51.5)


def _collection(
    emu: Emulator, collection_id: str, start: str, end: str
) -> tuple[ee.ImageCollection, list[ImageAsset]]:
    coll = ee.ImageCollection(collection_id).filterDate(start, end).filterBounds(ee.Geometry.Point(POINT))
    ids: list[str] = coll.aggregate_array("system:index").getInfo()
    assert ids
    return coll, [emu.catalog.image(f"{collection_id}/{i}") for i in ids]


def _native_window(asset: ImageAsset, band: str, col0: int, row0: int) -> tuple[str, tuple[float, ...]]:
    grid = asset.band(band).grid
    sx, shx, tx, shy, sy, ty = grid.transform
    return grid.crs, (sx, shx, tx + col0 * sx, shy, sy, ty + row0 * sy)


def _open(coll: ee.ImageCollection, crs: str, transform: tuple[float, ...], shape: tuple[int, int]) -> Any:
    ds = xr.open_dataset(coll, engine="ee", crs=crs, crs_transform=transform, shape_2d=shape)
    return ds.load()


def _check(
    ds: Any, assets: list[ImageAsset], band: str, row0: int, col0: int, width: int, height: int
) -> None:
    """Each time step equals the native window, NaN where the image has no data."""
    data = ds[band]
    assert data.dtype == np.float32
    assert data.shape == (len(assets), height, width)
    expected_times = np.array([np.datetime64(a.start_ms, "ms") for a in assets]).astype("datetime64[ns]")
    np.testing.assert_array_equal(ds["time"].values.astype("datetime64[ns]"), expected_times)
    for i, asset in enumerate(assets):
        values, valid = read_window(asset, band, row0, col0, height, width)
        got = data.values[i]
        np.testing.assert_array_equal(np.isnan(got), ~valid)
        np.testing.assert_array_equal(got[valid], values[valid].astype(np.float32))


def test_xee_opens_and_loads_sentinel2_on_its_native_grid(ee_emulator_session: Emulator) -> None:
    coll, assets = _collection(ee_emulator_session, "COPERNICUS/S2_SR_HARMONIZED", "2024-06-01", "2024-06-12")
    crs, transform = _native_window(assets[0], "B4", 4000, 3000)
    ds = _open(coll.select(["B4", "B8"]), crs, transform, (48, 32))
    assert list(ds.data_vars) == ["B4", "B8"]
    np.testing.assert_allclose(ds["x"].values[:2], [transform[2] + 5, transform[2] + 15])
    for band in ("B4", "B8"):
        _check(ds, assets, band, 3000, 4000, 48, 32)


def test_xee_loads_landsat_on_its_30_m_grid(ee_emulator_session: Emulator) -> None:
    coll, assets = _collection(ee_emulator_session, "LANDSAT/LC09/C02/T1_L2", "2024-06-01", "2024-06-30")
    crs, transform = _native_window(assets[0], "SR_B4", 3000, 3500)
    same_grid = [
        a for a in assets if a.band("SR_B4").grid.transform[2] == assets[0].band("SR_B4").grid.transform[2]
    ]
    if len(same_grid) != len(assets):
        coll = coll.filter(ee.Filter.inList("system:index", [a.system_index for a in same_grid]))
    ds = _open(coll.select("SR_B4"), crs, transform, (40, 40))
    _check(ds, same_grid, "SR_B4", 3500, 3000, 40, 40)


def test_xee_loads_era5_land_floats_on_the_tenth_degree_grid(ee_emulator_session: Emulator) -> None:
    coll, assets = _collection(ee_emulator_session, "ECMWF/ERA5_LAND/DAILY_AGGR", "2024-06-01", "2024-06-04")
    # 0.1 degree cells over south-east England.
    crs, transform = _native_window(assets[0], "temperature_2m", 1790, 380)
    ds = _open(coll.select("temperature_2m"), crs, transform, (30, 20))
    _check(ds, assets, "temperature_2m", 380, 1790, 30, 20)


def test_xee_loads_modis_in_its_sinusoidal_projection(ee_emulator_session: Emulator) -> None:
    coll, assets = _collection(ee_emulator_session, "MODIS/061/MOD09GA", "2024-06-01", "2024-06-03")
    crs, transform = _native_window(assets[0], "sur_refl_b01", 40000, 8500)
    ds = _open(coll.select("sur_refl_b01"), crs, transform, (24, 16))
    _check(ds, assets, "sur_refl_b01", 8500, 40000, 24, 16)


def test_xee_loads_a_mapped_ndvi_collection(ee_emulator_session: Emulator) -> None:
    coll, assets = _collection(ee_emulator_session, "COPERNICUS/S2_SR_HARMONIZED", "2024-06-01", "2024-06-12")

    def ndvi(image: ee.Image) -> ee.Image:
        return (
            image.normalizedDifference(["B8", "B4"])
            .rename("ndvi")
            .copyProperties(image, ["system:time_start"])
        )

    crs, transform = _native_window(assets[0], "B4", 5000, 2000)
    ds = _open(coll.map(ndvi), crs, transform, (32, 24))
    assert ds["ndvi"].shape == (len(assets), 24, 32)
    for i, asset in enumerate(assets):
        nir, valid = read_window(asset, "B8", 2000, 5000, 24, 32)
        red, _ = read_window(asset, "B4", 2000, 5000, 24, 32)
        with np.errstate(all="ignore"):
            expected = ((nir.astype(np.float64) - red) / (nir.astype(np.float64) + red)).astype(np.float32)
        got = ds["ndvi"].values[i]
        np.testing.assert_array_equal(np.isnan(got), ~valid)
        np.testing.assert_array_equal(got[valid], expected[valid])


def test_xee_opens_a_single_image_the_srtm_dem(ee_emulator_session: Emulator) -> None:
    asset = ee_emulator_session.catalog.image("USGS/SRTMGL1_003")
    crs, transform = _native_window(asset, "elevation", 645_500, 30_500)  # near (-0.7, 51.5)
    ds = _open(ee.Image("USGS/SRTMGL1_003"), crs, transform, (20, 10))
    values, valid = read_window(asset, "elevation", 30_500, 645_500, 10, 20)
    assert valid.all() and ds["elevation"].shape == (1, 10, 20)
    np.testing.assert_array_equal(ds["elevation"].values[0], values.astype(np.float32))


def test_xee_fast_time_slicing_reads_the_same_pixels(ee_emulator_session: Emulator) -> None:
    coll, assets = _collection(ee_emulator_session, "COPERNICUS/S2_SR_HARMONIZED", "2024-06-01", "2024-06-12")
    crs, transform = _native_window(assets[0], "B4", 4100, 3100)
    ds = xr.open_dataset(
        coll.select("B4"),
        engine="ee",
        crs=crs,
        crs_transform=transform,
        shape_2d=(16, 8),
        fast_time_slicing=True,
    ).load()
    _check(ds, assets, "B4", 3100, 4100, 16, 8)
