"""Download throughput: edown vs the public edown 0.2.1 vs a "ceiling" client, against an emulator with
Earth Engine-like latency and Earth Engine's quotas (40 concurrent, 100 requests/s).

    python bench/download.py [--bbox ...] [--start-date ...] [--end-date ...] [--base 0.3] [--bandwidth 1.0]

* **edown**: ``edown download`` (this package), run twice: with the default ``max_inflight_chunks=32``
  and with 40 (the project's concurrency quota).
* **edown 0.2.1**: the public package in its own virtualenv, same collection, dates, AOI and bands.
* **ceiling**: replays exactly the requests edown sent (captured by the emulator) at the full quota, 40
  at a time and at most 100 per second, and throws the bytes away: the best any client could do.

Throughput is output megapixels per second (each tool's own output). CPU is user + system seconds of the
client process tree; memory is its peak resident set. The emulator runs in its own process and memoises
pixel responses (filled by unmeasured warm-up runs), so the measured runs pay the latency model, not the
emulator's CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from harness import (
    EDOWN,
    EmulatorProcess,
    offline_service_account_env,
    peer_python,
    print_table,
    run_measured,
)

PEER_DRIVER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import rasterio
    from edown import AOI, DownloadConfig, download_images
    url, out, collection, start, end, bbox, bands = sys.argv[1:8]
    config = DownloadConfig(collection_id=collection, start_date=start, end_date=end,
        aoi=AOI.from_bbox(tuple(float(v) for v in bbox.split(","))), bands=tuple(bands.split(",")),
        server_url=url, output_root=Path(out))
    summary = download_images(config)
    pixels = 0
    for r in summary.results:
        if r.tiff_path:
            with rasterio.open(r.tiff_path) as src:
                pixels += src.width * src.height
    print(json.dumps({"downloaded": summary.downloaded, "failed": summary.failed, "pixels": pixels}))
    """
)


def run_edown(emu: EmulatorProcess, args: argparse.Namespace, out: Path, inflight: int) -> dict[str, Any]:
    argv = [
        EDOWN,
        "download",
        "-c",
        args.collection,
        "--start-date",
        args.start_date,
        "--end-date",
        args.end_date,
        "--bbox",
        args.bbox,
        *(flag for b in args.bands.split(",") for flag in ("-b", b)),
        "--server-url",
        emu.url,
        "-o",
        str(out),
        "--max-inflight-chunks",
        str(inflight),
        "--json",
    ]
    emu.reset()
    run = run_measured(argv, timeout=3600)
    if run["code"] != 0:
        raise SystemExit(f"edown failed:\n{run['stderr'][-2000:]}")
    summary = json.loads(run["stdout"])
    stats = emu.stats()
    pixels = round(summary["stats"]["output_megapixels"] * 1e6)
    bodies = [
        (r["path"], r["body"])
        for r in stats.get("log", [])
        if r.get("body") is not None and r["status"] == 200
    ]
    return {
        "run": run,
        "pixels": pixels,
        "requests": stats["requests"].get("computePixels", 0),
        "throttled": stats["throttled"],
        "bytes": stats["bytes_out"],
        "bodies": bodies,
        "failed": summary["failed"],
        "max_concurrency": stats["max_concurrency"],
    }


def run_peer(emu: EmulatorProcess, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    python = peer_python()
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "peer.py").write_text(PEER_DRIVER)
    env = offline_service_account_env(tmp, emu.url + "/token")
    emu.reset()
    run = run_measured(
        [
            str(python),
            "peer.py",
            emu.url,
            str(tmp / "peer-out"),
            args.collection,
            args.start_date,
            args.end_date,
            args.bbox,
            args.bands,
        ],
        env=env,
        cwd=tmp,
        timeout=7200,
    )
    if run["code"] != 0:
        raise SystemExit(f"edown 0.2.1 failed:\n{run['stderr'][-2000:]}")
    report = json.loads(run["stdout"].strip().splitlines()[-1])
    stats = emu.stats()
    requests = stats["requests"].get("getPixels", 0) + stats["requests"].get("computePixels", 0)
    return {
        "run": run,
        "pixels": report["pixels"],
        "requests": requests,
        "throttled": stats["throttled"],
        "bytes": stats["bytes_out"],
        "failed": report["failed"],
        "max_concurrency": stats["max_concurrency"],
    }


def run_ceiling(
    emu: EmulatorProcess, bodies: list[tuple[str, dict[str, Any]]], concurrency: int = 40, rate: float = 100.0
) -> dict[str, Any]:
    """Replay ``bodies`` with a bare HTTP client at the full quota, discarding the bytes."""
    import os

    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_maxsize=concurrency + 8, max_retries=0))
    pending = list(enumerate(bodies))
    lock = threading.Lock()
    next_start = [time.monotonic()]
    errors: list[str] = []
    received = [0]

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                _, (path, body) = pending.pop(0)
                start = max(time.monotonic(), next_start[0])
                next_start[0] = start + 1.0 / rate
            delay = start - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for _attempt in range(5):
                resp = session.post(
                    emu.url + path, data=json.dumps(body), headers={"content-type": "application/json"}
                )
                if resp.status_code == 200:
                    with lock:
                        received[0] += len(resp.content)
                    break
                if resp.status_code != 429:
                    errors.append(f"{resp.status_code}: {resp.text[:200]}")
                    break
                time.sleep(0.5)

    emu.reset()
    cpu0 = os.times()
    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    cpu1 = os.times()
    stats = emu.stats()
    return {
        "wall": wall,
        "cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "errors": errors,
        "requests": stats["requests"].get("computePixels", 0),
        "throttled": stats["throttled"],
        "bytes": received[0],
        "max_concurrency": stats["max_concurrency"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--collection", default="COPERNICUS/S2_SR_HARMONIZED")
    parser.add_argument("--start-date", default="2024-06-01")
    parser.add_argument("--end-date", default="2024-06-30")
    parser.add_argument("--bbox", default="-0.30,51.40,0.10,51.60", help="a multi-tile AOI (T30UXC + T30UYC)")
    parser.add_argument("--bands", default="B2,B3,B4,B8")
    parser.add_argument("--base", type=float, default=0.3, help="emulator latency per pixel request (s)")
    parser.add_argument("--bandwidth", type=float, default=1.0, help="emulator MB/s per pixel request")
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()

    emulator_args = [
        "--latency",
        "ee",
        "--latency-base",
        str(args.base),
        "--bandwidth",
        str(args.bandwidth),
        "--capture-bodies",
        "--cache-responses",
        "8192",
    ]
    with tempfile.TemporaryDirectory() as tmp_name, EmulatorProcess(*emulator_args) as emu:
        tmp = Path(tmp_name)
        # Warm-up passes fill the emulator's response cache, so that no measured run pays for computing
        # pixels on this 2-core machine: what remains is the latency model and the client.
        print("warming up the emulator's response cache...", file=sys.stderr)
        run_edown(emu, args, tmp / "warm-edown", 40)
        if not args.skip_peer:
            run_peer(emu, args, tmp / "warm-peer")
        print("measuring...", file=sys.stderr)
        default = run_edown(emu, args, tmp / "edown-32", 32)
        at_quota = run_edown(emu, args, tmp / "edown-40", 40)
        ceiling = run_ceiling(emu, at_quota["bodies"])
        peer = None if args.skip_peer else run_peer(emu, args, tmp / "peer")

    ceiling_rate = at_quota["pixels"] / 1e6 / ceiling["wall"]
    rows = []

    def row(
        name: str, wall: float, cpu: float, rss: float | str, pixels: int, result: dict[str, Any]
    ) -> list[Any]:
        rate = pixels / 1e6 / wall
        return [
            name,
            round(wall, 1),
            round(pixels / 1e6, 1),
            round(rate, 2),
            round(result["bytes"] / 1e6),
            result["requests"],
            result["throttled"],
            result["max_concurrency"],
            round(cpu, 1),
            rss,
            round(rate / ceiling_rate, 2),
        ]

    for name, res in (
        ("edown (max_inflight_chunks=32, default)", default),
        ("edown (max_inflight_chunks=40)", at_quota),
    ):
        rows.append(
            row(
                name,
                res["run"]["wall"],
                res["run"]["cpu"],
                round(res["run"]["peak_rss"] / 2**20),
                res["pixels"],
                res,
            )
        )
    if peer is not None:
        rows.append(
            row(
                "edown 0.2.1 (public, own venv)",
                peer["run"]["wall"],
                peer["run"]["cpu"],
                round(peer["run"]["peak_rss"] / 2**20),
                peer["pixels"],
                peer,
            )
        )
    rows.append(
        row(
            "ceiling (same requests, full quota, bytes dropped)",
            ceiling["wall"],
            ceiling["cpu"],
            "-",
            at_quota["pixels"],
            ceiling,
        )
    )
    print(
        f"workload: {args.collection} {args.start_date}..{args.end_date} bbox {args.bbox} bands {args.bands}; "
        f"emulator latency {args.base} s + {args.bandwidth} MB/s per pixel request, quotas 40 concurrent / 100 rps"
    )
    print()
    print_table(
        [
            "client",
            "wall s",
            "output Mpx",
            "Mpx/s",
            "MB recv",
            "requests",
            "429s",
            "max conc",
            "CPU s",
            "peak RSS MiB",
            "x ceiling",
        ],
        rows,
    )
    if peer is not None:
        ratio = (at_quota["pixels"] / at_quota["run"]["wall"]) / (peer["pixels"] / peer["run"]["wall"])
        ratio_default = (default["pixels"] / default["run"]["wall"]) / (peer["pixels"] / peer["run"]["wall"])
        print()
        print(
            f"edown / edown 0.2.1 throughput: {ratio:.2f}x at max_inflight_chunks=40, {ratio_default:.2f}x at the default 32"
        )
    if ceiling["errors"]:
        print(f"ceiling errors: {ceiling['errors'][:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
