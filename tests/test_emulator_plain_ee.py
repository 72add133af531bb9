"""Plain ``ee`` staples against the emulator, each checked against the emulator's documented pixels.

Expected numbers are computed here from :func:`edown.emulator.pixels.read_window` and EE's rules (pixel
centres in the region, nearest neighbour, masked pixels ignored), never from the emulator's own answer.
"""

from __future__ import annotations

import math
from typing import Any

import ee
import numpy as np
import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import box

from edown.emulator.model import ImageAsset
from edown.emulator.pixels import Positions, read_band, read_window
from edown.emulator.server import Emulator

S2 = "COPERNICUS/S2_SR_HARMONIZED"
SPOT = (-0.5, 51.5)
SMALL = (-0.55, 51.49, -0.545, 51.493)  # a few hundred 10 m pixels inside T30UXC
METRES_PER_DEGREE = 111319.49079327357


def _june(emu: Emulator) -> tuple[ee.ImageCollection, list[ImageAsset]]:
    coll = ee.ImageCollection(S2).filterDate("2024-06-01", "2024-06-30").filterBounds(ee.Geometry.Point(SPOT))
    ids: list[str] = coll.aggregate_array("system:index").getInfo()
    assert len(ids) >= 3
    return coll, [emu.catalog.image(f"{S2}/{i}") for i in ids]


def _centres_inside(asset: ImageAsset, band: str, region: Any, res: float | None = None) -> np.ndarray:
    """Native values of ``band`` at the centres of a grid (native origin, ``res``) that fall in ``region``."""
    grid = asset.band(band).grid
    sx, _, tx, _, sy, ty = grid.transform
    step = res or sx
    to_utm = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    x0, y0, x1, y1 = region.bounds
    xs, ys = to_utm.transform([x0, x1, x0, x1], [y0, y0, y1, y1])
    c0, c1 = math.floor((min(xs) - tx) / step) - 2, math.ceil((max(xs) - tx) / step) + 2
    r0, r1 = math.floor((ty - max(ys)) / step) - 2, math.ceil((ty - min(ys)) / step) + 2
    cx = tx + (np.arange(c0, c1) + 0.5) * step
    cy = ty - (np.arange(r0, r1) + 0.5) * step
    gx, gy = np.meshgrid(cx, cy)
    lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(gx, gy)
    inside = shapely.contains_xy(region, lon, lat)
    cols = np.floor((gx - tx) / sx).astype(np.int64)
    rows = np.floor((gy - ty) / sy).astype(np.int64)
    values, valid = read_band(asset, band, Positions(rows[:, 0], cols[0, :], True))
    return np.asarray(values[inside & valid])


def test_reduce_region_mean_min_max_sum_count_at_native_scale(ee_emulator_session: Emulator) -> None:
    _, assets = _june(ee_emulator_session)
    asset = assets[0]
    region = box(*SMALL)
    image = ee.Image(asset.id).select(["B4", "B8"])
    geometry = ee.Geometry.Rectangle(list(SMALL))
    b4 = _centres_inside(asset, "B4", region)
    b8 = _centres_inside(asset, "B8", region)
    assert 200 < b4.size < 2000
    mean = image.reduceRegion(ee.Reducer.mean(), geometry, 10).getInfo()
    assert mean == {"B4": pytest.approx(b4.mean(), rel=1e-12), "B8": pytest.approx(b8.mean(), rel=1e-12)}
    assert isinstance(mean["B4"], float)
    extremes = image.select("B4").reduceRegion(reducer=ee.Reducer.minMax(), geometry=geometry, scale=10)
    assert extremes.getInfo() == {"B4_min": int(b4.min()), "B4_max": int(b4.max())}
    assert image.select("B4").reduceRegion(ee.Reducer.sum(), geometry, 10).getInfo() == {"B4": int(b4.sum())}
    assert image.select("B4").reduceRegion(ee.Reducer.count(), geometry, 10).getInfo() == {"B4": b4.size}
    # Without a scale, the band's own (10 m) grid is used.
    assert image.select("B4").reduceRegion(ee.Reducer.count(), geometry).getInfo() == {"B4": b4.size}


def test_reduce_region_at_a_coarser_scale_samples_pixel_centres(ee_emulator_session: Emulator) -> None:
    _, assets = _june(ee_emulator_session)
    asset = assets[0]
    region = box(*SMALL)
    expected = _centres_inside(asset, "B4", region, res=30)
    result = (
        ee.Image(asset.id)
        .select("B4")
        .reduceRegion(ee.Reducer.mean(), ee.Geometry.Rectangle(list(SMALL)), 30)
    )
    assert result.getInfo() == {"B4": pytest.approx(expected.mean(), rel=1e-12)}
    assert 20 < expected.size < 300


def test_reduce_region_refuses_too_many_pixels_unless_best_effort(ee_emulator_session: Emulator) -> None:
    _, assets = _june(ee_emulator_session)
    image = ee.Image(assets[0].id).select("B4")
    geometry = ee.Geometry.Rectangle(list(SMALL))
    with pytest.raises(
        ee.EEException, match=r"Too many pixels in the region\. Found \d+, but maxPixels allows only 50"
    ):
        image.reduceRegion(ee.Reducer.count(), geometry, 10, maxPixels=50).getInfo()
    counted = image.reduceRegion(ee.Reducer.count(), geometry, 10, maxPixels=50, bestEffort=True).getInfo()
    assert 0 < counted["B4"] <= 50


def _stack(
    assets: list[ImageAsset], band: str, row0: int, col0: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    values, valid = zip(*(read_window(a, band, row0, col0, size, size) for a in assets), strict=True)
    return np.stack(values), np.stack(valid)


def _native_grid(asset: ImageAsset, row0: int, col0: int, size: int) -> dict[str, Any]:
    sx, _, tx, _, sy, ty = asset.band("B4").grid.transform
    return {
        "dimensions": {"width": size, "height": size},
        "affineTransform": {
            "scaleX": sx,
            "translateX": tx + col0 * sx,
            "scaleY": sy,
            "translateY": ty + row0 * sy,
        },
        "crsCode": asset.band("B4").grid.crs,
    }


def test_median_mean_min_max_and_mosaic_composites_are_per_pixel(ee_emulator_session: Emulator) -> None:
    coll, assets = _june(ee_emulator_session)
    row0, col0, size = 3000, 4000, 24
    assert len({a.band("B4").grid for a in assets}) == 1  # one tile: one native grid
    values, valid = _stack(assets, "B4", row0, col0, size)
    grid = _native_grid(assets[0], row0, col0, size)

    def fetch(image: ee.Image) -> np.ndarray:
        out = ee.data.computePixels({"expression": image, "fileFormat": "NUMPY_NDARRAY", "grid": grid})
        return np.asarray(out[out.dtype.names[0]])

    masked = np.where(valid, values.astype(np.float64), np.nan)
    median = fetch(coll.select("B4").median())
    assert median.dtype == np.uint16
    np.testing.assert_array_equal(median, np.trunc(np.nanmedian(masked, axis=0)).astype(np.uint16))
    mean = fetch(coll.select("B4").mean())
    assert mean.dtype == np.float64
    np.testing.assert_allclose(mean, np.nanmean(masked, axis=0), rtol=1e-12)
    np.testing.assert_array_equal(fetch(coll.select("B4").min()), np.nanmin(masked, axis=0).astype(np.uint16))
    np.testing.assert_array_equal(fetch(coll.select("B4").max()), np.nanmax(masked, axis=0).astype(np.uint16))
    last_valid = len(assets) - 1 - np.argmax(valid[::-1], axis=0)
    mosaic = fetch(coll.select("B4").mosaic())
    np.testing.assert_array_equal(mosaic, np.take_along_axis(values, last_valid[None], axis=0)[0])
    info = coll.select("B4").median().getInfo()["bands"][0]
    assert info["crs"] == "EPSG:4326" and info["crs_transform"] == [1, 0, 0, 0, 1, 0]
    assert coll.select("B4").reduce(ee.Reducer.median()).bandNames().getInfo() == ["B4_median"]


def test_get_region_lists_every_image_at_the_point(ee_emulator_session: Emulator) -> None:
    coll, assets = _june(ee_emulator_session)
    rows = coll.select(["B4", "B8"]).getRegion(ee.Geometry.Point(SPOT), 10).getInfo()
    assert rows[0] == ["id", "longitude", "latitude", "time", "B4", "B8"]
    assert [r[0] for r in rows[1:]] == [a.system_index for a in assets]
    assert [r[3] for r in rows[1:]] == [a.start_ms for a in assets]
    step = 10 / METRES_PER_DEGREE
    lon = (math.floor(SPOT[0] / step) + 0.5) * step
    lat = (math.floor(SPOT[1] / step) + 0.5) * step
    for row, asset in zip(rows[1:], assets, strict=True):
        assert row[1] == pytest.approx(lon, abs=1e-12) and row[2] == pytest.approx(lat, abs=1e-12)
        grid = asset.band("B4").grid
        x, y = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(row[1], row[2])
        col = math.floor((x - grid.transform[2]) / grid.transform[0])
        r = math.floor((y - grid.transform[5]) / grid.transform[4])
        for name, got in zip(("B4", "B8"), row[4:], strict=True):
            value, ok = read_window(asset, name, r, col, 1, 1)
            assert got == (int(value[0, 0]) if ok[0, 0] else None)


def test_numbers_strings_dates_lists_dictionaries_and_if(ee_emulator_session: Emulator) -> None:
    assert ee.Date("2024-03-05T01:02:03").format("YYYY-MM-dd HH:mm:ss").getInfo() == "2024-03-05 01:02:03"
    assert ee.Date("2024-03-05").format().getInfo() == "2024-03-05T00:00:00"
    assert ee.Date("2024-12-31").format("D 'of' yyyy, MMM").getInfo() == "366 of 2024, Dec"
    assert ee.List.sequence(0, 10, 2).getInfo() == [0, 2, 4, 6, 8, 10]
    assert ee.List.sequence(1, 2, 0.5).getInfo() == [1.0, 1.5, 2.0]
    assert ee.List.sequence(5, None, 3, 4).getInfo() == [5, 8, 11, 14]
    assert ee.List.sequence(0, None, 2, 4).getInfo() == [0, 2, 4, 6]
    # With both an end and a count, EE spaces the count values evenly from start to end.
    assert ee.List.sequence(1, 10, None, 5).getInfo() == [1, 3.25, 5.5, 7.75, 10]
    assert ee.List.sequence(0, 1, None, 3).getInfo() == [0, 0.5, 1]
    assert ee.List.sequence(0, 8, None, 5).getInfo() == [0, 2, 4, 6, 8]
    assert ee.Dictionary({"a": 1, "b": "x"}).get("b").getInfo() == "x"
    assert ee.Dictionary({"a": 1}).get("z", 7).getInfo() == 7
    with pytest.raises(ee.EEException, match="Dictionary does not contain key: 'z'"):
        ee.Dictionary({"a": 1}).get("z").getInfo()
    # Only the branch taken is evaluated: the other one would fail.
    assert ee.Algorithms.If(ee.Number(3).gt(2), "yes", ee.Image("NOT/AN_IMAGE")).getInfo() == "yes"
    assert ee.Algorithms.If(ee.List([]), "yes", "no").getInfo() == "no"
    assert ee.Number(2.5).round().getInfo() == 3 and ee.Number(7).mod(3).getInfo() == 1
    assert ee.String("a").cat("b").getInfo() == "ab"


def test_image_and_collection_properties_as_elements(ee_emulator_session: Emulator) -> None:
    _, assets = _june(ee_emulator_session)
    image = ee.Image(assets[0].id)
    assert image.get("system:id").getInfo() == assets[0].id
    assert image.select("B4").get("system:id").getInfo() == assets[0].id
    coll = ee.ImageCollection(S2)
    assert coll.get("system:id").getInfo() == S2
    names = coll.propertyNames().getInfo()
    assert "system:id" in names and "title" in names
    assert coll.toDictionary().getInfo()["title"].startswith("Harmonized Sentinel-2")
    assert coll.set("note", 5).get("note").getInfo() == 5


def test_unsupported_functions_still_fail_naming_them(ee_emulator_session: Emulator) -> None:
    with pytest.raises(ee.EEException, match=r"Function 'Reducer\.histogram' is not supported by the edown"):
        ee.Image.constant(1).reduceRegion(ee.Reducer.histogram(), ee.Geometry.Point([0, 0]), 10).getInfo()


def test_the_srtm_dem_is_int16_at_one_arc_second_in_epsg4326(ee_emulator_session: Emulator) -> None:
    dem = ee.Image("USGS/SRTMGL1_003")
    band = dem.getInfo()["bands"][0]
    step = 1 / 3600
    assert band["id"] == "elevation" and band["crs"] == "EPSG:4326"
    assert band["data_type"] == {"type": "PixelType", "precision": "int", "min": -32768, "max": 32767}
    assert band["crs_transform"] == pytest.approx([step, 0, -180 - step / 2, 0, -step, 60 + step / 2])
    asset = ee_emulator_session.catalog.image("USGS/SRTMGL1_003")
    col = math.floor((SPOT[0] + 180 + step / 2) / step)
    row = math.floor((60 + step / 2 - SPOT[1]) / step)
    expected = read_window(asset, "elevation", row, col, 1, 1)[0][0, 0]
    value = dem.reduceRegion(ee.Reducer.first(), ee.Geometry.Point(SPOT), 30.87).getInfo()["elevation"]
    assert value == int(expected)
    grid = {
        "dimensions": {"width": 16, "height": 8},
        "affineTransform": {
            "scaleX": step,
            "translateX": -180 - step / 2 + col * step,
            "scaleY": -step,
            "translateY": 60 + step / 2 - row * step,
        },
        "crsCode": "EPSG:4326",
    }
    out = ee.data.computePixels({"expression": dem, "fileFormat": "NUMPY_NDARRAY", "grid": grid})
    assert out["elevation"].dtype == np.int16
    np.testing.assert_array_equal(out["elevation"], read_window(asset, "elevation", row, col, 8, 16)[0])
    hills = read_window(asset, "elevation", row + 36, col - 180, 8, 16)[0]  # near (-0.55, 51.49): land
    assert hills.min() > 0


def test_sample_returns_the_covered_pixels_as_features(ee_emulator_session: Emulator) -> None:
    dem = ee.Image("USGS/SRTMGL1_003")
    region = ee.Geometry.Rectangle([-0.55, 51.49, -0.549, 51.491])
    samples = dem.sample(region, 30, geometries=True).getInfo()
    assert samples["type"] == "FeatureCollection"
    step = 30 / METRES_PER_DEGREE
    origin_x, origin_y = -180 - 1 / 7200, 60 + 1 / 7200
    asset = ee_emulator_session.catalog.image("USGS/SRTMGL1_003")
    cols = np.arange(math.floor((-0.55 - origin_x) / step), math.ceil((-0.549 - origin_x) / step))
    rows = np.arange(math.floor((origin_y - 51.491) / step), math.ceil((origin_y - 51.49) / step))
    lon, lat = np.meshgrid(origin_x + (cols + 0.5) * step, origin_y - (rows + 0.5) * step)
    inside = shapely.contains_xy(box(-0.55, 51.49, -0.549, 51.491), lon, lat)
    assert len(samples["features"]) == int(inside.sum())
    for feature in samples["features"]:
        x, y = feature["geometry"]["coordinates"]
        native_col = math.floor((x - origin_x) * 3600)
        native_row = math.floor((origin_y - y) * 3600)
        expected = read_window(asset, "elevation", native_row, native_col, 1, 1)[0][0, 0]
        assert feature["properties"] == {"elevation": int(expected)}
    assert dem.sample(region, 30, numPixels=5).size().getInfo() == 5


def test_feature_collection_size_and_geodesic_area(ee_emulator_session: Emulator) -> None:
    square = ee.Geometry.Rectangle([0, 0, 0.01, 0.01])
    fc = ee.FeatureCollection([ee.Feature(square), ee.Feature(ee.Geometry.Point([1, 1]), {"a": 1})])
    assert fc.size().getInfo() == 2
    # 0.01 degrees at the equator is ~1113 m east-west and ~1106 m north-south on the WGS84 ellipsoid.
    assert square.area(1).getInfo() == pytest.approx(1113.19 * 1105.75, rel=2e-3)
    assert ee.Geometry.Point([1, 1]).area(1).getInfo() == 0


def test_cloud_score_plus_and_cloud_probability_follow_the_s2_clouds(ee_emulator_session: Emulator) -> None:
    _, assets = _june(ee_emulator_session)
    indices = [a.system_index for a in assets]
    cs = ee.ImageCollection("GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED").filterDate("2024-06-01", "2024-06-30")
    cs = cs.filterBounds(ee.Geometry.Point(SPOT))
    assert cs.aggregate_array("system:index").getInfo() == indices
    size = 32
    # A window where the S2 image is partly cloudy (found from the pixel function, deterministically).
    asset, row0, col0 = next(
        (a, r, c)
        for a in sorted(assets, key=lambda a: -a.properties["CLOUDY_PIXEL_PERCENTAGE"])
        for r in range(500, 10000, 1500)
        for c in range(500, 10000, 1500)
        if 0.2 < (read_window(a, "MSK_CLDPRB", r // 2, c // 2, size // 2, size // 2)[0] > 0).mean() < 0.8
    )
    scores = ee_emulator_session.catalog.image(
        f"GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED/{asset.system_index}"
    )
    prob = ee_emulator_session.catalog.image(f"COPERNICUS/S2_CLOUD_PROBABILITY/{asset.system_index}")
    assert scores.band("cs").grid == asset.band("B4").grid
    linked = ee.Image(asset.id).linkCollection(cs, ["cs"]).select(["B4", "cs"])
    grid = _native_grid(asset, row0, col0, size)
    out = ee.data.computePixels({"expression": linked, "fileFormat": "NUMPY_NDARRAY", "grid": grid})
    expected_cs = read_window(scores, "cs", row0, col0, size, size)[0]
    np.testing.assert_array_equal(out["cs"], expected_cs)
    probability = read_window(prob, "probability", row0, col0, size, size)[0]
    # One cloud field: cs also falls under cirrus and shadows, so probability <= floor(100 * (1 - cs)) up
    # to float32 rounding of cs, and a clear pixel (cs == 1) has probability 0.
    ceiling = np.floor(100 * (1 - expected_cs.astype(np.float64)) + 1e-3)
    assert np.all(probability <= ceiling + 1)
    assert np.all(probability[expected_cs == 1] == 0)
    # The brightest (cloudiest) S2 pixels are the least clear ones.
    b2 = read_window(asset, "B2", row0, col0, size, size)[0]
    assert np.corrcoef(b2.ravel(), expected_cs.ravel())[0, 1] < 0


def test_link_collection_without_a_match_adds_fully_masked_bands_and_null_properties(
    ee_emulator_session: Emulator,
) -> None:
    # EE's docs: "If no match is found, new or updated bands are fully masked, and metadata is null."
    _, assets = _june(ee_emulator_session)
    asset = assets[0]
    elsewhere = ee.ImageCollection("GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED").filterDate(
        "2024-01-01", "2024-01-02"
    )
    linked = ee.Image(asset.id).linkCollection(elsewhere, ["cs"], ["CLOUDY_PIXEL_PERCENTAGE"])
    assert linked.bandNames().getInfo()[-1] == "cs"
    assert ee.Image(asset.id).get("CLOUDY_PIXEL_PERCENTAGE").getInfo() is not None
    assert linked.get("CLOUDY_PIXEL_PERCENTAGE").getInfo() is None
    counts = linked.select(["B4", "cs"]).reduceRegion(
        ee.Reducer.count(), ee.Geometry.Rectangle(list(SMALL)), 10
    )
    got = counts.getInfo()
    assert got["cs"] == 0 and got["B4"] > 0


def test_quality_mosaic_and_to_bands(ee_emulator_session: Emulator) -> None:
    coll, assets = _june(ee_emulator_session)
    row0, col0, size = 3000, 4000, 16
    grid = _native_grid(assets[0], row0, col0, size)
    quality = coll.select(["B4", "B8"]).qualityMosaic("B8")
    out = ee.data.computePixels({"expression": quality, "fileFormat": "NUMPY_NDARRAY", "grid": grid})
    b8, valid = _stack(assets, "B8", row0, col0, size)
    b4, _ = _stack(assets, "B4", row0, col0, size)
    best = np.argmax(np.where(valid, b8.astype(np.float64), -np.inf), axis=0)
    np.testing.assert_array_equal(out["B8"], np.take_along_axis(b8, best[None], axis=0)[0])
    np.testing.assert_array_equal(out["B4"], np.take_along_axis(b4, best[None], axis=0)[0])
    names = coll.select("B4").toBands().bandNames().getInfo()
    assert names == [f"{a.system_index}_B4" for a in assets]


def test_geometry_bounds_centroid_and_buffer(ee_emulator_session: Emulator) -> None:
    triangle = ee.Geometry.Polygon([[[0, 0], [0.02, 0], [0, 0.01]]])
    ring = triangle.bounds().getInfo()["coordinates"][0]
    assert {tuple(p) for p in ring} == {(0, 0), (0.02, 0), (0.02, 0.01), (0, 0.01)}
    assert triangle.centroid().getInfo()["coordinates"] == pytest.approx([0.02 / 3, 0.01 / 3])
    disc = ee.Geometry.Point([10, 45]).buffer(1000)
    assert disc.area(1).getInfo() == pytest.approx(math.pi * 1000**2, rel=3e-3)
    assert disc.bounds().getInfo()["coordinates"][0][2][1] == pytest.approx(45 + 1000 / 111132, rel=1e-4)


LONDON_SCENE = f"{S2}/20240603T104058_20240603T104237_T30UXC"
LONDON_POINT = (-0.11505037240544304, 51.49504569816746)


def _native_value_at(asset: ImageAsset, band: str, lon: float, lat: float) -> int:
    """The native pixel holding a point (the pixel a point region touches), from the pixel function."""
    grid = asset.band(band).grid
    sx, _, tx, _, sy, ty = grid.transform
    x, y = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(lon, lat)
    values, valid = read_window(asset, band, math.floor((y - ty) / sy), math.floor((x - tx) / sx), 1, 1)
    assert bool(valid[0, 0])
    return int(values[0, 0])


def test_reductions_over_no_pixels_are_null_and_a_sum_of_nothing_is_zero(
    ee_emulator_session: Emulator,
) -> None:
    b4 = ee.Image(LONDON_SCENE).select("B4")
    outside = ee.Geometry.Point([20, 10])
    inside = ee.Geometry.Point(list(LONDON_POINT))
    for reducer in ("max", "min", "first", "firstNonNull", "mean", "median"):
        reduced = b4.reduceRegion(getattr(ee.Reducer, reducer)(), outside, 10).getInfo()
        assert reduced == {"B4": None}, reducer
    assert b4.reduceRegion(ee.Reducer.minMax(), outside, 10).getInfo() == {"B4_min": None, "B4_max": None}
    masked = b4.updateMask(0)
    assert masked.reduceRegion(ee.Reducer.minMax(), inside, 10).getInfo() == {"B4_min": None, "B4_max": None}
    assert masked.reduceRegion(ee.Reducer.sum(), inside, 10).getInfo() == {"B4": 0}
    assert masked.reduceRegion(ee.Reducer.count(), inside, 10).getInfo() == {"B4": 0}
    assert b4.toFloat().reduceRegion(ee.Reducer.sum(), outside, 10).getInfo() == {"B4": 0}
    dem = ee.Image("USGS/SRTMGL1_003")  # SRTM stops at 60° N
    assert dem.reduceRegion(ee.Reducer.max(), ee.Geometry.Point([20, 70]), 30).getInfo() == {
        "elevation": None
    }
    assert ee.List([]).reduce(ee.Reducer.sum()).getInfo() == 0
    assert ee.List([]).reduce(ee.Reducer.max()).getInfo() is None


def test_to_list_reduces_a_region_to_its_pixel_values(ee_emulator_session: Emulator) -> None:
    asset = ee_emulator_session.catalog.image(LONDON_SCENE)
    b4 = ee.Image(LONDON_SCENE).select("B4")
    point = ee.Geometry.Point(list(LONDON_POINT))
    expected = _native_value_at(asset, "B4", *LONDON_POINT)
    assert b4.reduceRegion(ee.Reducer.toList(), point, 10).getInfo() == {"B4": [expected]}
    assert b4.reduceRegion(ee.Reducer.toList(), ee.Geometry.Point([20, 10]), 10).getInfo() == {"B4": []}
    region = box(*SMALL)
    values = b4.reduceRegion(ee.Reducer.toList(), ee.Geometry.Rectangle(list(SMALL)), 10).getInfo()["B4"]
    assert sorted(values) == sorted(_centres_inside(asset, "B4", region).tolist())


def test_image_collection_merge_is_the_first_collection_then_the_second(
    ee_emulator_session: Emulator,
) -> None:
    spot = ee.Geometry.Point(list(SPOT))
    l8 = (
        ee.ImageCollection("LANDSAT/LC08/C02/T1_L2").filterDate("2024-06-01", "2024-07-01").filterBounds(spot)
    )
    l9 = (
        ee.ImageCollection("LANDSAT/LC09/C02/T1_L2").filterDate("2024-06-01", "2024-07-01").filterBounds(spot)
    )
    first: list[str] = l8.aggregate_array("system:id").getInfo()
    second: list[str] = l9.aggregate_array("system:id").getInfo()
    assert first and all(i.startswith("LANDSAT/LC08/") for i in first)
    assert second and all(i.startswith("LANDSAT/LC09/") for i in second)
    merged = l8.merge(l9)
    assert merged.aggregate_array("system:id").getInfo() == first + second
    assert merged.size().getInfo() == len(first) + len(second)
    last = ee.Image(merged.toList(len(first) + len(second)).get(-1)).select("SR_B4")
    asset = ee_emulator_session.catalog.image(second[-1])
    expected = _native_value_at(asset, "SR_B4", *SPOT)
    assert last.reduceRegion(ee.Reducer.first(), spot, 30).getInfo() == {"SR_B4": expected}
    with pytest.raises(ee.EEException, match=r"ImageCollection\.merge: Expected an ImageCollection"):
        ee.ImageCollection(l8).merge(ee.FeatureCollection([ee.Feature(spot)])).size().getInfo()


def test_compute_features_pages_a_feature_collection_as_geojson(ee_emulator_session: Emulator) -> None:
    """``ee.data.computeFeatures`` (geemap's ``ee_to_df``): features as GeoJSON, pages by ``pageSize``."""
    features = [ee.Feature(ee.Geometry.Point([i, 2 * i]), {"n": i, "name": f"f{i}"}) for i in range(5)]
    collection = ee.FeatureCollection(features)
    page = ee.data.computeFeatures({"expression": collection, "pageSize": 2})
    assert page["type"] == "FeatureCollection" and page["nextPageToken"] == "2"
    assert page["features"] == [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [i, 2 * i]},
            "properties": {"n": i, "name": f"f{i}"},
        }
        for i in range(2)
    ]
    frame = ee.data.computeFeatures({"expression": collection, "fileFormat": "PANDAS_DATAFRAME"})
    assert frame["n"].tolist() == [0, 1, 2, 3, 4] and frame["name"].tolist() == [f"f{i}" for i in range(5)]
    with pytest.raises(
        ee.EEException, match=r"computeFeatures: The expression must evaluate to a collection"
    ):
        ee.data.computeFeatures({"expression": ee.Number(1)})


def test_a_composite_of_a_collection_not_filtered_by_place_reads_the_images_at_the_region(
    ee_emulator_session: Emulator,
) -> None:
    """EE evaluates only the images a request needs; a world-wide day of Landsat 8 gives the one image
    over the spot, read on its own grid."""
    day = ee.ImageCollection("LANDSAT/LC08/C02/T1_L2").filterDate("2024-06-01", "2024-06-02")
    spot = ee.Geometry.Point(list(SPOT))
    here: list[str] = day.filterBounds(spot).aggregate_array("system:id").getInfo()
    assert len(here) == 1 and day.size().getInfo() > 100
    asset = ee_emulator_session.catalog.image(here[0])
    grid = asset.band("SR_B4").grid
    composite = day.select("SR_B4").max()
    reduced = composite.reduceRegion(
        ee.Reducer.first(), spot, crs=grid.crs, crsTransform=list(grid.transform)
    )
    assert reduced.getInfo() == {"SR_B4": _native_value_at(asset, "SR_B4", *SPOT)}
    far = ee.Geometry.Point([-0.5, -51.5])  # no image of this day there
    assert composite.reduceRegion(ee.Reducer.first(), far, 30).getInfo() == {"SR_B4": None}
