"""How the emulated Earth Engine behaves beyond its answers: quotas, latency, injected faults, statistics.

Defaults are Earth Engine's published limits (40 concurrent requests and 100 requests/s per project,
48 MB / 32768 px / 1024 bands per pixel request, counting one mask byte per band-pixel as real EE
appears to). Latency costs no CPU (the handler sleeps), so a benchmark measures the client, not us.
Faults are injected by rate, by schedule (429 storms) or by script (the Nth matching request, or every
request bigger than N pixels), all reproducible from a seed.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PIXEL_KINDS = frozenset({"getPixels", "computePixels"})
COMPUTE_KINDS = PIXEL_KINDS | {"compute", "computeFeatures"}
API_KINDS = COMPUTE_KINDS | {"listAssets", "getAsset"}
MB = 1024 * 1024


@dataclass(frozen=True)
class Latency:
    """Per-request service time: ``base`` (+ ``bytes / bandwidth``) for pixels, ``metadata`` otherwise."""

    base_seconds: float = 0.0
    bandwidth_bytes_per_second: float = 0.0  # 0 = infinite
    metadata_seconds: float = 0.0
    jitter: float = 0.0  # +/- fraction, uniform

    @staticmethod
    def preset(name: str) -> Latency:
        """``none``; ``ee``: what large getPixels/computePixels calls cost on the high-volume endpoint
        (0.3 s plus 2 MB/s per request; ~0.15 s for metadata), per the protocol notes; ``ee-model``: the
        deterministic model the download benchmark plans against (0.25 s plus 40 MB/s per pixel request,
        0.15 s for metadata, no jitter)."""
        presets = {
            "none": Latency(),
            "ee": Latency(
                base_seconds=0.3, bandwidth_bytes_per_second=2e6, metadata_seconds=0.15, jitter=0.2
            ),
            "ee-model": Latency(base_seconds=0.25, bandwidth_bytes_per_second=40e6, metadata_seconds=0.15),
            "fast": Latency(base_seconds=0.05, bandwidth_bytes_per_second=50 * MB, metadata_seconds=0.02),
        }
        try:
            return presets[name]
        except KeyError:
            raise ValueError(f"unknown latency preset {name!r}; choose one of {sorted(presets)}") from None

    def seconds(self, kind: str, nbytes: int, rng: random.Random) -> float:
        if kind in PIXEL_KINDS:
            total = self.base_seconds
            if self.bandwidth_bytes_per_second > 0:
                total += nbytes / self.bandwidth_bytes_per_second
        elif kind in API_KINDS:
            total = self.metadata_seconds
        else:
            return 0.0
        if self.jitter and total:
            total *= 1.0 + rng.uniform(-self.jitter, self.jitter)
        return max(0.0, total)


@dataclass(frozen=True)
class Limits:
    """Earth Engine's quotas and per-request limits."""

    max_concurrent: int = 40
    requests_per_second: float = 100.0
    max_request_bytes: int = 48 * MB
    max_dimension: int = 32768
    max_bands: int = 1024
    count_mask_byte: bool = True
    retry_after_seconds: float | None = None  # send a Retry-After header with 429s
    #: Steps (expression nodes, collection elements, rendered bands) one request may take; beyond, 400.
    max_evaluation_nodes: int = 1_000_000
    #: Wall time one request's evaluation may take; beyond, 400 "Computation timed out".
    max_evaluation_seconds: float = 60.0


@dataclass(frozen=True)
class FaultRule:
    """One way to misbehave.

    ``kind``: ``error`` (HTTP ``status``, 500 by default), ``throttle`` (429), ``reset`` (connection reset
    mid-body), ``truncate`` (body shorter than its Content-Length, then close), ``short_body`` (a complete
    response whose body is cut), ``stall`` (hold the response for ``stall_seconds``), ``size`` (EE's
    request-size 400) or ``memory`` ("User memory limit exceeded." 400).
    It fires on requests of ``kinds``; with probability ``rate``, or on the ``nth`` matching requests
    (1-based), or on every request of at least ``min_pixels`` pixels; at most ``times`` times.
    """

    kind: str
    rate: float = 0.0
    nth: tuple[int, ...] = ()
    min_pixels: int = 0
    times: int | None = None
    kinds: tuple[str, ...] = tuple(sorted(PIXEL_KINDS))
    status: int = 500
    fraction: float = 0.5
    stall_seconds: float = 3600.0

    KINDS = ("error", "throttle", "reset", "truncate", "short_body", "stall", "size", "memory")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; choose one of {self.KINDS}")


@dataclass(frozen=True)
class FaultPlan:
    rules: tuple[FaultRule, ...] = ()
    #: 429 storms: (start, duration) in seconds after the emulator starts.
    storms: tuple[tuple[float, float], ...] = ()
    seed: int = 0

    @staticmethod
    def from_json(text: str) -> FaultPlan:
        """Parse ``{"rules": [{"kind": "error", "rate": 0.05}, ...], "storms": [[5, 3]], "seed": 1}``
        (or a path to a file holding it)."""
        source = Path(text)
        if not text.lstrip().startswith("{") and source.exists():
            text = source.read_text()
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"fault plan is not valid JSON: {exc}") from None
        rules = []
        for item in raw.get("rules", []):
            item = dict(item)
            for key in ("nth", "kinds"):
                if key in item:
                    item[key] = tuple(item[key])
            rules.append(FaultRule(**item))
        storms = tuple((float(a), float(b)) for a, b in raw.get("storms", []))
        return FaultPlan(rules=tuple(rules), storms=storms, seed=int(raw.get("seed", 0)))

    def to_json(self) -> dict[str, Any]:
        return {
            "rules": [asdict(r) for r in self.rules],
            "storms": [list(s) for s in self.storms],
            "seed": self.seed,
        }


@dataclass
class RequestRecord:
    kind: str
    status: int
    project: str | None
    started: float
    finished: float
    bytes_out: int
    asset: str | None = None
    grid: dict[str, Any] | None = None
    fault: str | None = None
    path: str | None = None
    body: dict[str, Any] | None = None


@dataclass
class _Window:
    times: deque[float] = field(default_factory=deque)
    inflight: int = 0


class Behaviour:
    """Mutable, thread-safe state shared by all request handlers: quotas, faults and statistics."""

    def __init__(self, limits: Limits, latency: Latency, faults: FaultPlan, log_limit: int = 200_000) -> None:
        self.limits = limits
        self.latency = latency
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._started = time.monotonic()
        self._extra_storms: list[tuple[float, float]] = []
        self.set_faults(faults)
        self._log: deque[RequestRecord] = deque(maxlen=log_limit)
        self.reset_stats()

    # -- configuration --
    def set_faults(self, plan: FaultPlan) -> None:
        with self._lock:
            self.faults = plan
            self._rule_matches = [0] * len(plan.rules)
            self._rule_fired = [0] * len(plan.rules)
            self._rng = random.Random(plan.seed)

    def storm(self, seconds: float) -> None:
        """Answer every API request with 429 for the next ``seconds``."""
        now = time.monotonic() - self._started
        with self._lock:
            self._extra_storms.append((now, seconds))

    def reset_stats(self) -> None:
        with self._lock:
            self._counts: Counter[str] = Counter()
            self._statuses: Counter[str] = Counter()
            self._faults: Counter[str] = Counter()
            self._bytes = 0
            self._throttled = 0
            self._max_inflight = 0
            self._log.clear()

    # -- quotas --
    def admit(self, kind: str, project: str) -> str | None:
        """Count a request in; return a 429 message if a quota refuses it (the request is then not counted)."""
        if kind not in API_KINDS:
            return None
        now = time.monotonic()
        with self._lock:
            elapsed = now - self._started
            for start, duration in (*self.faults.storms, *self._extra_storms):
                if start <= elapsed < start + duration:
                    self._throttled += 1
                    return "Too many requests: the service is temporarily overloaded (429 storm)."
            window = self._windows.setdefault(project, _Window())
            while window.times and now - window.times[0] >= 1.0:
                window.times.popleft()
            if len(window.times) >= self.limits.requests_per_second:
                self._throttled += 1
                return (
                    "Quota exceeded for quota metric 'Requests' and limit 'Requests per second' of service "
                    f"'earthengine.googleapis.com' for consumer 'project:{project}'."
                )
            if kind in COMPUTE_KINDS and window.inflight >= self.limits.max_concurrent:
                self._throttled += 1
                return f"Too many concurrent requests for project '{project}' (limit {self.limits.max_concurrent})."
            window.times.append(now)
            if kind in COMPUTE_KINDS:
                window.inflight += 1
                self._max_inflight = max(self._max_inflight, window.inflight)
        return None

    def release(self, kind: str, project: str) -> None:
        if kind not in COMPUTE_KINDS:
            return
        with self._lock:
            self._windows[project].inflight -= 1

    # -- faults --
    def pick_fault(self, kind: str, pixels: int) -> FaultRule | None:
        with self._lock:
            for i, rule in enumerate(self.faults.rules):
                if kind not in rule.kinds:
                    continue
                if rule.times is not None and self._rule_fired[i] >= rule.times:
                    continue
                if rule.min_pixels and pixels < rule.min_pixels:
                    continue
                self._rule_matches[i] += 1
                fire = False
                if rule.nth:
                    fire = self._rule_matches[i] in rule.nth
                elif rule.min_pixels:
                    fire = True
                elif rule.rate > 0:
                    fire = self._rng.random() < rule.rate
                if fire:
                    self._rule_fired[i] += 1
                    self._faults[rule.kind] += 1
                    return rule
        return None

    def service_seconds(self, kind: str, nbytes: int) -> float:
        with self._lock:
            return self.latency.seconds(kind, nbytes, self._rng)

    # -- statistics --
    def record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._counts[rec.kind] += 1
            self._statuses[f"{rec.kind}:{rec.status}"] += 1
            self._bytes += rec.bytes_out
            self._log.append(rec)

    def stats(self, include_log: bool = False) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                "requests": dict(self._counts),
                "statuses": dict(self._statuses),
                "bytes_out": self._bytes,
                "throttled": self._throttled,
                "max_concurrency": self._max_inflight,
                "faults_injected": dict(self._faults),
                "limits": asdict(self.limits),
                "latency": asdict(self.latency),
            }
            if include_log:
                out["log"] = [asdict(r) for r in self._log]
        return out
