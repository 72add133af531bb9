"""Object-store roots against real servers on loopback: moto_server (S3) and fake-gcs-server (GCS).

The fixtures ``s3_root`` / ``gs_root`` (tests/conftest.py) give a fresh bucket on a server started for
the session, with its endpoint in the environment; nothing here mocks a storage client.
"""

from __future__ import annotations

import http.server
import json
import os
import posixpath
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from edown import download_images
from edown.emulator.object_stores import StoreServer
from edown.emulator.server import Emulator
from edown.errors import OutputLockedError
from edown.storeroot import LOCK_KEY
from edown.stores import ObjectStore, StoreURL, location
from tests.helpers import config, run_edown

pytestmark = pytest.mark.timeout(300)


def _keys(root: str) -> list[str]:
    return [o.key for o in ObjectStore(StoreURL(root)).list("")]


def _read_tiff(root: str, key: str, into: Path) -> dict[str, Any]:
    """A GeoTIFF on the store, downloaded and read with rasterio."""
    into.parent.mkdir(parents=True, exist_ok=True)
    ObjectStore(StoreURL(root)).download(key, into)
    with rasterio.open(into) as src:
        return {
            "pixels": src.read(),
            "transform": tuple(src.transform),
            "crs": src.crs.to_wkt(),
            "dtype": src.dtypes[0],
            "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
            "overviews": src.overviews(1),
            "blocks": src.block_shapes[0],
        }


@pytest.mark.parametrize("root_fixture", ["s3_root", "gs_root"])
def test_same_job_to_local_and_store_gives_identical_cogs(
    ee_emulator_session: Emulator, tmp_path: Path, root_fixture: str, request: pytest.FixtureRequest
) -> None:
    root: str = request.getfixturevalue(root_fixture)
    local = download_images(config(ee_emulator_session, tmp_path))
    remote = download_images(config(ee_emulator_session, tmp_path, output_root=root))
    assert local.downloaded == remote.downloaded > 0
    assert remote.failed == 0
    assert isinstance(remote.manifest_path, StoreURL)
    assert remote.manifest_path.startswith(f"{root}/manifests/run-")
    keys = _keys(root)
    manifest_key = StoreURL(remote.manifest_path).relative_to(StoreURL(root))
    assert manifest_key in keys
    doc = json.loads(ObjectStore(StoreURL(root)).read_bytes(manifest_key))
    assert doc["output_root"] == root
    assert (
        doc["download"]["config"]["output_root"] == root
        and doc["download"]["config"]["manifest_path"] is None
    )
    assert "edown-staging" not in json.dumps(doc)  # the staging folder never shows in the record
    assert doc["download"]["state"] == "finished"
    assert doc["download"]["counts"]["downloaded"] == remote.downloaded
    # no chunk, partial or temporary object is left; every image has its COG and sidecar
    assert not [k for k in keys if ".partial/" in k or k.endswith(".tmp")]
    by_key = {r.record_key: r for r in local.results}
    for result in remote.results:
        assert isinstance(result.tiff_path, StoreURL)
        key = result.tiff_path.relative_to(StoreURL(root))
        assert key in keys and key.removesuffix(".tif") + ".json" in keys
        there = _read_tiff(root, key, tmp_path / "fetched" / key)
        mine = by_key[result.record_key].tiff_path
        assert isinstance(mine, Path)
        with rasterio.open(mine) as src:
            np.testing.assert_array_equal(there["pixels"], src.read())
            assert there["transform"] == tuple(src.transform)
            assert there["crs"] == src.crs.to_wkt()
            assert there["dtype"] == src.dtypes[0]
        assert there["layout"] == "COG"
        assert there["blocks"] == (256, 256)
    # the lock was released, the marker stays
    assert LOCK_KEY not in keys
    assert ".edown/root.json" in keys


@pytest.mark.parametrize("root_fixture", ["s3_root", "gs_root"])
def test_an_object_larger_than_two_parts_is_uploaded_whole_in_parts(
    tmp_path: Path, root_fixture: str, request: pytest.FixtureRequest
) -> None:
    # 8 MiB parts (edown.stores.UPLOAD_PART_BYTES): a 21 MiB object goes up as an S3 multipart / GCS
    # resumable upload, not read whole into memory, and reads back byte for byte.
    root: str = request.getfixturevalue(root_fixture)
    store = ObjectStore(StoreURL(root))
    body = np.random.default_rng(3).bytes(21 * 1024 * 1024 + 12345)
    source = tmp_path / "big.bin"
    source.write_bytes(body)
    store.upload("images/big.bin", source)
    assert [o.size for o in store.list("images/")] == [len(body)]
    assert store.read_bytes("images/big.bin") == body


def test_unsupported_scheme_is_one_line_exit_2(tmp_path: Path) -> None:
    done = run_edown(
        "download", "--collection-id", "X/Y", "--start-date", "2024-01-01", "--end-date", "2024-01-02",
        "--bbox", "0,0,1,1", "-o", "ftp://host/data", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: output_root: ftp://host/data uses ftp://"), done.stderr
    assert all(line.startswith("hint: ") for line in lines[1:]) and "Traceback" not in done.stderr
    with pytest.raises(Exception, match="ftp://"):
        location("ftp://host/data", "output_root")


@pytest.mark.parametrize("given", ["s3:/x", "gs:bucket/x", "vsis3:/b/x"])
def test_a_path_that_only_looks_like_a_store_url_is_refused_and_nothing_is_written(
    tmp_path: Path, given: str
) -> None:
    """GDAL would read "s3:/x/..." as a URL and sign requests to the provider's public endpoint."""
    done = run_edown(
        "download", "--collection-id", "X/Y", "--start-date", "2024-01-01", "--end-date", "2024-01-02",
        "--bbox", "0,0,1,1", "-o", given, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: output_root: {given} starts like a URL"), done.stderr
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []
    assert location(f"./{given}", "output_root") == Path.cwd() / given  # absolute: never read as a URL
    spelled = location(str(Path("folder") / given), "output_root")
    assert spelled == Path("folder") / given  # inside a folder it is a plain local path


# ---- resume after a kill, the lock, do no harm -------------------------------------------------------

KILL_SCRIPT = """
import sys
from edown import AOI, DownloadConfig, download_images
download_images(DownloadConfig(
    collection_id="COPERNICUS/S2_SR_HARMONIZED", start_date="2024-06-01", end_date="2024-06-10",
    aoi=AOI.from_bbox((-0.60, 51.48, -0.43, 51.56)), bands=("B2", "B3", "B4", "B8"),
    server_url=sys.argv[1], output_root=sys.argv[2], chunk_size=256, chunk_size_mode="fixed",
    max_inflight_chunks=4))
"""
FIXED = {"chunk_size": 256, "chunk_size_mode": "fixed", "max_inflight_chunks": 4}


def _start_download(emu: Emulator, root: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, emu.url, root],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )


def _chunks(keys: list[str]) -> list[str]:
    return [k for k in keys if ".tif.partial/c" in k and k.endswith(".npy")]


def _assert_no_partial_object_under_a_final_name(root: str, keys: list[str], into: Path) -> None:
    """Every object under a final name is whole: each .tif reads as a COG to its last pixel, each chunk
    and JSON parses; and no temporary name is ever on the store."""
    assert not [k for k in keys if k.endswith(".tmp") or "/.tmp-" in k], keys
    store = ObjectStore(StoreURL(root))
    for key in keys:
        if key.endswith(".tif"):
            info = _read_tiff(root, key, into / key)
            assert info["layout"] == "COG" and info["pixels"].size > 0
        elif key.endswith(".npy"):
            (into / key).parent.mkdir(parents=True, exist_ok=True)
            store.download(key, into / key)
            assert np.load(into / key).ndim == 3
        elif key.endswith(".json"):
            json.loads(store.read_bytes(key))


def test_sigkill_mid_download_to_a_store_then_resume_fetches_only_missing_chunks(
    tmp_path: Path, s3_root: str
) -> None:
    from edown.emulator import EmulatorConfig, Latency, serve

    root = s3_root
    with serve(EmulatorConfig(latency=Latency(base_seconds=0.15))) as emu:
        proc = _start_download(emu, root)
        deadline = time.monotonic() + 90
        listings: list[list[str]] = []
        while time.monotonic() < deadline:
            listings.append(_keys(root))
            if len(_chunks(listings[-1])) >= 8:
                break
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        after = _keys(root)
        stored = len(_chunks(after))
        assert stored >= 8, "the download should have stored some chunks before being killed"
        assert LOCK_KEY in after, "a killed run leaves its lock behind"
        for i, keys in enumerate([*listings[-3:], after]):
            _assert_no_partial_object_under_a_final_name(root, keys, tmp_path / f"listing-{i}")
        manifests = [k for k in after if k.startswith("manifests/")]
        assert manifests
        doc = json.loads(ObjectStore(StoreURL(root)).read_bytes(manifests[0]))
        assert doc["download"]["state"] == "running"

        time.sleep(1.0)  # let the killed process's in-flight requests finish before counting ours
        emu.reset_stats()
        resumed = download_images(config(emu, tmp_path, output_root=root, **FIXED))
        refetched = emu.stats()["requests"]["computePixels"]
        reference = download_images(config(emu, tmp_path, output_root=tmp_path / "ref", cog=True, **FIXED))
    total = sum(r.chunk_count for r in reference.results)
    assert resumed.downloaded + resumed.skipped == 2 and resumed.failed == 0
    finished_before = [r for r in resumed.results if r.status == "skipped_existing"]
    assert refetched == total - stored - sum(r.chunk_count for r in finished_before)
    final = _keys(root)
    assert not _chunks(final) and LOCK_KEY not in final
    by_key = {r.record_key: r for r in reference.results}
    for result in resumed.results:
        assert isinstance(result.tiff_path, StoreURL)
        key = result.tiff_path.relative_to(StoreURL(root))
        there = _read_tiff(root, key, tmp_path / "final" / key)
        mine = by_key[result.record_key].tiff_path
        assert isinstance(mine, Path)
        with rasterio.open(mine) as src:
            np.testing.assert_array_equal(there["pixels"], src.read())


def test_a_second_run_into_the_same_store_root_is_refused_by_the_lock(tmp_path: Path, gs_root: str) -> None:
    from edown.emulator import EmulatorConfig, Latency, serve

    with serve(EmulatorConfig(latency=Latency(base_seconds=0.3))) as emu:
        proc = _start_download(emu, gs_root)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and LOCK_KEY not in _keys(gs_root):
                time.sleep(0.1)
            assert LOCK_KEY in _keys(gs_root)
            holder = json.loads(ObjectStore(StoreURL(gs_root)).read_bytes(LOCK_KEY))
            assert holder["pid"] == proc.pid
            with pytest.raises(OutputLockedError, match=f"in use by another edown run \\(pid {proc.pid}"):
                download_images(config(emu, tmp_path, output_root=gs_root, **FIXED))
            assert proc.poll() is None, "the refused run must not have disturbed the first one"
        finally:
            proc.kill()
            proc.wait()


def test_edown_deletes_only_its_own_objects_on_a_store(
    ee_emulator_session: Emulator, tmp_path: Path, s3_root: str
) -> None:
    store = ObjectStore(StoreURL(s3_root))
    first = download_images(config(ee_emulator_session, tmp_path, output_root=s3_root))
    assert first.downloaded > 0 and isinstance(first.results[0].tiff_path, StoreURL)
    tiff_key = first.results[0].tiff_path.relative_to(StoreURL(s3_root))
    users = {
        "notes.txt": b"mine",
        "images/mine.tif": b"not edown's",
        f"{tiff_key}.partial/readme.txt": b"kept",
        f"{tiff_key}.partial/c0_r0_w1_h1.npy.bak": b"also kept",
        "manifests/hand-made.json": b"{}",
        ".edown/journal/x.json": b'{"path": "notes.txt"}',
    }
    for key, data in users.items():
        store.write_bytes(key, data)
    again = download_images(
        config(ee_emulator_session, tmp_path, output_root=s3_root, overwrite=True, **FIXED)
    )
    assert again.downloaded == first.downloaded and again.failed == 0
    for key, data in users.items():
        assert store.read_bytes(key) == data, key


# ---- Zarr on the store --------------------------------------------------------------------------------


@pytest.mark.parametrize("root_fixture", ["s3_root", "gs_root"])
def test_stack_from_a_store_manifest_builds_the_zarr_on_the_store(
    ee_emulator_session: Emulator, tmp_path: Path, root_fixture: str, request: pytest.FixtureRequest
) -> None:
    import xarray as xr

    from edown import StackConfig, open_stack, stack_images
    from edown.stores import storage_options

    root: str = request.getfixturevalue(root_fixture)
    local = download_images(config(ee_emulator_session, tmp_path, cog=True))
    remote = download_images(config(ee_emulator_session, tmp_path, output_root=root))
    assert isinstance(local.manifest_path, Path) and isinstance(remote.manifest_path, StoreURL)
    [mine] = stack_images(StackConfig(manifest_path=local.manifest_path))
    done = run_edown("stack", "-m", remote.manifest_path, "--json", cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr
    [theirs] = json.loads(done.stdout)
    assert theirs["output_path"].startswith(f"{root}/stacks/") and theirs["output_path"].endswith(".zarr")
    url = theirs["output_path"]
    keys = _keys(root)
    zarr_key = StoreURL(url).relative_to(StoreURL(root))
    assert f"{zarr_key}/zarr.json" in keys and LOCK_KEY not in keys
    assert isinstance(mine.output_path, Path)
    expected = open_stack(mine.output_path).load()
    there = open_stack(url).load()
    xr.testing.assert_equal(there, expected)
    assert there.attrs.pop("source_manifest") == remote.manifest_path
    for attrs in (there.attrs, expected.attrs):
        attrs.pop("created_utc"), attrs.pop("source_manifest", None)
    assert there.attrs == expected.attrs
    assert there["data"].dtype == expected["data"].dtype and there.rio.crs == expected.rio.crs
    if root.startswith("s3://"):  # plain xarray with storage_options, as any machine would open it
        plain = xr.open_zarr(url, storage_options=storage_options(url), mask_and_scale=False).load()
        np.testing.assert_array_equal(plain["data"].values, expected["data"].values)
    doc = json.loads(
        ObjectStore(StoreURL(root)).read_bytes(StoreURL(remote.manifest_path).relative_to(StoreURL(root)))
    )
    assert doc["output_root"] == root and doc["stack"]["manifests"] == [remote.manifest_path]
    # the catalog on the store gained the datacube's item, whose Zarr asset resolves to the datacube
    store = ObjectStore(StoreURL(root))
    [cube_key] = [k for k in _keys(root) if "/datacubes/" in k and not k.endswith("collection.json")]
    cube = json.loads(store.read_bytes(cube_key))
    assert set(cube["properties"]["cube:dimensions"]) >= {"time", "band", "x", "y"}
    [href] = [a["href"] for a in cube["assets"].values() if a["href"].rstrip("/").endswith(".zarr")]
    assert posixpath.normpath(posixpath.join(posixpath.dirname(cube_key), href)).rstrip("/") == zarr_key
    images = json.loads(store.read_bytes(cube_key.split("/datacubes/")[0] + "/collection.json"))
    assert any(link["rel"] == "child" and "datacubes" in link["href"] for link in images["links"])


# ---- progress, dry run and doctor ----------------------------------------------------------------------

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY42"


def test_doctor_checks_the_store_with_a_probe_and_never_prints_the_secret(
    ee_emulator: Emulator, tmp_path: Path, s3_root: str, gs_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # moto takes any key; it must never be shown
    for root in (s3_root, gs_root):
        done = run_edown("doctor", "--server-url", ee_emulator.url, "-o", root, "--json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["ok"] is True and report["output_root"] == root
        assert report["output_root_check"].startswith("writable (.edown/doctor-probe-")
        assert report["store"].startswith("S3 at http://127.0.0.1:" if root.startswith("s3") else "Google")
        assert SECRET not in done.stdout + done.stderr
        assert not [k for k in _keys(root) if "doctor-probe" in k], "the probe object is deleted"
    # A bucket that does not exist: one failure line in the report, exit 1, still no secret.
    missing = s3_root.replace("://edown-", "://missing-")
    done = run_edown("doctor", "--server-url", ee_emulator.url, "-o", missing, "--json", cwd=tmp_path)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert report["output_root_check"].startswith(f"failed: cannot write {missing}/.edown/doctor-probe-")
    assert SECRET not in done.stdout + done.stderr


def test_dry_run_and_summary_report_bytes_to_the_store(
    ee_emulator_session: Emulator, tmp_path: Path, s3_root: str
) -> None:
    planned = download_images(config(ee_emulator_session, tmp_path, output_root=s3_root, dry_run=True))
    assert planned.dry_run and planned.plan["store_upload_bytes_max"] > planned.plan["request_bytes"] * 0.5
    assert _keys(s3_root) == [], "a dry run writes nothing to the store"
    done = run_edown(
        "download", "-c", "COPERNICUS/S2_SR_HARMONIZED", "--start-date", "2024-06-01", "--end-date",
        "2024-06-10", "--bbox", "-0.60,51.48,-0.43,51.56", "-b", "B4", "--server-url", ee_emulator_session.url,
        "-o", s3_root, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "data stored" in done.stdout
    stored = sum(o.size for o in ObjectStore(StoreURL(s3_root)).list("images"))
    summary = download_images(
        config(ee_emulator_session, tmp_path, output_root=s3_root, bands=("B4",), overwrite=True)
    )
    assert summary.stats["bytes_to_store"] >= stored > 0


@pytest.mark.slurm
def test_dask_workers_on_the_real_slurm_read_the_datacube_on_the_store(
    ee_emulator_session: Emulator, tmp_path: Path, s3_root: str
) -> None:
    """Workers are SLURM batch jobs: each opens the store itself (the credentials and endpoint travel in
    the task's storage options, as on a cluster whose nodes share no folder with the client)."""
    import xarray as xr
    from dask.distributed import Client
    from dask_jobqueue import SLURMCluster

    from edown import StackConfig, stack_images
    from edown.stores import storage_options

    summary = download_images(
        config(ee_emulator_session, tmp_path, output_root=s3_root, end_date="2024-06-05")
    )
    assert isinstance(summary.manifest_path, StoreURL)
    [cube] = stack_images(StackConfig(manifest_path=summary.manifest_path))
    assert isinstance(cube.output_path, StoreURL)
    options = {
        **storage_options(cube.output_path),
        "key": os.environ["AWS_ACCESS_KEY_ID"],
        "secret": os.environ["AWS_SECRET_ACCESS_KEY"],
    }
    expected = xr.open_zarr(cube.output_path, storage_options=options, mask_and_scale=False).load()
    cluster = SLURMCluster(
        queue=os.environ.get("EDOWN_SLURM_PARTITION", "edown"),
        cores=1,
        processes=1,
        memory="1GB",
        walltime="00:10:00",
        scheduler_options={"host": "127.0.0.1", "dashboard_address": None},
        log_directory=str(tmp_path / "slurm-logs"),
    )
    try:
        cluster.scale(2)
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=180)
            lazy = xr.open_zarr(cube.output_path, storage_options=options, mask_and_scale=False, chunks={})
            total = client.compute(lazy["data"].astype("float64").sum()).result()
            first = client.compute(lazy["data"].isel(time=0)).result()
            workers = {w["host"] for w in client.scheduler_info()["workers"].values()}
    finally:
        cluster.close()
    assert workers, "the sums were computed on SLURM workers"
    assert total == float(expected["data"].astype("float64").sum())
    np.testing.assert_array_equal(first.values, expected["data"].isel(time=0).values)


def test_google_credentials_are_never_sent_to_a_gcs_emulator(
    ee_emulator: Emulator, tmp_path: Path, gs_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With STORAGE_EMULATOR_HOST set, edown talks to the emulator anonymously: the user's service account
    (whose token endpoint here is the EE emulator's, which counts the tokens it issues) is never used."""
    from edown.stores import probe, storage_options
    from tests.test_auth import write_service_account_key

    key_file = tmp_path / "key.json"
    write_service_account_key(key_file, ee_emulator.url + "/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    issued = len(ee_emulator.issued_tokens)
    store = ObjectStore(StoreURL(gs_root))
    store.write_bytes("a/b.txt", b"hello")
    assert store.read_bytes("a/b.txt") == b"hello" and [o.key for o in store.list("a")] == ["a/b.txt"]
    assert probe(StoreURL(gs_root)).startswith("writable")
    assert storage_options(gs_root)["token"] == "anon"
    assert len(ee_emulator.issued_tokens) == issued, "no token was fetched for the GCS emulator"


def test_from_manifest_on_a_store_downloads_the_same_search_elsewhere(
    ee_emulator_session: Emulator, tmp_path: Path, s3_root: str
) -> None:
    first = download_images(config(ee_emulator_session, tmp_path, output_root=s3_root, bands=("B4",)))
    assert isinstance(first.manifest_path, StoreURL)
    done = run_edown(
        "download", "--from-manifest", first.manifest_path, "--server-url", ee_emulator_session.url,
        "-o", str(tmp_path / "copy"), "--json", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["downloaded"] == first.downloaded > 0 and summary["failed"] == 0
    assert sorted(Path(r["tiff_path"]).name for r in summary["results"]) == sorted(
        StoreURL(r.tiff_path).name for r in first.results if r.tiff_path
    )
    missing = run_edown(
        "download", "--from-manifest", f"{s3_root}/manifests/nope.json", "--server-url", ee_emulator_session.url,
        "-o", str(tmp_path / "x"), cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 2 and f"{s3_root}/manifests/nope.json does not exist" in missing.stderr


def test_stacking_a_second_run_on_the_store_appends_like_locally(
    ee_emulator_session: Emulator, tmp_path: Path, s3_root: str, s3_server: StoreServer
) -> None:
    """Two runs into one store root, stacked in turn: the datacube grows by the second run's dates and
    equals the local datacube built the same way; the commit object (the group's zarr.json, with the
    consolidated metadata) is written after every other object of the append."""
    import xarray as xr

    from edown import StackConfig, open_stack, stack_images

    def runs(root: Any) -> list[Any]:
        return [
            download_images(
                config(
                    ee_emulator_session, tmp_path, output_root=root, cog=True, end_date=end, start_date=start
                )
            )
            for start, end in (("2024-06-01", "2024-06-05"), ("2024-06-06", "2024-06-10"))
        ]

    local_runs, store_runs = runs(tmp_path / "local"), runs(s3_root)
    for summary in local_runs:
        [mine] = stack_images(StackConfig(manifest_path=summary.manifest_path))
    for summary in store_runs:
        [theirs] = stack_images(StackConfig(manifest_path=summary.manifest_path))
    assert theirs.appended > 0 and theirs.appended == mine.appended
    assert isinstance(theirs.output_path, StoreURL) and isinstance(mine.output_path, Path)
    xr.testing.assert_equal(open_stack(theirs.output_path).load(), open_stack(mine.output_path).load())
    zarr_key = theirs.output_path.relative_to(StoreURL(s3_root))
    puts = [path for method, path in s3_server.requests() if method == "PUT" and f"/{zarr_key}/" in path]
    assert puts[-1].endswith(f"/{zarr_key}/zarr.json"), puts[-5:]


def test_a_search_saved_on_a_store_is_downloaded_from_there(
    ee_emulator_session: Emulator, tmp_path: Path, gs_root: str
) -> None:
    saved = f"{gs_root}/searches/june.json"
    area = ["-c", "COPERNICUS/S2_SR_HARMONIZED", "--start-date", "2024-06-01", "--end-date", "2024-06-05"]
    area += ["--bbox", "-0.60,51.48,-0.43,51.56", "-b", "B4", "--server-url", ee_emulator_session.url]
    done = run_edown("search", *area, "--manifest-path", saved, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "searches/june.json" in _keys(gs_root) and not (tmp_path / "gs:").exists()
    done = run_edown(
        "download", "--from-manifest", saved, "--server-url", ee_emulator_session.url, "-o", gs_root, "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["downloaded"] > 0 and summary["failed"] == 0
    assert all(r["tiff_path"].startswith(f"{gs_root}/images/") for r in summary["results"])


def test_the_stac_catalog_goes_to_the_store_and_merges_across_runs(
    ee_emulator_session: Emulator, tmp_path: Path, s3_root: str
) -> None:
    local_root = tmp_path / "local"
    downloaded = 0
    for dates in ({"end_date": "2024-06-04"}, {"start_date": "2024-06-05"}):
        here = download_images(
            config(ee_emulator_session, tmp_path, output_root=local_root, cog=True, **dates)
        )
        there = download_images(config(ee_emulator_session, tmp_path, output_root=s3_root, **dates))
        assert here.downloaded == there.downloaded > 0
        downloaded += there.downloaded
        assert there.stac_catalog == StoreURL(f"{s3_root}/stac/catalog.json")
    store = ObjectStore(StoreURL(s3_root))
    on_store = sorted(k for k in _keys(s3_root) if k.startswith("stac/"))
    on_disk = sorted(
        p.relative_to(local_root).as_posix() for p in (local_root / "stac").rglob("*") if p.is_file()
    )
    assert on_store == on_disk and "stac/catalog.json" in on_store
    items = [
        k for k in on_store if k.endswith(".json") and not k.endswith(("catalog.json", "collection.json"))
    ]
    assert len(items) == downloaded  # one item per image of either run
    for key in on_store:
        if not key.endswith(".json"):
            continue
        mine, theirs = json.loads((local_root / key).read_text()), json.loads(store.read_bytes(key))
        for doc in (mine, theirs):
            doc.get("properties", {}).pop("created", None)
            doc.get("properties", {}).pop("updated", None)
        assert theirs == mine, key  # same ids, relative hrefs, grids and bands, both runs' items


class _GarbageStore(http.server.BaseHTTPRequestHandler):
    """A store endpoint that answers every request with 200 and bytes that are neither XML nor JSON."""

    def _answer(self) -> None:
        body = b"<<garbage \x00\xff not xml>>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True  # the request's body (if any) is never read

    def do_GET(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    "variable,root", [("STORAGE_EMULATOR_HOST", "gs://g/x"), ("AWS_ENDPOINT_URL", "s3://g/x")]
)
def test_a_store_answering_garbage_is_one_line_of_bad_input(tmp_path: Path, variable: str, root: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GarbageStore)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = run_edown(
            "download", "--collection-id", "X/Y", "--start-date", "2024-01-01", "--end-date", "2024-01-02",
            "--bbox", "0,0,1,1", "-o", root, "--server-url", "http://127.0.0.1:9", cwd=tmp_path,
            env={**os.environ, variable: f"http://127.0.0.1:{server.server_address[1]}",
                 "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"},
            timeout=180,
        )  # fmt: skip
    finally:
        server.shutdown()
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr and "report it" not in done.stderr, done.stderr


def test_stack_latest_on_a_store_and_a_folder_or_glob_is_one_line(
    ee_emulator_session: Emulator, tmp_path: Path, s3_root: str
) -> None:
    first = download_images(config(ee_emulator_session, tmp_path, output_root=s3_root, end_date="2024-06-04"))
    newest = download_images(
        config(ee_emulator_session, tmp_path, output_root=s3_root, start_date="2024-06-05")
    )
    assert str(first.manifest_path) < str(newest.manifest_path)
    done = run_edown("stack", "-m", "latest", "-o", s3_root, "--json", cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr
    assert f"manifests: {newest.manifest_path}" in done.stderr
    [cube] = json.loads(done.stdout)
    assert cube["image_count"] == newest.downloaded and cube["output_path"].startswith(f"{s3_root}/stacks/")
    for given in (f"{s3_root}/manifests", f"{s3_root}/manifests/run-*.json"):
        refused = run_edown("stack", "-m", given, cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.splitlines()
        expected = f"error: manifest_path: {given} is not one manifest: on a store, edown stacks one run's"
        assert lines[0] == expected + " manifest at a time", lines
        assert lines[1] == f"hint: give its run-….json, or -m latest -o {s3_root} for the newest"
