"""Progress for long runs: a rich display on a terminal, plain log lines elsewhere (CI, SLURM logs).

Workers only bump thread-safe counters; a single reporter thread renders them, so progress never slows
the work down and never interleaves with other output.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Counters:
    """Shared, thread-safe run counters."""

    images_total: int = 0
    chunks_total: int = 0
    images_done: int = 0
    images_failed: int = 0
    chunks_done: int = 0
    bytes: int = 0
    #: Bytes uploaded to an object-store root (chunks, GeoTIFFs, manifests); 0 for a local root.
    stored: int = 0
    retries: int = 0
    throttled: int = 0
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            elapsed = max(1e-9, time.monotonic() - self.started)
            return {
                "images_total": self.images_total,
                "images_done": self.images_done,
                "images_failed": self.images_failed,
                "chunks_total": self.chunks_total,
                "chunks_done": self.chunks_done,
                "mb": self.bytes / 1e6,
                "mb_per_s": self.bytes / 1e6 / elapsed,
                "stored_mb": self.stored / 1e6,
                "retries": self.retries,
                "throttled": self.throttled,
                "elapsed": elapsed,
            }


class Reporter:
    """Renders :class:`Counters` until stopped: rich progress bars on a TTY, a log line every 10 s otherwise."""

    def __init__(self, counters: Counters, label: str, enabled: bool = True) -> None:
        self.counters = counters
        self.label = label
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Reporter:
        if self.enabled:
            target = self._rich if sys.stderr.isatty() else self._plain
            self._thread = threading.Thread(target=target, name="edown-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _plain(self) -> None:
        while not self._stop.wait(10.0):
            print(self.line(), file=sys.stderr, flush=True)
        print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        s = self.counters.snapshot()
        eta = _eta(s)
        return (
            f"{self.label}: images {s['images_done']}/{s['images_total']} (failed {s['images_failed']}), "
            f"chunks {s['chunks_done']}/{s['chunks_total']}, {s['mb']:.1f} MB at {s['mb_per_s']:.1f} MB/s, "
            + (f"{s['stored_mb']:.1f} MB to the store, " if s["stored_mb"] else "")
            + f"retries {s['retries']} (429s {s['throttled']}), elapsed {s['elapsed']:.0f} s{eta}"
        )

    def _rich(self) -> None:
        import os

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")))
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[extra]}"),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            images = progress.add_task(f"{self.label} images", total=None, extra="")
            chunks = progress.add_task("chunks", total=None, extra="")
            while True:
                stopping = self._stop.wait(0.25)
                s = self.counters.snapshot()
                progress.update(
                    images,
                    total=s["images_total"] or None,
                    completed=s["images_done"] + s["images_failed"],
                    extra=f"failed {s['images_failed']}",
                )
                progress.update(
                    chunks,
                    total=s["chunks_total"] or None,
                    completed=s["chunks_done"],
                    extra=f"{s['mb']:.1f} MB  {s['mb_per_s']:.1f} MB/s  retries {s['retries']}  429s {s['throttled']}"
                    + (f"  {s['stored_mb']:.1f} MB stored" if s["stored_mb"] else ""),
                )
                if stopping:
                    break


def _eta(s: dict[str, Any]) -> str:
    if not s["chunks_done"] or not s["chunks_total"]:
        return ""
    remaining = s["elapsed"] / s["chunks_done"] * max(0, s["chunks_total"] - s["chunks_done"])
    return f", ETA {remaining:.0f} s"
