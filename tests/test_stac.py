"""The STAC catalog beside every download: valid offline, exact about each GeoTIFF, loadable by odc-stac and
stackstac on each image's native grid with the GeoTIFF's pixels, merged across runs, datacubes described."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.warp
import xarray as xr
from pyproj import CRS, Transformer

from edown import AOI, DownloadSummary, StackConfig, download_images, stack_images
from edown.crs import resolve_crs
from edown.emulator.server import Emulator
from edown.records import DownloadResult, ImageRecord
from edown.stac import validate_catalog
from tests.helpers import S2, config, run_edown

L9 = "LANDSAT/LC09/C02/T1_L2"


@dataclass(frozen=True)
class TwoRuns:
    root: Path
    s2: DownloadSummary
    landsat: DownloadSummary

    def downloaded(self) -> list[tuple[ImageRecord, DownloadResult]]:
        out = []
        for summary in (self.s2, self.landsat):
            assert summary.search is not None
            records = {r.record_key: r for r in summary.search.images}
            out += [(records[r.record_key], r) for r in summary.results if r.status == "downloaded"]
        return out


def swath_edge_aoi(emu: Emulator) -> tuple[AOI, str]:
    """A small AOI across the edge of a Sentinel-2 swath (part of its tile has no data) and its date."""
    from shapely.geometry import box

    from edown.emulator.model import parse_rfc3339

    candidates = emu.catalog.query(
        S2, parse_rfc3339("2024-06-01"), parse_rfc3339("2024-06-06"), box(-3, 50, 3, 53)
    )
    asset = next(a for a in candidates if len(a.footprint.halfplanes) > 4)
    day = asset.id.rsplit("/", 1)[1][:8]
    grid = asset.band("B4").grid
    a, b, c = asset.footprint.halfplanes[-1]
    y = grid.transform[5] - grid.height * 10 / 2
    x = -(b * y + c) / a
    lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(x, y)
    return AOI.from_bbox((lon - 0.05, lat - 0.03, lon + 0.05, lat + 0.03)), f"{day[:4]}-{day[4:6]}-{day[6:]}"


@pytest.fixture(scope="module")
def two_runs(ee_emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> TwoRuns:
    """Two downloads into one root: Sentinel-2 at 10 m and 20 m across a swath edge, then Landsat 9."""
    tmp = tmp_path_factory.mktemp("stac")
    aoi, date = swath_edge_aoi(ee_emulator)
    s2 = download_images(
        config(ee_emulator, tmp, bands=("B4", "B8", "B11"), start_date=date, end_date=date, aoi=aoi)
    )
    landsat = download_images(
        config(
            ee_emulator,
            tmp,
            collection_id=L9,
            bands=("SR_B4", "SR_B5"),
            start_date="2024-06-01",
            end_date="2024-06-20",
            aoi=AOI.from_bbox((-2.1, 51.4, -1.9, 51.6)),
        )
    )
    assert s2.failed == landsat.failed == 0 and s2.downloaded >= 2 and landsat.downloaded >= 1
    return TwoRuns(tmp / "data", s2, landsat)


def item_files(root: Path) -> dict[str, Path]:
    """Every item document of the catalog by item id, found by following its links (as a reader would)."""
    catalog = pystac.Catalog.from_file(str(root / "stac" / "catalog.json"))
    return {item.id: Path(str(item.get_self_href())) for item in catalog.get_items(recursive=True)}


def resolve(item_file: Path, href: str) -> Path:
    assert "://" not in href and not href.startswith("/"), f"{href} is not relative"
    return Path(os.path.normpath(item_file.parent / href))


def expected_floats(path: Path) -> np.ndarray:
    """The GeoTIFF's pixels as float64 with NaN where it says nodata (what a masking reader returns)."""
    with rasterio.open(path) as src:
        data = src.read().astype(np.float64)
        nodata = src.nodata
    assert nodata is not None
    return np.where(data == nodata, np.nan, data)


def test_catalog_validates_offline_and_every_item_describes_its_geotiff_exactly(two_runs: TwoRuns) -> None:
    root = two_runs.root
    assert two_runs.s2.stac_catalog == two_runs.landsat.stac_catalog == root / "stac" / "catalog.json"
    documents = validate_catalog(root / "stac" / "catalog.json")
    downloaded = two_runs.downloaded()
    assert documents == 1 + 2 + len(downloaded)  # catalog, one collection per run's collection, the items
    files = item_files(root)
    assert set(files) == {record.record_key for record, _ in downloaded}, (
        "both runs' items are in the catalog"
    )
    assert any(key.endswith("@20m") for key in files) and any(key.endswith("@10m") for key in files)
    catalog = json.loads((root / "stac" / "catalog.json").read_text())
    assert {link["href"] for link in catalog["links"] if link["rel"] == "child"} == {
        "./COPERNICUS.S2_SR_HARMONIZED/collection.json",
        "./LANDSAT.LC09.C02.T1_L2/collection.json",
    }
    for record, result in downloaded:
        item_file = files[record.record_key]
        doc = json.loads(item_file.read_text())
        for link in doc["links"]:
            assert resolve(item_file, link["href"]).is_file()
        image = doc["assets"]["image"]
        assert resolve(item_file, image["href"]) == result.tiff_path
        assert doc["collection"] == record.collection_id
        assert doc["properties"]["datetime"] == record.acquisition_time_utc.isoformat().replace("+00:00", "Z")
        assert doc["properties"]["ee:id"] == record.image_id
        assert doc["properties"].get("edown:cloud_fraction") == record.cloud_fraction
        for key, value in record.properties.items():
            assert doc["properties"][f"ee:{key}"] == value
        with rasterio.open(result.tiff_path) as src:
            assert (
                image["proj:code"] == f"EPSG:{src.crs.to_epsg()}" and image["proj:epsg"] == src.crs.to_epsg()
            )
            assert image["proj:shape"] == [src.height, src.width]
            assert tuple(image["proj:transform"]) == tuple(src.transform)[:6]
            assert [b["data_type"] for b in image["raster:bands"]] == list(src.dtypes)
            assert [b["nodata"] for b in image["raster:bands"]] == [src.nodata] * src.count
            assert [b["name"] for b in image["eo:bands"]] == list(src.descriptions)
            west, south, east, north = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        bbox = doc["bbox"]
        assert (
            bbox[0] <= west + 1e-6
            and bbox[1] <= south + 1e-6
            and bbox[2] >= east - 1e-6
            and bbox[3] >= north - 1e-6
        )
        assert bbox[2] - bbox[0] < (east - west) * 1.01 and bbox[3] - bbox[1] < (north - south) * 1.01
        # Each band is also a one-band asset (for stackstac): a VRT onto the same GeoTIFF, same grid.
        for index, name in enumerate(record.output_band_names):
            band = doc["assets"][name]
            with (
                rasterio.open(resolve(item_file, band["href"])) as vrt,
                rasterio.open(result.tiff_path) as src,
            ):
                assert vrt.count == 1 and vrt.transform == src.transform and vrt.crs == src.crs
                assert vrt.nodata == src.nodata and vrt.dtypes[0] == src.dtypes[index]
                np.testing.assert_array_equal(vrt.read(1), src.read(index + 1))
            assert (
                band["proj:shape"] == image["proj:shape"]
                and band["proj:transform"] == image["proj:transform"]
            )
    s2_common = {
        b["name"]: b.get("common_name")
        for path in files.values()
        for b in json.loads(path.read_text())["assets"]["image"]["eo:bands"]
    }
    assert s2_common["B4"] == "red" and s2_common["B8"] == "nir" and s2_common["SR_B5"] == "nir08"


def test_odc_stac_loads_each_item_on_its_native_grid_with_the_geotiffs_pixels(two_runs: TwoRuns) -> None:
    import odc.stac
    from odc.geo import xy_

    files = item_files(two_runs.root)
    saw_nodata = False
    for record, result in two_runs.downloaded():
        item = pystac.Item.from_file(str(files[record.record_key]))
        image = item.assets["image"]
        names = list(record.output_band_names)
        with rasterio.open(result.tiff_path) as src:
            transform, shape = src.transform, (src.height, src.width)
        expected = expected_floats(result.tiff_path)
        saw_nodata |= bool(np.isnan(expected).any())
        # The item's own CRS and pixel size, anchored on its pixel lattice (Landsat's edges sit at 15 m).
        a, _, c, _, e, f = image.extra_fields["proj:transform"]
        anchor = xy_((c / abs(a)) % 1, (f / abs(e)) % 1)
        crs = image.extra_fields["proj:code"]
        ds = odc.stac.load([item], bands=names, crs=crs, resolution=abs(a), anchor=anchor, chunks=None)
        assert odc.stac.load([item], bands=names[:1], chunks=None).odc.geobox == ds.odc.geobox, (
            "default: native"
        )
        geobox = ds.odc.geobox
        assert geobox.transform == transform and tuple(geobox.shape) == shape, record.record_key
        assert geobox.crs == resolve_crs(record.native_crs)
        for index, name in enumerate(names):
            band = ds[name]
            assert band.dtype == np.dtype(record.output_dtype) and band.attrs["nodata"] == result.nodata
            values = band.values[0].astype(np.float64)
            np.testing.assert_array_equal(
                np.where(values == band.attrs["nodata"], np.nan, values), expected[index]
            )
    assert saw_nodata, "the swath edge leaves pixels without data: nodata must come through as NaN"


def test_stackstac_loads_each_item_on_its_native_grid_with_the_geotiffs_pixels(two_runs: TwoRuns) -> None:
    import stackstac

    files = item_files(two_runs.root)
    for record, result in two_runs.downloaded():
        item_file = files[record.record_key]
        names = list(record.output_band_names)
        with rasterio.open(result.tiff_path) as src:
            transform, shape, epsg, bounds = (
                src.transform,
                (src.height, src.width),
                src.crs.to_epsg(),
                src.bounds,
            )
        expected = expected_floats(result.tiff_path)
        # As plain JSON (what stackstac reads directly): proj:epsg, shape and transform pick the grid;
        # snap_bounds=False keeps grids whose edges are not multiples of the pixel size (Landsat's).
        doc = json.loads(item_file.read_text())
        for asset in doc["assets"].values():
            asset["href"] = str(resolve(item_file, asset["href"]))
        # pystac upgrades proj:epsg to proj:code on reading, which stackstac 0.5 does not read: name the grid.
        item = pystac.Item.from_file(str(item_file))
        item.make_asset_hrefs_absolute()
        loads = {
            "json": stackstac.stack([doc], assets=names, snap_bounds=False),
            "pystac": stackstac.stack(
                [item], assets=names, epsg=epsg, resolution=abs(transform.a), bounds=bounds, snap_bounds=False
            ),
        }
        for how, arr in loads.items():
            assert arr.attrs["transform"] == transform and arr.shape[2:] == shape, (how, record.record_key)
            assert CRS.from_user_input(arr.attrs["crs"]) == CRS.from_epsg(epsg)
            assert list(arr["band"].values) == names
            np.testing.assert_array_equal(arr.values[0], expected)


def test_stack_adds_a_datacube_item_whose_dimensions_match_the_zarr(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    summary = download_images(config(ee_emulator, tmp_path, bands=("B4", "B8"), end_date="2024-06-10"))
    assert summary.downloaded >= 2
    [result] = stack_images(StackConfig(manifest_path=summary.manifest_path))
    root = tmp_path / "data"
    assert validate_catalog(root / "stac" / "catalog.json") == 1 + 2 + summary.downloaded + 1
    files = item_files(root)
    item_file = files[result.group_id]
    assert item_file.parent.parent.name == "datacubes"
    doc = json.loads(item_file.read_text())
    zarr = resolve(item_file, doc["assets"]["zarr"]["href"])
    assert zarr == result.output_path and doc["assets"]["zarr"]["type"] == "application/vnd+zarr"
    dims = doc["properties"]["cube:dimensions"]
    with xr.open_zarr(zarr) as ds:
        assert (
            list(ds["data"].dims)
            == ["time", "band", "y", "x"]
            == doc["properties"]["cube:variables"]["data"]["dimensions"]
        )
        assert dims["band"]["values"] == [str(b) for b in ds["band"].values]
        described = np.array([t.rstrip("Z") for t in dims["time"]["values"]], dtype="datetime64[ms]")
        np.testing.assert_array_equal(described, ds["time"].values.astype("datetime64[ms]"))
        for axis in ("x", "y"):
            coords = ds[axis].values
            assert dims[axis]["extent"] == [float(coords.min()), float(coords.max())]
            assert dims[axis]["step"] == float(coords[1] - coords[0])
            assert (
                dims[axis]["reference_system"] == CRS.from_wkt(ds["spatial_ref"].attrs["crs_wkt"]).to_epsg()
            )
        assert doc["properties"]["start_datetime"] == dims["time"]["extent"][0]
        assert doc["assets"]["zarr"]["proj:shape"] == [ds.sizes["y"], ds.sizes["x"]]
        assert (
            doc["properties"]["cube:variables"]["data"]["nodata"]
            == ds["data"].encoding["_FillValue"]
            == 65535
        )


def test_a_rerun_replaces_its_items_and_keeps_the_others(ee_emulator: Emulator, tmp_path: Path) -> None:
    first = download_images(config(ee_emulator, tmp_path, bands=("B4",), end_date="2024-06-05"))
    second = download_images(
        config(ee_emulator, tmp_path, bands=("B4",), start_date="2024-06-06", end_date="2024-06-10")
    )
    assert first.downloaded >= 1 and second.downloaded >= 1
    root = tmp_path / "data"
    before = item_files(root)
    assert set(before) == {
        r.record_key for r in (*first.results, *second.results) if r.status == "downloaded"
    }
    texts = {key: path.read_text() for key, path in before.items()}
    stamps = {key: path.stat().st_mtime_ns for key, path in before.items()}
    # The first run's images again, now with two bands: their items are replaced, the others untouched.
    again = download_images(
        config(ee_emulator, tmp_path, bands=("B4", "B8"), end_date="2024-06-05", overwrite=True)
    )
    after = item_files(root)
    assert after == before
    replaced = {r.record_key for r in again.results if r.status == "downloaded"}
    assert replaced == {r.record_key for r in first.results if r.status == "downloaded"}
    for key, path in after.items():
        bands = [b["name"] for b in json.loads(path.read_text())["assets"]["image"]["eo:bands"]]
        if key in replaced:
            assert bands == ["B4", "B8"]
        else:
            assert bands == ["B4"] and path.read_text() == texts[key]
            assert path.stat().st_mtime_ns == stamps[key], "an unchanged item is not rewritten"
    validate_catalog(root / "stac" / "catalog.json")


def test_a_symlinked_stac_folder_is_refused_before_anything_is_fetched(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root.mkdir()
    (root / "stac").symlink_to(elsewhere, target_is_directory=True)
    ee_emulator.reset_stats()
    done = run_edown(
        "download", "-c", S2, "--start-date", "2024-06-01", "--end-date", "2024-06-05", "--bbox", "-0.60,51.48,-0.43,51.56",
        "-b", "B4", "-o", str(root), "--server-url", ee_emulator.url,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "stac" in done.stderr and "symbolic link" in done.stderr
    assert list(elsewhere.iterdir()) == []
    assert not any((root / "images").rglob("*.tif"))


def test_cli_download_says_where_the_catalog_is(ee_emulator: Emulator, tmp_path: Path) -> None:
    root = tmp_path / "data"
    done = run_edown(
        "download", "-c", S2, "--start-date", "2024-06-01", "--end-date", "2024-06-05", "--bbox", "-0.60,51.48,-0.43,51.56",
        "-b", "B4", "-o", str(root), "--server-url", ee_emulator.url,
        cwd=tmp_path, env={"COLUMNS": "250"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if "STAC catalog" in line]
    assert str(root / "stac" / "catalog.json") in line
    assert validate_catalog(root / "stac" / "catalog.json") == 3


def test_a_grid_without_an_epsg_code_is_described_by_wkt2_and_loads_natively(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    import odc.stac

    summary = download_images(
        config(
            ee_emulator,
            tmp_path,
            collection_id="MODIS/061/MOD09GA",
            bands=("sur_refl_b01", "sur_refl_b06"),
            start_date="2024-06-01",
            end_date="2024-06-01",
            aoi=AOI.from_bbox((-1.0, 51.0, 0.0, 52.0)),
        )
    )
    [result] = [r for r in summary.results if r.status == "downloaded"]
    root = tmp_path / "data"
    assert validate_catalog(root / "stac" / "catalog.json") == 3
    [item_file] = item_files(root).values()
    item = pystac.Item.from_file(str(item_file))
    image = item.assets["image"].extra_fields
    with rasterio.open(result.tiff_path) as src:
        assert image["proj:code"] is None and "proj:epsg" not in image
        assert CRS.from_wkt(image["proj:wkt2"]) == CRS.from_wkt(src.crs.to_wkt())
        transform, data = src.transform, src.read()
    ds = odc.stac.load([item], bands=["sur_refl_b01", "sur_refl_b06"], chunks=None)
    assert ds.odc.geobox.transform == transform
    np.testing.assert_array_equal(np.stack([ds.sur_refl_b01.values[0], ds.sur_refl_b06.values[0]]), data)


def test_what_to_write_is_computed_without_touching_the_disk(two_runs: TwoRuns, tmp_path: Path) -> None:
    from edown.stac import ImageEntry, catalog_documents

    elsewhere = tmp_path / "not-created"
    entries = [ImageEntry(record, result) for record, result in two_runs.downloaded()]
    documents = catalog_documents(elsewhere, {}, entries)
    assert not elsewhere.exists()
    position = {name: i for i, name in enumerate(documents)}
    assert max(position.values()) == position["catalog.json"], "the catalog is written last"
    for name, i in position.items():
        if name.count("/") == 2:  # <collection>/<image>/<file>: before the collection that links it
            assert i < position[name.split("/")[0] + "/collection.json"]
    written = {
        path.relative_to(two_runs.root / "stac").as_posix(): path.read_text()
        for path in (two_runs.root / "stac").rglob("*")
        if path.is_file()
    }
    assert set(documents) == set(written)
    # The same documents but for the asset hrefs, which point from the other root's stac/ to these images.
    same = [name for name in documents if documents[name] == written[name]]
    assert "catalog.json" in same and "COPERNICUS.S2_SR_HARMONIZED/collection.json" in same


def test_a_damaged_catalog_is_refused_before_work_and_nothing_is_lost(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    from edown.errors import OutputPathError

    first = download_images(config(ee_emulator, tmp_path, bands=("B4",), end_date="2024-06-05"))
    root = tmp_path / "data"
    collection = root / "stac" / "COPERNICUS.S2_SR_HARMONIZED" / "collection.json"
    saved = {p: p.read_bytes() for p in (root / "stac").rglob("*") if p.is_file()}
    collection.write_text("{not json")
    later = config(ee_emulator, tmp_path, bands=("B4",), start_date="2024-06-06", end_date="2024-06-10")
    with pytest.raises(OutputPathError, match=r"collection\.json cannot be read") as refused:
        download_images(later)
    assert refused.value.exit_code == 2 and "move the stac folder away" in (refused.value.hint or "")
    assert not [p for p in (root / "images").rglob("*.tif") if p not in {r.tiff_path for r in first.results}]
    assert {p: p.read_bytes() for p in (root / "stac").rglob("*") if p.is_file() and p != collection} == {
        p: b for p, b in saved.items() if p != collection
    }
    # A catalog linking outside itself is refused the same way, not followed.
    doc = json.loads(saved[collection])
    doc["links"].append({"rel": "item", "href": "../../../elsewhere/item.json"})
    collection.write_text(json.dumps(doc))
    with pytest.raises(OutputPathError, match="outside the catalog"):
        download_images(later)


def test_an_icechunk_stack_gets_its_own_datacube_item_with_its_commit(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    from edown import open_stack

    summary = download_images(config(ee_emulator, tmp_path, bands=("B4", "B8"), end_date="2024-06-05"))
    [plain] = stack_images(StackConfig(manifest_path=summary.manifest_path))
    [ice] = stack_images(StackConfig(manifest_path=summary.manifest_path, store="icechunk"))
    root = tmp_path / "data"
    assert validate_catalog(root / "stac" / "catalog.json") == 1 + 2 + summary.downloaded + 2
    files = item_files(root)
    zarr_doc = json.loads(files[plain.group_id].read_text())
    ice_file = files[f"{ice.group_id}.icechunk"]
    ice_doc = json.loads(ice_file.read_text())
    asset = ice_doc["assets"]["zarr"]
    assert resolve(ice_file, asset["href"]) == ice.output_path and "type" not in asset
    assert asset["edown:store"] == "icechunk" and asset["edown:snapshot_id"] == ice.snapshot_id is not None
    assert ice_doc["properties"]["cube:dimensions"] == zarr_doc["properties"]["cube:dimensions"]
    with open_stack(ice.output_path) as ds:
        assert ice_doc["properties"]["cube:dimensions"]["time"]["extent"][1].startswith(
            str(ds["time"].values[-1])[:19]
        )
