"""The writer side of a download: responses on disk become chunks; finished images become GeoTIFFs.

A pixel response is streamed to a temporary file in the image's chunk store as it arrives
(:func:`edown.earthengine.compute_pixels_to`); :func:`store_response` then checks it and rewrites it
band-major as the chunk file, a few megabytes at a time, so no chunk is ever whole in memory however
many requests are in flight. :class:`ChunkWriter` runs that on its own threads and assembles each image
when its last chunk is stored.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from edown.bands import fill_value
from edown.errors import EarthEngineError, is_disk_full
from edown.geotiff import write_geotiff
from edown.grid import Window
from edown.manifest import atomic_write_text
from edown.outputs import ChunkStore, StoredChunk, covered_by, sidecar_path
from edown.progress import Counters
from edown.records import utc_iso

if TYPE_CHECKING:
    from edown.download import ImageJob

log = logging.getLogger("edown.writer")

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


class ByteBudget:
    """At most ``capacity`` bytes of responses in flight or waiting to be stored (one oversized request
    is always let through alone, so a chunk bigger than the budget cannot deadlock the run)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, nbytes: int, stop: threading.Event) -> None:
        with self._cond:
            while self.used and self.used + nbytes > self.capacity:
                if stop.is_set():
                    raise InterruptedError("stopping")
                self._cond.wait(0.25)
            self.used += nbytes
            self.peak = max(self.peak, self.used)

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.used -= nbytes
            self._cond.notify_all()


class ChunkWriter:
    """Writer threads: store each arrived response as its chunk; assemble an image after its last one.

    Owns the write queue, the chunk store writes, assembly and the disk-full stop. ``finish(job, status,
    error)`` records an image's outcome; ``budget`` is released as each response is stored.
    """

    def __init__(
        self,
        workers: int,
        counters: Counters,
        budget: ByteBudget,
        finish: Callable[[ImageJob, str, str | None], None],
        on_disk_full: Callable[[], None],
    ) -> None:
        self.counters = counters
        self.budget = budget
        self.finish = finish
        self.on_disk_full = on_disk_full
        self.queue: queue.Queue[tuple[ImageJob, Window, Path | None, int] | None] = queue.Queue()
        self.threads = [
            threading.Thread(target=self._loop, name=f"edown-write-{i}", daemon=True) for i in range(workers)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self, timeout: float = 60) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join(timeout=timeout)

    def put(self, job: ImageJob, window: Window, response: Path, nbytes: int) -> None:
        """Queue a response on disk (``nbytes`` of the budget) to be stored as ``window``'s chunk."""
        self.queue.put((job, window, response, nbytes))

    def assemble_later(self, job: ImageJob) -> None:
        """Queue the assembly of an image whose chunks are all stored already (a resumed run)."""
        self.queue.put((job, Window(0, 0, 0, 0), None, 0))

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            job, window, response, nbytes = item
            try:
                if job.status is not None:
                    continue
                complete = True
                if response is not None:
                    path = store_response(
                        job.store, window, response, job.spec.band_names, job.spec.dtype, nan_fill(job)
                    )
                    with job.lock:
                        job.stored.append(StoredChunk(window, path))
                        job.outstanding -= 1
                        complete = job.outstanding == 0
                    self.counters.add(chunks_done=1)
                if complete:
                    self._assemble(job)
            except Exception as exc:
                if is_disk_full(exc):
                    self.on_disk_full()
                    self.finish(job, "failed", "no space left on device (run again to resume)")
                    continue
                log.exception("writing %s failed", job.record.record_key)
                self.finish(job, "failed", f"writing the output failed: {type(exc).__name__}: {exc}")
            finally:
                if response is not None:
                    response.unlink(missing_ok=True)
                    self.budget.release(nbytes)

    def _assemble(self, job: ImageJob) -> None:
        pieces: list[StoredChunk] = []
        for window in job.chunks:
            cover = covered_by(window, job.stored)
            if cover is None:
                raise RuntimeError(f"chunk {window} of {job.record.record_key} is missing at assembly")
            pieces.extend(cover)
        write_sidecar(job)
        write_geotiff(job.tiff, job.spec, job.store, pieces, job.record.aoi_window)
        job.store.remove()
        self.finish(job, "downloaded", None)


def nan_fill(job: ImageJob) -> float | None:
    """The value Earth Engine sends for "no data" when the output's nodata is NaN (else None)."""
    return fill_value(job.spec.dtype, job.nodata) if job.nodata != job.nodata else None


def write_sidecar(job: ImageJob) -> None:
    """The GeoTIFF's JSON sidecar: the record's facts, so the file explains itself without the manifest."""
    record = job.record
    doc = {
        "image_id": record.image_id,
        "collection_id": record.collection_id,
        "version": record.version,
        "acquisition_time_utc": utc_iso(record.acquisition_time_utc),
        "band_names": list(job.spec.band_names),
        "source_bands": [b for b in record.selected_band_ids if b not in record.missing_bands],
        "dtype": job.spec.dtype,
        "nodata": "nan" if job.nodata != job.nodata else job.nodata,
        "crs": record.native_crs,
        "transform": list(job.spec.transform),
        "width": job.spec.width,
        "height": job.spec.height,
        "native_window": list(record.window),
        "alignment_signature": record.alignment_signature,
        "grid_label": record.grid_label,
        "properties": record.properties,
        "footprint": record.footprint,
        "chunks": len(job.chunks),
    }
    atomic_write_text(sidecar_path(job.tiff), json.dumps(doc, indent=1, default=str) + "\n")
