"""Proof under fire: server faults, a full disk, two writers, crashes during stacking, secrets."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edown import StackConfig, download_images, stack_images
from edown.emulator import EmulatorConfig, FaultPlan, FaultRule, Latency, serve
from edown.emulator.server import Emulator
from edown.errors import DiskFullError, OutputLockedError, is_disk_full
from tests.helpers import S2, check_all_exact, config

ROOT = Path(__file__).resolve().parents[1]


# ---- faults from the server -----------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.05, 0.20])
def test_5xx_at_a_rate_every_image_completes_exactly(tmp_path: Path, rate: float) -> None:
    plan = FaultPlan(
        rules=(
            FaultRule(kind="error", status=500, rate=rate),
            FaultRule(kind="error", status=503, rate=rate / 2),
        ),
        seed=11,
    )
    with serve(EmulatorConfig(faults=plan)) as emu:
        summary = download_images(
            config(emu, tmp_path, chunk_size=256, chunk_size_mode="fixed", max_retries=8)
        )
        check_all_exact(emu, summary)
        injected = emu.stats()["faults_injected"]
    assert injected.get("error", 0) > 0 and sum(r.retries for r in summary.results) == injected["error"]


def test_a_429_storm_is_waited_out(tmp_path: Path) -> None:
    with serve(EmulatorConfig(faults=FaultPlan(storms=((0.0, 2.5),)))) as emu:
        started = time.monotonic()
        summary = download_images(config(emu, tmp_path, max_retries=10, retry_delay_seconds=0.2))
        check_all_exact(emu, summary)
        throttled = emu.stats()["throttled"]
    assert throttled > 0 and time.monotonic() - started >= 2.0


def test_truncated_geotiff_bodies_are_refused_by_the_client(tmp_path: Path) -> None:
    import ee

    with serve(EmulatorConfig(faults=FaultPlan(rules=(FaultRule(kind="truncate", nth=(1,)),)))) as emu:
        ee.Initialize(credentials=None, project="edown-tests", opt_url=emu.url)
        ee.data.setMaxRetries(0)
        try:
            grid = {
                "dimensions": {"width": 64, "height": 64},
                "crsCode": "EPSG:32630",
                "affineTransform": {"scaleX": 10, "translateX": 600000, "scaleY": -10, "translateY": 5800020},
            }
            image = "COPERNICUS/S2_SR_HARMONIZED/20240603T104058_20240603T104237_T30UXC"
            with pytest.raises(ConnectionError, match="IncompleteRead"):
                ee.data.getPixels(
                    {"assetId": image, "fileFormat": "GEO_TIFF", "bandIds": ["B4"], "grid": grid}
                )
            whole = ee.data.getPixels(
                {"assetId": image, "fileFormat": "GEO_TIFF", "bandIds": ["B4"], "grid": grid}
            )
            assert whole[:4] in (b"II*\x00", b"MM\x00*")
        finally:
            ee.data.setMaxRetries(5)


# ---- faults from the machine ----------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of ``megabytes`` at ``path`` (this suite runs as root, like CI)."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"cannot mount a tmpfs (the reliability suite needs root): {result.stderr}"
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_is_one_clear_error_nothing_corrupt_and_resumable(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    # Room for the resumed run too: its writers assemble several GeoTIFFs at once beside their chunks.
    with small_filesystem(tmp_path / "small", 48) as small:
        filler = small / "filler.bin"
        filler.write_bytes(b"\0" * (45 * 1024 * 1024))  # leave ~3 MB for a ~10 MB download
        root = small / "data"
        kw = {"output_root": root, "chunk_size": 256, "chunk_size_mode": "fixed"}
        with pytest.raises(DiskFullError) as info:
            download_images(config(ee_emulator, tmp_path, **kw))
        assert str(info.value).startswith(f"no space left on the device holding {root}")
        assert "run the same command again" in str(info.value)
        assert not list(root.rglob("*.tmp")) and not list(root.rglob(".tmp-*"))
        for tif in root.rglob("*.tif"):  # anything under a final name is complete
            import rasterio

            with rasterio.open(tif) as src:
                src.read()
        stored = len(list(root.rglob("*.partial/c*.npy")))
        assert stored > 0, "finished chunks are kept"
        for manifest in root.glob("manifests/*.json"):
            json.loads(manifest.read_text())
        filler.unlink()  # space returns
        ee_emulator.reset_stats()
        summary = download_images(config(ee_emulator, tmp_path, **kw))
        check_all_exact(ee_emulator, summary)
        total = sum(r.chunk_count for r in summary.results)
        assert ee_emulator.stats()["requests"]["computePixels"] == total - stored


def test_a_geotiff_that_meets_a_full_disk_is_a_disk_full_error_and_leaves_nothing(tmp_path: Path) -> None:
    # libtiff only prints "No space left on device" and GDAL carries on: the failure surfaced as
    # "not recognized as being in a supported file format" when edown read its own file back.
    from edown.geotiff import OutputSpec, write_geotiff
    from edown.grid import Window
    from edown.outputs import ChunkStore, StoredChunk

    store = ChunkStore(tmp_path / "chunks", tmp_path)
    window = Window(0, 0, 1024, 1024)
    noise = (
        np.random.default_rng(0).integers(0, 65535, (2, 1024, 1024)).astype("uint16")
    )  # 4 MiB, incompressible
    pending = store.begin(window)
    np.save(pending.handle, noise, allow_pickle=False)
    chunk = StoredChunk(window, pending.commit())
    spec = OutputSpec(1024, 1024, ("a", "b"), "uint16", "EPSG:32631", (10.0, 0.0, 0.0, 0.0, -10.0, 0.0), 0.0)
    with small_filesystem(tmp_path / "small", 1) as small:
        with pytest.raises(OSError) as info:
            write_geotiff(small / "out.tif", spec, store, [chunk], window)
        assert is_disk_full(info.value), info.value
        assert "No space left on device writing out.tif" in str(info.value)
        assert list(small.iterdir()) == []
    with small_filesystem(tmp_path / "roomy", 16) as roomy:  # the same write with room is exact
        write_geotiff(roomy / "out.tif", spec, store, [chunk], window)
        import rasterio

        with rasterio.open(roomy / "out.tif") as src:
            assert (src.read() == noise).all()


def test_two_processes_on_one_output_root(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from edown import AOI, DownloadConfig, download_images
        s = download_images(DownloadConfig(collection_id="COPERNICUS/S2_SR_HARMONIZED", start_date="2024-06-01",
            end_date="2024-06-10", aoi=AOI.from_bbox((-0.60, 51.48, -0.43, 51.56)), bands=("B4",),
            server_url=sys.argv[1], output_root=Path(sys.argv[2]), chunk_size=256, chunk_size_mode="fixed",
            max_inflight_chunks=2))
        print(s.downloaded)
        """
    )
    root = tmp_path / "data"
    with serve(EmulatorConfig(latency=Latency(base_seconds=0.2))) as emu:
        first = subprocess.Popen(
            [sys.executable, "-c", script, emu.url, str(root)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "pid" not in (
            (root / ".edown" / "lock").read_text() if (root / ".edown" / "lock").exists() else ""
        ):
            time.sleep(0.05)
        with pytest.raises(
            OutputLockedError,
            match=rf"{re.escape(str(root))} is in use by another edown run \(pid {first.pid}",
        ):
            download_images(config(emu, tmp_path, output_root=root, bands=("B4",)))
        out, _ = first.communicate(timeout=120)
    assert first.returncode == 0 and out.strip() == "2", "the first writer is not disturbed"


STACK_SCRIPT = "import sys; from pathlib import Path; from edown import StackConfig, stack_images; stack_images(StackConfig(manifest_path=Path(sys.argv[1]), threads=1, chunk_size=256))"


def test_sigkill_during_stack_never_leaves_a_store_that_looks_complete(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    import xarray as xr

    summary = download_images(
        config(ee_emulator, tmp_path, end_date="2024-06-30", bands=("B2", "B3", "B4", "B8"))
    )
    [reference] = stack_images(StackConfig(manifest_path=summary.manifest_path, chunk_size=256))
    expected = xr.open_zarr(reference.output_path, mask_and_scale=False).load()
    target = reference.output_path
    kills = 0
    for delay in (0.3, 0.6, 0.9, 1.2, 1.5):
        import shutil

        shutil.rmtree(target)
        proc = subprocess.Popen(
            [sys.executable, "-c", STACK_SCRIPT, str(summary.manifest_path)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        if target.exists():  # under its final name the store is always complete
            xr.testing.assert_equal(xr.open_zarr(target, mask_and_scale=False).load(), expected)
        [again] = stack_images(StackConfig(manifest_path=summary.manifest_path, chunk_size=256))
        xr.testing.assert_equal(xr.open_zarr(again.output_path, mask_and_scale=False).load(), expected)
        assert not list(target.parent.glob("*.tmp-*")), "an interrupted build's temporary store is cleaned up"
    assert kills >= 3


# ---- secrets ----------------------------------------------------------------------------------------


def test_keys_and_tokens_never_reach_logs_manifests_errors_or_tracebacks(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    from tests.test_auth import write_service_account_key

    key_file = tmp_path / "key.json"
    pem = write_service_account_key(key_file, ee_emulator.url + "/token")
    env = {
        **os.environ,
        "GEE_SERVICE_ACCOUNT": "robot@sa-project.iam.gserviceaccount.com",
        "GEE_SERVICE_ACCOUNT_KEY": str(key_file),
        "PYTHONPATH": str(ROOT),
    }
    root = tmp_path / "data"
    base = [sys.executable, "-m", "edown.cli", "-v"]
    area = [
        "-c",
        S2,
        "--start-date",
        "2024-06-01",
        "--end-date",
        "2024-06-05",
        "--bbox",
        "-0.60,51.48,-0.43,51.56",
        "-b",
        "B4",
        "--server-url",
        ee_emulator.url,
    ]
    runs = [
        subprocess.run(
            [*base, "download", *area, "-o", str(root)], env=env, capture_output=True, text=True, timeout=300
        ),
        subprocess.run(
            [*base, "doctor", "--server-url", ee_emulator.url],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        ),
        subprocess.run(
            [*base, "search", *area[:-2], "--server-url", ee_emulator.url, "-c", "NOT/THERE"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        ),  # a failure, with --verbose traceback
    ]
    assert runs[0].returncode == 0, runs[0].stderr
    manifest = next(root.glob("manifests/*.json"))
    subprocess.run(
        [*base, "stack", "-m", str(manifest)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert ee_emulator.issued_tokens, "the service account really fetched tokens"
    secrets = [*ee_emulator.issued_tokens, *[line for line in pem.splitlines()[1:-1] if len(line) > 20]]
    artefacts = [r.stdout + r.stderr for r in runs]
    for path in root.rglob("*"):
        if (path.is_file() and path.suffix in (".json", ".tif", ".png")) or path.name == "zarr.json":
            artefacts.append(path.read_bytes().decode("latin-1"))
    for text in artefacts:
        for secret in secrets:
            assert secret not in text
        assert "Authorization" not in text and "Bearer " not in text and "PRIVATE KEY" not in text
