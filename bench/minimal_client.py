"""A minimal downloader to measure edown against: one max-size computePixels request per image window.

    python bench/minimal_client.py URL OUT COLLECTION START END BBOX BANDS

It is what a careful 150-line script does with the plain ``ee`` client and nothing of edown: list the
images (``ee.data.listImages``), cut each image's AOI window on the selected bands' native grid, ask for
the whole window in one NPY request (or in as few strips as Earth Engine's 48 MB limit allows, counting
the mask byte), 40 requests at a time, and write one tiled zstd GeoTIFF per image. It does no pacing, no
resume, no retry beyond the ``ee`` client's own, and checks nothing. Prints one JSON line:
``{"images", "requests", "pixels", "first_request", "seconds"}`` (``first_request``: Unix time of the first
pixel request).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ee
import numpy as np
import rasterio
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import box, mapping

LIMIT = 48 * 1024 * 1024
#: EE's name for MODIS sinusoidal, which PROJ does not know: a sphere of radius 6371007.181 m.
KNOWN = {"SR-ORG:6974": "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs"}


def window_of(bbox: tuple[float, ...], grid: dict[str, Any]) -> tuple[int, int, int, int] | None:
    """(col, row, width, height) of the bbox on ``grid``, snapped outward and clipped to the grid."""
    crs = str(grid.get("crsCode") or grid.get("crsWkt"))
    to_grid = Transformer.from_crs("EPSG:4326", CRS.from_user_input(KNOWN.get(crs, crs)), always_xy=True)
    shape = shapely.transform(shapely.segmentize(box(*bbox), 0.01), to_grid.transform, interleaved=False)
    a = grid["affineTransform"]
    sx, tx, sy, ty = a["scaleX"], a.get("translateX", 0.0), a["scaleY"], a.get("translateY", 0.0)
    x0, y0, x1, y1 = shape.bounds
    c0, c1 = sorted(((x0 - tx) / sx, (x1 - tx) / sx))
    r0, r1 = sorted(((y0 - ty) / sy, (y1 - ty) / sy))
    dims = grid["dimensions"]
    col0, row0 = max(0, math.floor(c0)), max(0, math.floor(r0))
    col1, row1 = min(dims["width"], math.ceil(c1)), min(dims["height"], math.ceil(r1))
    if col1 <= col0 or row1 <= row0:
        return None
    return col0, row0, col1 - col0, row1 - row0


def main() -> int:
    url, out, collection, start, end, bbox_text, bands_text = sys.argv[1:8]
    started = time.monotonic()
    bbox = tuple(float(v) for v in bbox_text.split(","))
    bands = bands_text.split(",")
    ee.Initialize(credentials=None, project="minimal-client", opt_url=url)
    listing: dict[str, Any] = ee.data.listImages(
        {
            "parent": collection,
            "startTime": f"{start}T00:00:00Z",
            # listImages compares each image's *end* time: ask for two days more, keep start <= end.
            "endTime": f"{dt.date.fromisoformat(end) + dt.timedelta(days=2)}T00:00:00Z",
            "region": json.dumps(mapping(box(*bbox))),
        }
    )
    jobs = []
    for image in listing.get("images", []):
        if image["startTime"][:10] > end:
            continue
        by_id = {b["id"]: b for b in image["bands"]}
        if not all(b in by_id for b in bands):
            continue
        grid = by_id[bands[0]]["grid"]
        window = window_of(bbox, grid)
        if window is not None:
            jobs.append((image, grid, window))

    requests: list[tuple[int, int, int]] = []  # (job, first row, rows)
    for i, (_, _, (_, _, width, height)) in enumerate(jobs):
        # 16-bit bands (all the benchmark's) plus the mask byte Earth Engine counts.
        rows = max(1, min(height, LIMIT // (width * len(bands) * 3)))
        for r in range(0, height, rows):
            requests.append((i, r, min(rows, height - r)))
    arrays: dict[int, np.ndarray] = {}
    lock = threading.Lock()
    remaining = {i: sum(1 for j, _, _ in requests if j == i) for i in range(len(jobs))}
    first = [0.0]

    def fetch(req: tuple[int, int, int]) -> None:
        i, r, rows = req
        image, grid, (col, row, width, _) = jobs[i]
        a = grid["affineTransform"]
        sub = dict(grid)
        sub["dimensions"] = {"width": width, "height": rows}
        sub["affineTransform"] = dict(
            a,
            translateX=a.get("translateX", 0.0) + col * a["scaleX"],
            translateY=a.get("translateY", 0.0) + (row + r) * a["scaleY"],
        )
        with lock:
            first[0] = first[0] or time.time()
        raw = ee.data.computePixels(
            {"expression": ee.Image(image["id"]).select(bands), "fileFormat": "NPY", "grid": sub}
        )
        data = np.load(io.BytesIO(raw), allow_pickle=False)
        stacked = np.stack([data[b] for b in bands])
        done = False
        with lock:
            if i not in arrays:
                arrays[i] = np.empty((len(bands), jobs[i][2][3], width), dtype=stacked.dtype)
            arrays[i][:, r : r + rows] = stacked
            remaining[i] -= 1
            done = remaining[i] == 0
        if done:
            write(i)

    def write(i: int) -> None:
        image, grid, (col, row, width, height) = jobs[i]
        a = grid["affineTransform"]
        transform = rasterio.Affine(
            a["scaleX"],
            0.0,
            a.get("translateX", 0.0) + col * a["scaleX"],
            0.0,
            a["scaleY"],
            a.get("translateY", 0.0) + row * a["scaleY"],
        )
        crs = str(grid.get("crsCode") or grid.get("crsWkt"))
        data = arrays.pop(i)
        path = Path(out) / (image["id"].replace("/", "_") + ".tif")
        path.parent.mkdir(parents=True, exist_ok=True)
        profile = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": len(bands),
            "dtype": data.dtype.name,
            "crs": CRS.from_user_input(KNOWN.get(crs, crs)).to_wkt(),
            "transform": transform,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "zstd",
        }
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)

    with ThreadPoolExecutor(max_workers=40) as pool:
        list(pool.map(fetch, requests))
    pixels = sum(w * h for _, _, (_, _, w, h) in jobs)
    print(
        json.dumps(
            {
                "images": len(jobs),
                "requests": len(requests),
                "pixels": pixels,
                "first_request": first[0],
                "seconds": time.monotonic() - started,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
