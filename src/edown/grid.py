"""Pure grid math: native grids, AOI windows, alignment signatures and chunk plans. No I/O.

A *grid* is a CRS, an affine transform in Earth Engine/GDAL order ``(sx, shx, tx, shy, sy, ty)`` and a
size. A *window* is a rectangle of whole pixels of a grid. Windows are always snapped outward to whole
pixels of the image's own grid, so an output's transform is its grid's transform shifted by whole pixels:
no resampling, no half-pixel shifts.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import shapely
from pyproj import Transformer
from shapely.geometry.base import BaseGeometry

from edown.crs import resolve_crs
from edown.errors import ConfigError

Transform = tuple[float, float, float, float, float, float]
MAX_REQUEST_SIDE = 32768
OUTPUT_TILE = 256


@dataclass(frozen=True)
class Window:
    """Whole pixels ``[col_off, col_off + width) x [row_off, row_off + height)`` of a grid."""

    col_off: int
    row_off: int
    width: int
    height: int

    @property
    def is_empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    @property
    def pixels(self) -> int:
        return max(0, self.width) * max(0, self.height)

    def intersection(self, other: Window) -> Window:
        c0 = max(self.col_off, other.col_off)
        r0 = max(self.row_off, other.row_off)
        c1 = min(self.col_off + self.width, other.col_off + other.width)
        r1 = min(self.row_off + self.height, other.row_off + other.height)
        return Window(c0, r0, max(0, c1 - c0), max(0, r1 - r0))

    def union(self, other: Window) -> Window:
        c0 = min(self.col_off, other.col_off)
        r0 = min(self.row_off, other.row_off)
        c1 = max(self.col_off + self.width, other.col_off + other.width)
        r1 = max(self.row_off + self.height, other.row_off + other.height)
        return Window(c0, r0, c1 - c0, r1 - r0)

    def relative_to(self, outer: Window) -> Window:
        return Window(self.col_off - outer.col_off, self.row_off - outer.row_off, self.width, self.height)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.col_off, self.row_off, self.width, self.height)


@dataclass(frozen=True)
class GridSpec:
    """An image band's native grid as Earth Engine reports it."""

    crs: str
    transform: Transform
    width: int = 0
    height: int = 0

    @property
    def pixel_size(self) -> tuple[float, float]:
        return (self.transform[0], self.transform[4])

    @property
    def has_shear(self) -> bool:
        return self.transform[1] != 0 or self.transform[3] != 0

    @property
    def full_window(self) -> Window:
        return Window(0, 0, self.width, self.height)

    def window_transform(self, window: Window) -> Transform:
        sx, shx, tx, shy, sy, ty = self.transform
        return (
            sx,
            shx,
            tx + window.col_off * sx + window.row_off * shx,
            shy,
            sy,
            ty + window.col_off * shy + window.row_off * sy,
        )

    def to_request(self, window: Window) -> dict[str, Any]:
        """The ``grid`` (PixelGrid) of a getPixels/computePixels request for ``window``."""
        sx, shx, tx, shy, sy, ty = self.window_transform(window)
        grid: dict[str, Any] = {
            "dimensions": {"width": window.width, "height": window.height},
            "affineTransform": {
                "scaleX": sx,
                "shearX": shx,
                "translateX": tx,
                "shearY": shy,
                "scaleY": sy,
                "translateY": ty,
            },
        }
        if re.fullmatch(r"[A-Za-z][A-Za-z\-]*:\d+", self.crs):
            grid["crsCode"] = self.crs
        else:
            grid["crsWkt"] = self.crs
        return grid


def grid_from_ee_band(band: dict[str, Any]) -> GridSpec:
    """A :class:`GridSpec` from a band of ``listAssets`` (REST) or ``getInfo`` output."""
    if "grid" in band:
        g = band["grid"]
        a = g.get("affineTransform", {})
        transform = tuple(
            float(a.get(k, 0.0)) for k in ("scaleX", "shearX", "translateX", "shearY", "scaleY", "translateY")
        )
        dims = g.get("dimensions", {})
        crs = g.get("crsCode") or g.get("crsWkt") or "EPSG:4326"
        return GridSpec(crs, transform, int(dims.get("width", 0)), int(dims.get("height", 0)))  # type: ignore[arg-type]
    dims = band.get("dimensions") or [0, 0]
    transform = tuple(float(v) for v in band.get("crs_transform", (1, 0, 0, 0, 1, 0)))
    return GridSpec(band.get("crs", "EPSG:4326"), transform, int(dims[0]), int(dims[1]))  # type: ignore[arg-type]


@lru_cache(maxsize=256)
def _from_lonlat(crs: str) -> Transformer:
    return Transformer.from_crs("EPSG:4326", resolve_crs(crs), always_xy=True)


def project_aoi(aoi_lonlat: BaseGeometry, crs: str) -> BaseGeometry:
    """The AOI in ``crs``, with edges densified first so straight lon/lat edges keep their shape."""
    dense = shapely.segmentize(aoi_lonlat, max_segment_length=0.01)
    return shapely.transform(dense, _from_lonlat(crs).transform, interleaved=False)


def aoi_window(aoi_lonlat: BaseGeometry, grid: GridSpec, clip: bool = True) -> Window:
    """The smallest window of ``grid`` covering the AOI, snapped outward to whole pixels.

    Computed in the grid's own CRS. Clipped to the grid's extent when ``clip`` and the size is known;
    an AOI that misses the grid gives an empty window.
    """
    if grid.has_shear:
        raise ValueError(f"sheared grids are not supported: {grid.transform}")
    projected = project_aoi(aoi_lonlat, grid.crs)
    minx, miny, maxx, maxy = projected.bounds
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        return Window(0, 0, 0, 0)
    sx, _, tx, _, sy, ty = grid.transform
    cols = sorted(((minx - tx) / sx, (maxx - tx) / sx))
    rows = sorted(((miny - ty) / sy, (maxy - ty) / sy))
    # Tolerance keeps an AOI edge that lies exactly on a pixel edge from adding a pixel.
    c0, c1 = math.floor(cols[0] + 1e-9), math.ceil(cols[1] - 1e-9)
    r0, r1 = math.floor(rows[0] + 1e-9), math.ceil(rows[1] - 1e-9)
    window = Window(c0, r0, max(0, c1 - c0), max(0, r1 - r0))
    if clip and grid.width and grid.height:
        window = window.intersection(grid.full_window)
    return window


def grid_phase(transform: Transform) -> tuple[float, float]:
    """Where pixel edges fall, as a fraction of a pixel (the same for every grid of one family)."""
    sx, _, tx, _, sy, ty = transform
    px = round((tx / sx) % 1.0, 6) % 1.0
    py = round((ty / sy) % 1.0, 6) % 1.0
    return (px, py)


@lru_cache(maxsize=256)
def crs_key(crs: str) -> str:
    """A canonical CRS name for comparisons: the EPSG code when PROJ knows one, else the given string.

    Cached: a WKT that names no EPSG code costs PROJ a database search, and every image asks again."""
    if re.fullmatch(r"EPSG:\d+", crs, re.I):
        return crs.upper()
    try:
        epsg = resolve_crs(crs).to_epsg()
    except Exception:
        epsg = None
    return f"EPSG:{epsg}" if epsg else crs


def alignment_signature(crs: str, transform: Transform, band_names: tuple[str, ...], dtype: str) -> str:
    """12 hex characters naming a stackable grid family: CRS, pixel size, grid phase, bands and dtype.

    Footprint and origin are deliberately left out, so Landsat scenes whose origins move by whole pixels
    from date to date share one signature.
    """
    sx, _, _, _, sy, _ = transform
    px, py = grid_phase(transform)
    text = f"{crs_key(crs)}|{sx!r}|{sy!r}|{px:.6f}|{py:.6f}|{','.join(band_names)}|{dtype}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def common_window(grid: GridSpec, others: list[tuple[Transform, Window]]) -> tuple[Transform, int, int]:
    """A grid covering several windows of same-phase grids: ``(transform, width, height)``.

    Each entry is ``(transform of that image's grid, its window)``; offsets are whole pixels because the
    grids share pixel size and phase.
    """
    sx, _, tx0, _, sy, ty0 = grid.transform
    c_min = r_min = math.inf
    c_max = r_max = -math.inf
    for transform, window in others:
        dc = round((transform[2] - tx0) / sx) + window.col_off
        dr = round((transform[5] - ty0) / sy) + window.row_off
        c_min, r_min = min(c_min, dc), min(r_min, dr)
        c_max, r_max = max(c_max, dc + window.width), max(r_max, dr + window.height)
    c0, r0 = int(c_min), int(r_min)
    origin = (sx, 0.0, tx0 + c0 * sx, 0.0, sy, ty0 + r0 * sy)
    return origin, int(c_max) - c0, int(r_max) - r0


def offset_in(outer: Transform, inner: Transform) -> tuple[int, int]:
    """Whole-pixel ``(col, row)`` offset of ``inner``'s origin within ``outer`` (same pixel size and phase)."""
    return (round((inner[2] - outer[2]) / outer[0]), round((inner[5] - outer[5]) / outer[4]))


# ---- chunk plans ------------------------------------------------------------------------------------


def request_bytes(pixels: int, band_count: int, itemsize: int) -> int:
    """Bytes Earth Engine counts for a pixel request: every band-pixel plus one mask byte."""
    return pixels * band_count * (itemsize + 1)


def max_square_side(byte_limit: int, band_count: int, itemsize: int) -> int:
    return math.isqrt(byte_limit // (band_count * (itemsize + 1)))


def plan_chunks(
    window: Window,
    band_count: int,
    itemsize: int,
    byte_limit: int,
    chunk_size: int | None = None,
    mode: str = "auto",
    target_bytes: int | None = None,
    tile: int = OUTPUT_TILE,
) -> list[Window]:
    """Cut ``window`` into request windows that Earth Engine will accept.

    ``fixed``: squares of ``chunk_size`` (edges smaller); refuses a size over the byte limit.
    ``auto``: the largest squares, in multiples of the output's internal tile so every chunk lands on
    whole tiles, that stay under ``byte_limit`` (counting EE's mask byte) and 32768 px per side, and
    under ``target_bytes`` when given (see :func:`target_chunk_bytes`); never smaller than one tile.
    """
    if window.is_empty:
        return []
    limit_side = min(MAX_REQUEST_SIDE, max_square_side(byte_limit, band_count, itemsize))
    if mode == "fixed":
        assert chunk_size is not None
        need = request_bytes(chunk_size * chunk_size, band_count, itemsize)
        if need > byte_limit or chunk_size > MAX_REQUEST_SIDE:
            raise ConfigError(
                "chunk_size",
                f"{chunk_size}x{chunk_size} px of {band_count} band(s) x {itemsize} byte(s) is {need} bytes as Earth "
                f"Engine counts it (incl. a mask byte), over request_byte_limit={byte_limit}",
                f"use chunk_size <= {limit_side}",
            )
        return tile_window(window, chunk_size, chunk_size)
    if limit_side < 1:
        raise ConfigError(
            "request_byte_limit", f"{byte_limit} bytes cannot hold one pixel of {band_count} band(s)"
        )
    if limit_side < tile:
        side = _pow2_floor(limit_side)
        return tile_window(window, side, side)
    wanted = min(byte_limit, target_bytes) if target_bytes else byte_limit
    want_side = max(tile, min(limit_side, max_square_side(wanted, band_count, itemsize)))
    fits = window.width <= want_side and window.height <= want_side
    if fits and request_bytes(window.pixels, band_count, itemsize) <= wanted:
        return [window]
    side = max(tile, (want_side // tile) * tile)
    if chunk_size is not None:
        side = max(tile, min(side, chunk_size // tile * tile))
    return tile_window(window, side, side)


def target_chunk_bytes(total_bytes: int, concurrency: int, byte_limit: int, waves: int = 4) -> int:
    """How big ``auto`` chunks should be for a whole run.

    A request's time grows with its size (Earth Engine computes, then sends), so a run ends when its
    largest chunk does. Cutting the run's bytes into at least ``waves`` x ``concurrency`` chunks keeps that
    tail to a fraction of a wave while big runs still fill every request up to ``byte_limit``.
    """
    return max(1, min(byte_limit, total_bytes // max(1, waves * concurrency)))


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def tile_window(window: Window, width: int, height: int) -> list[Window]:
    """``window`` cut into ``width`` x ``height`` pieces, row by row (the last ones cut short)."""
    chunks = []
    for r in range(window.row_off, window.row_off + window.height, height):
        for c in range(window.col_off, window.col_off + window.width, width):
            chunks.append(
                Window(
                    c,
                    r,
                    min(width, window.col_off + window.width - c),
                    min(height, window.row_off + window.height - r),
                )
            )
    return chunks


def split_in_two(window: Window) -> list[Window]:
    """Halve a chunk along its longer side (after Earth Engine refused it as too large)."""
    if window.width >= window.height and window.width > 1:
        half = window.width // 2
        return [
            Window(window.col_off, window.row_off, half, window.height),
            Window(window.col_off + half, window.row_off, window.width - half, window.height),
        ]
    if window.height > 1:
        half = window.height // 2
        return [
            Window(window.col_off, window.row_off, window.width, half),
            Window(window.col_off, window.row_off + half, window.width, window.height - half),
        ]
    return [window]
