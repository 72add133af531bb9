"""Image operations that change grids: ``setDefaultProjection``, ``clipToBoundsAndScale``, ``reproject``,
``resample`` — what ``ee.Image.prepare_for_export`` (``getDownloadURL``, ``getThumbURL``, geedim, geemap)
sends.

Choices where Earth Engine's behaviour had to be inferred (documented in docs/emulator.md):

* A projection at a new ``scale`` keeps its transform's origin (``translateX``/``translateY``) and its
  axis directions; a scale in metres on a geographic CRS becomes degrees at the equator.
* ``clipToBoundsAndScale`` builds the smallest grid of that projection covering the region's envelope in
  its CRS (whole pixels); with ``width``/``height``/``maxDimension`` the envelope is divided exactly
  instead. Pixels outside that grid are masked. The geometry's polygon itself does not mask (that is
  ``clip``'s job).
* ``reproject`` computes the input on the target grid (nearest neighbour unless ``resample`` was called)
  and samples that onto the request, so a coarse ``reproject`` really coarsens.
* ``resample('bilinear')`` interpolates a loaded band between the four native pixels around each
  request pixel centre, weighting valid neighbours only; integer bands round to the nearest integer.
  Bicubic is not implemented (400 naming it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from pyproj import Transformer
from shapely.geometry.base import BaseGeometry

from edown.crs import resolve_crs, same_crs
from edown.emulator.images import EEBand, EEImage, EvalContext, EvaluationError, NativeRead, Raster
from edown.emulator.model import Grid
from edown.emulator.pixels import Positions, read_band
from edown.emulator.regions import projection_grid, region_grid

Transform = tuple[float, float, float, float, float, float]

#: Largest intermediate grid ``reproject`` evaluates for one request (pixels).
MAX_REPROJECT_PIXELS = 64 * 1024 * 1024


def _default_grid(image: EEImage) -> Grid | None:
    return image.bands[0].grid if image.bands else None


def set_default_projection(
    image: EEImage, crs: str, transform: Sequence[float] | None, scale: float | None
) -> EEImage:
    """Declare a projection for later scale-free steps; the pixels themselves do not change."""
    out_crs, t = projection_grid(Grid(crs, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)), crs, transform, scale)
    grid = Grid(out_crs, t)
    return image.with_bands([replace(b, grid=grid) for b in image.bands])


def clip_to_bounds_and_scale(
    image: EEImage,
    geometry: BaseGeometry,
    width: int | None,
    height: int | None,
    max_dimension: int | None,
    scale: float | None,
) -> EEImage:
    """A finite grid over the region's envelope in the image's default projection (see module docs)."""
    base = _default_grid(image)
    if base is None:
        return image
    if width is None and height is None and max_dimension is None:
        out_crs, t = projection_grid(base, None, None, scale)
        grid = region_grid(geometry, out_crs, t)
    else:
        grid = _sized_grid(base, geometry, width, height, max_dimension)
    bands = [replace(b, grid=grid, compute=_Bounded(b, grid)) for b in image.bands]
    return image.with_bands(bands)


def _sized_grid(
    base: Grid, geometry: BaseGeometry, width: int | None, height: int | None, max_dimension: int | None
) -> Grid:
    envelope = region_grid(geometry, base.crs, (1e-9, 0.0, 0.0, 0.0, -1e-9, 0.0))
    x0 = envelope.transform[2]
    y1 = envelope.transform[5]
    x1 = x0 + envelope.width * 1e-9
    y0 = y1 - envelope.height * 1e-9
    span_x, span_y = max(x1 - x0, 1e-12), max(y1 - y0, 1e-12)
    if width is None and height is None:
        assert max_dimension is not None
        if span_x >= span_y:
            width = int(max_dimension)
        else:
            height = int(max_dimension)
    if width is None:
        assert height is not None
        width = max(1, round(height * span_x / span_y))
    if height is None:
        height = max(1, round(width * span_y / span_x))
    if width <= 0 or height <= 0:
        raise EvaluationError("Image.clipToBoundsAndScale: width and height must be positive.")
    return Grid(base.crs, (span_x / width, 0.0, x0, 0.0, -span_y / height, y1), int(width), int(height))


@dataclass(frozen=True)
class _Bounded:
    """A band masked outside a finite grid (what ``clipToBoundsAndScale`` leaves)."""

    band: EEBand
    grid: Grid

    def __call__(self, ctx: EvalContext) -> Raster:
        r = self.band.evaluate(ctx)
        if ctx.grid == self.grid:
            return r
        cols, rows = _cell_indices(ctx, self.grid)
        inside = (cols >= 0) & (cols < self.grid.width) & (rows >= 0) & (rows < self.grid.height)
        return Raster(r.values, r.mask & inside, r.footprint & inside)


def _cell_indices(ctx: EvalContext, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Column and row of ``grid`` (no shear) holding each request pixel centre."""
    xs, ys = ctx.centres()
    xs, ys = np.broadcast_arrays(xs, ys)
    if not same_crs(ctx.grid.crs, grid.crs):
        to_grid = Transformer.from_crs(resolve_crs(ctx.grid.crs), resolve_crs(grid.crs), always_xy=True)
        xs, ys = (np.asarray(v, dtype=np.float64) for v in to_grid.transform(xs, ys))
    sx, _, tx, _, sy, ty = grid.transform
    with np.errstate(all="ignore"):
        u, v = (xs - tx) / sx, (ys - ty) / sy
    bad = ~(np.isfinite(u) & np.isfinite(v))
    cols = np.where(bad, -(2**40), np.floor(np.where(bad, 0, u))).astype(np.int64)
    rows = np.where(bad, -(2**40), np.floor(np.where(bad, 0, v))).astype(np.int64)
    return cols, rows


def reproject(image: EEImage, crs: str, transform: Sequence[float] | None, scale: float | None) -> EEImage:
    """Compute every band on the target projection's grid, then sample that onto each request."""
    out_crs, t = projection_grid(Grid(crs, (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)), crs, transform, scale)
    if t[1] or t[3]:
        raise EvaluationError("Image.reproject: Sheared transforms are not supported by the edown emulator.")
    target = Grid(out_crs, t)
    return image.with_bands([replace(b, grid=target, compute=_Reprojected(b, target)) for b in image.bands])


@dataclass(frozen=True)
class _Reprojected:
    band: EEBand
    target: Grid

    def __call__(self, ctx: EvalContext) -> Raster:
        if same_crs(ctx.grid.crs, self.target.crs) and ctx.grid.transform == self.target.transform:
            return self.band.evaluate(ctx)
        cols, rows = _cell_indices(ctx, self.target)
        ok = cols > -(2**39)
        if not ok.any():
            empty = np.zeros(ctx.shape, dtype=bool)
            return Raster(np.zeros(ctx.shape), empty, empty)
        c0, c1 = int(cols[ok].min()), int(cols[ok].max()) + 1
        r0, r1 = int(rows[ok].min()), int(rows[ok].max()) + 1
        if (c1 - c0) * (r1 - r0) > MAX_REPROJECT_PIXELS:
            raise EvaluationError(
                f"Image.reproject: The reprojection needs a {c1 - c0}x{r1 - r0} pixel grid, more than the edown "
                f"emulator computes for one request ({MAX_REPROJECT_PIXELS} pixels)."
            )
        sx, _, tx, _, sy, ty = self.target.transform
        sub = Grid(self.target.crs, (sx, 0.0, tx + c0 * sx, 0.0, sy, ty + r0 * sy), c1 - c0, r1 - r0)
        inner = self.band.evaluate(EvalContext(sub))
        shape = (sub.height, sub.width)
        values = np.broadcast_to(inner.values, shape)
        mask = np.broadcast_to(inner.mask, shape)
        foot = np.broadcast_to(inner.footprint, shape)
        rr = np.where(ok, rows - r0, 0)
        cc = np.where(ok, cols - c0, 0)
        return Raster(values[rr, cc], mask[rr, cc] & ok, foot[rr, cc] & ok)


def resample(image: EEImage, mode: str) -> EEImage:
    """``Image.resample``: bilinear reads of loaded bands (see the module docstring)."""
    if mode == "nearest":
        return image
    if mode != "bilinear":
        raise EvaluationError(
            f"Image.resample: mode '{mode}' is not supported by the edown emulator (bilinear is)."
        )
    bands = []
    for band in image.bands:
        if isinstance(band.compute, NativeRead):
            bands.append(replace(band, compute=_Bilinear(band.compute)))
        else:
            bands.append(band)  # computed bands have no native pixels to interpolate between
    return image.with_bands(bands)


@dataclass(frozen=True)
class _Bilinear:
    read: NativeRead

    def __call__(self, ctx: EvalContext) -> Raster:
        native = self.read.grid
        if ctx.grid == native or (
            same_crs(ctx.grid.crs, native.crs) and ctx.grid.transform[:6] == native.transform[:6]
        ):
            return self.read(ctx)
        xs, ys = ctx.centres()
        xs, ys = np.broadcast_arrays(xs, ys)
        if not same_crs(ctx.grid.crs, native.crs):
            t = Transformer.from_crs(resolve_crs(ctx.grid.crs), resolve_crs(native.crs), always_xy=True)
            xs, ys = (np.asarray(v, dtype=np.float64) for v in t.transform(xs, ys))
        sx, _, tx, _, sy, ty = native.transform
        with np.errstate(all="ignore"):
            u = (xs - tx) / sx - 0.5
            v = (ys - ty) / sy - 0.5
        finite = np.isfinite(u) & np.isfinite(v)
        u, v = np.where(finite, u, -10.0), np.where(finite, v, -10.0)
        c0, r0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        fu, fv = u - c0, v - r0
        total = np.zeros(u.shape)
        weight = np.zeros(u.shape)
        for dr, dc, w in (
            (0, 0, (1 - fv) * (1 - fu)),
            (0, 1, (1 - fv) * fu),
            (1, 0, fv * (1 - fu)),
            (1, 1, fv * fu),
        ):
            pos = Positions((r0 + dr).ravel(), (c0 + dc).ravel(), False)
            values, valid = read_band(self.read.asset, self.read.band_id, pos)
            values = np.asarray(values, dtype=np.float64).reshape(u.shape)
            valid = np.asarray(valid).reshape(u.shape) & finite
            total += np.where(valid, values * w, 0.0)
            weight += np.where(valid, w, 0.0)
        ok = weight > 1e-12
        out = np.where(ok, total / np.where(ok, weight, 1.0), 0.0)
        if self.read.is_integer:
            out = np.floor(out + 0.5)
        return Raster(out, ok, ok)
