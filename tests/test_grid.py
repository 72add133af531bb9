"""Pure grid math: chunk plans, windows, signatures."""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import box

from edown.errors import ConfigError
from edown.grid import (
    GridSpec,
    Window,
    alignment_signature,
    aoi_window,
    plan_chunks,
    request_bytes,
    split_in_two,
    target_chunk_bytes,
)

LIMIT = 48 * 1024 * 1024


def coverage(window: Window, chunks: list[Window]) -> np.ndarray:
    counts = np.zeros((window.height, window.width), dtype=int)
    for c in chunks:
        counts[
            c.row_off - window.row_off : c.row_off - window.row_off + c.height,
            c.col_off - window.col_off : c.col_off - window.col_off + c.width,
        ] += 1
    return counts


@pytest.mark.parametrize(("bands", "itemsize"), [(1, 1), (4, 2), (13, 2), (3, 8)])
def test_auto_chunks_tile_the_window_once_and_fit_the_limit(bands: int, itemsize: int) -> None:
    window = Window(123, 45, 10980 - 123, 7000)
    chunks = plan_chunks(window, bands, itemsize, LIMIT)
    assert (coverage(window, chunks) == 1).all()
    assert all(request_bytes(c.pixels, bands, itemsize) <= LIMIT for c in chunks)
    assert all(c.width <= 32768 and c.height <= 32768 for c in chunks)
    # Every chunk starts on the output's 256 px tile grid (relative to the window).
    assert all(
        (c.col_off - window.col_off) % 256 == 0 and (c.row_off - window.row_off) % 256 == 0 for c in chunks
    )


def test_four_uint16_bands_fill_requests_exactly() -> None:
    # (2 bytes + 1 mask byte) x 4 bands x 2048^2 = 50331648 = the 48 MiB limit.
    chunks = plan_chunks(Window(0, 0, 10980, 10980), 4, 2, LIMIT)
    assert max(c.width for c in chunks) == 2048 and request_bytes(2048 * 2048, 4, 2) == LIMIT


def test_target_bytes_split_small_runs_for_concurrency_but_not_big_ones() -> None:
    small_run = request_bytes(1200 * 900, 4, 2) * 10
    target = target_chunk_bytes(small_run, concurrency=40, byte_limit=LIMIT)
    assert target == small_run // 160
    chunks = plan_chunks(Window(0, 0, 1200, 900), 4, 2, LIMIT, target_bytes=target)
    assert len(chunks) > 4 and all(c.width <= 256 or c.width % 256 == 0 for c in chunks)
    big_run = 10**12
    assert target_chunk_bytes(big_run, concurrency=40, byte_limit=LIMIT) == LIMIT


def test_a_window_that_fits_is_one_request() -> None:
    assert plan_chunks(Window(5, 7, 300, 200), 4, 2, LIMIT) == [Window(5, 7, 300, 200)]


def test_fixed_mode_and_its_refusal() -> None:
    chunks = plan_chunks(Window(0, 0, 1000, 700), 2, 2, LIMIT, chunk_size=300, mode="fixed")
    assert {(c.width, c.height) for c in chunks} == {(300, 300), (100, 300), (300, 100), (100, 100)}
    with pytest.raises(ConfigError, match="use chunk_size <= 2896"):
        plan_chunks(Window(0, 0, 5000, 5000), 2, 2, LIMIT, chunk_size=3000, mode="fixed")


def test_split_in_two_halves_the_longer_side() -> None:
    assert split_in_two(Window(0, 0, 10, 4)) == [Window(0, 0, 5, 4), Window(5, 0, 5, 4)]
    assert split_in_two(Window(0, 0, 3, 9)) == [Window(0, 0, 3, 4), Window(0, 4, 3, 5)]
    assert split_in_two(Window(0, 0, 1, 1)) == [Window(0, 0, 1, 1)]


def test_aoi_window_snaps_outward_in_the_grid_crs() -> None:
    grid = GridSpec("EPSG:4326", (0.1, 0.0, -180.05, 0.0, -0.1, 90.05), 3600, 1801)
    assert aoi_window(box(-0.15, 51.48, 0.02, 51.56), grid) == Window(1799, 384, 2, 2)
    assert aoi_window(box(-0.05, 51.55, 0.05, 51.65), grid) == Window(1800, 384, 1, 1)  # edges on pixel edges
    assert aoi_window(box(179.9, 0, 180, 1), grid).width == 1
    outside = GridSpec("EPSG:4326", (0.1, 0.0, 10.0, 0.0, -0.1, 10.0), 10, 10)
    assert aoi_window(box(-5, -5, -4, -4), outside).is_empty


def test_signature_ignores_origin_but_not_phase_or_pixel_size() -> None:
    bands, dtype = ("SR_B4",), "uint16"
    a = alignment_signature("EPSG:32630", (30.0, 0.0, 460785.0, 0.0, -30.0, 4264215.0), bands, dtype)
    b = alignment_signature("EPSG:32630", (30.0, 0.0, 460815.0, 0.0, -30.0, 4263915.0), bands, dtype)
    shifted = alignment_signature("EPSG:32630", (30.0, 0.0, 460800.0, 0.0, -30.0, 4264215.0), bands, dtype)
    coarser = alignment_signature("EPSG:32630", (60.0, 0.0, 460785.0, 0.0, -60.0, 4264215.0), bands, dtype)
    other_zone = alignment_signature("EPSG:32631", (30.0, 0.0, 460785.0, 0.0, -30.0, 4264215.0), bands, dtype)
    assert a == b and len(a) == 12
    assert len({a, shifted, coarser, other_zone}) == 4
