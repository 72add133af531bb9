"""The real ``ee`` client against the emulator: the REST subset, exact pixels, limits and quotas."""

from __future__ import annotations

import io
import json
import threading
import urllib.request
from typing import Any

import ee
import numpy as np
import pytest
import rasterio

from edown.emulator import EmulatorConfig, Latency, Limits, serve
from edown.emulator.catalog import Catalog
from edown.emulator.model import parse_rfc3339
from edown.emulator.pixels import Positions, read_band, read_window
from edown.emulator.pytest_plugin import EMULATOR_PROJECT
from edown.emulator.server import Emulator

S2 = "COPERNICUS/S2_SR_HARMONIZED"
LONDON = [-0.15, 51.48, 0.02, 51.56]
LONDON_RING = [[-0.15, 51.48], [0.02, 51.48], [0.02, 51.56], [-0.15, 51.56], [-0.15, 51.48]]


def s2_grid(
    col0: int,
    row0: int,
    width: int,
    height: int,
    tile_x: float = 600000,
    tile_y: float = 5800020,
    res: float = 10,
    crs: str = "EPSG:32630",
) -> dict[str, Any]:
    return {
        "dimensions": {"width": width, "height": height},
        "affineTransform": {
            "scaleX": res,
            "shearX": 0,
            "translateX": tile_x + col0 * res,
            "shearY": 0,
            "scaleY": -res,
            "translateY": tile_y - row0 * res,
        },
        "crsCode": crs,
    }


def first_s2_id(catalog: Catalog) -> str:
    region = ee.Geometry.Rectangle(LONDON)
    coll = ee.ImageCollection(S2).filterDate("2024-06-01", "2024-06-30").filterBounds(region)
    ids: list[str] = coll.aggregate_array("system:index").getInfo()
    assert ids, "the catalogue should have S2 images over London in June 2024"
    return f"{S2}/{ids[0]}"


def test_initialize_and_filtered_collection_info_and_size(ee_emulator_session: Emulator) -> None:
    region = ee.Geometry.Rectangle(LONDON, "EPSG:4326", False)
    coll = ee.ImageCollection(S2).filterDate("2024-06-01", "2024-07-01").filterBounds(region)
    info = coll.getInfo()
    size = coll.size().getInfo()
    assert info["type"] == "ImageCollection"
    assert size == len(info["features"]) >= 4
    expected = [
        a.id
        for a in ee_emulator_session.catalog.query(
            S2, parse_rfc3339("2024-06-01"), parse_rfc3339("2024-07-01"), _box(LONDON)
        )
    ]
    assert [f["id"] for f in info["features"]] == expected
    first = info["features"][0]
    # Real band order: B1 (60 m) first; B4 is uint16 (int 0..65535) on the 10 m grid of the tile.
    assert [b["id"] for b in first["bands"]][:5] == ["B1", "B2", "B3", "B4", "B5"]
    b1, b4 = first["bands"][0], first["bands"][3]
    assert b1["crs_transform"] == [60, 0, 600000, 0, -60, 5800020] and b1["dimensions"] == [1830, 1830]
    assert b4["data_type"] == {"type": "PixelType", "precision": "int", "min": 0, "max": 65535}
    assert b4["crs"] == "EPSG:32630" and b4["crs_transform"] == [10, 0, 600000, 0, -10, 5800020]
    assert first["properties"]["MGRS_TILE"] == "30UXC"
    assert first["properties"]["system:footprint"]["type"] == "LinearRing"


def _box(bounds: list[float]) -> Any:
    from shapely.geometry import box

    return box(*bounds)


def test_list_images_filters_dates_region_and_cloud_cover(ee_emulator_session: Emulator) -> None:
    base = {
        "parent": S2,
        "startTime": "2024-04-01T00:00:00Z",
        "endTime": "2024-09-01T00:00:00Z",
        "region": {"type": "Polygon", "coordinates": [LONDON_RING]},
    }
    everything = ee.data.listImages(dict(base))["images"]
    clear = ee.data.listImages({**base, "properties": ["CLOUDY_PIXEL_PERCENTAGE<20"]})["images"]
    covers = {i["id"]: i["properties"]["CLOUDY_PIXEL_PERCENTAGE"] for i in everything}
    assert len(everything) > len(clear) > 0
    assert {i["id"] for i in clear} == {k for k, v in covers.items() if v < 20}
    for image in everything:
        start = parse_rfc3339(image["startTime"])
        assert parse_rfc3339("2024-04-01") <= start < parse_rfc3339("2024-09-01")
    b4 = next(b for b in everything[0]["bands"] if b["id"] == "B4")
    # proto3 JSON: zero fields omitted (range.min, shears), int64 as strings.
    assert b4["dataType"] == {"precision": "INT", "range": {"max": 65535}}
    assert b4["grid"]["affineTransform"] == {
        "scaleX": 10,
        "translateX": 600000,
        "scaleY": -10,
        "translateY": 5800020,
    }
    assert b4["grid"]["dimensions"] == {"width": 10980, "height": 10980}
    assert isinstance(everything[0]["sizeBytes"], str)


def test_list_images_pages_with_page_size(ee_emulator_session: Emulator) -> None:
    params = {
        "parent": S2,
        "startTime": "2024-01-01T00:00:00Z",
        "endTime": "2024-12-31T00:00:00Z",
        "region": {"type": "Polygon", "coordinates": [LONDON_RING]},
    }
    full = [i["id"] for i in ee.data.listImages(dict(params))["images"]]
    pages: list[str] = []
    token = None
    while True:
        page = ee.data.listImages({**params, "pageSize": 20, **({"pageToken": token} if token else {})})
        pages.extend(i["id"] for i in page["images"])
        token = page.get("nextPageToken")
        if not token:
            break
    assert pages == full and len(full) > 40


def test_get_asset_image_and_collection(ee_emulator_session: Emulator) -> None:
    image_id = first_s2_id(ee_emulator_session.catalog)
    asset = ee.data.getAsset(image_id)
    assert asset["type"] == "IMAGE" and asset["id"] == image_id
    assert asset["name"] == f"projects/earthengine-public/assets/{image_id}"
    assert ee.data.getAsset(S2)["type"] == "IMAGE_COLLECTION"


def test_get_pixels_npy_is_exact(ee_emulator_session: Emulator) -> None:
    image_id = first_s2_id(ee_emulator_session.catalog)
    arr = ee.data.getPixels(
        {
            "assetId": image_id,
            "fileFormat": "NUMPY_NDARRAY",
            "bandIds": ["B4", "B8"],
            "grid": s2_grid(col0=1234, row0=2345, width=300, height=200),
        }
    )
    assert arr.dtype.names == ("B4", "B8") and arr.dtype["B4"] == np.uint16 and arr.shape == (200, 300)
    asset = ee_emulator_session.catalog.image(image_id)
    for band in ("B4", "B8"):
        expected, valid = read_window(asset, band, 2345, 1234, 200, 300)
        assert valid.all()
        np.testing.assert_array_equal(arr[band], expected)


def test_get_pixels_20m_band_on_10m_grid_is_nearest_neighbour(ee_emulator_session: Emulator) -> None:
    image_id = first_s2_id(ee_emulator_session.catalog)
    arr = ee.data.getPixels(
        {
            "assetId": image_id,
            "fileFormat": "NUMPY_NDARRAY",
            "bandIds": ["B11"],
            "grid": s2_grid(col0=100, row0=50, width=8, height=6),
        }
    )
    asset = ee_emulator_session.catalog.image(image_id)
    expected, _ = read_window(asset, "B11", 25, 50, 3, 4)  # 10 m cols 100..107 -> 20 m cols 50..53
    np.testing.assert_array_equal(arr["B11"], np.repeat(np.repeat(expected, 2, axis=0), 2, axis=1))


def test_get_pixels_geotiff_is_exact_with_crs_and_transform(ee_emulator_session: Emulator) -> None:
    image_id = first_s2_id(ee_emulator_session.catalog)
    data = ee.data.getPixels(
        {
            "assetId": image_id,
            "fileFormat": "GEO_TIFF",
            "bandIds": ["B2", "B3"],
            "grid": s2_grid(col0=10, row0=20, width=64, height=32),
        }
    )
    with rasterio.open(io.BytesIO(data)) as src:
        assert src.crs.to_epsg() == 32630
        assert tuple(src.transform)[:6] == (10.0, 0.0, 600100.0, 0.0, -10.0, 5799820.0)
        assert src.descriptions == ("B2", "B3") and src.dtypes == ("uint16", "uint16")
        asset = ee_emulator_session.catalog.image(image_id)
        np.testing.assert_array_equal(src.read(1), read_window(asset, "B2", 20, 10, 32, 64)[0])
        np.testing.assert_array_equal(src.read(2), read_window(asset, "B3", 20, 10, 32, 64)[0])


def test_compute_pixels_npy_and_geotiff_scaled_float(ee_emulator_session: Emulator) -> None:
    image_id = first_s2_id(ee_emulator_session.catalog)
    image = ee.Image(image_id).select(["B4", "B8"]).multiply(0.0001).toFloat()
    grid = s2_grid(col0=500, row0=600, width=40, height=30)
    arr = ee.data.computePixels({"expression": image, "fileFormat": "NUMPY_NDARRAY", "grid": grid})
    asset = ee_emulator_session.catalog.image(image_id)
    assert arr.dtype["B4"] == np.float32
    for band in ("B4", "B8"):
        raw = read_window(asset, band, 600, 500, 30, 40)[0]
        np.testing.assert_array_equal(arr[band], (raw.astype(np.float64) * 0.0001).astype(np.float32))
    tif = ee.data.computePixels({"expression": image, "fileFormat": "GEO_TIFF", "grid": grid})
    with rasterio.open(io.BytesIO(tif)) as src:
        assert src.dtypes == ("float32", "float32")
        np.testing.assert_array_equal(src.read(1), arr["B4"])


def test_unscaled_multiply_is_double_like_earth_engine(ee_emulator_session: Emulator) -> None:
    image_id = first_s2_id(ee_emulator_session.catalog)
    info = ee.Image(image_id).select("B4").multiply(0.0001).getInfo()
    assert info["bands"][0]["data_type"]["precision"] == "double"
    assert "properties" not in info  # per-pixel math drops metadata, as in Earth Engine


def test_masked_pixels_are_zero_and_unmask_needs_same_footprint_false(ee_emulator_session: Emulator) -> None:
    catalog = ee_emulator_session.catalog
    # A swath-edge tile has a footprint that cuts through its grid.
    asset = next(
        a
        for a in catalog.query(
            S2, parse_rfc3339("2024-06-01"), parse_rfc3339("2024-06-06"), _box([-3, 50, 3, 53])
        )
        if len(a.footprint.halfplanes) > 4
    )
    band = asset.band("B4")
    rows = np.arange(0, band.grid.height, 8)
    _, valid_full = read_band(asset, "B4", Positions(rows, np.arange(0, band.grid.width, 8), True))
    assert 0.05 < valid_full.mean() < 0.95
    r = int(np.argwhere(~valid_full)[0][0]) * 8
    c = int(np.argwhere(~valid_full)[0][1]) * 8
    grid = s2_grid(
        col0=c,
        row0=r,
        width=1,
        height=1,
        tile_x=band.grid.transform[2],
        tile_y=band.grid.transform[5],
        crs=band.grid.crs,
    )
    plain = ee.data.computePixels(
        {"expression": ee.Image(asset.id).select("B4"), "fileFormat": "NUMPY_NDARRAY", "grid": grid}
    )
    same = ee.data.computePixels(
        {
            "expression": ee.Image(asset.id).select("B4").unmask(65535),
            "fileFormat": "NUMPY_NDARRAY",
            "grid": grid,
        }
    )
    honest = ee.data.computePixels(
        {
            "expression": ee.Image(asset.id).select("B4").unmask(65535, False),
            "fileFormat": "NUMPY_NDARRAY",
            "grid": grid,
        }
    )
    assert plain["B4"][0, 0] == 0 and same["B4"][0, 0] == 0 and honest["B4"][0, 0] == 65535


def test_request_size_limit_counts_the_mask_byte(ee_emulator_session: Emulator) -> None:
    image_id = first_s2_id(ee_emulator_session.catalog)
    # 4 uint16 bands: (2 + 1) bytes x 4 = 12 bytes per pixel; 48 MiB / 12 = 4194304 px = 2048 x 2048.
    ok = s2_grid(0, 0, 2048, 2048)
    too_big = s2_grid(0, 0, 2048, 2049)
    params = {"assetId": image_id, "fileFormat": "NUMPY_NDARRAY", "bandIds": ["B2", "B3", "B4", "B8"]}
    assert ee.data.getPixels({**params, "grid": ok}).shape == (2048, 2048)
    with pytest.raises(
        ee.EEException, match=r"Total request size \(50356224 bytes\) must be less than or equal to 50331648"
    ):
        ee.data.getPixels({**params, "grid": too_big})


def test_dimension_limit_and_unknown_function_and_404(ee_emulator_session: Emulator) -> None:
    image_id = first_s2_id(ee_emulator_session.catalog)
    with pytest.raises(ee.EEException, match="must be less than or equal to 32768"):
        ee.data.getPixels(
            {
                "assetId": image_id,
                "fileFormat": "NUMPY_NDARRAY",
                "bandIds": ["B4"],
                "grid": s2_grid(0, 0, 32769, 1),
            }
        )
    with pytest.raises(ee.EEException, match=r"Function 'Reducer\.histogram' is not supported by the edown"):
        ee.Image(image_id).select("B4").reduceRegion(
            ee.Reducer.histogram(), ee.Geometry.Point([0, 51]), 10
        ).getInfo()
    with pytest.raises(ee.EEException, match="does not exist"):
        ee.data.getAsset(f"{S2}/20240101T000000_20240101T000000_T30UXC")
    with pytest.raises(ee.EEException, match="does not exist"):
        ee.ImageCollection("NOT/A_COLLECTION").size().getInfo()
    with pytest.raises(ee.EEException, match="did not match any bands"):
        ee.Image(image_id).select("B99").getInfo()


def test_http_status_codes_reach_the_client(ee_emulator_session: Emulator) -> None:
    with pytest.raises(ee.EEException) as info:
        ee.data.getAsset("COPERNICUS/NOPE/x")
    assert info.value.__context__.resp.status == 404  # type: ignore[union-attr]


def test_image_expression_and_normalized_difference(ee_emulator_session: Emulator) -> None:
    image_id = first_s2_id(ee_emulator_session.catalog)
    img = ee.Image(image_id)
    expr = img.expression("(NIR - RED) / (NIR + RED)", {"NIR": img.select("B8"), "RED": img.select("B4")})
    grid = s2_grid(300, 300, 16, 16)
    out = ee.data.computePixels({"expression": expr.toFloat(), "fileFormat": "NUMPY_NDARRAY", "grid": grid})
    nd = ee.data.computePixels(
        {"expression": img.normalizedDifference(["B8", "B4"]), "fileFormat": "NUMPY_NDARRAY", "grid": grid}
    )
    asset = ee_emulator_session.catalog.image(image_id)
    nir = read_window(asset, "B8", 300, 300, 16, 16)[0].astype(np.float64)
    red = read_window(asset, "B4", 300, 300, 16, 16)[0].astype(np.float64)
    expected = ((nir - red) / (nir + red)).astype(np.float32)
    np.testing.assert_array_equal(out[out.dtype.names[0]], expected)
    np.testing.assert_array_equal(nd["nd"], expected)


def test_service_account_key_with_loopback_token_uri(ee_emulator: Emulator, tmp_path: Any) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_file = tmp_path / "key.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "sa-project",
                "private_key_id": "1",
                "private_key": pem.decode(),
                "client_email": "robot@sa-project.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": ee_emulator.url + "/token",
            }
        )
    )
    creds = ee.ServiceAccountCredentials("robot@sa-project.iam.gserviceaccount.com", str(key_file))
    ee_emulator.reset_stats()
    ee.Initialize(credentials=creds, opt_url=ee_emulator.url)
    assert (
        ee.ImageCollection(S2)
        .filterDate("2024-06-01", "2024-06-02")
        .filterBounds(ee.Geometry.Point([-0.1, 51.5]))
        .size()
        .getInfo()
        >= 0
    )
    assert ee_emulator.stats()["requests"]["token"] >= 1
    ee.Initialize(credentials=None, project=EMULATOR_PROJECT, opt_url=ee_emulator.url)


def test_concurrency_cap_answers_429() -> None:
    config = EmulatorConfig(latency=Latency(base_seconds=0.6), limits=Limits(max_concurrent=2))
    with serve(config) as emu:
        ee.Initialize(credentials=None, project=EMULATOR_PROJECT, opt_url=emu.url)
        ee.data.setMaxRetries(0)
        try:
            image_id = first_s2_id(emu.catalog)
            outcomes: list[str] = []
            lock = threading.Lock()

            def fetch() -> None:
                try:
                    ee.data.getPixels(
                        {
                            "assetId": image_id,
                            "fileFormat": "NUMPY_NDARRAY",
                            "bandIds": ["B4"],
                            "grid": s2_grid(0, 0, 8, 8),
                        }
                    )
                    result = "ok"
                except ee.EEException as exc:
                    result = f"{exc.__context__.resp.status}: {exc}"  # type: ignore[union-attr]
                with lock:
                    outcomes.append(result)

            threads = [threading.Thread(target=fetch) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert outcomes.count("ok") == 2
            refused = [o for o in outcomes if o != "ok"]
            assert len(refused) == 2 and all(
                o.startswith("429: Too many concurrent requests") for o in refused
            )
            assert emu.stats()["max_concurrency"] == 2
        finally:
            ee.data.setMaxRetries(5)


def test_requests_per_second_cap_answers_429() -> None:
    with serve(EmulatorConfig(limits=Limits(requests_per_second=5))) as emu:
        ee.Initialize(credentials=None, project=EMULATOR_PROJECT, opt_url=emu.url)
        ee.data.setMaxRetries(0)
        try:
            statuses = []
            for _ in range(8):
                try:
                    ee.data.getAsset(S2)
                    statuses.append(200)
                except ee.EEException as exc:
                    assert "Requests per second" in str(exc)
                    statuses.append(exc.__context__.resp.status)  # type: ignore[union-attr]
            assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
        finally:
            ee.data.setMaxRetries(5)


def test_stats_endpoint_over_http(ee_emulator_session: Emulator) -> None:
    ee.data.getAsset(S2)
    with urllib.request.urlopen(ee_emulator_session.url + "/_emulator/stats") as resp:
        stats = json.load(resp)
    assert stats["requests"]["getAsset"] == 1
    assert stats["limits"]["max_concurrent"] == 40 and stats["limits"]["requests_per_second"] == 100
