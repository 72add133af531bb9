"""stack_images: exact values, CRS through rioxarray/odc-geo, edge tiles, mosaics, appends, backends."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr

from edown import AOI, DownloadConfig, StackConfig, download_images, open_stack, stack_images
from edown.emulator.server import Emulator
from edown.errors import ManifestError, StackError
from edown.manifest import load_manifest, new_manifest, set_search
from edown.search import search_images

S2 = "COPERNICUS/S2_SR_HARMONIZED"
LONDON = (-0.15, 51.48, 0.02, 51.56)  # T30UXC and its neighbour T30UYC, one 10 m lattice


def download(emu: Emulator, root: Path, **kw: Any) -> Any:
    base: dict[str, Any] = {
        "collection_id": S2,
        "start_date": "2024-06-01",
        "end_date": "2024-06-12",
        "aoi": AOI.from_bbox(LONDON),
        "bands": ("B4", "B8"),
        "server_url": emu.url,
        "output_root": root,
    }
    base.update(kw)
    summary = download_images(DownloadConfig(**base))
    assert summary.failed == 0
    return summary


def store_digest(path: Path) -> dict[str, str]:
    """sha256 of every chunk file of ``data`` (the bytes the backends wrote)."""
    out = {}
    for file in sorted((path / "data" / "c").rglob("*")):
        if file.is_file():
            out[str(file.relative_to(path))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


def test_values_equal_the_geotiffs_and_crs_reads_back(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download(ee_emulator, tmp_path / "data")
    [result] = stack_images(StackConfig(manifest_path=summary.manifest_path))
    assert (
        result.output_path
        == tmp_path / "data" / "stacks" / "COPERNICUS.S2_SR_HARMONIZED" / f"{result.group_id}.zarr"
    )
    ds = open_stack(result.output_path)
    group = summary.search.alignment_groups[0]
    assert ds["data"].dims == ("time", "band", "y", "x")
    assert ds["data"].dtype == np.uint16 and ds["data"].attrs["_FillValue"] == 65535
    assert list(ds.band.values) == ["B4", "B8"]
    assert ds.sizes["time"] == len(summary.results) == 4  # two tiles, two dates each
    # Only data types with a Zarr v3 specification, so other Zarr readers (GDAL, zarrs, ...) open it.
    types = {
        p.parent.name: json.loads(p.read_text())["data_type"] for p in result.output_path.glob("*/zarr.json")
    }
    assert types["band"] == types["image_id"] == "string" and types["data"] == "uint16"
    assert not [n for n, t in types.items() if not isinstance(t, str)], types
    # CRS and transform through rioxarray and odc-geo, from a plain xr.open_zarr.
    plain = xr.open_zarr(result.output_path)
    assert plain.rio.crs.to_epsg() == 32630
    assert tuple(plain.rio.transform())[:6] == group.transform
    import odc.geo.xr  # noqa: F401

    geobox = plain.odc.geobox
    assert geobox.crs.epsg == 32630 and tuple(geobox.affine)[:6] == group.transform
    assert geobox.shape == (group.height, group.width)
    # Every time step equals its GeoTIFF placed on the group grid, nodata elsewhere.
    records = {r.record_key: r for r in summary.search.images}
    for result_image in summary.results:
        record = records[result_image.record_key]
        t = list(ds.image_id.values).index(record.image_id)
        assert np.datetime64(ds.time.values[t], "ms").astype(np.int64) == round(
            record.acquisition_time_utc.timestamp() * 1000
        )
        with rasterio.open(result_image.tiff_path) as src:
            tiff = src.read()
        dc = round((record.window_transform[2] - group.transform[2]) / 10)
        dr = round((record.window_transform[5] - group.transform[5]) / -10)
        slab = ds["data"][t].values
        np.testing.assert_array_equal(slab[:, dr : dr + tiff.shape[1], dc : dc + tiff.shape[2]], tiff)
        outside = np.ones(slab.shape[1:], bool)
        outside[dr : dr + tiff.shape[1], dc : dc + tiff.shape[2]] = False
        assert (slab[:, outside] == 65535).all()
    assert "CLOUDY_PIXEL_PERCENTAGE" in ds.coords and ds.CLOUDY_PIXEL_PERCENTAGE.dims == ("time",)
    assert ds["time"].encoding["units"] == "milliseconds since 1970-01-01"
    masked = open_stack(result.output_path, masked=True)
    assert masked["data"].dtype.kind == "f" and bool(masked["data"].isnull().any())


def test_float_stack_keeps_nan_nodata_for_every_reader(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download(
        ee_emulator,
        tmp_path / "data",
        collection_id="ECMWF/ERA5_LAND/DAILY_AGGR",
        bands=("temperature_2m",),
        start_date="2024-06-01",
        end_date="2024-06-02",
        aoi=AOI.from_bbox((-30.0, 30.0, 30.0, 60.0)),
    )
    [result] = stack_images(StackConfig(manifest_path=summary.manifest_path))
    meta = json.loads((result.output_path / "data" / "zarr.json").read_text())
    assert meta["data_type"] == "float32" and meta["fill_value"] == "NaN"
    ds = open_stack(result.output_path)
    for step in summary.results:
        with rasterio.open(step.tiff_path) as src:
            tiff = src.read()
        t = list(ds.image_id.values).index(step.image_id)
        assert np.isnan(tiff).any() and (~np.isnan(tiff)).any(), "the box holds land and sea"
        np.testing.assert_array_equal(ds["data"][t].values, tiff)  # NaN where EE had no data
    opened = xr.open_zarr(result.output_path)
    assert opened.rio.crs.to_epsg() == 4326 and bool(opened["data"].isnull().any())


@pytest.mark.skipif(
    tuple(int(p) for p in rasterio.__gdal_version__.split(".")[:2]) < (3, 12),
    reason="GDAL before 3.12 (e.g. 3.10 in rasterio 1.4 wheels) reads only a draft of Zarr v3",
)
def test_gdal_reads_the_store_with_grid_and_nodata(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download(ee_emulator, tmp_path / "data", end_date="2024-06-05")
    [result] = stack_images(StackConfig(manifest_path=summary.manifest_path))
    group = summary.search.alignment_groups[0]
    ds = open_stack(result.output_path)
    # GDAL's own Zarr driver shows time x band as bands, time-major.
    with rasterio.open(f'ZARR:"{result.output_path}":/data') as src:
        assert src.crs.to_epsg() == 32630 and tuple(src.transform)[:6] == group.transform
        assert src.nodata == 65535 and src.count == ds.sizes["time"] * ds.sizes["band"]
        np.testing.assert_array_equal(src.read(1), ds["data"][0, 0].values)
        np.testing.assert_array_equal(src.read(2), ds["data"][0, 1].values)
        np.testing.assert_array_equal(src.read(src.count), ds["data"][-1, -1].values)


def test_edge_tile_is_placed_on_the_common_grid(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download(ee_emulator, tmp_path / "data", end_date="2024-06-05")
    windows = {r.record_key: r.window for r in summary.search.images}
    assert len({w[2:] for w in windows.values()}) == 2, "the two tiles cover different parts of the AOI"
    [result] = stack_images(StackConfig(manifest_path=summary.manifest_path))
    ds = open_stack(result.output_path)
    uyc = int(np.flatnonzero([i.endswith("T30UYC") for i in ds.image_id.values])[0])
    data = ds["data"][uyc, 0].values
    # T30UYC starts at x=699960: columns west of it have no data in that time step.
    first_col = round((699960 - ds.x.values[0] + 5) / 10)
    assert (data[:, :first_col] == 65535).all() and (data[:, first_col:] != 65535).all()


def test_append_gains_exactly_the_new_times_and_rewrites_nothing(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    first = download(ee_emulator, root, end_date="2024-06-05")
    [built] = stack_images(StackConfig(manifest_path=first.manifest_path, chunk_size=256))
    before = store_digest(built.output_path)
    mtimes = {p: p.stat().st_mtime_ns for p in (built.output_path / "data" / "c").rglob("*") if p.is_file()}
    second = download(ee_emulator, root, end_date="2024-06-12")
    [appended] = stack_images(StackConfig(manifest_path=second.manifest_path))
    assert appended.output_path == built.output_path
    assert built.image_count == 2 and appended.appended == 2 and appended.image_count == 4
    ds = open_stack(appended.output_path)
    assert ds.sizes["time"] == 4
    new_ids = {r.image_id for r in second.search.images} - {r.image_id for r in first.search.images}
    assert set(ds.image_id.values[2:]) == new_ids
    after = store_digest(appended.output_path)
    assert all(after[k] == v for k, v in before.items()), "existing chunks are never rewritten"
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items())
    [again] = stack_images(StackConfig(manifest_path=second.manifest_path))
    assert again.appended == 0 and again.image_count == 4
    # The appended store keeps its 256-pixel chunks and holds exactly what a rebuild writes.
    assert ds["data"].encoding["chunks"] == (1, 2, 256, 256)
    config = StackConfig(manifest_path=second.manifest_path, output_root=tmp_path / "fresh", chunk_size=256)
    [fresh] = stack_images(config)
    np.testing.assert_array_equal(open_stack(fresh.output_path)["data"].values, ds["data"].values)


def test_interrupted_append_stays_invisible_and_is_redone(ee_emulator: Emulator, tmp_path: Path) -> None:
    import zarr

    root = tmp_path / "data"
    first = download(ee_emulator, root, end_date="2024-06-05")
    [built] = stack_images(StackConfig(manifest_path=first.manifest_path))
    # A crash mid-append: the time axis was extended and junk written, but nothing was committed.
    group = zarr.open_group(str(built.output_path), mode="r+", use_consolidated=False)
    for _, arr in group.arrays():
        if (arr.metadata.dimension_names or ("",))[0] == "time":
            arr.resize((arr.shape[0] + 1, *arr.shape[1:]))
    group["data"][2, :, :10, :10] = 7
    assert xr.open_zarr(built.output_path).sizes["time"] == 2, "readers still see the committed store"
    second = download(ee_emulator, root, end_date="2024-06-12")
    [appended] = stack_images(StackConfig(manifest_path=second.manifest_path))
    ds = open_stack(appended.output_path)
    assert ds.sizes["time"] == 4 and not (ds["data"][2, :, :10, :10].values == 7).all()


def test_overwrite_rebuilds(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download(ee_emulator, tmp_path / "data", end_date="2024-06-05")
    [first] = stack_images(StackConfig(manifest_path=summary.manifest_path))
    digest = store_digest(first.output_path)
    [rebuilt] = stack_images(StackConfig(manifest_path=summary.manifest_path, overwrite=True))
    assert rebuilt.appended == rebuilt.image_count == 2 and store_digest(rebuilt.output_path) == digest
    assert not list(first.output_path.parent.glob("*.tmp-*")) and not list(
        first.output_path.parent.glob("*.old-*")
    )


def test_same_timestamp_tiles_are_mosaicked_first_valid_wins(ee_emulator: Emulator, tmp_path: Path) -> None:
    # Four tiles of zone 30 imaged in one datatake block: one timestamp, one 10 m lattice.
    aoi = AOI.from_bbox((-1.491, 51.379, -1.401, 51.494))
    summary = download(
        ee_emulator, tmp_path / "data", aoi=aoi, start_date="2024-06-01", end_date="2024-06-05"
    )
    tiles = {r.image_id[-6:] for r in summary.search.images}
    assert tiles == {"T30UWB", "T30UWC", "T30UXB", "T30UXC"}
    times = {r.acquisition_time_utc for r in summary.search.images}
    assert len(times) == 1
    [result] = stack_images(StackConfig(manifest_path=summary.manifest_path))
    ds = open_stack(result.output_path)
    assert ds.sizes["time"] == 1
    assert ds.image_id.values[0] == "|".join(sorted(r.image_id for r in summary.search.images))
    mosaic = ds["data"][0].values
    group = summary.search.alignment_groups[0]
    expected = np.full_like(mosaic, 65535)
    for r in sorted(summary.results, key=lambda r: r.image_id, reverse=True):  # first id wins: paint it last
        record = next(x for x in summary.search.images if x.record_key == r.record_key)
        with rasterio.open(r.tiff_path) as src:
            tiff = src.read()
        dc = round((record.window_transform[2] - group.transform[2]) / 10)
        dr = round((record.window_transform[5] - group.transform[5]) / -10)
        region = expected[:, dr : dr + tiff.shape[1], dc : dc + tiff.shape[2]]
        np.copyto(region, tiff, where=tiff != 65535)
    np.testing.assert_array_equal(mosaic, expected)


def test_group_with_nothing_downloaded_gets_a_reason(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download(ee_emulator, tmp_path / "data", bands=("B4", "B11"), end_date="2024-06-05")
    manifest = load_manifest(summary.manifest_path)
    for entry in manifest.doc["download"]["results"]:
        if entry["record_key"].endswith("@20m"):
            entry["status"], entry["tiff_path"] = "failed", None
    manifest.write()
    results = {r.group_id: r for r in stack_images(StackConfig(manifest_path=summary.manifest_path))}
    by_label = {g.grid_label: g.group_id for g in summary.search.alignment_groups}
    assert results[by_label["20m"]].skipped_reason == "no downloaded images in this group"
    assert results[by_label["20m"]].output_path is None
    assert results[by_label["10m"]].output_path is not None
    doc = json.loads(summary.manifest_path.read_text())
    assert {r["group_id"] for r in doc["stack"]["results"]} == set(by_label.values())


def test_stacking_a_search_only_manifest_is_a_clear_error(ee_emulator: Emulator, tmp_path: Path) -> None:
    config = DownloadConfig(
        collection_id=S2,
        start_date="2024-06-01",
        end_date="2024-06-05",
        aoi=AOI.from_bbox(LONDON),
        bands=("B4",),
        server_url=ee_emulator.url,
        output_root=tmp_path,
    )
    path = tmp_path / "search.json"
    manifest = new_manifest(path, None)
    set_search(manifest, config, search_images(config))
    manifest.write()
    with pytest.raises(StackError, match=r"manifest_path: .*search.json records no downloads"):
        stack_images(StackConfig(manifest_path=path))
    (tmp_path / "other.json").write_text(json.dumps({"type": "FeatureCollection"}))
    with pytest.raises(ManifestError, match=r"is not an edown manifest"):
        stack_images(StackConfig(manifest_path=tmp_path / "other.json"))
    (tmp_path / "future.json").write_text(json.dumps({"schema": "edown.manifest", "schema_version": 99}))
    with pytest.raises(ManifestError, match=r"has schema_version 99; this edown reads version 1"):
        stack_images(StackConfig(manifest_path=tmp_path / "future.json"))


def test_dask_local_writes_the_same_bytes_as_threads(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download(ee_emulator, tmp_path / "data", end_date="2024-06-05")
    [threads] = stack_images(StackConfig(manifest_path=summary.manifest_path, backend="threads"))
    threads_digest = store_digest(threads.output_path)
    shutil.rmtree(threads.output_path)
    [local] = stack_images(
        StackConfig(
            manifest_path=summary.manifest_path, backend="dask-local", n_workers=2, memory_per_worker="1GB"
        )
    )
    assert store_digest(local.output_path) == threads_digest and threads_digest


@pytest.mark.slurm
def test_dask_slurm_on_a_real_slurm_writes_the_same_bytes(ee_emulator: Emulator, tmp_path: Path) -> None:
    partition = os.environ.get("EDOWN_SLURM_PARTITION", "edown")
    summary = download(ee_emulator, tmp_path / "data", end_date="2024-06-05")
    [threads] = stack_images(StackConfig(manifest_path=summary.manifest_path))
    threads_digest = store_digest(threads.output_path)
    shutil.rmtree(threads.output_path)
    [slurm] = stack_images(
        StackConfig(
            manifest_path=summary.manifest_path,
            backend="dask-slurm",
            slurm_queue=partition,
            n_workers=2,
            cores_per_worker=1,
            memory_per_worker="1GB",
            walltime="00:10:00",
            scheduler_host="127.0.0.1",
            worker_timeout_seconds=180,
        )
    )
    assert slurm.error is None, slurm.error
    assert store_digest(slurm.output_path) == threads_digest
    logs = list((tmp_path / "data" / "stacks" / ".slurm-logs").glob("*"))
    assert logs, "the SLURM jobs wrote their logs"
