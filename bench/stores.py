"""Download throughput to an object store vs local disk, for one job of bench/download.py (``big`` by default).

    python bench/stores.py [--job big] [--latency ee-model] [--repeat 1]

One emulator process (the EE-like latency model, responses memoised by an unmeasured warm-up run) and a
real S3 API server (moto_server) on loopback. Each measured run is ``edown download`` in a fresh process,
from start to the last object written:

* **local**: to a local folder, edown's defaults (tiled GeoTIFFs);
* **local COG**: to a local folder with ``--cog`` (what a store root always writes);
* **s3**: to ``s3://bucket/prefix`` (chunks under ``.partial/``, COGs and the manifest uploaded whole).

Columns: wall time, output megapixels per second, MB received from Earth Engine, MB written (files on
disk, or uploaded to the store, chunks included), peak RSS of the process tree, CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from download import JOBS, Job
from edown.emulator.object_stores import StoreServer, start_server
from harness import EDOWN, EmulatorProcess, print_table, run_measured


def _download(emu: EmulatorProcess, job: Job, out: str, env: dict[str, str], *extra: str) -> dict[str, Any]:
    argv = [
        EDOWN, "download", "-c", job.collection, "--start-date", job.start, "--end-date", job.end,
        "--bbox", job.bbox, *(flag for b in job.bands.split(",") for flag in ("-b", b)),
        "--server-url", emu.url, "-o", out, "--json", *extra,
    ]  # fmt: skip
    emu.reset()
    run = run_measured(argv, env=env, timeout=3600)
    if run["code"] != 0:
        raise SystemExit(f"edown failed:\n{run['stderr'][-2000:]}")
    summary = json.loads(run["stdout"])
    if summary["failed"]:
        raise SystemExit(f"edown failed {summary['failed']} image(s)")
    run["summary"] = summary
    return run


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--job", choices=sorted(JOBS), default="big")
    parser.add_argument("--latency", default="ee-model", help="emulator latency preset (default: ee-model)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    job = JOBS[args.job]
    rows: list[list[Any]] = []
    emulator_args = ["--latency", args.latency, "--cache-responses", "8192"]
    with (
        tempfile.TemporaryDirectory(prefix="edown-bench-stores-") as tmp_name,
        EmulatorProcess(*emulator_args) as emu,
    ):
        tmp = Path(tmp_name)
        server: StoreServer = start_server("s3", tmp / "moto.log")
        try:
            env = {**os.environ, **server.env()}
            print(f"{job.name}: warming up the emulator's response cache...", file=sys.stderr)
            _download(emu, job, str(tmp / "warm"), env)
            for i in range(args.repeat):
                for label, extra in (("local", ()), ("local COG", ("--cog",)), ("s3", ())):
                    if label == "s3":
                        bucket = f"bench-{uuid.uuid4().hex[:10]}"
                        server.create_bucket(bucket)
                        out = f"s3://{bucket}/data"
                    else:
                        out = str(tmp / f"{label.replace(' ', '-')}-{i}")
                    began = time.monotonic()
                    run = _download(emu, job, out, env, *extra)
                    stats = run["summary"]["stats"]
                    written = stats.get("bytes_to_store") or _folder_bytes(Path(out))
                    rows.append(
                        [
                            label,
                            round(time.monotonic() - began, 1),
                            stats.get("megapixels_per_second") or 0.0,
                            round(stats["bytes_downloaded"] / 1e6, 1),
                            round(written / 1e6, 1),
                            round(run["peak_rss"] / 1e6),
                            round(run["cpu"], 1),
                        ]
                    )
        finally:
            server.stop()
    print(f"\njob {job.name}: {job.title}; emulator latency {args.latency}\n")
    print_table(["target", "wall s", "Mpx/s", "MB from EE", "MB written", "peak RSS MB", "CPU s"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
