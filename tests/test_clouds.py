"""Cloud masks and cloud fractions against the emulator: masked pixels are exactly those the mask band
marks (sampled at each output pixel's centre), fractions match the pixels, and they cost a few requests."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
import xarray as xr
from PIL import Image
from pyproj import Transformer

from edown import (
    AOI,
    DownloadSummary,
    SearchConfig,
    SearchResult,
    StackConfig,
    download_images,
    search_images,
    stack_images,
)
from edown.clouds import FRACTION_BATCH, MASKS, CloudCount, count_clouds, masks_for, resolve_mask
from edown.emulator import EmulatorConfig, Limits, serve
from edown.emulator.server import Emulator
from edown.errors import ConfigError
from edown.quicklook import render_geotiff, render_stack
from tests.helpers import config, run_edown

S2 = "COPERNICUS/S2_SR_HARMONIZED"
CSP = "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"
L9 = "LANDSAT/LC09/C02/T1_L2"
CENTRAL_LONDON = (-0.15, 51.48, 0.02, 51.56)


@dataclass(frozen=True)
class Case:
    """A collection, the bands to download, its mask, where the mask band lives and what it marks."""

    collection: str
    bands: tuple[str, ...]
    mask: str
    mask_collection: str
    mask_band: str
    dates: tuple[str, str]
    cloudy: Callable[[np.ndarray], np.ndarray]
    #: Each must mark some pixel (a class or bit the mask removes), so every part of the mask is exercised.
    parts: dict[str, Callable[[np.ndarray], np.ndarray]]


def _bit(b: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda v: (v.astype(np.int64) >> b) & 1 == 1


def _cls(c: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda v: v == c


CASES = {
    "s2-scl": Case(
        S2,
        ("B4", "B8"),
        "scl",
        S2,
        "SCL",
        ("2024-06-01", "2024-06-14"),
        lambda v: np.isin(v, (3, 8, 9, 10)),
        {"shadow 3": _cls(3), "medium 8": _cls(8), "high 9": _cls(9), "cirrus 10": _cls(10)},
    ),
    "s2-cloud-score-plus": Case(
        S2,
        ("B4",),
        "cloud-score-plus",
        CSP,
        "cs_cdf",
        ("2024-06-01", "2024-06-14"),
        lambda v: v < np.float32(0.6),
        {"cs_cdf < 0.6": lambda v: v < np.float32(0.6)},
    ),
    "landsat-qa-pixel": Case(
        L9,
        ("SR_B4", "SR_B5"),
        "qa-pixel",
        L9,
        "QA_PIXEL",
        ("2024-06-01", "2024-06-10"),
        lambda v: (v.astype(np.int64) & 0b11110) != 0,
        {"dilated 1": _bit(1), "cirrus 2": _bit(2), "cloud 3": _bit(3), "shadow 4": _bit(4)},
    ),
}


def _download(emu: Emulator, tmp_path: Path, name: str, **kw: Any) -> DownloadSummary:
    kw.setdefault("aoi", AOI.from_bbox(CENTRAL_LONDON))
    summary = download_images(config(emu, tmp_path / name, **kw))
    assert summary.failed == 0, [r.error for r in summary.results if r.status == "failed"]
    return summary


def _by_index(summary: DownloadSummary) -> dict[str, Path]:
    out = {}
    for r in summary.results:
        if r.status == "downloaded":
            assert r.tiff_path is not None
            out[r.image_id.rsplit("/", 1)[1]] = r.tiff_path
    return out


def _sample_at_centres(mask_path: Path, out: rasterio.DatasetReader) -> tuple[np.ndarray, np.ndarray]:
    """The mask file's values and validity at each output pixel's centre (nearest: the containing pixel)."""
    with rasterio.open(mask_path) as src:
        values = src.read(1)
        nodata = src.nodata
        mt = src.transform
        assert src.crs == out.crs
    t = out.transform
    rows, cols = np.mgrid[0 : out.height, 0 : out.width]
    x = t.c + (cols + 0.5) * t.a
    y = t.f + (rows + 0.5) * t.e
    mc = np.floor((x - mt.c) / mt.a).astype(np.int64)
    mr = np.floor((y - mt.f) / mt.e).astype(np.int64)
    assert mc.min() >= 0 and mr.min() >= 0 and mc.max() < values.shape[1] and mr.max() < values.shape[0]
    sampled = values[mr, mc]
    valid = ~np.isnan(sampled) if nodata is not None and np.isnan(nodata) else sampled != nodata
    return sampled, valid


@pytest.mark.parametrize("name", list(CASES))
def test_masked_download_differs_from_unmasked_exactly_where_the_mask_band_marks(
    ee_emulator: Emulator, tmp_path: Path, name: str
) -> None:
    case = CASES[name]
    common = {"collection_id": case.collection, "start_date": case.dates[0], "end_date": case.dates[1]}
    plain = _by_index(_download(ee_emulator, tmp_path, "plain", bands=case.bands, **common))
    masked_summary = _download(
        ee_emulator, tmp_path, "masked", bands=case.bands, cloud_mask=case.mask, **common
    )
    masked = _by_index(masked_summary)
    mask_files = _by_index(
        _download(
            ee_emulator,
            tmp_path,
            "mask",
            **{**common, "collection_id": case.mask_collection},
            bands=(case.mask_band,),
        )
    )
    assert masked.keys() == plain.keys() and masked.keys() <= mask_files.keys() and len(masked) >= 2
    seen = dict.fromkeys(case.parts, 0)
    removed = kept = 0
    for index, path in masked.items():
        with rasterio.open(plain[index]) as p, rasterio.open(path) as m:
            assert (m.transform, m.crs, m.shape) == (p.transform, p.crs, p.shape)
            before, after, nodata = p.read(), m.read(), m.nodata
            values, valid = _sample_at_centres(mask_files[index], m)
        drop = ~valid | case.cloudy(values)
        expected = np.where(drop[None], np.array(nodata, dtype=before.dtype), before)
        np.testing.assert_array_equal(after, expected)
        has_data = (before != nodata).all(axis=0)
        removed += int((drop & has_data).sum())
        kept += int((~drop & has_data).sum())
        for part, marks in case.parts.items():
            seen[part] += int((marks(values) & valid & has_data).sum())
    assert all(count > 0 for count in seen.values()), seen
    assert removed > 0 and kept > 0


def _fractions_from_mask_files(summary: DownloadSummary, case: Case, aoi: AOI) -> dict[str, float]:
    """cloudy / valid among native mask pixels whose centres are inside the AOI, from the downloaded files."""
    out = {}
    for index, path in _by_index(summary).items():
        with rasterio.open(path) as src:
            values = src.read(1)
            t = src.transform
            to_lonlat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
        rows, cols = np.mgrid[0 : values.shape[0], 0 : values.shape[1]]
        lon, lat = to_lonlat.transform(t.c + (cols + 0.5) * t.a, t.f + (rows + 0.5) * t.e)
        inside = shapely.contains_xy(aoi.shape, lon, lat) & (values != src.nodata)
        out[index] = float(case.cloudy(values)[inside].sum() / inside.sum())
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_cloud_fractions_match_the_mask_band_pixels_inside_the_aoi(
    ee_emulator: Emulator, tmp_path: Path, name: str
) -> None:
    case = CASES[name]
    aoi = AOI.from_bbox(CENTRAL_LONDON)
    common = {"start_date": case.dates[0], "end_date": case.dates[1], "aoi": aoi}
    files = _download(
        ee_emulator, tmp_path, "mask", collection_id=case.mask_collection, bands=(case.mask_band,), **common
    )
    truth = _fractions_from_mask_files(files, case, aoi)
    ee_emulator.reset_stats()
    found = search_images(
        config(
            ee_emulator,
            tmp_path / "s",
            collection_id=case.collection,
            bands=case.bands[:1],
            cloud_mask=case.mask,
            max_cloud_fraction=1.0,
            **common,
        )
    )
    assert ee_emulator.stats()["requests"].get("compute") == 1
    fractions = {r.system_index: r.cloud_fraction for r in found.images}
    assert fractions == pytest.approx(truth, abs=1e-12)
    assert 0 < min(truth.values()) < max(truth.values()) <= 1


def _two_weeks_over_central_london(emu: Emulator) -> SearchResult:
    """The six S2 candidates the batching tests count clouds for (no mask: the tests ask themselves)."""
    return search_images(
        SearchConfig(
            collection_id=S2,
            start_date="2024-06-01",
            end_date="2024-06-14",
            aoi=AOI.from_bbox(CENTRAL_LONDON),
            bands=("B4",),
            server_url=emu.url,
        )
    )


def test_fractions_cost_one_request_per_batch_of_images(ee_emulator_session: Emulator) -> None:
    found = _two_weeks_over_central_london(ee_emulator_session)
    indices = [r.system_index for r in found.images]
    assert len(indices) == 6

    def count(batch_size: int) -> tuple[dict[str, CloudCount], int]:
        ee_emulator_session.reset_stats()
        counts = count_clouds(
            S2,
            indices,
            ("2024-06-01", "2024-06-15"),
            AOI.from_bbox(CENTRAL_LONDON).geometry,
            "scl",
            0.6,
            lambda obj: obj.getInfo(),
            batch_size=batch_size,
        )
        return counts, ee_emulator_session.stats()["requests"]["compute"]

    together, one = count(FRACTION_BATCH)
    in_fours, two = count(4)
    assert (one, two) == (1, 2)
    assert together == in_fours and set(together) == set(indices)


def test_max_cloud_fraction_keeps_exactly_the_images_at_or_under_it(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    case = CASES["s2-scl"]
    aoi = AOI.from_bbox(CENTRAL_LONDON)
    common = {"collection_id": S2, "start_date": case.dates[0], "end_date": case.dates[1], "aoi": aoi}
    truth = _fractions_from_mask_files(
        _download(ee_emulator, tmp_path, "scl", bands=("SCL",), **common), case, aoi
    )
    assert len(truth) >= 4
    ordered = sorted(truth.values())
    threshold = ordered[len(ordered) // 2]  # exactly one image's fraction: "at or under" keeps it
    assert 0 < threshold < max(ordered)

    ee_emulator.reset_stats()
    found = search_images(
        config(ee_emulator, tmp_path / "s", bands=("B4",), cloud_mask="scl", max_cloud_fraction=1.0, **common)
    )
    requests = ee_emulator.stats()["requests"]
    # One listing, plus one batched computation for all the candidates' fractions.
    assert requests.get("compute") == math.ceil(len(truth) / FRACTION_BATCH) == 1
    assert found.requests == sum(requests.values())
    fractions = {r.system_index: r.cloud_fraction for r in found.images}
    assert fractions.keys() == truth.keys()
    for index, fraction in fractions.items():
        assert fraction == pytest.approx(truth[index], abs=1e-12), index

    summary = _download(
        ee_emulator, tmp_path, "kept", bands=("B4",), cloud_mask="scl", max_cloud_fraction=threshold, **common
    )
    statuses = {r.image_id.rsplit("/", 1)[1]: r.status for r in summary.results}
    assert statuses == {i: "downloaded" if f <= threshold else "cloudy" for i, f in truth.items()}
    assert "cloudy" in statuses.values()
    manifest = json.loads(summary.manifest_path.read_text())
    for result in manifest["download"]["results"]:
        index = result["image_id"].rsplit("/", 1)[1]
        assert result["cloud_fraction"] == pytest.approx(truth[index], abs=1e-12)
        if result["status"] == "cloudy":
            assert result["tiff_path"] is None and "max_cloud_fraction" in result["error"]
    assert all(r["cloud_fraction"] is not None for r in manifest["search"]["result"]["images"])
    # The cloudy images cost no pixel request, and stay out of the stack's groups.
    kept = [
        r for r in summary.search.images if r.cloud_fraction is not None and r.cloud_fraction <= threshold
    ]
    assert {k for g in summary.search.alignment_groups for k in g.record_keys} == {r.record_key for r in kept}

    # The stacks carry each time step's fraction; quicklooks show the masked pixels as transparent.
    cubes = [r.output_path for r in stack_images(StackConfig(summary.manifest_path)) if r.output_path]
    stacked: dict[str, float] = {}
    for cube in cubes:
        ds = xr.open_zarr(cube)
        for ids, fraction in zip(ds["image_id"].values, ds["cloud_fraction"].values, strict=True):
            stacked[str(ids).split("|")[0].rsplit("/", 1)[1]] = float(fraction)
    assert stacked == pytest.approx({i: f for i, f in truth.items() if f <= threshold}, abs=1e-12)
    some = next(r for r in summary.results if r.status == "downloaded" and r.cloud_fraction)
    assert some.tiff_path is not None
    png = render_geotiff(some.tiff_path, tmp_path / "q.png", max_size=4096)
    with rasterio.open(some.tiff_path) as src:
        nodata_px = src.read(1) == src.nodata
    alpha = np.asarray(Image.open(png))[..., -1]
    np.testing.assert_array_equal(alpha == 0, nodata_px)
    assert nodata_px.any() and not nodata_px.all()
    # The time strip too: each frame's masked and nodata pixels are transparent, the rest opaque.
    strip = np.asarray(Image.open(render_stack(cubes[0], tmp_path / "strip.png", thumb=4096)))
    ds = xr.open_zarr(cubes[0], mask_and_scale=False)
    fill = ds["data"].attrs.get("_FillValue", ds["data"].encoding.get("fill_value"))
    height, width = ds.sizes["y"], ds.sizes["x"]
    for i in range(ds.sizes["time"]):
        missing = ds["data"].isel(time=i, band=0).values == fill
        frame = strip[4 : 4 + height, 4 + i * (width + 4) : 4 + i * (width + 4) + width, -1]
        np.testing.assert_array_equal(frame == 0, missing)
        assert missing.any() and not missing.all()


def test_cloud_mask_validation_names_the_field() -> None:
    assert resolve_mask(S2, "auto") == "cloud-score-plus" and masks_for(S2) == ("cloud-score-plus", "scl")
    assert resolve_mask(L9, "auto") == "qa-pixel"
    aoi = AOI.from_bbox(CENTRAL_LONDON)
    base = {"start_date": "2024-06-01", "end_date": "2024-06-02", "aoi": aoi, "output_root": Path("x")}
    for kw, message in (
        ({"collection_id": S2, "cloud_mask": "fmask"}, "cloud_mask: 'fmask' is not one of"),
        ({"collection_id": S2, "cloud_mask": "qa-pixel"}, "cloud_mask: 'qa-pixel' does not fit"),
        ({"collection_id": L9, "cloud_mask": "scl"}, "it fits qa-pixel"),
        ({"collection_id": "MODIS/061/MOD09GA", "cloud_mask": "auto"}, "'auto' knows no cloud mask"),
        ({"collection_id": S2, "cloud_mask": "scl", "cloud_score_threshold": 1.5}, "cloud_score_threshold"),
        ({"collection_id": S2, "cloud_mask": "scl", "max_cloud_fraction": -0.1}, "max_cloud_fraction"),
        ({"collection_id": S2, "max_cloud_fraction": 0.3}, "needs a cloud mask"),
    ):
        from edown import DownloadConfig

        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            DownloadConfig(**base, **kw)


def test_cli_dry_run_shows_fractions_and_a_bad_value_is_one_line(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    args = [
        "download",
        "-c",
        S2,
        "--start-date",
        "2024-06-01",
        "--end-date",
        "2024-06-14",
        "--bbox",
        ",".join(str(v) for v in CENTRAL_LONDON),
        "-b",
        "B4",
        "--server-url",
        ee_emulator.url,
        "--output-root",
        str(tmp_path / "data"),
        "--cloud-mask",
        "scl",
    ]
    done = run_edown(*args, "--max-cloud-fraction", "0.3", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "cloud fraction inside the AOI" in done.stdout
    assert "100.0%" in done.stdout and "cloudy" in done.stdout and "planned" in done.stdout
    assert not (tmp_path / "data" / "images").exists()
    for bad in ("1.5", "lots"):
        done = run_edown(*args, "--max-cloud-fraction", bad, "--dry-run", cwd=tmp_path)
        _one_line_error(done.returncode, done.stderr, "max_cloud_fraction")
    done = run_edown(*args[:-1], "cloudless", "--dry-run", cwd=tmp_path)
    _one_line_error(done.returncode, done.stderr, "cloud_mask: 'cloudless' is not one of")


def _one_line_error(code: int, stderr: str, names: str) -> None:
    """Exit 2, one error line naming the field (and at most a hint line), no traceback."""
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert lines[0].startswith("error: ") and names in lines[0], stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), stderr


def test_a_fraction_batch_too_big_for_earth_engine_is_asked_again_as_two_halves(tmp_path: Path) -> None:
    # 1000 evaluation steps fit three images' fractions but not six ("User memory limit exceeded"; a
    # "Computation timed out" is split the same way).
    common: dict[str, Any] = {
        "collection_id": S2,
        "start_date": "2024-06-01",
        "end_date": "2024-06-14",
        "aoi": AOI.from_bbox(CENTRAL_LONDON),
        "bands": ("B4",),
        "cloud_mask": "scl",
        "max_cloud_fraction": 1.0,
    }
    with serve(EmulatorConfig()) as roomy:
        reference = search_images(config(roomy, tmp_path, **common))
    with serve(EmulatorConfig(limits=Limits(max_evaluation_nodes=1000))) as tight:
        found = search_images(config(tight, tmp_path, **common))
        requests = tight.stats()["requests"]["compute"]
    fractions = {r.system_index: r.cloud_fraction for r in found.images}
    assert len(fractions) == 6 and None not in fractions.values()
    assert fractions == {r.system_index: r.cloud_fraction for r in reference.images}
    assert requests == 3  # the batch of six, then two of three


def test_cloud_score_plus_fractions_are_asked_in_smaller_batches(ee_emulator_session: Emulator) -> None:
    assert MASKS["cloud-score-plus"].fraction_batch == 25 < MASKS["scl"].fraction_batch == FRACTION_BATCH
    found = _two_weeks_over_central_london(ee_emulator_session)
    indices = [r.system_index for r in found.images]
    ee_emulator_session.reset_stats()
    counts = count_clouds(
        S2,
        indices * 5,  # 30 names (repeats are counted once by Earth Engine's inList): two batches
        ("2024-06-01", "2024-06-15"),
        AOI.from_bbox(CENTRAL_LONDON).geometry,
        "cloud-score-plus",
        0.6,
        lambda obj: obj.getInfo(),
    )
    assert set(counts) == set(indices)
    assert ee_emulator_session.stats()["requests"]["compute"] == 2


def test_a_threshold_without_cloud_score_plus_is_refused_and_hints_only_suggest_what_fits() -> None:
    from edown import DownloadConfig

    base = {"start_date": "2024-06-01", "end_date": "2024-06-02", "aoi": AOI.from_bbox(CENTRAL_LONDON)}
    for kw, message, hint in (
        ({"collection_id": S2, "cloud_mask": "scl"}, "this run's cloud mask is scl", "cloud-score-plus"),
        ({"collection_id": S2}, "there is no cloud mask", "--cloud-mask cloud-score-plus"),
        ({"collection_id": L9, "cloud_mask": "auto"}, "cloud mask is qa-pixel", "does not fit " + L9),
    ):
        with pytest.raises(ConfigError, match="cloud_score_threshold: applies to cloud-score-plus only") as e:
            DownloadConfig(**base, **kw, cloud_score_threshold=0.3, output_root=Path("x"))
        assert message in e.value.message and hint in (e.value.hint or "")
    fine = DownloadConfig(**base, collection_id=S2, cloud_mask="auto", cloud_score_threshold=0.3)
    assert (fine.cloud_mask, fine.cloud_score_threshold) == ("cloud-score-plus", 0.3)
    assert DownloadConfig(**base, collection_id=S2, cloud_mask="none").cloud_mask is None
    for collection, mask in (("MODIS/061/MOD09GA", "qa-pixel"), ("COPERNICUS/S2_CLOUD_PROBABILITY", "auto")):
        with pytest.raises(ConfigError) as refused:
            DownloadConfig(**base, collection_id=collection, cloud_mask=mask)
        hint = refused.value.hint or ""
        assert "auto" not in hint and "S2*" not in hint and "drop --cloud-mask" in hint, hint
        assert "COPERNICUS/S2_SR_HARMONIZED" not in hint and "S2_SR_HARMONIZED" in hint


def test_cli_accepts_none_and_the_demo_checks_its_mask_before_starting(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    bbox = ",".join(str(v) for v in CENTRAL_LONDON)
    common = ["-c", S2, "--start-date", "2024-06-03", "--end-date", "2024-06-03", "--bbox", bbox, "-b", "B4"]
    common += ["--server-url", ee_emulator.url, "--cloud-mask", "none"]
    searched = run_edown("search", *common, cwd=tmp_path)
    assert searched.returncode == 0, searched.stderr
    planned = run_edown("download", *common, "-o", "o", "--dry-run", "--json", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    threshold = run_edown("download", *common, "-o", "o", "--cloud-score-threshold", "0.3", cwd=tmp_path)
    _one_line_error(
        threshold.returncode, threshold.stderr, "cloud_score_threshold: applies to cloud-score-plus"
    )
    demo = run_edown("demo", "-o", "d", "--cloud-mask", "qa-pixel", cwd=tmp_path)
    _one_line_error(
        demo.returncode, demo.stderr, "'qa-pixel' is not one of cloud-score-plus, scl, auto, none"
    )
    assert "emulator" not in demo.stderr + demo.stdout and not (tmp_path / "d").exists()
