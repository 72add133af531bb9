"""Stacking throughput and memory: edown's three backends vs the public edown 0.2.1, at two sizes.

    python bench/stack.py [--sizes 25 100] [--backends threads dask-local dask-slurm] [--skip-peer]

Input: N same-grid GeoTIFFs of 2048 x 2048 x 4 uint16 (tiled, zstd, like edown's downloads; the pixels
are the emulator's Sentinel-2 values, shifted per date) and, for each tool, a manifest describing them in
its own format. Each run is a separate process; "peak RSS" is the resident memory of its whole process
tree sampled every 50 ms, plus, for dask-slurm, the SLURM-launched Dask workers (nanny and worker); the
CPU column is the client process tree only, so for dask-slurm it leaves out the workers' CPU. Throughput
counts the uncompressed bytes stacked.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from harness import EDOWN, MemorySampler, peer_python, print_table, run_measured

SIDE = 2048
BANDS = ("B2", "B3", "B4", "B8")
CRS = "EPSG:32630"
TRANSFORM = (10.0, 0.0, 600000.0, 0.0, -10.0, 5800020.0)


def make_inputs(root: Path, count: int) -> list[tuple[Path, dt.datetime]]:
    import rasterio
    from rasterio.transform import Affine

    from edown.emulator.catalog import Catalog
    from edown.emulator.pixels import read_window

    catalog = Catalog()
    asset = catalog.image("COPERNICUS/S2_SR_HARMONIZED/20240603T104058_20240603T104237_T30UXC")
    base = np.stack([read_window(asset, b, 3000, 3000, SIDE, SIDE)[0] for b in BANDS])
    files = []
    start = dt.datetime(2024, 1, 1, 10, 30, tzinfo=dt.timezone.utc)
    profile = {
        "driver": "GTiff",
        "width": SIDE,
        "height": SIDE,
        "count": len(BANDS),
        "dtype": "uint16",
        "crs": CRS,
        "transform": Affine(*TRANSFORM),
        "nodata": 65535,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "zstd",
        "zstd_level": 1,
        "predictor": 2,
        "interleave": "band",
    }
    for i in range(count):
        path = root / f"image_{i:04d}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.roll(base, shift=(37 * i) % SIDE, axis=2))
            dst.descriptions = BANDS
        files.append((path, start + dt.timedelta(days=5 * i)))
    return files


def edown_manifest(path: Path, root: Path, files: list[tuple[Path, dt.datetime]]) -> Path:
    from edown.grid import alignment_signature
    from edown.manifest import new_manifest
    from edown.records import AlignmentGroup, DownloadResult, ImageRecord, SearchResult

    signature = alignment_signature(CRS, TRANSFORM, BANDS, "uint16")
    records = []
    results = []
    for tiff, when in files:
        record = ImageRecord(
            image_id=f"BENCH/STACK/{tiff.stem}",
            acquisition_time_utc=when,
            native_crs=CRS,
            native_transform=TRANSFORM,
            native_width=SIDE,
            native_height=SIDE,
            alignment_signature=signature,
            selected_band_ids=BANDS,
            output_dtype="uint16",
            collection_id="BENCH/STACK",
            output_band_names=BANDS,
            window=(0, 0, SIDE, SIDE),
        )
        records.append(record)
        results.append(
            DownloadResult(
                record.image_id,
                "downloaded",
                tiff,
                1,
                record_key=record.record_key,
                alignment_signature=signature,
                nodata=65535.0,
            )
        )
    group = AlignmentGroup(
        signature,
        tuple(r.image_id for r in records),
        CRS,
        BANDS,
        "uint16",
        TRANSFORM,
        SIDE,
        SIDE,
        tuple(r.record_key for r in records),
    )
    search = SearchResult("BENCH/STACK", tuple(records), (group,), BANDS, BANDS)
    manifest = new_manifest(path, root)
    manifest.doc["search"] = {"config": {}, "result": search.to_dict()}
    manifest.doc["download"] = {"results": [r.to_dict(root) for r in results]}
    manifest.write()
    return path


def peer_manifest(path: Path, root: Path, files: list[tuple[Path, dt.datetime]]) -> Path:
    """The same inputs described in edown 0.2.1's manifest format (read from its stack code)."""
    images, results = [], []
    for tiff, when in files:
        image_id = f"BENCH/STACK/{tiff.stem}"
        images.append(
            {
                "collection_id": "BENCH/STACK",
                "image_id": image_id,
                "acquisition_time_utc": when.isoformat(),
                "local_datetime": when.isoformat(),
                "properties": {},
                "raw_image_info": {},
                "available_band_ids": list(BANDS),
                "selected_band_ids": list(BANDS),
                "output_band_names": list(BANDS),
                "missing_band_ids": [],
                "band_byte_sizes": dict.fromkeys(BANDS, 2),
                "output_dtype": "uint16",
                "native_crs": CRS,
                "native_transform": list(TRANSFORM),
                "native_width": SIDE,
                "native_height": SIDE,
                "native_bounds": [600000.0, 5800020.0 - 10 * SIDE, 600000.0 + 10 * SIDE, 5800020.0],
                "alignment_signature": "bench",
                "relative_tiff_path": tiff.name,
            }
        )
        results.append({"image_id": image_id, "status": "downloaded", "tiff_path": str(tiff)})
    doc = {
        "schema_version": 1,
        "config": {},
        "search": {
            "collection_id": "BENCH/STACK",
            "start_date": "2024-01-01",
            "end_date": "2025-12-31",
            "aoi_bounds": [-1, 51, 0, 52],
            "selected_band_ids": list(BANDS),
            "output_band_names": list(BANDS),
            "images": images,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "alignment_groups": [
                {
                    "group_id": "bench",
                    "image_ids": [i["image_id"] for i in images],
                    "crs": CRS,
                    "transform": list(TRANSFORM),
                    "width": SIDE,
                    "height": SIDE,
                    "band_names": list(BANDS),
                    "dtype": "uint16",
                }
            ],
        },
        "download": {"output_root": str(root), "results": results},
    }
    path.write_text(json.dumps(doc))
    return path


PEER_DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from edown import StackConfig, stack_images
    results = stack_images(StackConfig(manifest_path=Path(sys.argv[1]), backend=sys.argv[2], overwrite=True))
    bad = [r for r in results if r.skipped_reason]
    print("ok" if not bad else bad)
    sys.exit(1 if bad else 0)
    """
)


class SlurmWorkerMemory(MemorySampler):
    """Dask workers started by SLURM (not our children): each job's nanny and the worker it spawns."""

    def __init__(self) -> None:
        super().__init__(interval=0.1)

    def processes(self) -> list[Any]:
        import psutil

        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info.get("cmdline") or [])
            if "distributed.cli.dask_worker" in cmd or "dask worker" in cmd or "dask-worker" in cmd:
                with contextlib.suppress(psutil.Error):
                    found += [proc, *proc.children(recursive=True)]
        return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 100])
    parser.add_argument("--backends", nargs="+", default=["threads", "dask-local", "dask-slurm"])
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()
    if "dask-slurm" in args.backends and not shutil.which("sinfo"):
        print("no SLURM here (run scripts/slurm-up.sh); skipping the dask-slurm rows", file=sys.stderr)
        args.backends = [b for b in args.backends if b != "dask-slurm"]

    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print(f"writing {max(args.sizes)} input GeoTIFFs...", file=sys.stderr)
        root = tmp / "out"  # the inputs lie under its images/, where edown reads a root's outputs
        (root / "images").mkdir(parents=True)
        files = make_inputs(root / "images", max(args.sizes))
        for size in args.sizes:
            raw_mb = size * SIDE * SIDE * len(BANDS) * 2 / 1e6
            manifest = edown_manifest(tmp / f"edown-{size}.json", root, files[:size])
            for backend in args.backends:
                print(f"edown {backend}, {size} images...", file=sys.stderr)
                # The manifest is written here, not by a download, so its root has no edown marker: name
                # the root explicitly, as a user stacking a hand-made manifest must.
                argv = [EDOWN, "stack", "-m", str(manifest), "-o", str(root), "--backend", backend]
                argv += ["--overwrite", "--json"]
                if backend == "dask-local":
                    argv += ["--n-workers", "2", "--memory-per-worker", "2GB"]
                if backend == "dask-slurm":
                    argv += [
                        "--n-workers",
                        "2",
                        "--memory-per-worker",
                        "2GB",
                        "--scheduler-host",
                        "127.0.0.1",
                        "--slurm-queue",
                        "edown",
                        "--walltime",
                        "00:30:00",
                    ]
                with SlurmWorkerMemory() as workers:
                    run = run_measured(argv, timeout=7200)
                if run["code"] != 0:
                    print(run["stderr"][-2000:], file=sys.stderr)
                    return 1
                peak = run["peak_rss"] + workers.peak
                rows.append(
                    [
                        "edown",
                        backend,
                        size,
                        round(raw_mb),
                        round(run["wall"], 1),
                        round(raw_mb / run["wall"]),
                        round(run["cpu"], 1),
                        round(peak / 2**20),
                    ]
                )
            if not args.skip_peer:
                print(f"edown 0.2.1 threads, {size} images...", file=sys.stderr)
                peer = peer_manifest(tmp / f"peer-{size}.json", tmp / f"peer-out-{size}", files[:size])
                (tmp / "peer.py").write_text(PEER_DRIVER)
                run = run_measured(
                    [str(peer_python()), str(tmp / "peer.py"), str(peer), "threads"], timeout=7200
                )
                status = (
                    "ok"
                    if run["code"] == 0
                    else f"failed ({run['stdout'].strip()[-120:] or run['stderr'][-120:]})"
                )
                rows.append(
                    [
                        "edown 0.2.1",
                        f"threads ({status})",
                        size,
                        round(raw_mb),
                        round(run["wall"], 1),
                        round(raw_mb / run["wall"]),
                        round(run["cpu"], 1),
                        round(run["peak_rss"] / 2**20),
                    ]
                )
    print()
    print(f"stacking N images of {SIDE}x{SIDE}x{len(BANDS)} uint16 into Zarr")
    print()
    print_table(["tool", "backend", "images", "raw MB", "wall s", "MB/s", "CPU s", "peak RSS MiB"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
