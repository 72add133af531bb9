"""Request planning by a cost model: how many pixel requests a run sends, and of what size. Pure; no I/O.

A pixel request costs about ``latency + body_bytes / bandwidth`` seconds (Earth Engine computes, then
sends), at most ``concurrency`` requests run at once, and at most ``requests_per_second`` start per
second. So many small requests pay the rate limit and the latency over and over, while few large ones
leave the quota idle and end on one long tail. :func:`plan_requests` picks the cut of every image window
that minimises the modelled makespan of the *whole run* (:meth:`CostModel.makespan`), within Earth
Engine's per-request limits (48 MB counting one mask byte per band-pixel, 32768 px per side) and the image
windows (a request never spans two images).

The model's parameters start from documented defaults (:class:`CostModel`) and are re-estimated during a
run from the responses themselves (:class:`CostLearner`); :func:`replan` then re-cuts only the chunks not
yet sent, so nothing that arrived is fetched again.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TypeVar

from edown.grid import MAX_REQUEST_SIDE, OUTPUT_TILE, Window, request_bytes, tile_window

#: How many request counts per image :func:`plan_requests` considers at most (beyond that the rate limit
#: alone makes a plan slower than a coarser one).
MAX_PIECES_PER_IMAGE = 4096

#: How many target sizes :func:`plan_requests` evaluates at most.
MAX_CANDIDATES = 128

K = TypeVar("K", bound=Hashable)


#: Seconds added to the rate quota's window on the client's side: Earth Engine counts a request when it
#: arrives, which may be a little later than the client started its predecessor's clock.
RATE_MARGIN_SECONDS = 0.1


def rate_window(requests_per_second: float) -> tuple[int, float]:
    """The rate quota as ``(starts, seconds)``: at most ``starts`` requests begin within any ``seconds``.

    "100 requests per second" is a count per second, not a spacing: a run of a few requests may start
    them all at once (the concurrency quota bounds the burst). A rate below one per second allows one
    start per ``1 / rate`` seconds.
    """
    starts = max(1, math.floor(requests_per_second))
    return starts, starts / requests_per_second + RATE_MARGIN_SECONDS


@dataclass(frozen=True)
class CostModel:
    """What one pixel request costs and how many may run: the parameters of the makespan model.

    The defaults describe Earth Engine's high-volume endpoint for large computePixels calls and a
    project's default quotas; a run replaces the first two with what it measures (:class:`CostLearner`).
    """

    #: Seconds from sending a request until its body starts to flow (Earth Engine's compute time).
    latency_seconds: float = 0.25
    #: Bytes per second of one response body (NPY bytes, no mask byte).
    bandwidth_bytes_per_second: float = 40e6
    #: The project's request-rate quota: requests started in any one second (:func:`rate_window`).
    requests_per_second: float = 100.0
    #: The project's concurrent-request quota.
    concurrency: int = 40
    #: Bytes per second the writer stores (decode + chunk store); each request's bytes must still be
    #: written after it arrives, and all of them go through the writer.
    write_bytes_per_second: float = 400e6
    #: Seconds of the client's own work per request whatever its size: building and sending it, opening,
    #: committing and later assembling its chunk (7.6 ms of CPU measured on the benchmark machine). One
    #: Python process does that work mostly one request at a time, so requests start at most this often;
    #: it is what keeps a small job from being cut into more requests than it gains from.
    request_overhead_seconds: float = 0.008

    def request_seconds(self, body_bytes: int) -> float:
        """The modelled service time of one request whose body is ``body_bytes``."""
        return self.latency_seconds + body_bytes / self.bandwidth_bytes_per_second

    def makespan(self, sizes: Sequence[int]) -> float:
        """Modelled seconds from the first request to the last byte written, for bodies of ``sizes``
        sent in this order.

        A request starts when one of the ``concurrency`` slots is free, fewer than the rate quota's
        requests started in the window before it (:func:`rate_window`, as the pacer does) and the client
        has done its own work for the previous one (``request_overhead_seconds``); each is then
        written (``write_bytes_per_second``), and the writer as a whole cannot go faster than that rate
        either. This is the issue's ``max(n / rps, waves(n, c) x (latency + bytes / bandwidth))`` made
        exact for uneven sizes.
        """
        if not sizes:
            return 0.0
        allowed, span = rate_window(self.requests_per_second)
        recent: deque[float] = deque()
        slots: list[float] = [0.0] * max(1, self.concurrency)
        end = 0.0
        previous = -self.request_overhead_seconds
        for size in sizes:
            start = max(heapq.heappop(slots), previous + self.request_overhead_seconds)
            if len(recent) == allowed:
                start = max(start, recent.popleft() + span)
            recent.append(start)
            previous = start
            finish = start + self.request_seconds(size)
            heapq.heappush(slots, finish)
            end = max(end, finish + size / self.write_bytes_per_second)
        return max(end, sum(sizes) / self.write_bytes_per_second)


@dataclass(frozen=True)
class Area:
    """A rectangle of one image to fetch: its window and what each pixel weighs."""

    window: Window
    band_count: int
    itemsize: int

    def body_bytes(self, window: Window) -> int:
        """Bytes of an NPY response body for ``window`` (what the bandwidth carries)."""
        return window.pixels * self.band_count * self.itemsize

    def counted_bytes(self, window: Window) -> int:
        """Bytes Earth Engine counts against its request limit for ``window`` (mask byte included)."""
        return request_bytes(window.pixels, self.band_count, self.itemsize)


def split_window(window: Window, pieces: int, tile: int = OUTPUT_TILE) -> list[Window]:
    """Cut ``window`` into about ``pieces`` near-equal rectangles, row-major.

    Full-width strips come first (the writer assembles a GeoTIFF one row of tiles at a time, so a strip
    is read once); columns are added only when a strip would be too wide for the pieces wanted or for
    Earth Engine (32768 px). Sides are rounded up to whole output tiles when they span more than one, so
    chunks land on whole tiles; the count can therefore come out a little lower than asked.
    """
    if window.is_empty:
        return []
    width, height = _piece_shape(window.width, window.height, pieces, tile)
    return tile_window(window, width, height)


@lru_cache(maxsize=65536)
def _piece_shape(total_width: int, total_height: int, pieces: int, tile: int) -> tuple[int, int]:
    """Width and height of the (top-left) pieces :func:`split_window` cuts."""
    pieces = max(1, min(pieces, total_width * total_height))
    per_piece = math.ceil(total_width * total_height / pieces)
    if total_width * min(total_height, tile) > per_piece and total_width > tile:
        # Not even one full-width row of tiles per piece: blocks of whole tiles (squares of a power of
        # two below one tile), so every chunk still lands on whole output tiles.
        if per_piece < tile * tile:
            side = 1 << (max(1, math.isqrt(per_piece)).bit_length() - 1)
            return side, side
        height = tile * max(1, math.isqrt(per_piece) // tile)
        width = tile * max(1, per_piece // height // tile)
        return min(width, total_width, MAX_REQUEST_SIDE), min(height, total_height, MAX_REQUEST_SIDE)
    cols = max(math.ceil(total_width / MAX_REQUEST_SIDE), 1)
    rows = min(math.ceil(pieces / cols), total_height)
    height = min(_round_side(math.ceil(total_height / rows), total_height, tile), MAX_REQUEST_SIDE)
    width = min(_round_side(math.ceil(total_width / cols), total_width, tile), MAX_REQUEST_SIDE)
    return width, height


@lru_cache(maxsize=65536)
def _piece_pixels(total_width: int, total_height: int, pieces: int, tile: int) -> tuple[int, ...]:
    """Pixel counts of the pieces :func:`split_window` cuts, in its order (without building windows)."""
    width, height = _piece_shape(total_width, total_height, pieces, tile)
    widths = [min(width, total_width - c) for c in range(0, total_width, width)]
    heights = [min(height, total_height - r) for r in range(0, total_height, height)]
    return tuple(w * h for h in heights for w in widths)


def _round_side(side: int, total: int, tile: int) -> int:
    if side >= total or side <= tile:
        return min(side, total)
    return min(total, math.ceil(side / tile) * tile)


def _fits(area: Area, chunks: Iterable[Window], byte_limit: int) -> bool:
    return all(
        area.counted_bytes(w) <= byte_limit and w.width <= MAX_REQUEST_SIDE and w.height <= MAX_REQUEST_SIDE
        for w in chunks
    )


def min_pieces(area: Area, byte_limit: int, tile: int = OUTPUT_TILE) -> int:
    """The fewest pieces :func:`split_window` can cut ``area`` into that Earth Engine accepts."""
    need = math.ceil(area.counted_bytes(area.window) / byte_limit)
    pieces = max(1, need)
    while not _fits(area, split_window(area.window, pieces, tile), byte_limit):
        pieces += max(1, pieces // 8)
        if pieces > area.window.pixels:
            raise ValueError(f"{byte_limit} bytes cannot hold one pixel of {area.band_count} band(s)")
    return pieces


def plan_requests(
    areas: Mapping[K, Area], model: CostModel, byte_limit: int, tile: int = OUTPUT_TILE
) -> dict[K, list[Window]]:
    """The cut of every area (in the mapping's order, which is the send order) that minimises
    :meth:`CostModel.makespan`, taking the fewest requests among cuts within :data:`WORTH_IT` of it.

    All areas are cut to one common target body size (the candidates are every size that cuts some area
    into a whole number of pieces), so pieces of different images take about the same time and the run
    ends on no single straggler. Each area gets at least the pieces Earth Engine's limits demand
    (:func:`min_pieces`).
    """
    if not areas:
        return {}
    floors = {key: min_pieces(area, byte_limit, tile) for key, area in areas.items()}
    allowed, span = rate_window(model.requests_per_second)
    overhead = model.request_overhead_seconds
    scores: list[tuple[float, int, float]] = []
    fastest = math.inf
    for target in _candidate_targets(areas, floors, model):
        counts = {key: _pieces_for(area, floors[key], target) for key, area in areas.items()}
        n = sum(counts.values())
        if max((math.ceil(n / allowed) - 1) * span, (n - 1) * overhead) > fastest * (1 + WORTH_IT):
            continue  # the rate quota or the client's own work alone make this cut too slow
        sizes = [
            pixels * area.band_count * area.itemsize
            for key, area in areas.items()
            for pixels in _piece_pixels(area.window.width, area.window.height, counts[key], tile)
        ]
        makespan = model.makespan(sizes)
        fastest = min(fastest, makespan)
        scores.append((makespan, len(sizes), target))
    target = scores[fewest_worth_it([(t, n) for t, n, _ in scores])][2]
    return {
        key: split_window(area.window, _pieces_for(area, floors[key], target), tile)
        for key, area in areas.items()
    }


#: How much faster (as a fraction of the modelled makespan) a cut must be to send more requests: the
#: model is an estimate, and every request spends the project's quota on Earth Engine.
WORTH_IT = 0.01


def fewest_worth_it(scores: Sequence[tuple[float, int]]) -> int:
    """Of ``(makespan, requests)`` scores, the index of the one with the fewest requests among those
    within :data:`WORTH_IT` of the fastest (then the faster of those)."""
    fastest = min(t for t, _ in scores)
    worth_it = [i for i, (t, _) in enumerate(scores) if t <= fastest * (1 + WORTH_IT)]
    return min(worth_it, key=lambda i: (scores[i][1], scores[i][0]))


def _pieces_for(area: Area, floor: int, target: float) -> int:
    return max(floor, min(MAX_PIECES_PER_IMAGE, math.ceil(area.body_bytes(area.window) / target)))


def _candidate_targets(areas: Mapping[K, Area], floors: Mapping[K, int], model: CostModel) -> list[float]:
    """Body sizes worth trying: each area's bytes over 1, 2, ... pieces, thinned geometrically.

    Sizes so small that the whole run would exceed a few seconds of the rate quota are never optimal
    (the rate alone would outweigh any saving) and are left out.
    """
    requests_cap = max(4 * model.concurrency, int(4 * model.requests_per_second))
    smallest = sum(a.body_bytes(a.window) for a in areas.values()) / requests_cap
    targets: set[float] = set()
    for key, area in areas.items():
        body = area.body_bytes(area.window)
        top = min(MAX_PIECES_PER_IMAGE, requests_cap, area.window.pixels)
        k = floors[key]
        while k <= max(top, floors[key]):
            if body / k >= smallest or k == floors[key]:
                targets.add(body / k)
            k = k + 1 if k < 64 else math.ceil(k * 1.05)
    ordered = sorted(targets, reverse=True)
    if len(ordered) > MAX_CANDIDATES:  # thin evenly; the makespan changes smoothly with the target
        step = len(ordered) / MAX_CANDIDATES
        ordered = [ordered[int(i * step)] for i in range(MAX_CANDIDATES)]
    return ordered


def replan(
    unsent: Mapping[K, Sequence[Window]],
    areas: Mapping[K, Area],
    model: CostModel,
    byte_limit: int,
    tile: int = OUTPUT_TILE,
) -> dict[K, list[Window]]:
    """Re-cut the chunks not yet sent by a (re-estimated) ``model``; chunks already sent are not touched.

    An image whose unsent chunks form one rectangle is re-planned as that rectangle (merged or split);
    otherwise each unsent chunk is re-planned on its own. ``areas`` gives each image's band count and
    item size; the returned chunks cover exactly the unsent ones.
    """
    regions: dict[tuple[K, int], Area] = {}
    for key, chunks in unsent.items():
        if not chunks:
            continue
        base = areas[key]
        for i, region in enumerate(_regions(chunks)):
            regions[(key, i)] = Area(region, base.band_count, base.itemsize)
    cut = plan_requests(regions, model, byte_limit, tile)
    out: dict[K, list[Window]] = {key: [] for key in unsent}
    for (key, _), chunks in cut.items():
        out[key].extend(chunks)
    return out


def reusable(window: Window, stored: Sequence[Window]) -> list[Window]:
    """The stored chunks a resumed run keeps: inside ``window`` and not overlapping one another
    (largest first), whatever plan cut them, so arrived pixels are never fetched twice."""
    kept: list[Window] = []
    for chunk in sorted(stored, key=lambda w: (-w.pixels, w.row_off, w.col_off)):
        if chunk.is_empty or chunk.intersection(window) != chunk:
            continue
        if all(chunk.intersection(other).is_empty for other in kept):
            kept.append(chunk)
    return kept


def uncovered(window: Window, kept: Sequence[Window]) -> list[Window]:
    """Rectangles that tile the part of ``window`` not covered by ``kept`` (disjoint windows inside it).

    Cut into horizontal bands at every top and bottom edge of ``kept``; the gaps of each band are merged
    downwards with identical gaps of the next band, so an untouched region stays one rectangle.
    """
    if not kept:
        return [] if window.is_empty else [window]
    top, bottom = window.row_off, window.row_off + window.height
    edges = sorted({top, bottom, *(w.row_off for w in kept), *(w.row_off + w.height for w in kept)})
    open_gaps: dict[tuple[int, int], int] = {}  # (col0, col1) -> row where this gap started
    out: list[Window] = []
    for y0, y1 in itertools.pairwise(edges):
        spans = sorted(
            (w.col_off, w.col_off + w.width) for w in kept if w.row_off <= y0 and w.row_off + w.height >= y1
        )
        gaps: list[tuple[int, int]] = []
        x = window.col_off
        for c0, c1 in spans:
            if c0 > x:
                gaps.append((x, c0))
            x = max(x, c1)
        if x < window.col_off + window.width:
            gaps.append((x, window.col_off + window.width))
        for gap in [g for g in open_gaps if g not in gaps]:
            start = open_gaps.pop(gap)
            out.append(Window(gap[0], start, gap[1] - gap[0], y0 - start))
        for gap in gaps:
            open_gaps.setdefault(gap, y0)
    for gap, start in open_gaps.items():
        out.append(Window(gap[0], start, gap[1] - gap[0], bottom - start))
    return sorted(out, key=lambda w: (w.row_off, w.col_off))


def resume_plan(
    areas: Mapping[K, Area],
    stored: Mapping[K, Sequence[Window]],
    model: CostModel,
    byte_limit: int,
    tile: int = OUTPUT_TILE,
) -> dict[K, list[Window]]:
    """Every area's chunks when some are stored already: the reusable stored ones as they are (even if
    an earlier plan cut them differently) plus the cost model's cut of the rest."""
    kept = {key: reusable(area.window, stored.get(key, ())) for key, area in areas.items()}
    regions: dict[tuple[K, int], Area] = {}
    for key, area in areas.items():
        for i, region in enumerate(uncovered(area.window, kept[key])):
            regions[(key, i)] = Area(region, area.band_count, area.itemsize)
    cut = plan_requests(regions, model, byte_limit, tile)
    out: dict[K, list[Window]] = {key: list(kept[key]) for key in areas}
    for (key, _), chunks in cut.items():
        out[key].extend(chunks)
    return out


def _regions(chunks: Sequence[Window]) -> list[Window]:
    bound = chunks[0]
    for w in chunks[1:]:
        bound = bound.union(w)
    if bound.pixels == sum(w.pixels for w in chunks):
        return [bound]
    return list(chunks)


@dataclass
class CostLearner:
    """Re-estimates latency and per-request bandwidth from measured ``(body bytes, seconds)`` pairs.

    A least-squares line ``seconds = latency + bytes / bandwidth`` when the sizes vary enough to separate
    the two; otherwise the prior bandwidth is kept and only the latency is fitted. Estimates are clamped
    to sane ranges so one odd response cannot make the planner absurd.
    """

    prior: CostModel
    samples: list[tuple[int, float]] | None = None

    def observe(self, body_bytes: int, seconds: float) -> None:
        if self.samples is None:
            self.samples = []
        self.samples.append((body_bytes, seconds))

    @property
    def count(self) -> int:
        return len(self.samples or [])

    def model(self) -> CostModel:
        """The prior with latency and bandwidth replaced by what the samples say."""
        samples = self.samples or []
        if not samples:
            return self.prior
        n = len(samples)
        mean_b = sum(b for b, _ in samples) / n
        mean_t = sum(t for _, t in samples) / n
        var_b = sum((b - mean_b) ** 2 for b, _ in samples) / n
        bandwidth = self.prior.bandwidth_bytes_per_second
        if n >= 3 and var_b > 0 and math.sqrt(var_b) > 0.25 * mean_b:
            slope = sum((b - mean_b) * (t - mean_t) for b, t in samples) / (n * var_b)
            if slope > 0:
                bandwidth = min(1e10, max(1e5, 1.0 / slope))
        latency = mean_t - mean_b / bandwidth
        if latency < 0.005:  # the bandwidth guess is too low for these samples: attribute time to bytes
            latency = 0.005
            if mean_b > 0 and mean_t > latency:
                bandwidth = mean_b / (mean_t - latency)
        return replace(
            self.prior,
            latency_seconds=min(600.0, latency),
            bandwidth_bytes_per_second=bandwidth,
        )
