"""search_images against the emulator: bands, dtypes, native grids, alignment, filters, request counts."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from edown import AOI, SearchConfig, search_images
from edown.emulator.model import parse_rfc3339
from edown.emulator.server import Emulator
from edown.errors import CollectionNotFoundError, ConfigError, NoImagesFoundError
from edown.manifest import load_manifest, new_manifest, set_search

S2 = "COPERNICUS/S2_SR_HARMONIZED"
LANDSAT = "LANDSAT/LC09/C02/T1_L2"
# Inside the single tile T30UXC (real London, the spec's bbox, also touches T30UYC).
WEST_LONDON = (-0.60, 51.48, -0.43, 51.56)
LONDON = (-0.15, 51.48, 0.02, 51.56)


def s2_config(emu: Emulator, **kw: Any) -> SearchConfig:
    base: dict[str, Any] = {
        "collection_id": S2,
        "start_date": "2024-06-01",
        "end_date": "2024-06-30",
        "aoi": AOI.from_bbox(WEST_LONDON),
        "bands": ("B4", "B8"),
        "server_url": emu.url,
    }
    base.update(kw)
    return SearchConfig(**base)


def test_s2_b4_b8_are_uint16_on_the_10m_grid(ee_emulator: Emulator) -> None:
    result = search_images(s2_config(ee_emulator))
    assert len(result.images) == 6
    for record in result.images:
        assert record.selected_band_ids == ("B4", "B8")
        assert record.output_dtype == "uint16"
        assert record.native_crs == "EPSG:32630"
        assert record.native_transform == (10.0, 0.0, 600000.0, 0.0, -10.0, 5800020.0)
        assert (record.native_width, record.native_height) == (10980, 10980)
        col, row, width, height = record.window
        # The window transform is the native grid shifted by whole pixels.
        assert record.window_transform == (10.0, 0.0, 600000.0 + 10 * col, 0.0, -10.0, 5800020.0 - 10 * row)
        assert (width, height) == (1210, 931)
    assert len(result.alignment_groups) == 1
    group = result.alignment_groups[0]
    assert group.dtype == "uint16" and group.band_names == ("B4", "B8") and len(group.group_id) == 12
    assert group.image_ids == tuple(r.image_id for r in result.images)


def test_window_covers_the_aoi_snapped_outward(ee_emulator: Emulator) -> None:
    from pyproj import Transformer

    record = search_images(s2_config(ee_emulator, end_date="2024-06-05")).images[0]
    aoi = WEST_LONDON
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32630", always_xy=True)
    xs, ys = to_utm.transform([aoi[0], aoi[2], aoi[0], aoi[2]], [aoi[1], aoi[1], aoi[3], aoi[3]])
    sx, _, tx, _, sy, ty = record.window_transform
    _, _, width, height = record.window
    assert tx <= min(xs) and tx + width * sx >= max(xs)
    assert ty >= max(ys) and ty + height * sy <= min(ys)
    assert tx + sx > min(xs) and ty + sy < max(ys)  # no extra pixel beyond the snap


def test_mixed_resolutions_give_one_record_per_native_grid(ee_emulator: Emulator) -> None:
    result = search_images(s2_config(ee_emulator, bands=("B4", "B11")))
    tens = [r for r in result.images if r.grid_label == "10m"]
    twenties = [r for r in result.images if r.grid_label == "20m"]
    assert len(tens) == len(twenties) == 6
    assert all(r.selected_band_ids == ("B4",) and r.native_transform[0] == 10 for r in tens)
    assert all(r.selected_band_ids == ("B11",) and r.native_transform[0] == 20 for r in twenties)
    assert all((r.native_width, r.native_height) == (5490, 5490) for r in twenties)
    assert {g.grid_label for g in result.alignment_groups} == {"10m", "20m"}
    assert len({r.record_key for r in result.images}) == 12


def test_resample_finest_keeps_one_record_on_the_finest_grid(ee_emulator: Emulator) -> None:
    result = search_images(s2_config(ee_emulator, bands=("B11", "B4"), resample="finest"))
    assert len(result.images) == 6
    assert all(r.selected_band_ids == ("B11", "B4") and r.native_transform[0] == 10 for r in result.images)


def test_band_aliases_regex_rename_and_scale(ee_emulator: Emulator) -> None:
    result = search_images(
        s2_config(
            ee_emulator,
            bands=("B04",),
            band_include=("B[23]",),
            band_exclude=("B3",),
            rename_map={"B4": "red", "B2": "blue"},
            scale_map={"B4": 0.0001},
            end_date="2024-06-05",
        )
    )
    record = result.images[0]
    assert record.selected_band_ids == ("B4", "B2")
    assert record.output_band_names == ("red", "blue")
    assert record.output_dtype == "float32"
    assert result.output_band_names == ("red", "blue")


def test_landsat_dates_with_different_footprints_share_one_alignment_group(ee_emulator: Emulator) -> None:
    config = SearchConfig(
        collection_id=LANDSAT,
        start_date="2024-04-01",
        end_date="2024-09-30",
        aoi=AOI.from_bbox((-2.1, 51.4, -1.9, 51.6)),
        bands=("SR_B4", "SR_B5"),
        server_url=ee_emulator.url,
    )
    result = search_images(config)
    assert len(result.images) >= 20
    transforms = {r.native_transform for r in result.images}
    sizes = {(r.native_width, r.native_height) for r in result.images}
    assert len(transforms) > 5 and len(sizes) > 3  # origins and sizes differ from date to date
    assert all(r.native_transform[2] % 30 == 15 for r in result.images)  # the 15 m mod 30 m phase
    assert len(result.alignment_groups) == 1
    group = result.alignment_groups[0]
    assert len(group.image_ids) == len(result.images)
    assert group.crs == "EPSG:32630"
    # The group grid is on the shared 30 m lattice and covers every image's window.
    assert group.transform[2] % 30 == 15 and group.transform[0] == 30.0
    assert all(r.output_dtype == "uint16" for r in result.images)


def test_modis_sinusoidal_and_era5_float(ee_emulator: Emulator) -> None:
    modis = search_images(
        SearchConfig(
            collection_id="MODIS/061/MOD09GA",
            start_date="2024-06-01",
            end_date="2024-06-03",
            aoi=AOI.from_bbox(LONDON),
            bands=("sur_refl_b01", "sur_refl_b02"),
            server_url=ee_emulator.url,
        )
    )
    # The inclusive end date keeps the daily image of 06-03 (which ends at midnight after).
    assert [r.image_id.rsplit("/", 1)[1] for r in modis.images] == ["2024_06_01", "2024_06_02", "2024_06_03"]
    assert all(r.native_crs == "SR-ORG:6974" and r.output_dtype == "int16" for r in modis.images)
    assert modis.images[0].native_transform[0] == pytest.approx(463.312716527917)
    era5 = search_images(
        SearchConfig(
            collection_id="ECMWF/ERA5_LAND/DAILY_AGGR",
            start_date="2024-06-01",
            end_date="2024-06-01",
            aoi=AOI.from_bbox(LONDON),
            bands=("temperature_2m",),
            server_url=ee_emulator.url,
        )
    )
    record = era5.images[0]
    assert record.output_dtype == "float32" and record.native_crs == "EPSG:4326"
    # Pixel edges at -0.15, -0.05, 0.05 (lon) and 51.65, 51.55, 51.45 (lat): two by two pixels.
    assert record.window == (1799, 384, 2, 2)


def test_cloud_cover_filter_removes_the_right_images(ee_emulator: Emulator) -> None:
    everything = search_images(s2_config(ee_emulator, start_date="2024-04-01", end_date="2024-09-30"))
    clear = search_images(
        s2_config(
            ee_emulator,
            start_date="2024-04-01",
            end_date="2024-09-30",
            property_filters=("CLOUDY_PIXEL_PERCENTAGE < 20",),
        )
    )
    covers = {r.image_id: r.properties["CLOUDY_PIXEL_PERCENTAGE"] for r in everything.images}
    expected = {i for i, cc in covers.items() if cc < 20}
    assert 0 < len(expected) < len(covers)
    assert {r.image_id for r in clear.images} == expected


def test_a_year_over_many_tiles_takes_a_handful_of_requests(ee_emulator: Emulator) -> None:
    ee_emulator.reset_stats()
    result = search_images(
        SearchConfig(
            collection_id=S2,
            start_date="2024-01-01",
            end_date="2024-12-31",
            aoi=AOI.from_bbox((-1.0, 51.0, 1.0, 52.5)),
            bands=("B4", "B8"),
            server_url=ee_emulator.url,
        )
    )
    tiles = {r.properties["MGRS_TILE"] for r in result.images}
    assert len(tiles) >= 6 and len(result.images) > 400
    requests = ee_emulator.stats()["requests"]
    assert requests.get("listAssets") == 1
    assert requests.get("compute", 0) == 0 and requests.get("getAsset", 0) == 0
    assert result.requests == 1


def test_initialize_happens_once_per_process(ee_emulator: Emulator) -> None:
    ee_emulator.reset_stats()
    search_images(s2_config(ee_emulator, end_date="2024-06-05"))
    search_images(s2_config(ee_emulator, end_date="2024-06-10"))
    assert ee_emulator.stats()["requests"]["listAssets"] == 2
    # ee caches the algorithm list per process; what repeats per Initialize is discovery, which is not counted.
    assert ee_emulator.stats()["requests"].get("algorithms", 0) <= 1


def test_image_missing_a_band_is_kept_and_marked(ee_emulator: Emulator, tmp_path: Path) -> None:
    result = search_images(s2_config(ee_emulator, bands=("B4", "B8"), end_date="2024-06-05"))
    assert not any(r.missing_bands for r in result.images)
    with pytest.raises(ConfigError, match=r"bands: B99 is not a band of any image found; available: B1, B2"):
        search_images(s2_config(ee_emulator, bands=("B4", "B99")))


def test_search_manifest_round_trips(ee_emulator: Emulator, tmp_path: Path) -> None:
    config = s2_config(ee_emulator, bands=("B4", "B11"))
    result = search_images(config)
    manifest = new_manifest(tmp_path / "search.json", None)
    set_search(manifest, config, result)
    manifest.write()
    loaded = load_manifest(tmp_path / "search.json")
    assert loaded.search == result
    assert loaded.search_config is not None and loaded.search_config["bands"] == ["B4", "B11"]
    assert "credentials" not in json.loads((tmp_path / "search.json").read_text())["search"]["config"]


def test_quickstart_example_from_the_spec_runs_as_written(
    ee_emulator: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The spec's search example, verbatim; EDOWN_SERVER_URL points the default endpoint at the emulator.
    example = textwrap.dedent(
        """
        from edown import AOI, SearchConfig, search_images
        config = SearchConfig(
            collection_id="COPERNICUS/S2_SR_HARMONIZED",
            start_date="2024-06-01",
            end_date="2024-06-07",
            aoi=AOI.from_bbox((-0.15, 51.48, 0.02, 51.56)),
            bands=("B4", "B8"),
        )
        result = search_images(config)
        print(f"Found {len(result.images)} images")
        print(f"Alignment groups: {len(result.alignment_groups)}")
        for image in result.images:
            print(f" {image.image_id} CRS={image.native_crs}")
        """
    )
    monkeypatch.setenv("EDOWN_SERVER_URL", ee_emulator.url)
    exec(compile(example, "spec-quickstart", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    # Two neighbouring tiles of zone 30 on one 10 m lattice: two images, one alignment group.
    assert out == [
        "Found 2 images",
        "Alignment groups: 1",
        " COPERNICUS/S2_SR_HARMONIZED/20240603T104058_20240603T104237_T30UXC CRS=EPSG:32630",
        " COPERNICUS/S2_SR_HARMONIZED/20240604T104039_20240604T104221_T30UYC CRS=EPSG:32630",
    ]


# ---- bad input: one clear error each -----------------------------------------------------------------


def test_unknown_collection_is_a_clear_404(ee_emulator: Emulator) -> None:
    with pytest.raises(
        CollectionNotFoundError, match=r"collection_id: 'COPERNICUS/S2_NOPE' was not found"
    ) as info:
        search_images(s2_config(ee_emulator, collection_id="COPERNICUS/S2_NOPE"))
    assert info.value.status == 404


def test_no_bands_matched_lists_what_exists(ee_emulator: Emulator) -> None:
    with pytest.raises(
        ConfigError, match=r"band_include: no band matched /C\.\*/; available: B1, B2, B3, B4"
    ) as info:
        search_images(s2_config(ee_emulator, bands=(), band_include=("C.*",), end_date="2024-06-05"))
    assert info.value.field == "band_include"


def test_no_images_found_says_the_filters_used(ee_emulator: Emulator) -> None:
    with pytest.raises(NoImagesFoundError) as info:
        search_images(s2_config(ee_emulator, property_filters=("CLOUDY_PIXEL_PERCENTAGE < 0",)))
    message = str(info.value)
    assert "no images in COPERNICUS/S2_SR_HARMONIZED from 2024-06-01 to 2024-06-30 (inclusive)" in message
    assert "bounds -0.6, 51.48, -0.43, 51.56" in message and "CLOUDY_PIXEL_PERCENTAGE < 0" in message


@pytest.mark.parametrize(
    ("kwargs", "field", "pattern"),
    [
        ({"start_date": "2024-13-01"}, "start_date", r"start_date: '2024-13-01' is not a valid date"),
        ({"start_date": "June 1"}, "start_date", r"start_date: 'June 1' is not a date \(use YYYY-MM-DD"),
        ({"start_date": "2024-07-01"}, "end_date", r"end_date: 2024-06-30 is before start_date 2024-07-01"),
        ({"band_include": ("B[",)}, "band_include", r"band_include: bad regular expression 'B\['"),
        ({"rename_map": '{"B4": '}, "rename_map", r"rename_map: not valid JSON"),
        ({"scale_map": {"B4": "x"}}, "scale_map", r"scale_map: factor for 'B4' must be a finite number"),
        (
            {"transform_plugin": "not a spec"},
            "transform_plugin",
            r"transform_plugin: 'not a spec' is not module:function",
        ),
        (
            {"property_filters": ("CLOUDY <",)},
            "property_filters",
            r"property_filters: cannot parse 'CLOUDY <'",
        ),
        (
            {"collection_id": "bad id!"},
            "collection_id",
            r"collection_id: 'bad id!' is not an Earth Engine collection id",
        ),
        ({"server_url": "earthengine"}, "server_url", r"server_url: 'earthengine' is not an http\(s\) URL"),
    ],
)
def test_bad_config_fields_fail_at_construction(
    ee_emulator: Emulator, kwargs: dict[str, Any], field: str, pattern: str
) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        s2_config(ee_emulator, **kwargs)
    assert info.value.field == field


def test_maps_must_name_selected_bands(ee_emulator: Emulator) -> None:
    with pytest.raises(ConfigError, match=r"rename_map: 'B5' is not one of the selected bands \(B4, B8\)"):
        search_images(s2_config(ee_emulator, rename_map={"B5": "rededge"}, end_date="2024-06-05"))
    with pytest.raises(ConfigError, match=r"rename_map: two bands would both be named 'x'"):
        search_images(s2_config(ee_emulator, rename_map={"B4": "x", "B8": "x"}, end_date="2024-06-05"))


@pytest.mark.parametrize(
    ("bbox", "pattern"),
    [
        ((0.02, 51.48, -0.15, 51.56), r"bbox: inverted or empty box"),
        ((-200, 51.48, 0.02, 51.56), r"bbox: xmin=-200 is outside \[-180, 180\]"),
        ((1, 2, 3), r"bbox: expected four numbers xmin,ymin,xmax,ymax, got 3"),
        (("a", 2, 3, 4), r"bbox: expected four numbers"),
    ],
)
def test_bad_bbox(bbox: Any, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        AOI.from_bbox(bbox)


def test_geojson_inputs(tmp_path: Path) -> None:
    square = [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]
    other = [[[2, 2], [3, 2], [3, 3], [2, 3], [2, 2]]]
    fc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": square}},
            {
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "MultiPolygon", "coordinates": [other]},
            },
        ],
    }
    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps(fc))
    aoi = AOI.from_geojson(path)
    assert aoi.bounds == (0.0, 0.0, 3.0, 3.0) and aoi.geometry["type"] == "MultiPolygon"
    assert AOI.from_geojson(
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square}}
    ).bounds == (0, 0, 1, 1)
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    with pytest.raises(ConfigError, match=r"geojson: invalid geometry: Self-intersection"):
        AOI.from_geojson(bowtie)
    with pytest.raises(ConfigError, match=r"geojson: the FeatureCollection has no features"):
        AOI.from_geojson({"type": "FeatureCollection", "features": []})
    with pytest.raises(ConfigError, match=r"geojson: geometry type Point is not an area"):
        AOI.from_geojson({"type": "Point", "coordinates": [0, 0]})
    with pytest.raises(ConfigError, match=r"geojson: not valid JSON"):
        AOI.from_geojson("{not json")
    with pytest.raises(ConfigError, match=r"geojson: file not found"):
        AOI.from_geojson(tmp_path / "missing.geojson")
    huge = {"type": "Polygon", "coordinates": [[[i * 1e-6, 0] for i in range(120_000)] + [[0, 1], [0, 0]]]}
    with pytest.raises(ConfigError, match=r"geojson: 120002 vertices is too many"):
        AOI.from_geojson(huge)


def test_plugin_not_importable_is_one_line(ee_emulator: Emulator) -> None:
    with pytest.raises(ConfigError, match=r"transform_plugin: cannot import module 'no_such_module_xyz'"):
        search_images(s2_config(ee_emulator, transform_plugin="no_such_module_xyz:fn"))


def test_transform_plugin_output_bands_are_described(
    ee_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(
        textwrap.dedent(
            """
        def add_ndvi(image, metadata, config):
            assert metadata["id"].startswith("COPERNICUS/S2_SR_HARMONIZED/")
            assert "CLOUDY_PIXEL_PERCENTAGE" in metadata["properties"]
            return image.addBands(image.normalizedDifference(["B8", "B4"]).rename("NDVI"))
        """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_plugin", None)
    ee_emulator.reset_stats()
    result = search_images(
        s2_config(
            ee_emulator, bands=("B4", "NDVI"), transform_plugin="my_plugin:add_ndvi", end_date="2024-06-10"
        )
    )
    assert all(r.selected_band_ids == ("B4", "NDVI") and r.output_dtype == "float32" for r in result.images)
    assert all(r.native_transform[0] == 10.0 and r.native_width == 10980 for r in result.images)
    assert ee_emulator.stats()["requests"]["compute"] == 1  # both images described in one batched request


def test_dates_are_inclusive(ee_emulator: Emulator) -> None:
    result = search_images(s2_config(ee_emulator, start_date="2024-06-03", end_date="2024-06-03"))
    assert len(result.images) == 1
    assert result.images[0].acquisition_time_utc.date().isoformat() == "2024-06-03"
    config = dataclasses.replace(s2_config(ee_emulator), start_date="2024-06-04", end_date="2024-06-07")
    with pytest.raises(NoImagesFoundError):
        search_images(config)
    assert parse_rfc3339("2024-06-03") < int(result.images[0].acquisition_time_utc.timestamp() * 1000)
