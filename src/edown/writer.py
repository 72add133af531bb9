"""The writer side of a download: responses on disk become chunks; finished images become GeoTIFFs.

A pixel response is streamed to a temporary file in the image's chunk store as it arrives
(:func:`edown.earthengine.compute_pixels_to`); :func:`store_response` then checks it and rewrites it
band-major as the chunk file, a few megabytes at a time, so no chunk is ever whole in memory however
many requests are in flight. :class:`ChunkWriter` runs that on its own threads and assembles each image
when its last chunk is stored.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO

import numpy as np

from edown.errors import EarthEngineError
from edown.grid import Window
from edown.outputs import ChunkStore

#: Bytes of a response converted at a time.
BLOCK_BYTES = 4 * 1024 * 1024


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, record dtype, data offset)`` of an NPY file; a malformed header is a transient error."""
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            reader = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = reader(handle)
            return tuple(shape), dtype, handle.tell()
    except (ValueError, EOFError, OSError) as exc:
        raise EarthEngineError(
            f"truncated or corrupt NPY response ({_size(path)} bytes): {exc}", transient=True
        ) from None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def check_response(path: Path, names: tuple[str, ...], dtype: str, window: Window) -> tuple[np.dtype, int]:
    """Validate a computePixels NPY response on disk against what was asked; ``(record dtype, offset)``.

    A short or malformed body, or one of the wrong shape, is transient (retry); a missing band or an
    unexpected data type is not (Earth Engine would answer the same again).
    """
    shape, records, offset = read_npy_header(path)
    if shape != (window.height, window.width) or records.names is None:
        raise EarthEngineError(
            f"NPY response has shape {shape}, expected {(window.height, window.width)}", transient=True
        )
    have = _size(path) - offset
    need = math.prod(shape) * records.itemsize
    if have < need:
        raise EarthEngineError(
            f"truncated or corrupt NPY response ({_size(path)} bytes): {have} data bytes for "
            f"{math.prod(shape)} x {records.itemsize}",
            transient=True,
        )
    missing = [n for n in names if n not in records.names]
    if missing:
        raise EarthEngineError(f"NPY response lacks band(s) {missing}; got {list(records.names)}")
    for name in names:
        if records[name] != np.dtype(dtype):
            raise EarthEngineError(f"Earth Engine returned band {name} as {records[name]}, expected {dtype}")
    return records, offset


def store_response(
    store: ChunkStore,
    window: Window,
    response: Path,
    names: tuple[str, ...],
    dtype: str,
    nan_fill: float | None,
) -> Path:
    """Check ``response`` and store it as ``window``'s chunk: ``(bands, height, width)`` in ``dtype``,
    with ``nan_fill`` values turned into NaN when given. Converted block by block; the response file is
    left for the caller to delete."""
    records, offset = check_response(response, names, dtype, window)
    out_dtype = np.dtype(dtype)
    plane = window.height * window.width * out_dtype.itemsize
    rows_per_block = max(1, BLOCK_BYTES // max(1, window.width * records.itemsize))

    def write(handle: BinaryIO) -> None:
        header = {
            "descr": np.lib.format.dtype_to_descr(out_dtype),
            "fortran_order": False,
            "shape": (len(names), window.height, window.width),
        }
        np.lib.format.write_array_header_1_0(handle, header)
        start = handle.tell()
        handle.truncate(start + plane * len(names))
        with response.open("rb") as src:
            src.seek(offset)
            for row in range(0, window.height, rows_per_block):
                rows = min(rows_per_block, window.height - row)
                count = rows * window.width
                block = np.fromfile(src, dtype=records, count=count)
                if block.size != count:
                    raise EarthEngineError("NPY response shrank while it was read", transient=True)
                for band, name in enumerate(names):
                    values = np.ascontiguousarray(block[name])
                    if nan_fill is not None:
                        values[values == nan_fill] = np.nan
                    handle.seek(start + band * plane + row * window.width * out_dtype.itemsize)
                    handle.write(values.tobytes())

    return store.save_with(window, write, plane * len(names))
