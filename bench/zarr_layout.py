"""Why the datacubes are chunked and compressed the way they are: a measurement, not a guess.

Writes one cube of real-looking Sentinel-2 reflectance (consecutive dates of one tile from the emulator's
pixel function, 4 bands, uint16) with several chunk shapes and codecs, then times the reads a time-series
user makes: a whole scene (one date, all bands), a 1024 x 1024 window of it off the chunk grid, a pixel time series
(every date, one band, a 64 x 64 patch) and a regional time series (every date, all bands, 512 x 512).
Each read is repeated (7 times) and the best time kept, so the table compares layouts rather than the page cache.

    python bench/zarr_layout.py [--times 24] [--side 2048]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edown import StackConfig
from edown.stack import data_compressors
from harness import print_table

BANDS = ("B2", "B3", "B4", "B8")
TILE = "T30UXC"
EDGE = StackConfig.__dataclass_fields__["chunk_size"].default  # edown's default spatial chunk


def make_cube(times: int, side: int) -> np.ndarray:
    """``times`` consecutive acquisitions of one tile, cut at the same native window."""
    import datetime as dt

    from shapely.geometry import Point

    from edown.emulator.catalog import Catalog
    from edown.emulator.pixels import read_window

    start = int(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
    end = int(dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
    london = Point(-0.1, 51.5)
    assets = [
        a for a in Catalog().query("COPERNICUS/S2_SR_HARMONIZED", start, end, london) if a.id.endswith(TILE)
    ][:times]
    if len(assets) < times:
        raise SystemExit(f"only {len(assets)} images of {TILE} in 2024; ask for fewer --times")
    cube = np.empty((times, len(BANDS), side, side), dtype=np.uint16)
    for t, asset in enumerate(assets):
        for b, band in enumerate(BANDS):
            cube[t, b] = read_window(asset, band, 3000, 3000, side, side)[0]
    return cube


def layouts(bands: int) -> list[tuple[str, tuple[int, int, int, int], Callable[[], list[Any]]]]:
    from zarr.codecs import BloscCodec, ZstdCodec

    def blosc(cname: str, level: int, shuffle: str = "shuffle") -> Callable[[], list[Any]]:
        return lambda: [BloscCodec(cname=cname, clevel=level, shuffle=shuffle)]

    return [
        ("1 x B x 1024 x 1024, blosc zstd1 shuffle", (1, bands, 1024, 1024), blosc("zstd", 1)),
        ("1 x B x 1024 x 1024, zarr default (zstd0)", (1, bands, 1024, 1024), lambda: [ZstdCodec()]),
        ("1 x B x 1024 x 1024, blosc lz4 shuffle", (1, bands, 1024, 1024), blosc("lz4", 5)),
        ("1 x B x 1024 x 1024, blosc zstd5 shuffle", (1, bands, 1024, 1024), blosc("zstd", 5)),
        ("1 x B x 512 x 512, blosc zstd1 shuffle", (1, bands, 512, 512), blosc("zstd", 1)),
        (
            f"edown: 1 x B x {EDGE} x {EDGE}, blosc lz4 shuffle",
            (1, bands, EDGE, EDGE),
            lambda: data_compressors(np.uint16),
        ),
        ("1 x B x 2048 x 2048, blosc zstd1 shuffle", (1, bands, 2048, 2048), blosc("zstd", 1)),
        ("1 x 1 x 1024 x 1024, blosc zstd1 shuffle", (1, 1, 1024, 1024), blosc("zstd", 1)),
        ("8 x B x 256 x 256, blosc zstd1 shuffle", (8, bands, 256, 256), blosc("zstd", 1)),
    ]


def best_of(repeats: int, array: Any, key: tuple[Any, ...]) -> float:
    """The fastest of ``repeats`` reads of ``array[key]``, in milliseconds."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        array[key]
        best = min(best, time.perf_counter() - started)
    return best * 1000


def win(start: int, size: int) -> slice:
    return slice(start, start + size)


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", type=int, default=24)
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import zarr

    cube = make_cube(args.times, args.side)
    raw_mb = cube.nbytes / 1e6
    t, b, side = args.times, len(BANDS), args.side
    rows = []
    with tempfile.TemporaryDirectory(prefix="edown-zarr-layout-") as tmp:
        warm = zarr.create_array(str(Path(tmp) / "warm.zarr"), shape=cube.shape[1:], dtype=cube.dtype)
        warm[:] = cube[0]  # imports, codec pools and first-touch allocations stay out of the first row
        for name, chunks, compressors in layouts(b):
            path = Path(tmp) / "cube.zarr"
            started = time.perf_counter()
            array = zarr.create_array(
                str(path),
                shape=cube.shape,
                chunks=chunks,
                dtype=cube.dtype,
                compressors=compressors(),
                fill_value=65535,
            )
            if chunks[0] == 1:
                for i in range(t):  # how edown writes: one date at a time, as downloads arrive
                    array[i] = cube[i]
            else:
                array[:] = cube  # a time-deep chunk can only be written once all its dates exist
            write_s = time.perf_counter() - started
            stored = directory_bytes(path)
            array = zarr.open_array(str(path), mode="r")
            y0 = x0 = side // 4 + 100
            scene = best_of(args.repeats, array, (t // 2,))
            window = best_of(args.repeats, array, (t // 2, slice(None), win(y0, 1024), win(x0, 1024)))
            series = best_of(args.repeats, array, (slice(None), 2, win(y0, 64), win(x0, 64)))
            region = best_of(args.repeats, array, (slice(None), slice(None), win(y0, 512), win(x0, 512)))
            if not np.array_equal(
                array[:, :, y0 : y0 + 64, x0 : x0 + 64], cube[:, :, y0 : y0 + 64, x0 : x0 + 64]
            ):
                raise SystemExit(f"{name}: read back differs from what was written")
            rows.append(
                [
                    name,
                    round(raw_mb / write_s),
                    round(raw_mb * 1e6 / stored, 2),
                    round(scene, 1),
                    round(window, 1),
                    round(series, 1),
                    round(region, 1),
                    "yes" if chunks[0] == 1 else "no",
                ]
            )
            shutil.rmtree(path)
    print(
        f"cube: {t} dates x {b} bands x {side} x {side} uint16 ({raw_mb:.0f} MB raw), "
        f"Sentinel-2 tile {TILE} from the emulator's pixel function; reads best of {args.repeats}\n"
    )
    print_table(
        [
            "layout (time x band x y x x, codec)",
            "write MB/s",
            "ratio",
            "scene ms",
            "1024² window ms",
            "pixel series ms",
            "region series ms",
            "append-safe",
        ],
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
