"""Download speed, side by side: edown vs a minimal client vs the ideal plan (vs edown 0.2.1 on the big job).

    python bench/download.py [--jobs city landsat modis big] [--skip-peer] [--latency ee-model]

Four jobs, all on one emulator in its own process with the EE-like model of issue 13 (latency preset
``ee-model``: 0.25 s + body bytes / 40 MB/s per pixel request, 0.15 s per metadata call; Earth Engine's
quotas: 40 concurrent, 100 requests/s):

* ``city``: 1 week of Sentinel-2 over a city (3 images, B4 B8);
* ``landsat``: 2 months of Landsat 9 (8 scenes, SR_B4 SR_B5);
* ``modis``: 1 week of MODIS daily (7 images, 2 bands);
* ``big``: 1 month of Sentinel-2 over London's tiles (30 images on 5 MGRS tiles, B2 B3 B4 B8).

Clients, each a fresh process from start to written GeoTIFFs:

* **edown**: ``edown download`` with its defaults;
* **minimal**: ``bench/minimal_client.py``, one max-size request per image window, 40 threads, no pacing;
* **ideal plan**: the minimal client's requests replayed with a bare HTTP client, 40 threads and at most
  100 requests/s, bytes discarded (so its wall time is its pixel phase);
* **edown 0.2.1** (big job only): the public package in its own virtualenv.

Per run: wall time, time from process start to the first pixel request, the pixel phase (first pixel
request sent to last answered, from the emulator's log), pixel requests, most requests in flight at once
(emulator), peak RSS of the client's process tree, and the two targets: ``ideal/phase`` (the ideal
replay's time over this client's pixel phase; >= 0.8 wanted) and ``minimal/wall``.

The emulator memoises pixel responses (filled by unmeasured warm-up runs of every client), so measured
runs pay the latency model rather than the emulator's pixel computation on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    BENCH,
    EDOWN,
    EmulatorProcess,
    compile_bytecode,
    offline_service_account_env,
    peer_python,
    print_table,
    run_measured,
)

PIXEL_KINDS = ("computePixels", "getPixels")


@dataclass(frozen=True)
class Job:
    name: str
    title: str
    collection: str
    start: str
    end: str
    bbox: str
    bands: str
    peer: bool = False


JOBS = {
    job.name: job
    for job in (
        Job(
            "city",
            "1 week S2 over a city (3 images, B4 B8)",
            "COPERNICUS/S2_SR_HARMONIZED",
            "2024-06-02",
            "2024-06-08",
            "-0.20,51.45,-0.05,51.55",
            "B4,B8",
        ),
        Job(
            "landsat",
            "2 months Landsat 9 (8 scenes, SR_B4 SR_B5)",
            "LANDSAT/LC09/C02/T1_L2",
            "2024-06-01",
            "2024-07-31",
            "-0.5,51.3,0.1,51.7",
            "SR_B4,SR_B5",
        ),
        Job(
            "modis",
            "1 week MODIS (7 images, 2 bands)",
            "MODIS/061/MOD09GA",
            "2024-06-01",
            "2024-06-07",
            "0,46,5,50",
            "sur_refl_b01,sur_refl_b02",
        ),
        Job(
            "big",
            "1 month S2, 5 tiles, 4 bands (30 images)",
            "COPERNICUS/S2_SR_HARMONIZED",
            "2024-06-01",
            "2024-06-30",
            "-0.30,51.40,0.10,51.60",
            "B2,B3,B4,B8",
            peer=True,
        ),
    )
}

PEER_DRIVER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import rasterio
    from edown import AOI, DownloadConfig, download_images
    url, out, collection, start, end, bbox, bands, grid = sys.argv[1:9]
    if grid == "selected":
        # 0.2.1 takes every image's grid from the first band of its collection listing
        # (grid.get_image_grid_info: bands[0], B1 at 60 m for Sentinel-2), whatever order --bands has.
        # Selecting the bands in its collection query makes that the first selected band (10 m here),
        # so it fetches the same pixels edown does. Nothing else of 0.2.1 changes.
        import edown.discovery as discovery
        plain = discovery._build_collection
        discovery._build_collection = lambda config, s, e: plain(config, s, e).select(list(config.bands))
        # Its chunk sizing leaves out Earth Engine's mask byte, so at 10 m its largest chunks are refused
        # ("Total request size ... must be less than or equal to 50331648 bytes"); a lower limit, as a
        # user would set, keeps every chunk acceptable (1920 px squares of four uint16 bands).
        extra = {"request_byte_limit": 32 * 1024 * 1024}
    else:
        extra = {}
    config = DownloadConfig(collection_id=collection, start_date=start, end_date=end,
        aoi=AOI.from_bbox(tuple(float(v) for v in bbox.split(","))), bands=tuple(bands.split(",")),
        server_url=url, output_root=Path(out), **extra)
    summary = download_images(config)
    pixels = 0
    for r in summary.results:
        if r.tiff_path:
            with rasterio.open(r.tiff_path) as src:
                pixels += src.width * src.height
    print(json.dumps({"downloaded": summary.downloaded, "failed": summary.failed, "pixels": pixels}))
    """
)


def pixel_log(stats: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in stats.get("log", []) if r["kind"] in PIXEL_KINDS]


def measured(emu: EmulatorProcess, launched: float, run: dict[str, Any], pixels: int) -> dict[str, Any]:
    """The emulator's view of the run that just ended: requests, concurrency and timing of pixel calls."""
    stats = emu.stats()
    log = pixel_log(stats)
    first = min((r["started"] for r in log), default=launched)
    last = max((r["finished"] for r in log), default=launched)
    return {
        "wall": run["wall"],
        "first_pixel": first - launched,
        "phase": last - first,
        "requests": len(log),
        "throttled": stats["throttled"],
        "max_inflight": stats["max_concurrency"],
        "rss": run["peak_rss"],
        "pixels": pixels,
        "bodies": [(r["path"], r["body"]) for r in log if r.get("body") is not None and r["status"] == 200],
    }


def run_edown(emu: EmulatorProcess, job: Job, out: Path) -> dict[str, Any]:
    argv = [
        EDOWN,
        "download",
        "-c",
        job.collection,
        "--start-date",
        job.start,
        "--end-date",
        job.end,
        "--bbox",
        job.bbox,
        *(flag for b in job.bands.split(",") for flag in ("-b", b)),
        "--server-url",
        emu.url,
        "-o",
        str(out),
        "--json",
    ]
    emu.reset()
    launched = time.time()
    run = run_measured(argv, timeout=3600)
    if run["code"] != 0:
        raise SystemExit(f"edown failed:\n{run['stderr'][-2000:]}")
    summary = json.loads(run["stdout"])
    if summary["failed"]:
        raise SystemExit(f"edown failed {summary['failed']} image(s)")
    result = measured(emu, launched, run, round(summary["stats"]["output_megapixels"] * 1e6))
    result["planner"] = summary["stats"].get("planner")
    return result


def run_minimal(emu: EmulatorProcess, job: Job, out: Path) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(BENCH / "minimal_client.py"),
        emu.url,
        str(out),
        job.collection,
        job.start,
        job.end,
        job.bbox,
        job.bands,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEE_", "GOOGLE_", "EE_"))}
    emu.reset()
    launched = time.time()
    run = run_measured(argv, env=env, timeout=3600)
    if run["code"] != 0:
        raise SystemExit(f"the minimal client failed:\n{run['stderr'][-2000:]}")
    report = json.loads(run["stdout"].strip().splitlines()[-1])
    return measured(emu, launched, run, report["pixels"])


def run_peer(emu: EmulatorProcess, job: Job, tmp: Path, grid: str = "selected") -> dict[str, Any]:
    """edown 0.2.1 on ``job``; ``grid="selected"`` makes it fetch on its first selected band's grid (what
    edown writes), ``"listing"`` leaves it on the first band of each image (60 m B1 for Sentinel-2)."""
    python = peer_python()
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "peer.py").write_text(PEER_DRIVER)
    env = offline_service_account_env(tmp, emu.url + "/token")
    argv = [str(python), "peer.py", emu.url, str(tmp / "out"), job.collection, job.start, job.end]
    emu.reset()
    launched = time.time()
    run = run_measured([*argv, job.bbox, job.bands, grid], env=env, cwd=tmp, timeout=7200)
    if run["code"] != 0:
        raise SystemExit(f"edown 0.2.1 failed:\n{run['stderr'][-2000:]}")
    report = json.loads(run["stdout"].strip().splitlines()[-1])
    return measured(emu, launched, run, report["pixels"])


def run_ideal(
    emu: EmulatorProcess, bodies: list[tuple[str, dict[str, Any]]], concurrency: int = 40, rate: float = 100.0
) -> dict[str, Any]:
    """Replay ``bodies`` with a bare HTTP client at the full quota, discarding the bytes."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_maxsize=concurrency + 8, max_retries=0))
    pending = list(bodies)
    lock = threading.Lock()
    next_start = [time.monotonic()]
    errors: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                path, body = pending.pop(0)
                start = max(time.monotonic(), next_start[0])
                next_start[0] = start + 1.0 / rate
            delay = start - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            resp = session.post(
                emu.url + path, data=json.dumps(body), headers={"content-type": "application/json"}
            )
            if resp.status_code != 200:
                errors.append(f"{resp.status_code}: {resp.text[:200]}")

    emu.reset()
    launched = time.time()
    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    if errors:
        raise SystemExit(f"the ideal replay failed: {errors[:3]}")
    return measured(emu, launched, {"wall": wall, "peak_rss": 0}, 0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", nargs="+", choices=sorted(JOBS), default=list(JOBS))
    parser.add_argument("--latency", default="ee-model", help="emulator latency preset (default: ee-model)")
    parser.add_argument("--skip-peer", action="store_true", help="do not run edown 0.2.1 on the big job")
    args = parser.parse_args()

    print(
        "compiling bytecode (once; PYTHONDONTWRITEBYTECODE would make every client compile)...",
        file=sys.stderr,
    )
    compile_bytecode(sys.executable)
    if any(JOBS[name].peer for name in args.jobs) and not args.skip_peer:
        compile_bytecode(peer_python())
    emulator_args = ["--latency", args.latency, "--capture-bodies", "--cache-responses", "8192"]
    rows: list[list[Any]] = []
    verdicts: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name, EmulatorProcess(*emulator_args) as emu:
        tmp = Path(tmp_name)
        for name in args.jobs:
            job = JOBS[name]
            peer = job.peer and not args.skip_peer
            print(f"{name}: warming up the emulator's response cache...", file=sys.stderr)
            warm = run_minimal(emu, job, tmp / f"{name}-warm-minimal")
            run_ideal(emu, warm["bodies"])
            for i in range(2):  # twice: a plan re-cut from what the first run measured is cached too
                run_edown(emu, job, tmp / f"{name}-warm-edown-{i}")
            if peer:
                run_peer(emu, job, tmp / f"{name}-warm-peer")
            print(f"{name}: measuring...", file=sys.stderr)
            results = {
                "edown": run_edown(emu, job, tmp / f"{name}-edown"),
                "minimal client": run_minimal(emu, job, tmp / f"{name}-minimal"),
            }
            results["ideal plan (replay)"] = run_ideal(emu, results["minimal client"]["bodies"])
            if peer:
                results["edown 0.2.1"] = run_peer(emu, job, tmp / f"{name}-peer")
            ideal = results["ideal plan (replay)"]["phase"]
            minimal_wall = results["minimal client"]["wall"]
            for client, res in results.items():
                is_ideal = client.startswith("ideal")
                rows.append(
                    [
                        name,
                        client,
                        round(res["wall"], 2),
                        "-" if is_ideal else round(res["first_pixel"], 2),
                        round(res["phase"], 2),
                        res["requests"],
                        res["max_inflight"],
                        "-" if is_ideal else round(res["rss"] / 2**20),
                        "-" if is_ideal else round(res["pixels"] / 1e6, 1),
                        round(ideal / res["phase"], 2) if res["phase"] else "-",
                        "-" if is_ideal else round(minimal_wall / res["wall"], 2),
                    ]
                )
            edown = results["edown"]
            verdicts.append(
                f"{name}: pixel phase {ideal / edown['phase']:.2f} of the ideal plan (target >= 0.8), "
                f"end to end {minimal_wall / edown['wall']:.2f}x the minimal client's speed (target >= 1)"
            )
            if peer:
                old = results["edown 0.2.1"]
                verdicts.append(
                    f"{name}: {old['wall'] / edown['wall']:.1f}x edown 0.2.1's wall speed on the same job at 10 m "
                    f"(target >= 6; 0.2.1 pads each output to its chunk grid: {old['pixels'] / 1e6:.1f} Mpx written, "
                    f"edown {edown['pixels'] / 1e6:.1f}); edown peak RSS {edown['rss'] / 2**20:.0f} MiB (target <= 600)"
                )
    print(
        f"emulator: latency preset {args.latency} (ee-model: 0.25 s + body bytes / 40 MB/s per pixel request, "
        "0.15 s per metadata call), quotas 40 concurrent / 100 requests/s, 48 MB per request incl. mask byte"
    )
    print()
    print_table(
        [
            "job",
            "client",
            "wall s",
            "1st px s",
            "px phase s",
            "requests",
            "max inflight",
            "peak RSS MiB",
            "out Mpx",
            "ideal/phase",
            "minimal/wall",
        ],
        rows,
    )
    print()
    for line in verdicts:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
