"""store="icechunk": the same datacube as Zarr, one commit per run, time travel, and a killed append that
leaves the previous snapshot as the head."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import pytest
import xarray as xr
from PIL import Image

from edown import StackConfig, open_stack, stack_images
from edown.emulator.server import Emulator
from edown.errors import StackError
from tests.helpers import run_edown
from tests.test_stack import download


def head(path: Path) -> str:
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    return repo.lookup_branch("main")


def messages(path: Path) -> list[str]:
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    return [s.message for s in repo.ancestry(branch="main")]


def assert_same_cube(a: xr.Dataset, b: xr.Dataset) -> None:
    """Values, coordinates, dtype, nodata, CRS and transform equal (attributes but the creation time)."""
    np.testing.assert_array_equal(a["data"].values, b["data"].values)
    assert a["data"].dtype == b["data"].dtype and a["data"].attrs == b["data"].attrs
    assert sorted(a.coords) == sorted(b.coords)
    for name in a.coords:
        if name != "spatial_ref":
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert a["spatial_ref"].attrs == b["spatial_ref"].attrs
    assert a.rio.crs == b.rio.crs and a.rio.transform() == b.rio.transform()
    drop = {"created_utc"}
    assert {k: v for k, v in a.attrs.items() if k not in drop} == {
        k: v for k, v in b.attrs.items() if k not in drop
    }


def test_icechunk_stack_equals_the_zarr_stack(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download(ee_emulator, tmp_path / "data", end_date="2024-06-05")
    [plain] = stack_images(StackConfig(manifest_path=summary.manifest_path))
    [ice] = stack_images(StackConfig(manifest_path=summary.manifest_path, store="icechunk"))
    assert ice.error is None and ice.output_path == plain.output_path.with_suffix(".icechunk")
    assert ice.image_count == ice.appended == 2 and ice.snapshot_id == head(ice.output_path)
    assert_same_cube(open_stack(ice.output_path), open_stack(plain.output_path))
    masked = open_stack(ice.output_path, masked=True)
    assert masked["data"].dtype.kind == "f" and bool(masked["data"].isnull().any())
    assert messages(ice.output_path) == [
        f"edown stack: create group {ice.group_id} with 2 time step(s) from {summary.manifest_path.name}",
        "Repository initialized",
    ]
    assert not list(ice.output_path.parent.glob("*.tmp-*"))
    # The run is recorded in the manifest with its commit.
    recorded = summary.manifest_path.read_text()
    assert ice.snapshot_id is not None and f'"snapshot_id": "{ice.snapshot_id}"' in recorded


def test_append_is_a_second_commit_and_the_first_snapshot_keeps_the_old_times(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    first = download(ee_emulator, root, end_date="2024-06-05", manifest_path=root / "first.json")
    [created] = stack_images(StackConfig(manifest_path=first.manifest_path, store="icechunk"))
    before = open_stack(created.output_path).load()
    between = dt.datetime.now(dt.timezone.utc)
    second = download(ee_emulator, root, end_date="2024-06-12", manifest_path=root / "second.json")
    [appended] = stack_images(StackConfig(manifest_path=second.manifest_path, store="icechunk"))
    assert appended.appended == 2 and appended.image_count == 4
    assert appended.snapshot_id == head(appended.output_path) != created.snapshot_id
    assert messages(appended.output_path)[0].startswith(f"edown stack: append group {appended.group_id}")
    assert open_stack(appended.output_path).sizes["time"] == 4
    # Time travel: by commit id and by time, the first snapshot still has two time steps and its values.
    for old in (
        open_stack(created.output_path, snapshot=created.snapshot_id),
        open_stack(created.output_path, as_of=between),
    ):
        assert old.sizes["time"] == 2
        assert_same_cube(old, before)
    # Same values as the plain Zarr stack appended the same way.
    stack_images(StackConfig(manifest_path=first.manifest_path, output_root=root))
    [plain] = stack_images(StackConfig(manifest_path=second.manifest_path))
    assert_same_cube(open_stack(appended.output_path), open_stack(plain.output_path))
    # Nothing new to append: no commit.
    [again] = stack_images(StackConfig(manifest_path=second.manifest_path, store="icechunk"))
    assert again.appended == 0 and again.snapshot_id == appended.snapshot_id
    assert len(messages(appended.output_path)) == 3
    with pytest.raises(StackError, match="no snapshot"):
        open_stack(appended.output_path, snapshot="0" * 20)
    with pytest.raises(StackError, match="not an icechunk stack"):
        open_stack(plain.output_path, snapshot=created.snapshot_id)


APPEND = """
import sys
from edown import StackConfig, stack_images
[result] = stack_images(StackConfig(manifest_path=sys.argv[1], store="icechunk", threads=1))
print(result.error)
"""


@dataclass
class SlowAppend:
    first: Any  # DownloadSummary of the stacked dates
    second: Any  # DownloadSummary with two more dates, being appended
    created: Any  # StackResult of the first stack
    before: xr.Dataset  # the first stack's contents, loaded before the append started
    child: subprocess.Popen[str]


def slow_append(ee_emulator: Emulator, root: Path) -> SlowAppend:
    """A two-date stack of 64-pixel chunks, and an append of two more dates running in a child process,
    returned once the append has written its first new chunk object.

    Small chunks make the append write hundreds of chunk objects, one at a time (threads=1), so the
    first one shows the append is writing, seconds before its commit.
    """
    first = download(ee_emulator, root, end_date="2024-06-05", manifest_path=root / "first.json")
    config = StackConfig(manifest_path=first.manifest_path, store="icechunk", chunk_size=64)
    [created] = stack_images(config)
    before = open_stack(created.output_path).load()
    chunks = created.output_path / "chunks"
    existing = set(chunks.iterdir())
    second = download(ee_emulator, root, end_date="2024-06-12", manifest_path=root / "second.json")
    child = subprocess.Popen(
        [sys.executable, "-c", APPEND, str(second.manifest_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not set(chunks.iterdir()) - existing:
            if child.poll() is not None:
                raise AssertionError(f"the append ended before writing: {child.communicate()[0]}")
            assert time.monotonic() < deadline, "the append wrote no chunk in 90 s"
            time.sleep(0.005)
    except BaseException:
        child.kill()
        child.wait(timeout=30)
        raise
    return SlowAppend(first, second, created, before, child)


def test_killed_append_leaves_the_previous_snapshot_as_head(ee_emulator: Emulator, tmp_path: Path) -> None:
    run = slow_append(ee_emulator, tmp_path / "data")
    os.kill(run.child.pid, signal.SIGKILL)
    run.child.wait(timeout=30)
    assert run.child.returncode == -signal.SIGKILL
    path = run.created.output_path
    assert head(path) == run.created.snapshot_id and len(messages(path)) == 2
    after = open_stack(path)
    assert after.sizes["time"] == 2
    assert_same_cube(after, run.before)
    # A re-run (after the kill, whose lock died with it) completes the append in one new commit.
    [redone] = stack_images(StackConfig(manifest_path=run.second.manifest_path, store="icechunk"))
    assert redone.appended == 2 and redone.image_count == 4 and head(path) == redone.snapshot_id
    stack_images(StackConfig(manifest_path=run.first.manifest_path, chunk_size=64))
    [plain] = stack_images(StackConfig(manifest_path=run.second.manifest_path))
    assert_same_cube(open_stack(redone.output_path), open_stack(plain.output_path))


def test_a_commit_by_someone_else_during_an_append_is_a_conflict_and_edown_commits_nothing(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    import zarr

    run = slow_append(ee_emulator, tmp_path / "data")
    path = run.created.output_path
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="r+").attrs["note"] = "theirs"
    theirs = session.commit("their note")
    out, _ = run.child.communicate(timeout=120)
    assert run.child.returncode == 0, out
    assert f"{path}: another writer committed to the repository during this run" in out.splitlines()[-1]
    assert head(path) == theirs and messages(path)[0] == "their note"
    now = open_stack(path)
    assert now.attrs["note"] == "theirs" and now.sizes["time"] == 2
    assert_same_cube(now.drop_attrs(deep=False), run.before.drop_attrs(deep=False))


def test_dask_local_forks_create_and_append_the_same_cube_one_commit_each(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    # Named manifests: two runs started within one second would share the default run-<second>.json.
    first = download(ee_emulator, root, end_date="2024-06-05", manifest_path=root / "first.json")
    second = download(ee_emulator, root, end_date="2024-06-12", manifest_path=root / "second.json")
    for manifest in (first.manifest_path, second.manifest_path):
        [threads] = stack_images(StackConfig(manifest_path=manifest, store="icechunk"))
        [local] = stack_images(
            StackConfig(
                manifest_path=manifest,
                output_root=tmp_path / "dask",
                store="icechunk",
                backend="dask-local",
                n_workers=2,
            )
        )
        assert local.error is None, local.error
        assert local.appended == threads.appended == 2
        assert_same_cube(open_stack(local.output_path), open_stack(threads.output_path))
    assert len(messages(local.output_path)) == 3


def test_overwrite_commits_a_rebuild_and_keeps_the_old_snapshot(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    first = download(ee_emulator, root, end_date="2024-06-05", manifest_path=root / "first.json")
    [created] = stack_images(StackConfig(manifest_path=first.manifest_path, store="icechunk"))
    second = download(
        ee_emulator, root, start_date="2024-06-06", end_date="2024-06-12", manifest_path=root / "second.json"
    )
    [rebuilt] = stack_images(
        StackConfig(manifest_path=second.manifest_path, store="icechunk", overwrite=True)
    )
    assert rebuilt.appended == rebuilt.image_count == 2
    now, old = open_stack(rebuilt.output_path), open_stack(rebuilt.output_path, snapshot=created.snapshot_id)
    assert set(now.image_id.values).isdisjoint(old.image_id.values)
    assert messages(rebuilt.output_path)[0].startswith(f"edown stack: rebuild group {rebuilt.group_id}")


def test_something_else_under_the_repository_name_is_left_alone(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    summary = download(ee_emulator, tmp_path / "data", end_date="2024-06-05")
    [plain] = stack_images(StackConfig(manifest_path=summary.manifest_path))
    squatter = plain.output_path.with_suffix(".icechunk")
    squatter.mkdir()
    (squatter / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        config = StackConfig(manifest_path=summary.manifest_path, store="icechunk", overwrite=overwrite)
        [result] = stack_images(config)
        assert result.error is not None and "is not an icechunk repository" in result.error
    assert [p.name for p in squatter.iterdir()] == ["notes.txt"]


def test_cli_store_icechunk_commits_and_names_the_extra_when_missing(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    summary = download(ee_emulator, tmp_path / "data", end_date="2024-06-05")
    done = run_edown("stack", "-m", str(summary.manifest_path), "--store", "icechunk", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)
    assert result["output_path"].endswith(".icechunk") and result["snapshot_id"] == head(
        Path(result["output_path"])
    )
    assert "WARN" not in done.stderr, "icechunk's log lines stay out of the CLI's output"
    drawn = run_edown("quicklook", result["output_path"], "-b", "B4", "-o", "strip.png", cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    with Image.open(tmp_path / "strip.png") as strip:
        assert strip.mode == "LA" and np.asarray(strip)[..., 0].std() > 10
    # Without the icechunk package (marked unimportable in the child): one line naming the extra, exit 2.
    hide = tmp_path / "no-icechunk"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['icechunk'] = None\n")
    missing = run_edown(
        "stack",
        "-m",
        str(summary.manifest_path),
        "--store",
        "icechunk",
        cwd=tmp_path,
        env={"PYTHONPATH": str(hide)},
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "error: store='icechunk' needs the optional extra edown[icechunk]",
        "hint: pip install 'edown[icechunk]' (on Python >= 3.12)",
    ], missing.stderr


@pytest.mark.slurm
def test_dask_slurm_forks_write_the_same_cube_in_one_commit(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download(ee_emulator, tmp_path / "data", end_date="2024-06-05")
    [threads] = stack_images(StackConfig(manifest_path=summary.manifest_path, store="icechunk"))
    reference = open_stack(threads.output_path).load()
    [slurm] = stack_images(
        StackConfig(
            manifest_path=summary.manifest_path,
            output_root=tmp_path / "slurm",
            store="icechunk",
            backend="dask-slurm",
            slurm_queue=os.environ.get("EDOWN_SLURM_PARTITION", "edown"),
            n_workers=2,
            memory_per_worker="1GB",
            walltime="00:10:00",
            scheduler_host="127.0.0.1",
            worker_timeout_seconds=180,
        )
    )
    assert slurm.error is None, slurm.error
    assert len(messages(slurm.output_path)) == 2
    assert_same_cube(open_stack(slurm.output_path), reference)


def test_a_repository_edown_did_not_write_is_neither_appended_to_nor_rebuilt(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    import zarr

    summary = download(ee_emulator, tmp_path / "data", end_date="2024-06-05")
    group = summary.search.alignment_groups[0]
    target = tmp_path / "data" / "stacks" / "COPERNICUS.S2_SR_HARMONIZED" / f"{group.group_id}.icechunk"
    target.parent.mkdir(parents=True)
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(target)))
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="w").attrs["owner"] = "someone else"
    theirs = session.commit("their data")
    for overwrite, message in ((False, "holds a different group"), (True, "edown did not write")):
        config = StackConfig(manifest_path=summary.manifest_path, store="icechunk", overwrite=overwrite)
        [result] = stack_images(config)
        assert result.error is not None and message in result.error, result.error
    assert head(target) == theirs and messages(target) == ["their data", "Repository initialized"]
