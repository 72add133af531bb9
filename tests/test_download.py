"""download_images against the emulator: exact pixels on native grids, nodata, chunking, faults, resume."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from edown import AOI, download_images, search_images
from edown.emulator import EmulatorConfig, FaultPlan, FaultRule, Latency, Limits, serve
from edown.emulator.server import Emulator
from edown.errors import ConfigError, EarthEngineError, OutputExistsError, OutputLockedError
from edown.grid import Window
from edown.manifest import load_manifest
from edown.outputs import ChunkStore, collection_dir, image_tiff_path, safe_name
from edown.rootstate import locked_root
from edown.writer import ChunkSink
from tests.helpers import check_all_exact, config

S2 = "COPERNICUS/S2_SR_HARMONIZED"


# ---- pixel-exact outputs ----------------------------------------------------------------------------


def test_s2_10m_four_bands_exact_with_metadata(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download_images(config(ee_emulator, tmp_path))
    assert summary.downloaded == 2 and summary.skipped == 0
    check_all_exact(ee_emulator, summary)
    result = summary.results[0]
    assert result.nodata == 65535.0 and result.chunk_count >= 1 and result.requests == result.chunk_count
    with rasterio.open(result.tiff_path) as src:
        assert src.crs.to_epsg() == 32630
        assert src.block_shapes[0] == (256, 256) and src.profile["compress"] == "zstd"
        tags = src.tags()
        assert tags["EE_IMAGE_ID"] == result.image_id and tags["EE_MGRS_TILE"] == "30UXC"
        assert "EE_VERSION" in tags and json.loads(tags["EE_CLOUDY_PIXEL_PERCENTAGE"]) > 0
    sidecar = json.loads(result.tiff_path.with_suffix(".json").read_text())
    assert sidecar["image_id"] == result.image_id and sidecar["band_names"] == ["B2", "B3", "B4", "B8"]
    assert sidecar["crs"] == "EPSG:32630" and sidecar["dtype"] == "uint16"
    assert not list(result.tiff_path.parent.glob("*.partial")), (
        "partial folders are removed once an image is done"
    )


def test_s2_mixed_resolutions_each_on_its_native_grid(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download_images(config(ee_emulator, tmp_path, bands=("B4", "B11", "B1")))
    assert summary.downloaded == 6  # two images x (10 m, 20 m, 60 m)
    check_all_exact(ee_emulator, summary)
    sizes = {}
    for result in summary.results:
        with rasterio.open(result.tiff_path) as src:
            sizes[result.record_key.split("@")[1]] = (src.transform.a, src.width)
    assert sizes["10m"][0] == 10 and sizes["20m"][0] == 20 and sizes["60m"][0] == 60
    # Each grid snaps the same AOI outward on its own pixels.
    w10, w20, w60 = sizes["10m"][1], sizes["20m"][1], sizes["60m"][1]
    assert 2 * (w20 - 2) < w10 <= 2 * w20 and 6 * (w60 - 2) < w10 <= 6 * w60


def test_landsat_exact_across_dates_with_shifting_grids(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download_images(
        config(
            ee_emulator,
            tmp_path,
            collection_id="LANDSAT/LC09/C02/T1_L2",
            bands=("SR_B4", "SR_B5", "QA_PIXEL"),
            start_date="2024-06-01",
            end_date="2024-07-15",
            aoi=AOI.from_bbox((-2.1, 51.4, -1.9, 51.6)),
        )
    )
    assert summary.downloaded >= 5
    check_all_exact(ee_emulator, summary)
    origins = {tuple(rasterio.open(r.tiff_path).transform)[:6] for r in summary.results}
    assert all((o[2] - 15) % 30 == 0 for o in origins)


def test_modis_sinusoidal_exact_with_negative_int16(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download_images(
        config(
            ee_emulator,
            tmp_path,
            collection_id="MODIS/061/MOD09GA",
            bands=("sur_refl_b01", "sur_refl_b06"),
            start_date="2024-06-01",
            end_date="2024-06-01",
            aoi=AOI.from_bbox((-5.0, 50.0, 2.0, 54.0)),
        )
    )
    check_all_exact(ee_emulator, summary)
    result = summary.results[0]
    with rasterio.open(result.tiff_path) as src:
        proj = src.crs.to_dict()
        data = src.read()
    assert proj.get("proj") == "sinu" and proj.get("R") == pytest.approx(6371007.181)
    assert data.dtype == np.int16 and result.nodata == 32767


def test_era5_float32_exact_with_nan_over_the_sea(ee_emulator: Emulator, tmp_path: Path) -> None:
    from edown.emulator.pixels import read_window

    era5 = ee_emulator.catalog.image("ECMWF/ERA5_LAND/DAILY_AGGR/20240601")
    _, valid = read_window(era5, "temperature_2m", 0, 0, 1801, 3600)
    rows, cols = np.nonzero(~valid[300:1500])  # some sea between 60N and 60S
    r, c = int(rows[len(rows) // 2]) + 300, int(cols[len(cols) // 2])
    lon, lat = -180.0 + c * 0.1, 90.0 - r * 0.1
    aoi = AOI.from_bbox((max(-180, lon - 2.0), max(-90, lat - 2.0), min(180, lon + 2.0), min(90, lat + 2.0)))
    summary = download_images(
        config(
            ee_emulator,
            tmp_path,
            collection_id="ECMWF/ERA5_LAND/DAILY_AGGR",
            bands=("temperature_2m", "total_precipitation_sum"),
            start_date="2024-06-01",
            end_date="2024-06-02",
            aoi=aoi,
        )
    )
    assert summary.downloaded == 2
    check_all_exact(ee_emulator, summary)
    data = rasterio.open(summary.results[0].tiff_path).read()
    assert data.dtype == np.float32 and np.isnan(data).any() and (~np.isnan(data)).any()


def test_swath_edge_nodata_is_honest_where_zero_is_valid(ee_emulator: Emulator, tmp_path: Path) -> None:
    from shapely.geometry import box

    from edown.emulator.model import parse_rfc3339

    # A tile at a swath edge: part of it has no data.
    candidates = ee_emulator.catalog.query(
        S2, parse_rfc3339("2024-06-01"), parse_rfc3339("2024-06-06"), box(-3, 50, 3, 53)
    )
    asset = next(a for a in candidates if len(a.footprint.halfplanes) > 4)
    day = asset.id.rsplit("/", 1)[1][:8]
    date = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    from pyproj import Transformer

    grid = asset.band("B4").grid
    a, b, c = asset.footprint.halfplanes[-1]  # the swath edge: a*x + b*y + c = 0 in the tile's CRS
    y = grid.transform[5] - grid.height * 10 / 2
    x = -(b * y + c) / a
    lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(x, y)
    aoi = AOI.from_bbox((lon - 0.05, lat - 0.03, lon + 0.05, lat + 0.03))
    summary = download_images(
        config(
            ee_emulator,
            tmp_path,
            bands=("B4", "MSK_CLDPRB"),
            start_date=date,
            end_date=date,
            aoi=aoi,
        )
    )
    check_all_exact(ee_emulator, summary)
    [result] = [r for r in summary.results if r.image_id == asset.id and r.record_key.endswith("@20m")]
    prob = rasterio.open(result.tiff_path).read(1)
    assert (prob == 255).any(), "outside the footprint: nodata"
    assert (prob == 0).any(), "inside: zero cloud probability is a real value, not nodata"


def test_scaled_output_is_float32_with_nan_nodata(ee_emulator: Emulator, tmp_path: Path) -> None:
    scale = {"B4": 0.0001, "B8": 0.0001}
    summary = download_images(
        config(ee_emulator, tmp_path, bands=("B4", "B8"), scale_map=scale, end_date="2024-06-05")
    )
    check_all_exact(ee_emulator, summary, scale)
    assert rasterio.open(summary.results[0].tiff_path).dtypes == ("float32", "float32")


# ---- chunking ---------------------------------------------------------------------------------------


def test_fixed_chunk_size_is_honoured_exactly(ee_emulator: Emulator, tmp_path: Path) -> None:
    ee_emulator.reset_stats()
    summary = download_images(
        config(ee_emulator, tmp_path, chunk_size=300, chunk_size_mode="fixed", end_date="2024-06-05")
    )
    check_all_exact(ee_emulator, summary)
    grids = [r["grid"] for r in ee_emulator.stats(include_log=True)["log"] if r["kind"] == "computePixels"]
    edge_w, edge_h = 1210 - 4 * 300, 931 - 3 * 300
    assert {(g["width"], g["height"]) for g in grids} == {
        (300, 300),
        (edge_w, 300),
        (300, edge_h),
        (edge_w, edge_h),
    }
    assert len(grids) == 5 * 4 == summary.results[0].chunk_count


def test_fixed_chunk_size_too_large_is_refused_with_the_size_that_fits(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    with pytest.raises(
        ConfigError, match=r"chunk_size: 4096x4096 px of 4 band\(s\) x 2 byte\(s\) is 201326592 bytes"
    ) as info:
        download_images(
            config(ee_emulator, tmp_path, chunk_size=4096, chunk_size_mode="fixed", end_date="2024-06-05")
        )
    assert info.value.hint == "use chunk_size <= 2048"


def test_auto_chunks_never_exceed_the_limit_counting_the_mask_byte(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    ee_emulator.reset_stats()
    limit = 1_000_000
    summary = download_images(config(ee_emulator, tmp_path, request_byte_limit=limit, end_date="2024-06-05"))
    check_all_exact(ee_emulator, summary)
    log = ee_emulator.stats(include_log=True)["log"]
    grids = [r["grid"] for r in log if r["kind"] == "computePixels"]
    assert grids and all(g["width"] * g["height"] * 4 * 3 <= limit for g in grids)
    # Chunks land on whole 256 px output tiles: only the last column/row of chunks may be narrower.
    assert len({g["width"] for g in grids if g["width"] % 256}) <= 1
    assert len({g["height"] for g in grids if g["height"] % 256}) <= 1
    assert {r["status"] for r in log if r["kind"] == "computePixels"} == {200}


def test_the_plan_learns_an_endpoint_slower_than_its_defaults_and_fetches_nothing_twice(
    tmp_path: Path,
) -> None:
    # The planner starts from 0.25 s + 40 MB/s per request; this endpoint takes 0.6 s + 4 MB/s.
    slow = Latency(base_seconds=0.6, bandwidth_bytes_per_second=4e6)
    with serve(EmulatorConfig(latency=slow)) as emu:
        summary = download_images(
            config(emu, tmp_path, bands=("B4",), end_date="2024-07-05", max_concurrent_requests=2)
        )
        check_all_exact(emu, summary)
        log = [r for r in emu.stats(include_log=True)["log"] if r["kind"] == "computePixels"]
    learned = summary.stats["planner"]
    assert learned["responses_measured"] == len(log) and learned["replans"] >= 1
    # What the endpoint really took (the emulator's model, or its own compute time when that is longer,
    # as on a busy machine) is what the learned model must predict; the defaults would say ~0.3 s.
    served = [r["finished"] - r["started"] for r in log]
    predicted = [
        learned["latency_seconds"] + r["bytes_out"] / (learned["bandwidth_mb_per_s"] * 1e6) for r in log
    ]
    assert sum(predicted) == pytest.approx(sum(served), rel=0.2)
    assert min(served) >= 0.6 + 2e6 / 4e6 * 0.9 and learned["latency_seconds"] > 2 * 0.25
    # Re-planning re-cut only chunks not yet sent: every chunk was requested exactly once.
    assert len(log) == sum(r.chunk_count for r in summary.results) == summary.stats["requests"]
    windows = [
        (r["asset"], tuple(r["grid"]["transform"]), r["grid"]["width"], r["grid"]["height"]) for r in log
    ]
    assert len(set(windows)) == len(windows)


def test_a_default_run_with_enough_work_keeps_the_concurrency_quota_full(tmp_path: Path) -> None:
    # max_inflight_chunks (32) bounds bytes queued for the writer, not requests: 40 run at once.
    with serve(EmulatorConfig(latency=Latency(base_seconds=0.5))) as emu:
        summary = download_images(
            config(
                emu, tmp_path, bands=("B4",), end_date="2024-06-10", chunk_size=128, chunk_size_mode="fixed"
            )
        )
        check_all_exact(emu, summary)
        stats = emu.stats()
    assert sum(r.chunk_count for r in summary.results) > 40
    assert stats["max_concurrency"] == 40 and summary.stats["peak_inflight"] == 40


def npy_body(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_streamed_body_becomes_a_band_major_chunk_in_small_pieces(tmp_path: Path) -> None:
    window = Window(10, 20, 300, 7)
    records = np.zeros((7, 300), dtype=[("B8", "<f4"), ("B4", "<f4")])
    records["B4"] = np.arange(2100, dtype=np.float32).reshape(7, 300)
    records["B8"] = -records["B4"]
    records["B4"][3, 5] = np.finfo(np.float32).min  # Earth Engine's fill for "no data" when nodata is NaN
    body = npy_body(records)
    for order in ("C", "F"):
        data = body if order == "C" else npy_body(np.asfortranarray(records))
        sink = ChunkSink(
            ChunkStore(tmp_path / order, tmp_path), window, ("B4", "B8"), "float32", float(np.finfo("f4").min)
        )
        for i in range(0, len(data), 1000):  # as the transport hands it over
            sink.write(data[i : i + 1000])
        chunk = np.load(sink.commit())
        assert chunk.shape == (2, 7, 300) and chunk.dtype == np.float32
        assert np.isnan(chunk[0, 3, 5]) and np.isnan(chunk).sum() == 1
        expected = records["B4"].copy()
        expected[3, 5] = np.nan
        np.testing.assert_array_equal(chunk[0], expected)
        np.testing.assert_array_equal(chunk[1], records["B8"])


def test_a_short_or_unexpected_body_leaves_no_chunk(tmp_path: Path) -> None:
    window = Window(0, 0, 40, 30)
    store = ChunkStore(tmp_path / "store", tmp_path)
    body = npy_body(np.zeros((30, 40), dtype=[("B4", "<u2")]))
    short = ChunkSink(store, window, ("B4",), "uint16", None)
    short.write(body[:-10])
    with pytest.raises(EarthEngineError, match="truncated") as info:
        short.commit()
    assert info.value.transient
    wrong_type = ChunkSink(store, window, ("B4",), "int16", None)
    with pytest.raises(EarthEngineError, match="as uint16, expected int16") as info:
        wrong_type.write(body)
    assert not info.value.transient
    wrong_type.abort()
    assert list(store.directory.iterdir()) == []


# ---- Earth Engine misbehaving -------------------------------------------------------------------------


def test_size_400_splits_the_chunk_and_goes_on(tmp_path: Path) -> None:
    plan = FaultPlan(rules=(FaultRule(kind="size", min_pixels=200_000),))
    with serve(EmulatorConfig(faults=plan)) as emu:
        summary = download_images(
            config(emu, tmp_path, end_date="2024-06-05", chunk_size=512, chunk_size_mode="fixed")
        )
        check_all_exact(emu, summary)
        stats = emu.stats()
    assert stats["faults_injected"]["size"] >= 1
    result = summary.results[0]
    assert result.chunk_count > 6 and result.retries == 0  # split, not retried


def test_memory_limit_400_splits_too(tmp_path: Path) -> None:
    with serve(EmulatorConfig(faults=FaultPlan(rules=(FaultRule(kind="memory", nth=(1, 2, 3)),)))) as emu:
        summary = download_images(config(emu, tmp_path, end_date="2024-06-05"))
        check_all_exact(emu, summary)
        assert emu.stats()["faults_injected"]["memory"] == 3


def test_429s_are_absorbed_by_pacing(tmp_path: Path) -> None:
    limits = Limits(max_concurrent=3)
    with serve(EmulatorConfig(limits=limits, latency=Latency(base_seconds=0.05))) as emu:
        summary = download_images(config(emu, tmp_path, end_date="2024-06-10", max_retries=8))
        check_all_exact(emu, summary)
        stats = emu.stats()
    assert stats["max_concurrency"] <= 3
    assert stats["throttled"] > 0 and summary.stats["throttled"] > 0


def test_transient_5xx_resets_and_truncated_bodies_are_retried(tmp_path: Path) -> None:
    rules = (
        FaultRule(kind="error", status=503, rate=0.15),
        FaultRule(kind="reset", rate=0.1),
        FaultRule(kind="truncate", rate=0.1),
        FaultRule(kind="short_body", rate=0.1),
    )
    with serve(EmulatorConfig(faults=FaultPlan(rules=rules, seed=7))) as emu:
        summary = download_images(config(emu, tmp_path, max_retries=10))
        check_all_exact(emu, summary)
        injected = emu.stats()["faults_injected"]
    assert sum(injected.values()) >= 4 and sum(r.retries for r in summary.results) >= sum(injected.values())


def test_a_stalled_response_hits_the_deadline_and_is_retried(tmp_path: Path) -> None:
    with serve(
        EmulatorConfig(faults=FaultPlan(rules=(FaultRule(kind="stall", nth=(1,), stall_seconds=30),)))
    ) as emu:
        started = time.monotonic()
        summary = download_images(config(emu, tmp_path, end_date="2024-06-05", request_timeout_seconds=1.5))
        elapsed = time.monotonic() - started
        check_all_exact(emu, summary)
    assert elapsed < 15 and summary.results[0].retries >= 1


def test_a_non_transient_4xx_fails_only_that_image_without_retries(tmp_path: Path) -> None:
    with serve(
        EmulatorConfig(faults=FaultPlan(rules=(FaultRule(kind="error", status=403, nth=(1,)),)))
    ) as emu:
        summary = download_images(config(emu, tmp_path, chunk_size=2048, end_date="2024-06-10"))
    failed = [r for r in summary.results if r.status == "failed"]
    assert len(failed) == 1 and failed[0].error == "Injected error." and failed[0].retries == 0
    assert summary.downloaded == 1
    assert failed[0].tiff_path is None
    assert not image_tiff_path(tmp_path / "data", S2, failed[0].record_key, "").exists()


# ---- existing outputs, dry run, manifest, lock, names -------------------------------------------------


def test_existing_outputs_resume_refuse_and_overwrite(ee_emulator: Emulator, tmp_path: Path) -> None:
    first = download_images(config(ee_emulator, tmp_path, end_date="2024-06-05"))
    path = first.results[0].tiff_path
    before = path.read_bytes()
    ee_emulator.reset_stats()
    again = download_images(config(ee_emulator, tmp_path, end_date="2024-06-05"))
    assert [r.status for r in again.results] == ["skipped_existing"]
    assert ee_emulator.stats()["requests"].get("computePixels", 0) == 0
    with pytest.raises(OutputExistsError, match=r"1 output\(s\) already exist, e\.g\. .*T30UXC\.tif") as info:
        download_images(config(ee_emulator, tmp_path, end_date="2024-06-05", resume=False))
    assert "overwrite=True" in str(info.value.hint)
    replaced = download_images(config(ee_emulator, tmp_path, end_date="2024-06-05", overwrite=True))
    assert replaced.results[0].status == "downloaded" and path.read_bytes() == before


def test_dry_run_fetches_nothing(ee_emulator: Emulator, tmp_path: Path) -> None:
    ee_emulator.reset_stats()
    summary = download_images(config(ee_emulator, tmp_path, dry_run=True))
    assert summary.dry_run and ee_emulator.stats()["requests"].get("computePixels", 0) == 0
    plan = summary.plan
    assert plan["images"] == 2 and plan["chunks"] == plan["requests"] > 0
    assert plan["request_bytes"] >= 2 * 1210 * 931 * 4 * 3 and plan["estimated_seconds"] > 0
    assert {r.status for r in summary.results} == {"planned"}
    assert not (tmp_path / "data").exists()


def test_run_manifest_records_everything(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download_images(config(ee_emulator, tmp_path))
    assert summary.manifest_path.parent == tmp_path / "data" / "manifests"
    assert summary.manifest_path.name.startswith("run-") and summary.manifest_path.name.endswith("Z.json")
    manifest = load_manifest(summary.manifest_path)
    doc = manifest.doc
    assert doc["download"]["state"] == "finished" and doc["download"]["counts"]["downloaded"] == 2
    assert manifest.downloads_in(manifest.trusted_root()) == summary.results
    entry = doc["download"]["results"][0]
    assert entry["tiff_path"].startswith("images/COPERNICUS.S2_SR_HARMONIZED/")
    for key in ("chunk_count", "bytes_downloaded", "retries", "seconds", "requests"):
        assert key in entry
    assert doc["download"]["stats"]["requests"] == sum(r.requests for r in summary.results)
    assert manifest.search is not None and len(manifest.search.images) == 2


def test_download_from_a_saved_search_manifest(ee_emulator: Emulator, tmp_path: Path) -> None:
    from edown.manifest import new_manifest, set_search

    cfg = config(ee_emulator, tmp_path, end_date="2024-06-05")
    saved = tmp_path / "search.json"
    manifest = new_manifest(saved, None)
    set_search(manifest, cfg, search_images(cfg))
    manifest.write()
    ee_emulator.reset_stats()
    summary = download_images(config(ee_emulator, tmp_path, end_date="2024-06-05", search_manifest=saved))
    check_all_exact(ee_emulator, summary)
    assert ee_emulator.stats()["requests"].get("listAssets", 0) == 0


def test_a_second_writer_is_refused(ee_emulator: Emulator, tmp_path: Path) -> None:
    root = tmp_path / "data"
    with (
        locked_root(root, "another run"),
        pytest.raises(OutputLockedError, match=r"is in use by another edown run \(pid"),
    ):
        download_images(config(ee_emulator, tmp_path, end_date="2024-06-05"))


def test_hostile_ids_stay_inside_and_never_collide(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ids = [
        "../../etc/passwd",
        "a/b",
        "a_b",
        "with space",
        "ünïcödé",
        "x" * 500,
        "..",
        ".hidden",
        "a:b",
        "a_b ",
    ]
    paths = [image_tiff_path(root, "COLL/../..", i, "") for i in ids]
    assert len(set(paths)) == len(paths)
    for path in paths:
        assert root.resolve() in path.resolve().parents
        assert len(path.name) < 200 and ".." not in path.name
    assert safe_name("T30UXC") == "T30UXC"
    # Collection folders: "/" maps to "." (never in an Earth Engine id), anything else is hashed.
    collections = ["A/B", "A_B", "A.B", "A/B/C", "A/B_C", "A_B/C", "LANDSAT/LC09/C02/T1_L2"]
    assert len({collection_dir(c) for c in collections}) == len(collections)
    assert collection_dir("COPERNICUS/S2_SR_HARMONIZED") == "COPERNICUS.S2_SR_HARMONIZED"
    # A clean name that imitates a hashed one cannot collide with it.
    hashed = safe_name("a b")
    assert safe_name(hashed.replace("~", "-")) != hashed


# ---- resume after a crash -----------------------------------------------------------------------------

KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from edown import AOI, DownloadConfig, download_images
    download_images(DownloadConfig(
        collection_id="COPERNICUS/S2_SR_HARMONIZED", start_date="2024-06-01", end_date="2024-06-10",
        aoi=AOI.from_bbox((-0.60, 51.48, -0.43, 51.56)), bands=("B2", "B3", "B4", "B8"),
        server_url=sys.argv[1], output_root=Path(sys.argv[2]), chunk_size=256, chunk_size_mode="fixed",
        max_inflight_chunks=4))
    """
)


def test_sigkill_midway_then_resume_fetches_only_missing_chunks_and_matches(tmp_path: Path) -> None:
    reference_root = tmp_path / "reference"
    with serve(EmulatorConfig(latency=Latency(base_seconds=0.15))) as emu:
        crashed_root = tmp_path / "crashed"
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, emu.url, str(crashed_root)],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        deadline = time.monotonic() + 60
        partial: list[Path] = []
        while time.monotonic() < deadline:
            partial = list(crashed_root.glob("images/*/*.partial/c*.npy"))
            if len(partial) >= 12:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert len(partial) >= 12, "the download should have stored some chunks before being killed"
        stored = len(list(crashed_root.glob("images/*/*.partial/c*.npy")))
        manifests = list(crashed_root.glob("manifests/*.json"))
        assert manifests and json.loads(manifests[0].read_text())["download"]["state"] == "running"

        time.sleep(1.0)  # let the killed process's in-flight requests finish before counting ours
        emu.reset_stats()
        kw = {"chunk_size": 256, "chunk_size_mode": "fixed", "max_inflight_chunks": 4}
        resumed = download_images(config(emu, tmp_path, output_root=crashed_root, **kw))
        refetched = emu.stats()["requests"]["computePixels"]
        reference = download_images(config(emu, tmp_path, output_root=reference_root, **kw))
    total = sum(r.chunk_count for r in reference.results)
    assert resumed.downloaded + resumed.skipped == 2 and resumed.failed == 0
    finished_before = [r for r in resumed.results if r.status == "skipped_existing"]
    assert refetched == total - stored - sum(r.chunk_count for r in finished_before)
    for a, b in zip(
        sorted(crashed_root.glob("images/*/*.tif")),
        sorted(reference_root.glob("images/*/*.tif")),
        strict=True,
    ):
        assert a.name == b.name and a.read_bytes() == b.read_bytes()
    assert not list(crashed_root.glob("images/*/*.partial"))


def test_a_streamed_search_fetches_the_first_pages_images_before_the_last_page_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One image per listImages page and 0.4 s per page: a download that waited for the whole search
    # would send its first pixel request after the last page was listed.
    monkeypatch.setattr("edown.search.PAGE_SIZE", 1)
    with serve(EmulatorConfig(latency=Latency(base_seconds=0.05, metadata_seconds=0.4))) as emu:
        summary = download_images(config(emu, tmp_path, bands=("B4",), end_date="2024-06-20"))
        check_all_exact(emu, summary)
        log = emu.stats(include_log=True)["log"]
    pages = [r for r in log if r["kind"] == "listAssets"]  # ee.data.listImages is a listAssets call
    pixels = [r for r in log if r["kind"] == "computePixels"]
    assert summary.search is not None and len(summary.search.images) >= 3
    assert len(pages) == summary.search.requests == len(summary.search.images)
    assert min(r["started"] for r in pixels) < max(r["started"] for r in pages)
    assert [r.record_key for r in summary.results] == [r.record_key for r in summary.search.images]
    assert summary.stats["requests"] == len(pixels)


def test_resume_after_a_replan_reuses_every_arrived_chunk(tmp_path: Path) -> None:
    # The first run cut 256-px chunks and failed midway (a 403 on its 20th request); the second plans by
    # the cost model, which cuts differently, and must still fetch only the pixels that never arrived.
    first_faults = FaultPlan(rules=(FaultRule(kind="error", status=403, nth=(20,)),))
    with serve(EmulatorConfig(latency=Latency(base_seconds=0.05), faults=first_faults)) as emu:
        kw = {"end_date": "2024-06-05", "max_concurrent_requests": 4}
        first = download_images(config(emu, tmp_path, chunk_size=256, chunk_size_mode="fixed", **kw))
        assert first.failed == 1
        stored = [
            Window(*(int(v) for v in re.findall(r"-?\d+", p.stem)))
            for p in (tmp_path / "data").glob("images/*/*.partial/c*.npy")
        ]
        assert len(stored) >= 10
        emu.set_faults(FaultPlan())
        emu.reset_stats()
        resumed = download_images(config(emu, tmp_path, resume=True, **kw))
        check_all_exact(emu, resumed)
        log = [r for r in emu.stats(include_log=True)["log"] if r["kind"] == "computePixels"]
    (result,) = resumed.results
    assert resumed.search is not None
    window = resumed.search.images[0].aoi_window
    fetched = sum(r["grid"]["width"] * r["grid"]["height"] for r in log)
    assert fetched == window.pixels - sum(w.pixels for w in stored)
    assert len(log) < len(stored)  # the rest came in a few large requests, not 256-px tiles
    assert result.chunk_count == len(stored) + len(log)
    assert not list((tmp_path / "data").glob("images/*/*.partial"))


# ---- statuses, retries, nodata and formats ------------------------------------------------------------


def test_images_lacking_a_plugin_band_are_kept_marked_and_skipped(
    ee_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = tmp_path / "ndvi_when_clear.py"
    plugin.write_text(
        textwrap.dedent(
            """
        def add(image, metadata, config):
            if metadata["properties"]["CLOUDY_PIXEL_PERCENTAGE"] > 20:
                return image
            return image.addBands(image.normalizedDifference(["B8", "B4"]).rename("NDVI"))
        """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    summary = download_images(
        config(
            ee_emulator,
            tmp_path,
            bands=("B4", "NDVI"),
            transform_plugin="ndvi_when_clear:add",
            end_date="2024-06-30",
        )
    )
    covers = {r.image_id: r.properties["CLOUDY_PIXEL_PERCENTAGE"] for r in summary.search.images}
    assert len(covers) == 6
    statuses = {r.image_id: r.status for r in summary.results}
    assert {i for i, s in statuses.items() if s == "skipped_missing_bands"} == {
        i for i, c in covers.items() if c > 20
    }
    assert {i for i, s in statuses.items() if s == "downloaded"} == {i for i, c in covers.items() if c <= 20}
    skipped = next(r for r in summary.results if r.status == "skipped_missing_bands")
    assert skipped.error == "image lacks band(s) NDVI" and skipped.tiff_path is None


def test_an_image_outside_the_aoi_is_skipped(ee_emulator: Emulator, tmp_path: Path) -> None:
    from dataclasses import replace

    from edown.download import plan_download

    cfg = config(ee_emulator, tmp_path, end_date="2024-06-05")
    search = search_images(cfg)
    outside = replace(search.images[0], window=(0, 0, 0, 0))
    plan = plan_download(cfg, replace(search, images=(outside,)))
    assert [r.status for r in plan.skipped] == ["skipped_outside_aoi"] and not plan.jobs


def test_no_hidden_retries_under_ours(tmp_path: Path) -> None:
    # The ee client alone would retry a 503 five times; edown switches that off and retries once itself.
    with serve(
        EmulatorConfig(faults=FaultPlan(rules=(FaultRule(kind="error", status=503, nth=(1,)),)))
    ) as emu:
        summary = download_images(
            config(emu, tmp_path, chunk_size=256, chunk_size_mode="fixed", end_date="2024-06-05")
        )
        check_all_exact(emu, summary)
        sent = emu.stats()["requests"]["computePixels"]
    assert sent == summary.results[0].chunk_count + 1 and summary.results[0].retries == 1


def test_retry_after_pauses_new_requests(tmp_path: Path) -> None:
    limits = Limits(max_concurrent=2, retry_after_seconds=1.0)
    with serve(EmulatorConfig(limits=limits, latency=Latency(base_seconds=0.1))) as emu:
        summary = download_images(config(emu, tmp_path, chunk_size=256, chunk_size_mode="fixed", end_date="2024-06-05",
                                         max_retries=10, retry_delay_seconds=0.01))  # fmt: skip
        check_all_exact(emu, summary)
        log = [r for r in emu.stats(include_log=True)["log"] if r["kind"] == "computePixels"]
    first_429 = min(r["started"] for r in log if r["status"] == 429)
    # Requests already on their way when the 429 arrived may land just after it; after that, nothing is
    # sent until the Retry-After second has passed.
    during_pause = [r for r in log if first_429 + 0.1 < r["started"] < first_429 + 0.9]
    assert not during_pause, "nothing new is sent while Earth Engine asks to wait"
    assert any(r["started"] >= first_429 + 0.9 for r in log)


def test_nodata_override_and_cloud_optimized_output(ee_emulator: Emulator, tmp_path: Path) -> None:
    from edown.emulator.pixels import read_window

    era5 = ee_emulator.catalog.image("ECMWF/ERA5_LAND/DAILY_AGGR/20240601")
    _, valid = read_window(era5, "temperature_2m", 0, 0, 1801, 3600)
    rows, cols = np.nonzero(~valid[300:1500])
    r, c = int(rows[0]) + 300, int(cols[0])
    lon, lat = -180.0 + c * 0.1, 90.0 - r * 0.1
    aoi = AOI.from_bbox((max(-180, lon - 1.0), max(-90, lat - 1.0), min(180, lon + 1.0), min(90, lat + 1.0)))
    summary = download_images(
        config(ee_emulator, tmp_path, collection_id="ECMWF/ERA5_LAND/DAILY_AGGR", bands=("temperature_2m",),
               start_date="2024-06-01", end_date="2024-06-01", aoi=aoi, nodata=-9999.0, cog=True)
    )  # fmt: skip
    check_all_exact(ee_emulator, summary)
    with rasterio.open(summary.results[0].tiff_path) as src:
        assert src.nodata == -9999.0 and (src.read(1) == -9999.0).any()
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_a_run_never_takes_the_manifest_name_of_an_earlier_run_in_the_same_second(tmp_path: Path) -> None:
    from edown.download import _unused_run_name

    manifests = tmp_path / "manifests"
    manifests.mkdir()
    first = manifests / "run-20240601T235959Z.json"
    assert _unused_run_name(first) == first
    first.write_text("{}")
    (manifests / "run-20240602T000000Z.json").write_text("{}")
    later = _unused_run_name(first)
    assert later == manifests / "run-20240602T000001Z.json"  # the next free second, across midnight
    assert sorted(p.name for p in [*manifests.iterdir(), later])[-1] == later.name  # still newest by name


def test_the_summary_plan_counts_what_the_run_had_to_fetch(ee_emulator: Emulator, tmp_path: Path) -> None:
    # It used to count what was still missing when the summary was built: 0 after every finished run.
    kw = {"bands": ("B4",), "chunk_size": 256, "chunk_size_mode": "fixed"}
    dry = download_images(config(ee_emulator, tmp_path, dry_run=True, **kw))
    ee_emulator.reset_stats()
    summary = download_images(config(ee_emulator, tmp_path, **kw))
    fetched = ee_emulator.stats()["requests"]["computePixels"]
    assert summary.plan["requests"] == dry.plan["requests"] == fetched == summary.plan["chunks"] > 1
    assert summary.plan["request_bytes"] == dry.plan["request_bytes"] > 0
    again = download_images(config(ee_emulator, tmp_path, **kw))
    assert again.downloaded == 0 and again.plan["requests"] == 0


def test_edown_never_exceeds_the_rate_quota_it_is_given_listing_included(tmp_path: Path) -> None:
    # Found by an outside look: slots were counted from when they were granted, not when the request
    # went out, so a burst built slowly let 101 requests arrive in one second (a 429, then a pause); and
    # the listing ran on another connection with the default quotas. Tiny one-chunk images make the rate
    # quota, not latency, what bounds the run.
    tiny = AOI.from_bbox((-0.100, 51.500, -0.099, 51.501))
    with serve(
        EmulatorConfig(latency=Latency(base_seconds=0.05), limits=Limits(requests_per_second=5))
    ) as emu:
        summary = download_images(
            config(emu, tmp_path, aoi=tiny, bands=("B4",), start_date="2024-05-01", end_date="2024-06-30",
                   max_requests_per_second=5)
        )  # fmt: skip
        check_all_exact(emu, summary)
        stats = emu.stats(include_log=True)
    assert summary.downloaded > 15 and summary.failed == 0
    assert stats["throttled"] == 0 and summary.stats["throttled"] == 0
    counted = sorted(r["started"] for r in stats["log"] if r["kind"] in ("listAssets", "computePixels"))
    assert sum(1 for r in stats["log"] if r["kind"] == "listAssets") >= 1
    assert max(sum(1 for t in counted if s <= t < s + 1.0) for s in counted) <= 5
