"""Write, verify and describe the GeoTIFFs edown produces.

Each output is a tiled (256 x 256), compressed GeoTIFF on the image's native CRS and grid, one band per
output band with the band name as description, ``nodata`` set, and Earth Engine's id, version and
properties as dataset tags. It is assembled from the stored chunks into a temporary file, verified
(dimensions, dtype, CRS, transform, readable last tile), fsynced, and only then renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edown.crs import crs_wkt
from edown.errors import as_disk_full
from edown.grid import Transform, Window
from edown.outputs import ChunkStore, StoredChunk
from edown.rootstate import journalled

TILE = 256
#: edown reads back only what it wrote, a GeoTIFF: restricting GDAL to that driver keeps a VRT (or any
#: other format) dressed up as ``.tif`` in a hand-edited manifest from making GDAL open URLs or files.
GTIFF_ONLY = "GTiff"
#: GDAL's block cache while edown writes or reads GeoTIFFs, in bytes: rasterio hands GDAL_CACHEMAX to
#: ``GDALSetCacheMax64``, which takes bytes (a bare 128 meant 128 bytes: no cache, and building a COG's
#: overviews then decoded every block again and again, 4x the CPU).
GDAL_CACHE_BYTES = 128 * 1024 * 1024
# Predictors: horizontal differencing for integers, floating-point predictor for floats.
_PREDICTOR = {"i": 2, "u": 2, "f": 3}


@dataclass(frozen=True)
class OutputSpec:
    """Everything the file must say about itself."""

    width: int
    height: int
    band_names: tuple[str, ...]
    dtype: str
    crs: str
    transform: Transform
    nodata: float
    compression: str = "zstd"
    cog: bool = False
    tags: Mapping[str, str] | None = None


def preload() -> None:
    """Write and read back a tiny GeoTIFF in memory, as :func:`write_geotiff` writes them.

    The first GeoTIFF a process writes pays for importing rasterio, registering GDAL's drivers, loading
    the compression codecs and numpy's masked arrays (0.3-0.4 s); a download calls this on a spare
    thread while it waits for Earth Engine, so its first image is not written that much later.
    """
    import rasterio
    from rasterio.io import MemoryFile

    spec = OutputSpec(TILE, TILE, ("b",), "uint16", "EPSG:4326", (0.5, 0.0, 10.0, 0.0, -0.5, 50.0), 0.0)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), MemoryFile() as memory:
        with memory.open(**_profile(spec)) as dst:
            dst.write(np.zeros((1, TILE, TILE), dtype="uint16"))
        with memory.open(driver=GTIFF_ONLY) as src:
            src.read(1, masked=True)


def _profile(spec: OutputSpec) -> dict[str, Any]:
    """GDAL creation options for ``spec``.

    No ``NUM_THREADS``: GDAL's shared worker pool deadlocks when several datasets are written and their
    overviews built at once from different threads (seen as a hung COG download: two pool workers each
    waiting on the other's block lock; rasterio#3115). Images are compressed in parallel already, one
    per writer thread.
    """
    import rasterio
    from rasterio.transform import Affine

    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": spec.width,
        "height": spec.height,
        "count": len(spec.band_names),
        "dtype": spec.dtype,
        "crs": rasterio.crs.CRS.from_wkt(crs_wkt(spec.crs)),
        "transform": Affine(*spec.transform),
        "nodata": spec.nodata,
        "tiled": True,
        "blockxsize": TILE,
        "blockysize": TILE,
        "interleave": "band",
        "BIGTIFF": "IF_SAFER",
    }
    if spec.compression != "none":
        profile["compress"] = spec.compression
        profile["predictor"] = _PREDICTOR[np.dtype(spec.dtype).kind]
        if spec.compression == "zstd":
            profile["zstd_level"] = 1
    return profile


def write_geotiff(
    target: Path, spec: OutputSpec, store: ChunkStore, chunks: Iterable[StoredChunk], origin: Window
) -> int:
    """Assemble ``chunks`` (windows relative to the native grid; ``origin`` is the output's window) into
    ``target`` atomically. Returns the file size in bytes.

    The file is written one row of tiles at a time, top to bottom, whatever the chunks were: the same
    pixels always give the same bytes, however the download was cut (or split after a 400, or resumed).
    """
    import rasterio
    from rasterio.windows import Window as RioWindow

    stem = f".{target.name}.{uuid.uuid4().hex[:8]}"
    tmp, cog = target.with_name(f"{stem}.tmp"), target.with_name(f"{stem}.cog.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    pieces = [(c.window.relative_to(origin), c) for c in chunks]
    with journalled(tmp), journalled(cog) if spec.cog else contextlib.nullcontext():
        try:
            with (
                rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
                rasterio.open(tmp, "w", **_profile(spec)) as dst,
            ):
                opened: dict[Path, np.ndarray] = {}  # each chunk mapped once, dropped below its last row
                for row0 in range(0, spec.height, TILE):
                    height = min(TILE, spec.height - row0)
                    strip = np.empty((len(spec.band_names), height, spec.width), dtype=spec.dtype)
                    for rel, chunk in pieces:
                        r0, r1 = max(row0, rel.row_off), min(row0 + height, rel.row_off + rel.height)
                        if r0 >= r1:
                            continue
                        data = opened.get(chunk.path)
                        if data is None:
                            data = opened[chunk.path] = store.load(chunk)
                        strip[:, r0 - row0 : r1 - row0, rel.col_off : rel.col_off + rel.width] = data[
                            :, r0 - rel.row_off : r1 - rel.row_off, :
                        ]
                        if rel.row_off + rel.height <= row0 + height:
                            del opened[chunk.path]
                    dst.write(strip, window=RioWindow(0, row0, spec.width, height))
                dst.descriptions = spec.band_names
                if spec.tags:
                    dst.update_tags(**dict(spec.tags))
            final = tmp
            if spec.cog:
                _to_cog(tmp, cog, spec)
                final = cog
            verify_geotiff(final, spec)
            with final.open("rb") as handle:
                os.fsync(handle.fileno())
            final.replace(target)
        except Exception as exc:
            raw = spec.width * spec.height * len(spec.band_names) * np.dtype(spec.dtype).itemsize
            full = as_disk_full(exc, target.parent, raw * (2 if spec.cog else 1), target.name)
            if full is not None:
                raise full from exc
            raise
        finally:
            tmp.unlink(missing_ok=True)
            cog.unlink(missing_ok=True)
    return target.stat().st_size


def _to_cog(path: Path, cog: Path, spec: OutputSpec) -> None:
    import rasterio.shutil

    options: dict[str, Any] = {
        "driver": "COG",
        "blocksize": TILE,
        "BIGTIFF": "IF_SAFER",
    }
    if spec.compression != "none":
        options["compress"] = spec.compression
        options["predictor"] = "YES"
        if spec.compression == "zstd":
            # As for tiled GeoTIFFs: the COG driver's default (9) costs 5x the CPU for 8% smaller files.
            options["level"] = 1
    options["overview_resampling"] = "nearest" if np.dtype(spec.dtype).kind in "iu" else "average"
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
        rasterio.shutil.copy(path, cog, **options)
    path.unlink()


class VerificationError(RuntimeError):
    """A freshly written GeoTIFF does not read back as specified."""


def verify_geotiff(path: Path, spec: OutputSpec) -> None:
    """Re-open and check shape, dtype, CRS, transform and nodata, and decode the last tile."""
    import rasterio
    from rasterio.windows import Window as RioWindow

    with rasterio.open(path, driver=GTIFF_ONLY) as src:
        problems = []
        if (src.width, src.height, src.count) != (spec.width, spec.height, len(spec.band_names)):
            problems.append(f"size {src.width}x{src.height}x{src.count}")
        if src.dtypes[0] != spec.dtype:
            problems.append(f"dtype {src.dtypes[0]}")
        if tuple(src.transform)[:6] != tuple(spec.transform):
            problems.append(f"transform {tuple(src.transform)[:6]}")
        nodata = src.nodata
        if not (
            nodata == spec.nodata or (math.isnan(spec.nodata) and nodata is not None and math.isnan(nodata))
        ):
            problems.append(f"nodata {nodata}")
        if problems:
            raise VerificationError(f"{path.name} read back wrong: {', '.join(problems)}")
        last = RioWindow(max(0, spec.width - 1), max(0, spec.height - 1), 1, 1)
        src.read(window=last)


def tags_for(
    record_image_id: str, version: int | None, properties: Mapping[str, Any], acquired: str
) -> dict[str, str]:
    """Dataset tags: EE identity plus every property (non-string values JSON-encoded)."""
    tags = {"EE_IMAGE_ID": record_image_id, "EE_ACQUISITION_TIME_UTC": acquired}
    if version is not None:
        tags["EE_VERSION"] = str(version)
    for key, value in properties.items():
        tags[f"EE_{_tag_key(key)}"] = value if isinstance(value, str) else json.dumps(value)
    return tags


def _tag_key(key: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in key)


def describe(path: Path) -> dict[str, Any]:
    """What a GeoTIFF says about itself (for sidecars, quicklooks and tests)."""
    import rasterio

    with rasterio.open(path, driver=GTIFF_ONLY) as src:
        return {
            "width": src.width,
            "height": src.height,
            "count": src.count,
            "dtype": src.dtypes[0],
            "crs": src.crs.to_wkt() if src.crs else None,
            "transform": list(tuple(src.transform)[:6]),
            "nodata": src.nodata,
            "band_names": list(src.descriptions),
            "tags": src.tags(),
        }
