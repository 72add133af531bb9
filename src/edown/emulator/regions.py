"""Region grids: which pixels a region covers, in which projection, at which scale.

Shared by region reductions (``reduceRegion``, ``sample``, ``getRegion``) and by the grid operations
(``clipToBoundsAndScale``, ``reproject``). The rules, where Earth Engine's had to be inferred: the grid is
``crsTransform`` if given, otherwise ``crs`` (or the image's first band's CRS) at ``scale`` (or the native
scale) with the transform's origin and axis directions kept; a scale in metres on a geographic CRS
becomes degrees at the equator (1 degree = 111319.49 m). A region covers the pixels whose centres fall in
it (a point or a line: the pixels it touches).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry.base import BaseGeometry

from edown.crs import crs_is_geographic, resolve_crs, same_crs
from edown.emulator.images import DEFAULT_GRID, EvalContext, EvaluationError, inside_mask
from edown.emulator.model import Grid

#: Metres per degree at the equator: how EE turns a scale in metres into degrees on a geographic CRS.
METRES_PER_DEGREE = 111319.49079327357
#: EE's default ``maxPixels`` for region reductions.
DEFAULT_MAX_PIXELS = 10_000_000
#: Fraction of a pixel within which a region's bound counts as on a pixel edge.
EDGE_TOLERANCE = 1e-6


def projection_grid(
    default: Grid | None, crs: str | None, transform: Sequence[float] | None, scale: float | None
) -> tuple[str, tuple[float, float, float, float, float, float]]:
    """The CRS and affine transform a reduction works in (see the module docstring for the rules)."""
    base = default or DEFAULT_GRID
    if transform is not None:
        if len(transform) != 6:
            raise EvaluationError("crsTransform must have 6 numbers.")
        t = tuple(float(v) for v in transform)
        return crs or base.crs, t  # type: ignore[return-value]
    out_crs = crs or base.crs
    if crs is not None and not same_crs(crs, base.crs):
        base_t: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    else:
        base_t = base.transform
    if scale is None:
        return out_crs, base_t  # type: ignore[return-value]
    size = float(scale)
    if size <= 0:
        raise EvaluationError("scale must be positive.")
    if crs_is_geographic(out_crs):
        size = size / METRES_PER_DEGREE
    _, _, tx, _, sy, ty = base_t
    return out_crs, (size, 0.0, tx, 0.0, -size if sy <= 0 else size, ty)


def region_grid(
    geometry: BaseGeometry, crs: str, transform: tuple[float, float, float, float, float, float]
) -> Grid:
    """The smallest grid of ``transform`` (no shear) covering ``geometry`` (lon/lat)."""
    sx, shx, tx, shy, sy, ty = transform
    if shx or shy:
        raise EvaluationError("Sheared crsTransforms are not supported by the edown emulator.")
    local = _to_crs(geometry, crs)
    x0, y0, x1, y1 = local.bounds
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise EvaluationError("The region cannot be represented in the requested projection.")
    cols = sorted(((x0 - tx) / sx, (x1 - tx) / sx))
    rows = sorted(((y0 - ty) / sy, (y1 - ty) / sy))
    # A bound a hair off a pixel edge (a round trip through lon/lat) must not add a pixel.
    c0, r0 = math.floor(cols[0] + EDGE_TOLERANCE), math.floor(rows[0] + EDGE_TOLERANCE)
    c1 = max(c0 + 1, math.ceil(cols[1] - EDGE_TOLERANCE))
    r1 = max(r0 + 1, math.ceil(rows[1] - EDGE_TOLERANCE))
    return Grid(crs, (sx, 0.0, tx + c0 * sx, 0.0, sy, ty + r0 * sy), c1 - c0, r1 - r0)


def _to_crs(geometry: BaseGeometry, crs: str) -> BaseGeometry:
    if same_crs(crs, "EPSG:4326"):
        return geometry
    to_crs = Transformer.from_crs("EPSG:4326", resolve_crs(crs), always_xy=True)
    return shapely.transform(geometry, to_crs.transform, interleaved=False)


def covered(ctx: EvalContext, geometry: BaseGeometry) -> np.ndarray:
    """Pixels of the request grid the region covers: centres inside an area; any touch for points/lines."""
    if geometry.area > 0:
        return inside_mask(ctx, geometry)
    grid = ctx.grid
    local = _to_crs(geometry, grid.crs)
    sx, _, tx, _, sy, ty = grid.transform
    cols = np.arange(grid.width)
    rows = np.arange(grid.height)
    xs0, ys0 = tx + cols * sx, ty + rows * sy
    boxes = shapely.box(
        np.minimum(xs0, xs0 + sx)[None, :],
        np.minimum(ys0, ys0 + sy)[:, None],
        np.maximum(xs0, xs0 + sx)[None, :],
        np.maximum(ys0, ys0 + sy)[:, None],
    )
    return np.asarray(shapely.intersects(boxes, local), dtype=bool)


def check_pixels(grid: Grid, max_pixels: float, function: str) -> None:
    count = grid.width * grid.height
    if count > max_pixels:
        raise EvaluationError(
            f"{function}: Too many pixels in the region. Found {count}, but maxPixels allows only "
            f"{int(max_pixels)}. Ensure that you are not aggregating at a higher resolution than you intended; "
            "that is a frequent cause of this error. If not, then you may set the 'maxPixels' argument to a "
            "limit suitable for your computation; set 'bestEffort' to true to aggregate at whatever scale "
            "results in maxPixels total pixels; or both."
        )
