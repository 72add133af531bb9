"""A run never reuses pixels made under other cloud settings: finished GeoTIFFs are refused (one line,
exit 2, ``--overwrite`` replaces them) and stored chunks of a partial download are refetched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from edown import AOI, download_images, search_images
from edown.emulator.behaviour import FaultPlan, FaultRule
from edown.emulator.server import Emulator, EmulatorConfig, serve
from edown.errors import OutputExistsError
from tests.helpers import config, run_edown

CENTRAL_LONDON = (-0.15, 51.48, 0.02, 51.56)
ONE_DAY: dict[str, Any] = {
    "start_date": "2024-06-03",
    "end_date": "2024-06-03",
    "aoi": AOI.from_bbox(CENTRAL_LONDON),
    "bands": ("B4", "B8"),
    "max_images": 1,
    "chunk_size": 128,
    "chunk_size_mode": "fixed",
    "max_concurrent_requests": 1,
}


def _pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        data: np.ndarray = src.read()
    return data


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({}, {"cloud_mask": "scl"}),
        ({"cloud_mask": "scl"}, {}),
        (
            {"cloud_mask": "cloud-score-plus", "cloud_score_threshold": 0.3},
            {"cloud_mask": "cloud-score-plus", "cloud_score_threshold": 0.9},
        ),
    ],
    ids=["none-then-scl", "scl-then-none", "threshold-0.3-then-0.9"],
)
def test_a_resume_with_other_cloud_settings_refetches_every_stored_chunk(
    tmp_path: Path, before: dict[str, Any], after: dict[str, Any]
) -> None:
    # The fifth pixel request fails for good: the image fails with four chunks stored, as after a kill.
    rules = (FaultRule(kind="error", status=403, nth=(5,)),)
    with serve(EmulatorConfig(faults=FaultPlan(rules=rules))) as emu:
        first = download_images(config(emu, tmp_path, **ONE_DAY, **before))
        assert [r.status for r in first.results] == ["failed"]
        stored = list((tmp_path / "data").glob("images/*/*.partial/c*.npy"))
        assert len(stored) == 4
        emu.reset_stats()
        resumed = download_images(config(emu, tmp_path, **ONE_DAY, **after))
        refetched = emu.stats()["requests"]["computePixels"]
        fresh = download_images(config(emu, tmp_path, output_root=tmp_path / "fresh", **ONE_DAY, **after))
    [result], [reference] = resumed.results, fresh.results
    assert result.status == reference.status == "downloaded"
    assert refetched == reference.chunk_count > 4
    assert result.tiff_path is not None and reference.tiff_path is not None
    np.testing.assert_array_equal(_pixels(result.tiff_path), _pixels(reference.tiff_path))
    assert not list((tmp_path / "data").glob("images/*/*.partial"))


def test_a_resume_with_the_same_cloud_settings_still_reuses_its_chunks(tmp_path: Path) -> None:
    rules = (FaultRule(kind="error", status=403, nth=(5,)),)
    with serve(EmulatorConfig(faults=FaultPlan(rules=rules))) as emu:
        download_images(config(emu, tmp_path, **ONE_DAY, cloud_mask="scl"))
        emu.reset_stats()
        resumed = download_images(config(emu, tmp_path, **ONE_DAY, cloud_mask="scl"))
        refetched = emu.stats()["requests"]["computePixels"]
    [result] = resumed.results
    assert result.status == "downloaded" and refetched == result.chunk_count - 4


def test_finished_outputs_made_with_another_cloud_mask_are_refused_and_overwrite_replaces_them(
    tmp_path: Path,
) -> None:
    with serve(EmulatorConfig()) as emu:
        plain = download_images(config(emu, tmp_path, **ONE_DAY))
        [made] = plain.results
        assert made.tiff_path is not None
        sidecar = json.loads(made.tiff_path.with_suffix(".json").read_text())
        assert sidecar["cloud_mask"] == "none"
        with pytest.raises(OutputExistsError) as refused:
            download_images(config(emu, tmp_path, **ONE_DAY, cloud_mask="scl"))
        assert "with cloud mask none; this run makes cloud mask scl" in refused.value.message
        assert "--overwrite" in (refused.value.hint or "")
        masked = download_images(config(emu, tmp_path, **ONE_DAY, cloud_mask="scl", overwrite=True))
        [result] = masked.results
        assert result.status == "downloaded" and result.tiff_path is not None
        assert json.loads(result.tiff_path.with_suffix(".json").read_text())["cloud_mask"] == "scl"
        assert (_pixels(result.tiff_path) == result.nodata).any()
        with pytest.raises(OutputExistsError) as again:
            download_images(
                config(emu, tmp_path, **ONE_DAY, cloud_mask="cloud-score-plus", cloud_score_threshold=0.3)
            )
        assert "cloud mask scl; this run makes cloud mask cloud-score-plus@0.3" in again.value.message
        kept = download_images(config(emu, tmp_path, **ONE_DAY, cloud_mask="scl"))
        assert [r.status for r in kept.results] == ["skipped_existing"]


def test_demo_rerun_without_the_mask_refuses_the_masked_files(tmp_path: Path) -> None:
    first = run_edown("demo", "-o", "d", "--latency", "none", cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr
    again = run_edown(
        "demo", "-o", "d", "--latency", "none", "--cloud-mask", "none", cwd=tmp_path, timeout=300
    )
    assert again.returncode == 2, again.stderr
    assert "clouds and shadows are kept" not in again.stderr + again.stdout
    assert "this run makes cloud mask none" in again.stderr and "--overwrite" in again.stderr
    replaced = run_edown(
        "demo",
        "-o",
        "d",
        "--latency",
        "none",
        "--cloud-mask",
        "none",
        "--overwrite",
        cwd=tmp_path,
        timeout=300,
    )
    assert replaced.returncode == 0, replaced.stderr
    assert "clouds and shadows are kept" in replaced.stderr


# ---- a saved search read with other cloud settings ----------------------------------------------------

TEN_DAYS = ["-c", "COPERNICUS/S2_SR_HARMONIZED", "--start-date", "2024-06-01", "--end-date", "2024-06-10"]


def _saved_search(emu: Emulator, tmp_path: Path, *cloud: str) -> Path:
    where = tmp_path / "s.json"
    bbox = ",".join(map(str, CENTRAL_LONDON))
    done = run_edown(
        "search", *TEN_DAYS, "--bbox", bbox, "-b", "B4", "--server-url", emu.url, *cloud,
        "--manifest-path", str(where), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return where


def _fractions(images: Any) -> dict[str, float | None]:
    return {r.system_index: r.cloud_fraction for r in images}


def test_from_manifest_with_another_mask_counts_the_fractions_again_for_that_mask(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    saved = _saved_search(ee_emulator, tmp_path, "--cloud-mask", "scl", "--max-cloud-fraction", "0.3")
    base: dict[str, Any] = {
        "collection_id": "COPERNICUS/S2_SR_HARMONIZED",
        "start_date": "2024-06-01",
        "end_date": "2024-06-10",
        "aoi": AOI.from_bbox(CENTRAL_LONDON),
        "bands": ("B4",),
        "dry_run": True,
    }
    truth = search_images(
        config(ee_emulator, tmp_path, **base, cloud_mask="cloud-score-plus", max_cloud_fraction=1.0)
    )
    scl = search_images(config(ee_emulator, tmp_path, **base, cloud_mask="scl", max_cloud_fraction=1.0))
    assert _fractions(truth.images) != _fractions(scl.images)
    plan = download_images(
        config(
            ee_emulator,
            tmp_path,
            **base,
            search_manifest=saved,
            cloud_mask="cloud-score-plus",
            max_cloud_fraction=0.3,
        )
    )
    assert plan.search is not None
    assert _fractions(plan.search.images) == pytest.approx(_fractions(truth.images), abs=1e-12)
    cloudy = {r.record_key for r in plan.results if r.status == "cloudy"}
    assert cloudy == {r.record_key for r in truth.images if (r.cloud_fraction or 0) > 0.3}
    # No filter this time: fractions of the other mask are dropped rather than shown under this one.
    unfiltered = download_images(
        config(ee_emulator, tmp_path, **base, search_manifest=saved, cloud_mask="cloud-score-plus")
    )
    assert unfiltered.search is not None
    assert set(_fractions(unfiltered.search.images).values()) == {None}
    assert all(r.status != "cloudy" for r in unfiltered.results)


# ---- saved fractions are checked when read ------------------------------------------------------------


@pytest.mark.parametrize("bad", ["abc", 5, -1, float("nan"), True])
def test_a_hand_edited_cloud_fraction_is_a_one_line_manifest_error(
    ee_emulator: Emulator, tmp_path: Path, bad: Any
) -> None:
    saved = _saved_search(ee_emulator, tmp_path, "--cloud-mask", "scl", "--max-cloud-fraction", "1")
    doc = json.loads(saved.read_text())
    image = doc["search"]["result"]["images"][0]
    image["cloud_fraction"] = bad
    saved.write_text(json.dumps(doc))
    done = run_edown(
        "download", "--from-manifest", str(saved), "-o", "o", "--server-url", ee_emulator.url, "--dry-run",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    first = done.stderr.strip().splitlines()[0]
    assert str(saved) in first and image["image_id"] in first and "cloud_fraction" in first, done.stderr
    assert "not a number in [0, 1] or null" in first and "Traceback" not in done.stderr


# ---- stacks record each time step's mask --------------------------------------------------------------


def test_appending_a_masked_run_to_an_unmasked_stack_adds_fractions_and_each_steps_mask(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    import xarray as xr

    from edown import StackConfig, stack_images

    week: dict[str, Any] = {"aoi": AOI.from_bbox(CENTRAL_LONDON), "bands": ("B4",)}
    first = download_images(
        config(
            ee_emulator,
            tmp_path,
            **week,
            start_date="2024-06-01",
            end_date="2024-06-05",
            manifest_path=tmp_path / "first.json",
        )
    )
    [made] = [r for r in stack_images(StackConfig(first.manifest_path)) if r.output_path]
    assert made.output_path is not None
    with xr.open_zarr(made.output_path) as ds:
        t_first = ds.sizes["time"]
        assert "cloud_fraction" not in ds.coords and set(ds["cloud_mask"].values) == {"none"}
    second = download_images(
        config(
            ee_emulator,
            tmp_path,
            **week,
            start_date="2024-06-06",
            cloud_mask="scl",
            max_cloud_fraction=1.0,
            manifest_path=tmp_path / "second.json",
        )
    )
    fractions = {r.image_id: r.cloud_fraction for r in second.results if r.status == "downloaded"}
    stacked = [
        r for r in stack_images(StackConfig(second.manifest_path)) if r.output_path == made.output_path
    ]
    assert stacked and stacked[0].appended > 0
    with xr.open_zarr(made.output_path) as ds:
        assert "cloud_fraction" in ds.coords and "cloud_mask" in ds.coords
        masks = [str(v) for v in ds["cloud_mask"].values]
        assert masks == ["none"] * t_first + ["scl"] * (ds.sizes["time"] - t_first)
        assert np.isnan(ds["cloud_fraction"].values[:t_first]).all()
        for ids, fraction in zip(
            ds["image_id"].values[t_first:], ds["cloud_fraction"].values[t_first:], strict=True
        ):
            assert fraction == pytest.approx(fractions[str(ids).split("|")[0]], abs=1e-12)


def test_appending_earlier_dates_is_refused_and_overwrite_rebuilds_in_order(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    import xarray as xr

    from edown import StackConfig, stack_images
    from edown.errors import StackError

    # Named manifests: two downloads started within one second would share run-<second>.json.
    where: dict[str, Any] = {"aoi": AOI.from_bbox(CENTRAL_LONDON), "bands": ("B4",), "max_images": 2}
    later = download_images(
        config(
            ee_emulator,
            tmp_path,
            **where,
            start_date="2024-06-06",
            end_date="2024-06-14",
            manifest_path=tmp_path / "later.json",
        )
    )
    earlier = download_images(
        config(
            ee_emulator,
            tmp_path,
            **where,
            start_date="2024-06-01",
            end_date="2024-06-05",
            manifest_path=tmp_path / "earlier.json",
        )
    )
    stack_images(StackConfig(later.manifest_path))
    outcome: Any
    try:
        outcome = stack_images(StackConfig(earlier.manifest_path))
    except StackError as exc:
        outcome = exc
    message = str(outcome) if isinstance(outcome, StackError) else " ".join(str(r.error) for r in outcome)
    assert "which an append would put out of order" in message
    rebuilt = stack_images(
        StackConfig(later.manifest_path, manifest_paths=(earlier.manifest_path,), overwrite=True)
    )
    for result in rebuilt:
        assert result.output_path is not None
        with xr.open_zarr(result.output_path) as ds:
            times = ds["time"].values
            assert (np.diff(times) > np.timedelta64(0)).all()


def test_a_nan_cloud_fraction_in_a_run_manifest_stops_stack_before_it_writes(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    run = download_images(
        config(
            ee_emulator,
            tmp_path,
            **{**ONE_DAY, "chunk_size": None, "chunk_size_mode": "auto"},
            cloud_mask="scl",
            max_cloud_fraction=1.0,
        )
    )
    doc = json.loads(run.manifest_path.read_text())
    doc["download"]["results"][0]["cloud_fraction"] = float("nan")
    run.manifest_path.write_text(json.dumps(doc))
    done = run_edown("stack", str(run.manifest_path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "cloud_fraction" in done.stderr and str(run.manifest_path) in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "data" / "stacks").exists()
