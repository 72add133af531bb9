"""The fetch side of a download: which chunk goes next, and re-planning what is not sent yet.

One :class:`FetchQueue` holds the unsent chunks of every image of a run, oldest image first, so the
quota stays busy and images finish in order. Chunks Earth Engine refused as too large come back split
in two, ahead of everything else. As responses arrive their ``(body bytes, seconds)`` feed a
:class:`~edown.plan.CostLearner`; when the learned latency or bandwidth differs enough from the model the
plan was made with, the chunks not yet sent are re-cut by :func:`edown.plan.replan` (a chunk that was
sent is never touched, so nothing is fetched twice). :class:`ByteBudget` bounds the bytes of responses in
flight or waiting for the writer.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable

from edown.grid import Window
from edown.plan import Area, CostLearner, CostModel, replan

log = logging.getLogger("edown.scheduler")

#: Re-plan when this many responses have been measured (then the model is trusted as it stands).
REPLAN_AFTER = (3, 12, 40, 120)
#: ... and only if latency or bandwidth moved by more than this factor since the last plan.
REPLAN_CHANGE = 1.25

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
