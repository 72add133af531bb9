"""Soak: the real pipeline under server faults and repeated SIGKILLs, then every output checked.

    python bench/soak.py [--kills 24] [--seed 1]

The emulator (own process) injects 5xx, connection resets, truncated and cut bodies, stalled responses,
request-size 400s and 429 storms, with a concurrency quota below edown's in-flight limit. ``edown
download`` and then ``edown stack`` (a build, then an append of later dates) are killed with SIGKILL at
random moments and restarted until they finish. Meanwhile a watcher reads every file that appears under a
final name (GeoTIFFs, sidecars, manifests, Zarr stores) and counts any it finds partial or unreadable.
At the end every GeoTIFF is compared pixel by pixel with the emulator's function, and all outputs with
an uninterrupted, fault-free reference run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from harness import EDOWN, EmulatorProcess, print_table

COLLECTION = "COPERNICUS/S2_SR_HARMONIZED"
BBOX = "-0.30,51.40,0.10,51.60"
BANDS = ("B2", "B3", "B4", "B8")
FIRST_END, SECOND_END = "2024-06-15", "2024-06-30"


def fault_plan(seed: int) -> dict[str, Any]:
    return {
        "seed": seed,
        "rules": [
            {"kind": "error", "status": 500, "rate": 0.05},
            {"kind": "error", "status": 503, "rate": 0.02},
            {"kind": "reset", "rate": 0.03},
            {"kind": "truncate", "rate": 0.03},
            {"kind": "short_body", "rate": 0.02},
            {"kind": "stall", "nth": [7, 95, 301], "stall_seconds": 60},
            {"kind": "size", "min_pixels": 250_000},
            {"kind": "memory", "nth": [40, 160]},
        ],
        "storms": [[8.0, 2.0], [45.0, 3.0], [110.0, 2.0]],
    }


def download_argv(url: str, root: Path, end: str) -> list[str]:
    return [
        EDOWN,
        "download",
        "-c",
        COLLECTION,
        "--start-date",
        "2024-06-01",
        "--end-date",
        end,
        "--bbox",
        BBOX,
        *(f for b in BANDS for f in ("-b", b)),
        "--server-url",
        url,
        "-o",
        str(root),
        "--request-timeout-seconds",
        "3",
        "--max-retries",
        "12",
        "--retry-delay-seconds",
        "0.2",
        "--json",
    ]


class Watcher:
    """Reads every final-named output as soon as it appears (or changes) and counts the broken ones."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: dict[Path, float] = {}
        self.checked = Counter[str]()
        self.partial: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scan()
            self._stop.wait(0.02)

    def scan(self) -> None:
        if not self.root.exists():
            return
        for path in list(self.root.rglob("*")):
            name = path.name
            if name.startswith(".") or ".partial" in str(path) or ".tmp" in name or ".old-" in name:
                continue
            kind = (
                "tif"
                if name.endswith(".tif")
                else "zarr"
                if name.endswith(".zarr")
                else "json"
                if name.endswith(".json")
                else None
            )
            if kind is None or (kind == "json" and path.parent.suffix == ".zarr") or ".zarr/" in str(path):
                continue
            try:
                stamp = path.stat().st_mtime_ns if kind != "zarr" else (path / "zarr.json").stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if self.seen.get(path) == stamp:
                continue
            self.seen[path] = stamp
            problem = self.check(kind, path)
            self.checked[kind] += 1
            if problem:
                self.partial.append(f"{path.relative_to(self.root)}: {problem}")

    @staticmethod
    def check(kind: str, path: Path) -> str | None:
        try:
            if kind == "json":
                json.loads(path.read_text())
            elif kind == "tif":
                import rasterio

                with rasterio.open(path) as src:
                    src.read()
            else:
                import xarray as xr

                ds = xr.open_zarr(path, mask_and_scale=False)
                times = {ds[name].shape[0] for name in ds.variables if ds[name].dims[:1] == ("time",)}
                if len(times) != 1:
                    return f"time arrays of different lengths {times}"
                ds["data"].isel(time=-1).load()  # the last step must read
        except FileNotFoundError:
            return None  # replaced between listing and reading: not a partial file
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None


def run_until_done(
    argv: list[str], kills_wanted: int, rng: random.Random, window: tuple[float, float]
) -> tuple[int, int]:
    """Start ``argv`` and SIGKILL it at random moments until ``kills_wanted`` kills, then let it finish."""
    kills = restarts = 0
    while True:
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        restarts += 1
        if kills < kills_wanted:
            deadline = time.monotonic() + rng.uniform(*window)
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.01)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        _, err = proc.communicate(timeout=1800)
        if proc.returncode == 0:
            return kills, restarts
        if kills >= kills_wanted:
            raise SystemExit(f"{argv[1]} failed without being killed:\n{err[-3000:]}")


def digest_tree(root: Path, pattern: str) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob(pattern))
        if p.is_file()
    }


def check_pixels(root: Path) -> tuple[int, int, int]:
    """(images, pixels checked, pixels wrong) of every GeoTIFF against the emulator's pixel function."""
    import rasterio

    from edown.emulator.catalog import Catalog
    from edown.emulator.pixels import read_window

    catalog = Catalog()
    images = pixels = wrong = 0
    for tif in sorted(root.glob("images/*/*.tif")):
        side = json.loads(tif.with_suffix(".json").read_text())
        asset = catalog.image(side["image_id"])
        col, row, width, height = side["native_window"]
        with rasterio.open(tif) as src:
            data = src.read()
        for i, band in enumerate(side["source_bands"]):
            values, valid = read_window(asset, band, row, col, height, width)
            expected = np.where(valid, values.astype(data.dtype), np.array(side["nodata"], dtype=data.dtype))
            wrong += int((data[i] != expected).sum())
            pixels += expected.size
        images += 1
    return images, pixels, wrong


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=24, help="SIGKILLs in all (about 2/3 during downloads)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    download_kills = max(1, round(args.kills * 2 / 3))
    stack_kills = max(1, args.kills - download_kills)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        soak_root, ref_root = tmp / "soak", tmp / "reference"
        emulator_args = [
            "--latency",
            "none",
            "--latency-base",
            "0.05",
            "--bandwidth",
            "20",
            "--max-concurrent",
            "20",
            "--faults",
            json.dumps(fault_plan(args.seed)),
        ]
        with EmulatorProcess(*emulator_args) as emu, Watcher(soak_root) as watcher:
            kills_a, _ = run_until_done(
                download_argv(emu.url, soak_root, FIRST_END), download_kills // 2, rng, (0.4, 2.5)
            )
            manifest = max(soak_root.glob("manifests/*.json"), key=lambda p: p.stat().st_mtime)
            stack_argv = [EDOWN, "stack", "-m", str(manifest), "--chunk-size", "256", "--threads", "1"]
            kills_b, _ = run_until_done(stack_argv, stack_kills // 2, rng, (0.2, 1.2))
            kills_c, _ = run_until_done(
                download_argv(emu.url, soak_root, SECOND_END),
                download_kills - download_kills // 2,
                rng,
                (0.4, 2.5),
            )
            manifest = max(soak_root.glob("manifests/*.json"), key=lambda p: p.stat().st_mtime)
            stack_argv = [EDOWN, "stack", "-m", str(manifest), "--chunk-size", "256", "--threads", "1"]
            kills_d, _ = run_until_done(stack_argv, stack_kills - stack_kills // 2, rng, (0.2, 1.2))
            watcher.scan()
            faults = emu.stats()
        with EmulatorProcess() as clean:
            subprocess.run(download_argv(clean.url, ref_root, SECOND_END), check=True, capture_output=True)
            manifest = max(ref_root.glob("manifests/*.json"), key=lambda p: p.stat().st_mtime)
            subprocess.run(
                [EDOWN, "stack", "-m", str(manifest), "--chunk-size", "256"], check=True, capture_output=True
            )
        images, pixels, wrong = check_pixels(soak_root)
        soak_tifs, ref_tifs = (
            digest_tree(soak_root, "images/*/*.tif"),
            digest_tree(ref_root, "images/*/*.tif"),
        )
        soak_zarr, ref_zarr = (
            digest_tree(soak_root, "stacks/*/*.zarr/data/c/**/*"),
            digest_tree(ref_root, "stacks/*/*.zarr/data/c/**/*"),
        )
        leftovers = [
            str(p.relative_to(soak_root))
            for p in soak_root.rglob("*")
            if ".partial" in p.name or ".tmp" in p.name
        ]

    injected = faults["faults_injected"]
    rows: list[list[Any]] = [[f"fault injected: {kind}", n] for kind, n in sorted(injected.items())]
    rows += [
        ["fault injected: 429 (storms + concurrency quota)", faults["throttled"]],
        ["SIGKILLs survived: download", kills_a + kills_c],
        ["SIGKILLs survived: stack (build + append)", kills_b + kills_d],
        ["images completed", images],
        ["pixels checked", pixels],
        ["pixels wrong", wrong],
        ["files seen partial under a final name", len(watcher.partial)],
        [
            "outputs read while running (tif/json/zarr)",
            "/".join(str(watcher.checked[k]) for k in ("tif", "json", "zarr")),
        ],
        [
            "GeoTIFFs identical to an uninterrupted run",
            f"{sum(soak_tifs.get(k) == v for k, v in ref_tifs.items())}/{len(ref_tifs)}",
        ],
        [
            "Zarr chunks identical to an uninterrupted run",
            f"{sum(soak_zarr.get(k) == v for k, v in ref_zarr.items())}/{len(ref_zarr)}",
        ],
        ["temporary or partial files left", len(leftovers)],
        ["elapsed (s)", round(time.monotonic() - started)],
    ]
    print_table(["soak", "count"], rows)
    for line in watcher.partial[:10]:
        print("PARTIAL:", line)
    for name in leftovers[:10]:
        print("LEFT OVER:", name)
    ok = (
        wrong == 0
        and not watcher.partial
        and soak_tifs == ref_tifs
        and soak_zarr == ref_zarr
        and not leftovers
        and images == len(ref_tifs)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
