"""The request planner's cost model: chosen cuts are the model's optimum, within Earth Engine's limits."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import numpy as np
import pytest

from edown.grid import MAX_REQUEST_SIDE, Window, request_bytes
from edown.plan import (
    RATE_MARGIN_SECONDS,
    WORTH_IT,
    Area,
    CostLearner,
    CostModel,
    fewest_worth_it,
    plan_requests,
    replan,
    resume_plan,
    reusable,
    split_window,
    uncovered,
)
from edown.scheduler import FetchQueue

LIMIT = 48 * 1024 * 1024
#: A writer fast enough not to matter, so the cases below test the request side of the model alone.
NO_WRITER = 1e15


def coverage(window: Window, chunks: list[Window]) -> np.ndarray:
    counts = np.zeros((window.height, window.width), dtype=int)
    for c in chunks:
        counts[
            c.row_off - window.row_off : c.row_off - window.row_off + c.height,
            c.col_off - window.col_off : c.col_off - window.col_off + c.width,
        ] += 1
    return counts


def covers_once(window: Window, chunks: list[Window]) -> bool:
    """Whether ``chunks`` tile ``window`` exactly (without allocating a pixel array for huge windows)."""
    inside = all(c.intersection(window) == c for c in chunks)
    disjoint = all(a.intersection(b).is_empty for i, a in enumerate(chunks) for b in chunks[i + 1 :])
    return inside and disjoint and sum(c.pixels for c in chunks) == window.pixels


def brute_force(area: Area, model: CostModel, max_pieces: int) -> tuple[float, int]:
    """The best (makespan, request count) over every piece count :func:`split_window` can be asked for:
    the fewest requests within WORTH_IT of the fastest."""
    scores = []
    for pieces in range(1, max_pieces + 1):
        chunks = split_window(area.window, pieces)
        if any(area.counted_bytes(w) > LIMIT for w in chunks):
            continue
        scores.append((model.makespan([area.body_bytes(w) for w in chunks]), len(chunks)))
    return scores[fewest_worth_it(scores)]


def test_more_requests_must_be_worth_it() -> None:
    # Within WORTH_IT (1%) of the fastest, the fewest requests win; beyond it, the faster cut does.
    assert WORTH_IT == 0.01
    assert fewest_worth_it([(1.000, 16), (1.009, 8), (1.02, 4)]) == 1
    assert fewest_worth_it([(1.000, 16), (1.011, 8)]) == 0
    assert fewest_worth_it([(1.005, 8), (1.004, 8), (1.000, 16)]) == 1  # equal counts: the faster


def test_makespan_is_the_paced_wave_formula_for_equal_requests() -> None:
    model = CostModel(0.25, 40e6, 100.0, 40, NO_WRITER, 0.0)
    span = 1.0 + RATE_MARGIN_SECONDS  # 100 starts in any window of this many seconds
    # 3 requests of 4 MB all start at once (a count per second, not a spacing): 0.25 s + 0.1 s.
    assert model.makespan([4_000_000] * 3) == pytest.approx(0.35)
    # 250 empty requests of 0.1 s: the rate quota binds. 100 start in the first window (40 at 0, 40 at
    # 0.1, 20 at 0.2), 100 in the next, and the last 50 at 2 spans (40) and 2 spans + 0.1 (10).
    fast = CostModel(0.1, 40e6, 100.0, 40, NO_WRITER, 0.0)
    assert fast.makespan([0] * 250) == pytest.approx(2 * span + 0.1 + 0.1)
    # 80 of 1 s: the concurrency quota binds (two waves of 40; the second starts as the first ends).
    assert CostModel(1.0, 40e6, 100.0, 40, NO_WRITER, 0.0).makespan([0] * 80) == pytest.approx(2.0)
    # 400 tiny requests need four windows of the rate quota whatever else is free.
    assert model.makespan([1] * 400) >= 3 * span
    # A rate below one per second: one start per 1 / rate seconds.
    slow_rate = CostModel(0.0, 40e6, 0.5, 40, NO_WRITER, 0.0)
    assert slow_rate.makespan([0] * 3) == pytest.approx(2 * (2.0 + RATE_MARGIN_SECONDS))
    # The client's own work per request spaces the starts: 3 requests at 0, 8 and 16 ms.
    with_client = CostModel(0.25, 40e6, 100.0, 40, NO_WRITER, 0.008)
    assert with_client.makespan([4_000_000] * 3) == pytest.approx(0.016 + 0.35)
    # The writer bounds the run: 1 GB through a 100 MB/s writer takes 10 s however it is fetched.
    assert CostModel(write_bytes_per_second=100e6).makespan([10_000_000] * 100) >= 10.0


CASES = [
    # (name, window, bands, itemsize, latency s, bandwidth B/s, rps, concurrency)
    ("city week, EE-like defaults", Window(0, 0, 1086, 1154), 2, 2, 0.25, 40e6, 100.0, 40),
    ("slow endpoint, high latency", Window(0, 0, 4096, 4096), 4, 2, 2.0, 10e6, 100.0, 40),
    ("fast endpoint, low rate quota", Window(0, 0, 4096, 4096), 4, 2, 0.05, 200e6, 10.0, 40),
    ("small concurrency quota", Window(0, 0, 8192, 4096), 2, 2, 0.3, 20e6, 100.0, 4),
    ("one tile", Window(7, 9, 256, 256), 4, 2, 0.25, 40e6, 100.0, 40),
]


@pytest.mark.parametrize(
    ("name", "window", "bands", "itemsize", "latency", "bandwidth", "rps", "conc"), CASES
)
def test_planner_chooses_the_models_optimum(
    name: str,
    window: Window,
    bands: int,
    itemsize: int,
    latency: float,
    bandwidth: float,
    rps: float,
    conc: int,
) -> None:
    model = CostModel(latency, bandwidth, rps, conc, NO_WRITER)
    area = Area(window, bands, itemsize)
    chunks = plan_requests({"a": area}, model, LIMIT)["a"]
    chosen = (model.makespan([area.body_bytes(w) for w in chunks]), len(chunks))
    optimum = brute_force(area, model, max_pieces=200)
    assert chosen == pytest.approx(optimum), name
    assert (coverage(window, chunks) == 1).all()


def test_planner_count_follows_the_closed_form_on_one_wave() -> None:
    # One image in one wave, far below the rate quota: T(n) = (n - 1) * overhead + latency +
    # bytes / (n * bandwidth), minimised at n* = sqrt(bytes / (bandwidth * overhead)). 64 MB at 40 MB/s
    # with 8 ms of client work per request: n* = 14.5.
    window = Window(0, 0, 4096, 4096)
    area = Area(window, 2, 2)
    model = CostModel(0.25, 40e6, 100.0, 40, NO_WRITER, 0.008)
    n_star = math.sqrt(area.body_bytes(window) / (40e6 * 0.008))
    assert n_star == pytest.approx(14.48, abs=0.01)
    chunks = plan_requests({"a": area}, model, LIMIT)["a"]
    # Strips of whole 256-px tiles can be 8 or 16 of them: 16 brackets n* closest.
    assert len(chunks) == 16
    assert {(c.width, c.height) for c in chunks} == {(4096, 256)}
    # Without any client cost, every request of the wave starts at once and more is always faster, up
    # to the concurrency quota: the largest cut into whole tiles within 40 pieces is 32 blocks.
    free = plan_requests({"a": area}, replace(model, request_overhead_seconds=0.0), LIMIT)["a"]
    assert len(free) == 32
    assert {(c.width, c.height) for c in free} == {(1024, 512)}


def test_latency_bound_runs_send_few_requests_and_rate_bound_runs_fewer_still() -> None:
    area = Area(Window(0, 0, 4096, 4096), 4, 2)
    fast = plan_requests({"a": area}, CostModel(0.01, 1e9, 100.0, 40, NO_WRITER), LIMIT)["a"]
    slow_bytes = plan_requests({"a": area}, CostModel(0.01, 5e6, 100.0, 40, NO_WRITER), LIMIT)["a"]
    assert len(fast) < len(slow_bytes)  # slow bodies are worth spreading over the quota


def test_every_image_is_cut_within_earth_engines_limits() -> None:
    areas = {
        "wide": Area(Window(0, 0, 40000, 300), 1, 1),
        "s2 tile": Area(Window(0, 0, 10980, 10980), 4, 2),
        "float": Area(Window(3, 5, 5000, 3000), 3, 8),
        "tiny": Area(Window(0, 0, 17, 3), 1, 2),
    }
    plan = plan_requests(areas, CostModel(), LIMIT)
    for key, area in areas.items():
        chunks = plan[key]
        assert covers_once(area.window, chunks), key
        for w in chunks:
            assert request_bytes(w.pixels, area.band_count, area.itemsize) <= LIMIT, key
            assert w.width <= MAX_REQUEST_SIDE and w.height <= MAX_REQUEST_SIDE, key
    # The 10980 x 10980 x 4 x uint16 tile needs at least ceil(964 MB / 48 MB) = 20 requests (mask counted).
    assert len(plan["s2 tile"]) >= 20
    assert plan["tiny"] == [Window(0, 0, 17, 3)]


def test_many_small_images_are_not_split_at_all() -> None:
    # 7 daily MODIS windows of 0.8 Mpx x 2 bands: splitting only adds paced starts and latency.
    areas = {i: Area(Window(0, 0, 835, 961), 2, 2) for i in range(7)}
    plan = plan_requests(areas, CostModel(), LIMIT)
    assert [len(plan[i]) for i in range(7)] == [1] * 7


def test_learner_recovers_latency_and_bandwidth_from_responses() -> None:
    rng = random.Random(3)
    learner = CostLearner(CostModel())
    for _ in range(12):
        size = rng.randint(1_000_000, 30_000_000)
        learner.observe(size, 0.8 + size / 5e6)
    learned = learner.model()
    assert learned.latency_seconds == pytest.approx(0.8, rel=1e-6)
    assert learned.bandwidth_bytes_per_second == pytest.approx(5e6, rel=1e-6)
    # Equal sizes cannot separate the two: the prior bandwidth stays and the latency absorbs the rest.
    same = CostLearner(CostModel(bandwidth_bytes_per_second=40e6))
    for _ in range(5):
        same.observe(4_000_000, 1.6)
    assert same.model().latency_seconds == pytest.approx(1.5)
    assert same.model().bandwidth_bytes_per_second == 40e6


def test_replanning_after_slow_first_responses_changes_only_unsent_chunks() -> None:
    areas = {i: Area(Window(0, 0, 4096, 4096), 4, 2) for i in range(6)}
    prior = CostModel()
    first = plan_requests(areas, prior, LIMIT)
    sent = {0: list(first[0]), 1: first[1][:2]}  # image 0 entirely, image 1 partly
    unsent = {k: [w for w in chunks if w not in sent.get(k, [])] for k, chunks in first.items()}

    learner = CostLearner(prior)
    for w in [*sent[0], *sent[1]]:
        learner.observe(areas[0].body_bytes(w), 3.0 + areas[0].body_bytes(w) / 40e6)
    slow = learner.model()
    assert slow.latency_seconds == pytest.approx(3.0, rel=0.01)

    again = replan(unsent, areas, slow, LIMIT)
    assert again[0] == []  # nothing left of image 0: nothing re-planned, nothing re-fetched
    for key in areas:
        before = sent.get(key, [])
        after = [*before, *again[key]]
        assert (coverage(areas[key].window, after) == 1).all(), key
        assert not set(before) & set(again[key]), key

    # The unsent part is re-cut to the new model's optimum, which beats keeping the old cut.
    def run_time(plan: dict[int, list[Window]]) -> float:
        return slow.makespan([areas[k].body_bytes(w) for k, chunks in plan.items() for w in chunks])

    assert again != unsent
    assert run_time(again) < run_time(unsent)


def test_fetch_queue_replans_only_unsent_chunks_once_slow_responses_are_measured() -> None:
    areas = {i: Area(Window(0, 0, 4096, 4096), 4, 2) for i in range(6)}
    prior = CostModel()
    planned = plan_requests(areas, prior, LIMIT)
    chunks = {k: list(v) for k, v in planned.items()}
    changes: list[tuple[int, list[Window], list[Window]]] = []

    def on_replan(index: int, removed: list[Window], added: list[Window]) -> None:
        changes.append((index, removed, added))
        chunks[index] = [w for w in chunks[index] if w not in removed] + added

    queue = FetchQueue(areas, planned, prior, LIMIT, on_replan=on_replan)
    sent = [queue.get() for _ in range(3)]
    assert [s[0] for s in sent if s] == [0, 0, 0]  # oldest image first
    for item in sent:
        assert item is not None
        queue.observe(areas[0].body_bytes(item[1]), 3.0 + areas[0].body_bytes(item[1]) / 40e6)
    assert queue.replans == 1 and changes
    sent_windows = {(i, w) for i, w, _ in (s for s in sent if s)}
    for index, removed, added in changes:
        assert not {(index, w) for w in removed} & sent_windows  # a sent chunk is never re-cut
        assert not {(index, w) for w in added} & sent_windows
    rest: dict[int, list[Window]] = {k: [] for k in areas}
    while (item := queue.get(timeout=0)) is not None:
        rest[item[0]].append(item[1])
    for key, area in areas.items():
        mine = [w for i, w in sent_windows if i == key] + rest[key]
        assert covers_once(area.window, mine), key
        assert sorted(mine, key=lambda w: w.as_tuple()) == sorted(chunks[key], key=lambda w: w.as_tuple())


def test_what_stored_chunks_leave_is_tiled_exactly_once() -> None:
    rng = random.Random(7)
    window = Window(100, 50, 3000, 2000)
    for pieces in (1, 5, 12, 40):
        earlier = split_window(window, pieces)
        for _ in range(10):
            kept = rng.sample(earlier, rng.randint(0, len(earlier)))
            rest = uncovered(window, kept)
            assert (coverage(window, [*kept, *rest]) == 1).all()
            assert len(rest) <= 3 * len(kept) + 1
    assert uncovered(window, []) == [window]
    assert uncovered(window, [window]) == []
    # One stored quarter in the middle of the top: left, right and the band below it.
    top = Window(1000, 50, 1000, 500)
    assert uncovered(window, [top]) == [
        Window(100, 50, 900, 500),
        Window(2000, 50, 1100, 500),
        Window(100, 550, 3000, 1500),
    ]


def test_resume_keeps_chunks_another_plan_cut_and_cuts_only_the_rest() -> None:
    areas = {i: Area(Window(0, 0, 6000, 5000), 4, 2) for i in range(3)}
    # An interrupted run with 256-px chunks (or another cost model) stored some of images 0 and 1;
    # image 1 also holds a chunk overlapping another one (a split it no longer needs) and one outside.
    earlier = {k: split_window(a.window, 300) for k, a in areas.items()}
    stored = {
        0: earlier[0][::3],
        1: [*earlier[1][:40], Window(0, 0, 512, 512), Window(5990, 4990, 64, 64)],
    }
    plan = resume_plan(areas, stored, CostModel(), LIMIT)
    for key, area in areas.items():
        kept = reusable(area.window, stored.get(key, []))
        assert set(kept) <= set(plan[key])  # every usable stored chunk is reused as it is
        assert covers_once(area.window, plan[key]), key
        assert all(area.counted_bytes(w) <= LIMIT for w in plan[key])
    assert set(stored[0]) <= set(plan[0])
    # Of overlapping stored chunks the larger is kept; no stored pixel inside the image is fetched again.
    window = areas[1].window
    inside = [w for w in stored[1] if w.intersection(window) == w]
    kept = reusable(window, stored[1])
    assert Window(0, 0, 512, 512) in kept and Window(5990, 4990, 64, 64) not in plan[1]
    assert ((coverage(window, inside) > 0) == (coverage(window, kept) > 0)).all()
    # Image 2 had nothing stored: it gets the cost model's cut, not 256-px tiles.
    assert len(plan[2]) < 20


def test_fetch_queue_takes_images_added_while_it_runs_oldest_first() -> None:
    areas = {i: Area(Window(0, 0, 512, 512), 1, 2) for i in range(4)}
    queue = FetchQueue({}, {}, CostModel(), LIMIT)
    assert queue.get(timeout=0) is None and queue.empty
    queue.add(2, areas[2], [Window(0, 0, 512, 256), Window(0, 256, 512, 256)])
    first = queue.get(timeout=0)
    assert first is not None and first[:2] == (2, Window(0, 0, 512, 256))
    queue.add(0, areas[0], [Window(0, 0, 512, 512)])  # a page listed later held an older image
    queue.add(3, areas[3], [])  # all stored already: nothing to fetch
    order = []
    while (item := queue.get(timeout=0)) is not None:
        order.append(item[:2])
    assert order == [(0, Window(0, 0, 512, 512)), (2, Window(0, 256, 512, 256))]
    assert queue.empty
