"""The fetch side of a download: which chunk goes next, and re-planning what is not sent yet.

One :class:`FetchQueue` holds the unsent chunks of every image of a run, oldest image first, so the
quota stays busy and images finish in order. Chunks Earth Engine refused as too large come back split
in two, ahead of everything else. As responses arrive their ``(body bytes, seconds)`` feed a
:class:`~edown.plan.CostLearner`; when the learned latency or bandwidth differs enough from the model the
plan was made with, the chunks not yet sent are re-cut by :func:`edown.plan.replan` (a chunk that was
sent is never touched, so nothing is fetched twice). :class:`Fetcher` runs the fetch threads.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edown import earthengine
from edown.errors import EarthEngineError, RequestTooLargeError, is_disk_full
from edown.grid import Window, split_in_two
from edown.plan import Area, CostLearner, CostModel, replan
from edown.progress import Counters
from edown.writer import ByteBudget, ChunkSink, ChunkWriter, nan_fill

if TYPE_CHECKING:
    from edown.download import ImageJob

log = logging.getLogger("edown.scheduler")

#: Re-plan when this many responses have been measured (then the model is trusted as it stands).
REPLAN_AFTER = (3, 12, 40, 120)
#: ... and only if latency or bandwidth moved by more than this factor since the last plan.
REPLAN_CHANGE = 1.5

#: Called under the queue's lock with ``(image index, removed windows, added windows)`` when unsent chunks
#: of an image are re-cut, so the caller's own bookkeeping changes before any new chunk can be sent.
OnReplan = Callable[[int, list[Window], list[Window]], None]


class FetchQueue:
    """Unsent chunks of all images, oldest image first; split halves first of all; re-cut as it learns."""

    def __init__(
        self,
        areas: dict[int, Area],
        chunks: dict[int, list[Window]],
        model: CostModel,
        byte_limit: int,
        learn: bool = True,
        on_replan: OnReplan | None = None,
    ) -> None:
        self.areas = areas
        self.byte_limit = byte_limit
        self.learner = CostLearner(model)
        self.model = model
        self.learn = learn
        self.on_replan = on_replan
        self.replans = 0
        self._unsent: dict[int, list[Window]] = {k: list(v) for k, v in chunks.items() if v}
        self._order = sorted(self._unsent)
        self._urgent: list[tuple[int, int, int, Window]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def get(self, timeout: float = 0.25) -> tuple[int, Window, int] | None:
        """The next ``(image index, window, attempt)`` to fetch, or None when none came within ``timeout``."""
        with self._cond:
            if not self._urgent and not self._order and not self._closed:
                self._cond.wait(timeout)
            if self._urgent:
                index, _, attempt, window = heapq.heappop(self._urgent)
                return index, window, attempt
            while self._order:
                index = self._order[0]
                pending = self._unsent.get(index)
                if pending:
                    window = pending.pop(0)
                    if not pending:
                        del self._unsent[index]
                        self._order.pop(0)
                    return index, window, 0
                self._order.pop(0)
            return None

    def add(self, index: int, area: Area, windows: list[Window]) -> None:
        """Queue another image's chunks while fetching runs (a streamed search found it); images are
        still served oldest (lowest index) first."""
        with self._cond:
            self.areas[index] = area
            if windows:
                self._unsent[index] = list(windows)
                bisect.insort(self._order, index)
            self._cond.notify_all()

    def put_split(self, index: int, halves: list[Window], attempt: int) -> None:
        """Queue the halves of a chunk Earth Engine refused as too large, ahead of other work."""
        with self._cond:
            for half in halves:
                heapq.heappush(self._urgent, (index, next(self._seq), attempt, half))
            self._cond.notify_all()

    def drop(self, index: int) -> None:
        """Forget the unsent chunks of an image that failed."""
        with self._cond:
            self._unsent.pop(index, None)
            self._urgent = [item for item in self._urgent if item[0] != index]
            heapq.heapify(self._urgent)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def empty(self) -> bool:
        with self._cond:
            return not self._urgent and not any(self._unsent.values())

    def learned(self) -> CostModel:
        """The cost model all responses so far imply (the plan may have been made with an earlier one)."""
        with self._cond:
            return self.learner.model()

    def observe(self, body_bytes: int, seconds: float) -> None:
        """Learn from one answered request; re-cut the unsent chunks when the model has moved enough."""
        if not self.learn:
            return
        with self._cond:
            self.learner.observe(body_bytes, seconds)
            if self.learner.count not in REPLAN_AFTER or not self._unsent:
                return
            learned = self.learner.model()
            if not _moved(self.model, learned):
                return
            unsent = {k: list(v) for k, v in self._unsent.items() if v}
            cut = replan(unsent, self.areas, learned, self.byte_limit)
            log.info(
                "re-planned %d unsent chunk(s) as %d after %d responses: %.2f s + %.1f MB/s per request",
                sum(len(v) for v in unsent.values()),
                sum(len(v) for v in cut.values()),
                self.learner.count,
                learned.latency_seconds,
                learned.bandwidth_bytes_per_second / 1e6,
            )
            self.model = learned
            self.replans += 1
            for index, windows in cut.items():
                if windows == unsent[index]:
                    continue
                if self.on_replan is not None:
                    self.on_replan(index, unsent[index], windows)
                self._unsent[index] = list(windows)


def _moved(old: CostModel, new: CostModel) -> bool:
    ratios = (
        new.latency_seconds / max(1e-9, old.latency_seconds),
        new.bandwidth_bytes_per_second / max(1e-9, old.bandwidth_bytes_per_second),
    )
    return any(r > REPLAN_CHANGE or r < 1 / REPLAN_CHANGE for r in ratios)


class Fetcher:
    """Fetch threads: take the next chunk, stream its response into its chunk file under the pacer, hand
    it to the writer. As many threads as the concurrency quota, so a run with enough work keeps it full; a chunk
    Earth Engine refuses as too large is split in two and requeued; other errors fail its image."""

    def __init__(
        self,
        threads: int,
        conn: earthengine.Connection,
        policy: earthengine.RetryPolicy,
        fetch_queue: FetchQueue,
        budget: ByteBudget,
        writer: ChunkWriter,
        jobs: dict[int, ImageJob],
        counters: Counters,
        finish: Callable[[ImageJob, str, str | None], None],
        stop: threading.Event,
    ) -> None:
        self.conn = conn
        self.policy = policy
        self.queue = fetch_queue
        self.budget = budget
        self.writer = writer
        self.jobs = jobs
        self.counters = counters
        self.finish = finish
        self.stop = stop
        self.threads = [
            threading.Thread(target=self._loop, name=f"edown-fetch-{i}", daemon=True) for i in range(threads)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, timeout: float = 2) -> None:
        for t in self.threads:
            t.join(timeout=timeout)

    def _loop(self) -> None:
        while not self.stop.is_set():
            item = self.queue.get()
            if item is None:
                continue
            index, window, attempt = item
            job = self.jobs[index]
            if job.status is not None:
                continue
            nbytes = window.pixels * len(job.spec.band_names) * np.dtype(job.spec.dtype).itemsize
            try:
                self.budget.acquire(nbytes, self.stop)
            except InterruptedError:
                return
            try:
                chunk = self._fetch(job, window)
            except BaseException as exc:
                self.budget.release(nbytes)
                if isinstance(exc, InterruptedError):
                    return
                if not isinstance(exc, Exception):
                    raise
                self._failed(job, window, attempt, exc)
                continue
            self.writer.put(job, window, chunk, nbytes)

    def _failed(self, job: ImageJob, window: Window, attempt: int, exc: Exception) -> None:
        if is_disk_full(exc):
            self.writer.on_disk_full()
            self.finish(job, "failed", "no space left on device (run again to resume)")
        elif isinstance(exc, RequestTooLargeError):
            halves = split_in_two(window)
            if len(halves) == 1:
                self.finish(job, "failed", f"Earth Engine refused even a 1-pixel request: {exc.message}")
                return
            with job.lock:
                job.chunks = [c for c in job.chunks if c != window] + halves
                job.outstanding += 1
            self.counters.add(chunks_total=1)
            log.info("split %s of %s after: %s", window, job.record.record_key, exc.message)
            self.queue.put_split(job.index, halves, attempt + 1)
        elif isinstance(exc, EarthEngineError):
            self.queue.drop(job.index)
            self.finish(job, "failed", exc.message)
        else:  # a bug or an unexpected library error: fail this image, keep going
            log.error(
                "unexpected error fetching %s: %s",
                job.record.record_key,
                exc,
                exc_info=exc if log.isEnabledFor(logging.DEBUG) else None,
            )
            self.queue.drop(job.index)
            self.finish(job, "failed", f"{type(exc).__name__}: {exc}")

    def _fetch(self, job: ImageJob, window: Window) -> Path:
        """Stream ``window``'s response into its chunk file (retrying what is transient); the chunk's path."""
        grid = job.record.grid.to_request(window)
        sizes = {"bytes": 0}

        def attempt() -> Path:
            with job.lock:
                job.requests += 1
                if job.started is None:
                    job.started = time.monotonic()
            sink = ChunkSink(job.store, window, job.spec.band_names, job.spec.dtype, nan_fill(job))
            began = time.monotonic()
            try:
                earthengine.compute_pixels_to(self.conn, job.expression, grid, sink)
                self.queue.observe(sink.received, time.monotonic() - began - sink.busy_seconds)
                path = sink.commit()
            except BaseException:
                sink.abort()
                raise
            sizes["bytes"] = sink.received
            return path

        def on_retry(err: EarthEngineError) -> None:
            with job.lock:
                job.retries += 1
            self.counters.add(retries=1, throttled=1 if err.status == 429 else 0)

        path = earthengine.call(self.conn, attempt, self.policy, stop=self.stop, on_retry=on_retry)
        with job.lock:
            job.bytes += sizes["bytes"]
            job.fetched += 1
        self.counters.add(bytes=sizes["bytes"])
        return path
