"""Neighbourhood operations, which need pixels beyond the request: ``fastDistanceTransform``.

The input is evaluated on the request grid grown by ``neighborhood`` pixels on every side (same CRS and
pixel size), so results at a request's edge are what they would be in the middle of a larger request.
Choices where EE had to be inferred: masked input pixels count as zero (not features); the distance is
exact Euclidean (squared, in pixels, as ``metric='squared_euclidean'``, or its root for ``euclidean``);
a pixel with no feature within ``neighborhood`` pixels gets ``neighborhood**2`` (``neighborhood`` for
euclidean), the largest distance the transform can see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edown.emulator.budget import charge
from edown.emulator.images import EEBand, EEImage, EvalContext, EvaluationError, Raster
from edown.emulator.model import Grid, PixelType

#: Largest grown grid one request may evaluate (pixels).
MAX_GROWN_PIXELS = 16 * 1024 * 1024


def fast_distance_transform(image: EEImage, neighborhood: int, units: str, metric: str) -> EEImage:
    if units != "pixels":
        raise EvaluationError(
            f"Image.fastDistanceTransform: units '{units}' are not supported by the edown emulator."
        )
    if metric not in ("squared_euclidean", "euclidean"):
        raise EvaluationError(
            f"Image.fastDistanceTransform: metric '{metric}' is not supported by the edown emulator."
        )
    if not image.bands:
        raise EvaluationError("Image.fastDistanceTransform: The image has no bands.")
    radius = max(int(neighborhood), 1)
    band = image.bands[0]
    compute = _Distance(band, radius, metric == "squared_euclidean")
    out = EEBand("distance", PixelType("double"), band.grid, compute)
    return EEImage(bands=(out,), footprint=image.footprint)


@dataclass(frozen=True)
class _Distance:
    band: EEBand
    radius: int
    squared: bool

    def __call__(self, ctx: EvalContext) -> Raster:
        grid = ctx.grid
        sx, shx, tx, shy, sy, ty = grid.transform
        if shx or shy:
            raise EvaluationError(
                "Image.fastDistanceTransform: Sheared grids are not supported by the edown emulator."
            )
        n = self.radius
        grown = Grid(
            grid.crs, (sx, 0.0, tx - n * sx, 0.0, sy, ty - n * sy), grid.width + 2 * n, grid.height + 2 * n
        )
        if grown.width * grown.height > MAX_GROWN_PIXELS:
            raise EvaluationError(
                f"Image.fastDistanceTransform: A neighborhood of {n} pixels around a {grid.width}x{grid.height} "
                f"request needs more than the edown emulator's {MAX_GROWN_PIXELS} pixels."
            )
        raster = self.band.evaluate(EvalContext(grown))
        shape = (grown.height, grown.width)
        feature = np.broadcast_to(raster.mask, shape) & (np.broadcast_to(raster.values, shape) != 0)
        charge(2 * n + 1)
        # Column pass: vertical distance (in pixels, capped past the radius) to the nearest feature.
        far = n + 1
        vertical = np.full(shape, far, dtype=np.int64)
        run = np.full(grown.width, far, dtype=np.int64)
        for r in range(grown.height):
            run = np.where(feature[r], 0, np.minimum(run + 1, far))
            vertical[r] = run
        run = np.full(grown.width, far, dtype=np.int64)
        for r in range(grown.height - 1, -1, -1):
            run = np.where(feature[r], 0, np.minimum(run + 1, far))
            vertical[r] = np.minimum(vertical[r], run)
        # Row pass, only for the request's own pixels: the nearest column within the radius.
        rows = slice(n, n + grid.height)
        best = np.full((grid.height, grid.width), float(n * n))
        for dx in range(-n, n + 1):
            column = vertical[rows, n + dx : n + dx + grid.width].astype(np.float64)
            best = np.minimum(best, np.where(column <= n, column * column + dx * dx, np.inf))
        best = np.minimum(best, float(n * n))
        values = best if self.squared else np.sqrt(best)
        ones = np.ones(best.shape, dtype=bool)
        return Raster(values, ones, ones)
