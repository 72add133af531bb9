"""The writer side of a download: response bodies become chunks; finished images become GeoTIFFs.

A pixel response is streamed into its chunk file as it arrives (:func:`edown.earthengine.compute_pixels_to`
feeding a :class:`ChunkSink`), converted to band-major rows a block at a time, so no chunk is ever
whole in memory however many requests are in flight, and no body is written twice. :class:`ChunkWriter`
records stored chunks and assembles each image, on its own threads, when its last chunk is stored.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from edown.bands import fill_value
from edown.clouds import IDENTITY_TAG
from edown.errors import EarthEngineError, is_disk_full
from edown.geotiff import write_geotiff
from edown.grid import Window
from edown.outputs import ChunkStore, StoredChunk, covered_by, read_npy_header, sidecar_path
from edown.progress import Counters
from edown.records import utc_iso
from edown.rootstate import atomic_write_text
from edown.storeroot import publish

if TYPE_CHECKING:
    from edown.download import ImageJob

log = logging.getLogger("edown.writer")

#: Bytes of a response converted at a time (per request in flight, so memory stays bounded).
BLOCK_BYTES = 2 * 1024 * 1024
#: The most an NPY header may take before the data starts.
MAX_HEADER = 65536


class ChunkSink:
    """Receives one computePixels NPY body as it arrives and writes it band-major into ``window``'s chunk.

    The body is Earth Engine's pixel-interleaved record array ``(height, width)`` with one field per band;
    the chunk is ``(bands, height, width)`` in ``dtype``. Whole rows are converted as soon as they arrive
    (``nan_fill`` values become NaN), so at most one block of a body is ever in memory. Nothing appears
    under the chunk's name until :meth:`commit`; a short, malformed or unexpected body raises
    :class:`EarthEngineError` (transient when a retry can help) and leaves nothing behind.
    """

    def __init__(
        self,
        store: ChunkStore,
        window: Window,
        names: tuple[str, ...],
        dtype: str,
        nan_fill: float | None,
    ) -> None:
        self.window = window
        self.names = names
        self.dtype = np.dtype(dtype)
        self.nan_fill = nan_fill
        self.received = 0
        #: Seconds spent here converting and writing (not waiting for Earth Engine): a request's measured
        #: time minus this is what the endpoint cost, which is what the planner learns.
        self.busy_seconds = 0.0
        self._pending = store.begin(window)
        self._buffer = bytearray()
        self._records: np.dtype | None = None
        self._row = 0
        self._start = 0
        self._fortran = False

    def write(self, data: bytes) -> int:
        began = time.monotonic()
        try:
            self.received += len(data)
            self._buffer += data
            if self._records is None and not self._parse_header():
                return len(data)
            self._convert(final=False)
            return len(data)
        finally:
            self.busy_seconds += time.monotonic() - began

    def commit(self) -> Path:
        """Check the body was complete and make the chunk appear; returns its path."""
        if self._records is None:
            self._parse_header(final=True)  # raises when the body is too short to hold one
        self._convert(final=True)
        if self._row != self.window.height or self._buffer:
            expected = self.window.height * self.window.width
            got = self._row * self.window.width
            self.abort()
            raise EarthEngineError(
                f"truncated or corrupt NPY response ({self.received} bytes): {got} of {expected} pixels",
                transient=True,
            )
        return self._pending.commit()

    def abort(self) -> None:
        self._pending.abort()

    def _parse_header(self, final: bool = False) -> bool:
        head = bytes(self._buffer[:MAX_HEADER])
        try:
            stream = io.BytesIO(head)
            shape, fortran_order, records = read_npy_header(stream)
        except (ValueError, EOFError, OSError) as exc:
            if not final and len(self._buffer) < MAX_HEADER:
                return False  # wait for more bytes
            raise EarthEngineError(
                f"truncated or corrupt NPY response ({self.received} bytes): {exc}", transient=True
            ) from None
        window = self.window
        if shape != (window.height, window.width) or records.names is None:
            raise EarthEngineError(
                f"NPY response has shape {shape}, expected {(window.height, window.width)}",
                transient=True,
            )
        missing = [n for n in self.names if n not in records.names]
        if missing:
            raise EarthEngineError(f"NPY response lacks band(s) {missing}; got {list(records.names)}")
        for name in self.names:
            if records[name] != self.dtype:
                raise EarthEngineError(
                    f"Earth Engine returned band {name} as {records[name]}, expected {self.dtype}"
                )
        self._records = records
        # Earth Engine sends C order, converted row block by row block; a Fortran-ordered body is valid
        # NPY too, but column-major, so it is converted whole when complete.
        self._fortran = fortran_order and window.height > 1 and window.width > 1
        del self._buffer[: stream.tell()]
        handle = self._pending.handle
        np.lib.format.write_array_header_1_0(
            handle,
            {
                "descr": np.lib.format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": (len(self.names), window.height, window.width),
            },
        )
        self._start = handle.tell()
        return True

    def _convert(self, final: bool) -> None:
        assert self._records is not None
        width = self.window.width
        row_bytes = width * self._records.itemsize
        block_rows = max(1, BLOCK_BYTES // max(1, row_bytes))
        plane = self.window.height * width * self.dtype.itemsize
        handle = self._pending.handle
        if self._fortran:
            if final and len(self._buffer) >= self.window.height * row_bytes:
                count = self.window.height * width
                columns = np.frombuffer(self._buffer, dtype=self._records, count=count)
                grid = columns.reshape((self.window.height, width), order="F")
                for band, name in enumerate(self.names):
                    self._write_band(handle, band, plane, np.array(grid[name], dtype=self.dtype, order="C"))
                del columns, grid
                del self._buffer[: count * self._records.itemsize]
                self._row = self.window.height
            return
        while True:
            rows = min(len(self._buffer) // row_bytes, self.window.height - self._row)
            if rows <= 0 or (rows < block_rows and not final and self._row + rows < self.window.height):
                return
            rows_block = np.frombuffer(self._buffer, dtype=self._records, count=rows * width)
            for band, name in enumerate(self.names):
                self._write_band(handle, band, plane, np.array(rows_block[name], dtype=self.dtype))
            del rows_block
            del self._buffer[: rows * row_bytes]
            self._row += rows

    def _write_band(self, handle: BinaryIO, band: int, plane: int, values: np.ndarray) -> None:
        """Write rows ``values`` of one band at the current row (``values`` is ours to modify)."""
        if self.nan_fill is not None:
            values[values == self.nan_fill] = np.nan
        handle.seek(self._start + band * plane + self._row * self.window.width * self.dtype.itemsize)
        handle.write(values.tobytes())


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
    """Writer threads: assemble each image's GeoTIFF once its last chunk is stored.

    Owns the assembly queue, the assembly limit and the disk-full stop. Stored chunks are recorded by
    :meth:`put` on the fetch thread that stored them (bookkeeping only), so a writer thread waiting for an
    assembly slot never holds back the record of an arrived chunk, and "every response has arrived" is
    known the moment it is true. ``finish(job, status, error)`` records an image's outcome; ``budget`` is
    released as each stored chunk is recorded, and then ``on_stored`` is called.
    """

    def __init__(
        self,
        workers: int,
        counters: Counters,
        budget: ByteBudget,
        finish: Callable[[ImageJob, str, str | None], None],
        on_disk_full: Callable[[], None],
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.counters = counters
        self.on_stored = on_stored
        self.budget = budget
        self.finish = finish
        self.on_disk_full = on_disk_full
        self.queue: queue.Queue[ImageJob | None] = queue.Queue()
        self.workers = workers
        #: GeoTIFFs assembled at once: two while responses still arrive (compressing competes with
        #: receiving them for the CPU, and the quota is the scarce resource), every worker after.
        self.assembly_limit = 2
        self._assembling = 0
        self._assembly = threading.Condition()
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

    def put(self, job: ImageJob, window: Window, chunk: Path, nbytes: int) -> None:
        """Record ``window``'s stored chunk and release its ``nbytes`` of the budget; queue the image's
        assembly if it was the last."""
        try:
            if job.status is not None:
                return
            with job.lock:
                job.stored.append(StoredChunk(window, chunk))
                job.outstanding -= 1
                complete = job.outstanding == 0
            self.counters.add(chunks_done=1)
        finally:
            self.budget.release(nbytes)
        if complete:
            self.queue.put(job)
        if self.on_stored is not None:
            self.on_stored()

    def fetching_done(self) -> None:
        """Every response has arrived: assemble with all workers from now on."""
        with self._assembly:
            self.assembly_limit = self.workers
            self._assembly.notify_all()

    def assemble_later(self, job: ImageJob) -> None:
        """Queue the assembly of an image whose chunks are all stored already (a resumed run)."""
        self.queue.put(job)

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            try:
                if job.status is None:
                    self._assemble(job)
            except Exception as exc:
                if is_disk_full(exc):
                    self.on_disk_full()
                    self.finish(job, "failed", "no space left on device (run again to resume)")
                    continue
                log.error(
                    "writing %s failed: %s",
                    job.record.record_key,
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                self.finish(job, "failed", f"writing the output failed: {type(exc).__name__}: {exc}")

    def _assemble(self, job: ImageJob) -> None:
        with self._assembly:
            while self._assembling >= self.assembly_limit:
                self._assembly.wait(0.5)
            self._assembling += 1
        try:
            self._assemble_now(job)
        finally:
            with self._assembly:
                self._assembling -= 1
                self._assembly.notify_all()

    def _assemble_now(self, job: ImageJob) -> None:
        pieces: list[StoredChunk] = []
        for window in job.chunks:
            cover = covered_by(window, job.stored)
            if cover is None:
                raise RuntimeError(f"chunk {window} of {job.record.record_key} is missing at assembly")
            pieces.extend(cover)
        write_sidecar(job)
        write_geotiff(job.tiff, job.spec, job.store, pieces, job.record.aoi_window)
        publish(sidecar_path(job.tiff))  # on a store: uploaded whole, sidecar first as on disk
        publish(job.tiff)
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
        "cloud_mask": (job.spec.tags or {}).get(IDENTITY_TAG, "none"),
    }
    atomic_write_text(sidecar_path(job.tiff), json.dumps(doc, indent=1, default=str) + "\n")
