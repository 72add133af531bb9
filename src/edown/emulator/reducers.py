"""Reducers and reductions: ``reduceRegion``, ``sample``, ``getRegion``, per-pixel collection composites
(``median()``, ``mosaic()``, ``qualityMosaic``, ``toBands``...) and reductions of lists and columns.

What Earth Engine computes, on the emulator's exact pixels:

* A region reduction covers the pixels of the region grid (see :mod:`edown.emulator.regions`); each
  pixel weighs 1 (EE weighs by the mask, which is 0 or 1 for every emulated image).
* Composites (``median()``, ``mean()``, ``mosaic()``...) work per pixel over the images' valid pixels,
  each image read on the request grid by nearest neighbour; their default projection is EPSG:4326 at 1°,
  as in EE, which is why exports reproject or ``clipToBoundsAndScale`` them. ``mosaic`` puts later images
  on top. Band names are the inputs' for the shortcuts and ``<band>_<reducer>`` for ``reduce(reducer)``.
* Types follow EE: a mean is double; a sum of integers is a 64-bit integer and of floats a double; a
  count is an integer; min, max, median, percentiles, first and mosaic keep the input's type (an integer
  median of an even count is the mean of the middle two, truncated). Percentiles interpolate linearly
  between the sorted values (EE reads them off a histogram, which can differ by a bucket width).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pyproj import Transformer
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from edown.crs import resolve_crs, same_crs
from edown.emulator.budget import charge
from edown.emulator.images import (
    EEBand,
    EEImage,
    EvalContext,
    EvaluationError,
    NativeRead,
    Raster,
    cast_values,
    union_type,
)
from edown.emulator.model import Grid, PixelType
from edown.emulator.regions import DEFAULT_MAX_PIXELS, check_pixels, covered, projection_grid, region_grid

#: ``getRegion`` refuses to return more values than this (EE's limit).
MAX_REGION_VALUES = 1_048_576
#: Degrees added around a request's lon/lat box before a composite skips the images outside it: the
#: catalogue's lon/lat footprints outline the exact (UTM) ones only closely.
FOOTPRINT_MARGIN_DEG = 0.05

Kernel = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class EEReducer:
    """A reducer value: its kind plus, for percentiles, the percentiles and their output names."""

    kind: str
    percentiles: tuple[float, ...] = ()
    names: tuple[str, ...] = ()
    #: ``Reducer.repeat(count)``: the reducer applied to ``count`` inputs, each output a list (0: plain).
    repeat: int = 0

    def to_info(self) -> dict[str, Any]:
        return {"type": "Reducer", "reducer": self.kind}

    def outputs(self) -> list[tuple[str, Kernel]]:
        """``(output name, kernel)`` per output; a kernel reduces axis 0 of (values, valid)."""
        if self.kind == "minMax":
            return [("min", _KERNELS["min"]), ("max", _KERNELS["max"])]
        if self.kind == "percentile":
            names = self.names or tuple(f"p{_num_text(p)}" for p in self.percentiles)
            return [(n, _percentile_kernel(p)) for n, p in zip(names, self.percentiles, strict=True)]
        if self.kind not in _KERNELS:
            raise EvaluationError(f"Reducer.{self.kind} is not supported by the edown emulator here.")
        return [(self.kind, _KERNELS[self.kind])]

    def output_type(self, input_type: PixelType, count: int) -> PixelType:
        if self.kind in ("mean", "stdDev", "variance", "sampleStdDev", "sampleVariance"):
            return PixelType("double")
        if self.kind == "sum":
            return PixelType.of_dtype("int64") if input_type.is_integer else PixelType("double")
        if self.kind == "count":
            return PixelType("int", 0, max(count, 1))
        if self.kind in ("allNonZero", "anyNonZero"):
            return PixelType("int", 0, 1)
        return input_type


def make_reducer(kind: str, percentiles: Sequence[Any] = (), names: Sequence[str] | None = None) -> EEReducer:
    if kind == "percentile":
        if not percentiles:
            raise EvaluationError("Reducer.percentile: At least one percentile is required.")
        values = tuple(float(p) for p in percentiles)
        if any(not 0 <= p <= 100 for p in values):
            raise EvaluationError("Reducer.percentile: Percentiles must be between 0 and 100.")
        if names is not None and len(names) != len(values):
            raise EvaluationError("Reducer.percentile: outputNames must match the percentiles.")
        return EEReducer(kind, values, tuple(str(n) for n in names or ()))
    return EEReducer(kind)


def _num_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _masked_float(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid, values.astype(np.float64, copy=False), np.nan)


def _mean(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    count = valid.sum(axis=0)
    total = np.where(valid, values.astype(np.float64, copy=False), 0.0).sum(axis=0)
    with np.errstate(all="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), 0.0), count > 0


def _sum(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    zero = np.zeros((), dtype=np.int64 if values.dtype.kind in "iub" else np.float64)
    wide = values.astype(zero.dtype, copy=False)
    return np.where(valid, wide, zero).sum(axis=0), valid.any(axis=0)


def _count(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    count = valid.sum(axis=0).astype(np.int64)
    return count, np.ones(count.shape, dtype=bool)


def _nothing(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The answer of a reducer over no inputs at all (an empty or fully masked region): no value."""
    return np.zeros(values.shape[1:]), np.zeros(values.shape[1:], dtype=bool)


def _extreme(pick: Callable[..., np.ndarray], fill: float) -> Kernel:
    def kernel(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if values.shape[0] == 0:
            return _nothing(values)
        any_valid = valid.any(axis=0)
        out = pick(np.where(valid, values.astype(np.float64, copy=False), fill), axis=0)
        return np.where(any_valid, out, 0.0), any_valid

    return kernel


def _percentile_kernel(p: float) -> Kernel:
    def kernel(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        any_valid = valid.any(axis=0)
        if not any_valid.any():
            return np.zeros(any_valid.shape), any_valid
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out = np.nanpercentile(_masked_float(values, valid), p, axis=0)
        return np.where(any_valid, out, 0.0), any_valid

    return kernel


def _first(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if values.shape[0] == 0:
        return _nothing(values)
    index = np.argmax(valid, axis=0)
    out = np.take_along_axis(values, index[None, ...], axis=0)[0]
    return out, valid.any(axis=0)


def _last(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flipped_values, flipped_valid = values[::-1], valid[::-1]
    return _first(flipped_values, flipped_valid)


def _spread(sample: bool, root: bool) -> Kernel:
    """Variance or standard deviation; EE's ``stdDev``/``variance`` are the population ones."""

    def kernel(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count = valid.sum(axis=0)
        x = np.where(valid, values.astype(np.float64, copy=False), 0.0)
        with np.errstate(all="ignore"):
            mean = x.sum(axis=0) / np.maximum(count, 1)
            squares = np.where(valid, (values.astype(np.float64, copy=False) - mean) ** 2, 0.0).sum(axis=0)
            divisor = count - 1 if sample else count
            out = squares / np.maximum(divisor, 1)
        ok = divisor > 0
        return np.where(ok, np.sqrt(out) if root else out, 0.0), ok

    return kernel


def _all_non_zero(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.all(~valid | (values != 0), axis=0).astype(np.int64), valid.any(axis=0)


def _any_non_zero(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.any(valid & (values != 0), axis=0).astype(np.int64), valid.any(axis=0)


_KERNELS: dict[str, Kernel] = {
    "stdDev": _spread(sample=False, root=True),
    "variance": _spread(sample=False, root=False),
    "sampleStdDev": _spread(sample=True, root=True),
    "sampleVariance": _spread(sample=True, root=False),
    "allNonZero": _all_non_zero,
    "anyNonZero": _any_non_zero,
    "mean": _mean,
    "sum": _sum,
    "count": _count,
    "min": _extreme(np.min, np.inf),
    "max": _extreme(np.max, -np.inf),
    "median": _percentile_kernel(50.0),
    "first": _first,
    "firstNonNull": _first,
    "mosaic": _last,
}
REDUCER_KINDS = (
    "mean",
    "sum",
    "count",
    "min",
    "max",
    "median",
    "minMax",
    "first",
    "firstNonNull",
    "allNonZero",
    "anyNonZero",
    "stdDev",
    "variance",
    "sampleStdDev",
    "sampleVariance",
)


# ---- composites ---------------------------------------------------------------------------------------


def composite(images: Sequence[EEImage], reducer: EEReducer, suffix: bool) -> EEImage:
    """Per-pixel reduction of a collection; ``suffix`` names outputs ``<band>_<output>`` (EE's ``reduce``)."""
    if not images:
        return EEImage(bands=())
    names = images[0].band_names()
    bands: list[EEBand] = []
    for name in names:
        sources: list[EEBand] = []
        for image in images:
            match = [b for b in image.bands if b.name == name]
            if not match:
                raise EvaluationError(
                    f"ImageCollection.reduce: Image {image.image_id or ''} has no band '{name}' "
                    f"(bands: {image.band_names()})."
                )
            sources.append(match[0])
        in_type = sources[0].pixel_type
        for other in sources[1:]:
            in_type = union_type(in_type, other.pixel_type)
        outputs = reducer.outputs()
        for out_name, kernel in outputs:
            ptype = reducer.output_type(in_type, len(sources))
            band_name = f"{name}_{out_name}" if suffix or len(outputs) > 1 else name

            def compute(
                ctx: EvalContext,
                every: tuple[EEBand, ...] = tuple(sources),
                k: Kernel = kernel,
                t: PixelType = ptype,
            ) -> Raster:
                charge(len(every))
                parts = _meeting(every, ctx)
                shape = ctx.shape
                if not parts:
                    nothing = np.zeros(shape, dtype=bool)
                    return Raster(_typed(np.zeros(shape), t), nothing, nothing)
                rasters = [p.evaluate(ctx) for p in parts]
                values = np.stack([np.broadcast_to(r.values, shape) for r in rasters])
                valid = np.stack([np.broadcast_to(r.mask, shape) for r in rasters])
                footprint = np.any(np.stack([np.broadcast_to(r.footprint, shape) for r in rasters]), axis=0)
                out, ok = k(values, valid)
                return Raster(_typed(out, t), ok, footprint | ok)

            bands.append(EEBand(band_name, ptype, None, compute))
    return EEImage(bands=tuple(bands))


def _meeting(bands: Sequence[EEBand], ctx: EvalContext) -> list[EEBand]:
    """The bands that can have pixels on the request grid: a catalogue band read as is has none outside
    its image's footprint, so a composite over a collection not filtered by place (EE evaluates only
    the images it needs) does not read every image of the world."""
    area = _request_area(ctx)
    if area is None:
        return list(bands)
    return [
        b
        for b in bands
        if not isinstance(b.compute, NativeRead) or b.compute.asset.footprint.lonlat.intersects(area)
    ]


def _request_area(ctx: EvalContext) -> BaseGeometry | None:
    """The request grid's lon/lat box (its edges sampled) grown by :data:`FOOTPRINT_MARGIN_DEG`; None
    where a box could mislead (near the antimeridian, or coordinates that do not transform)."""
    sx, shx, tx, shy, sy, ty = ctx.grid.transform
    steps = np.linspace(0.0, 1.0, 17)
    width, height = ctx.grid.width, ctx.grid.height
    cols = np.concatenate([steps * width, steps * width, np.zeros(17), np.full(17, width)])
    rows = np.concatenate([np.zeros(17), np.full(17, height), steps * height, steps * height])
    xs, ys = tx + cols * sx + rows * shx, ty + cols * shy + rows * sy
    if not same_crs(ctx.grid.crs, "EPSG:4326"):
        to_ll = Transformer.from_crs(resolve_crs(ctx.grid.crs), "EPSG:4326", always_xy=True)
        xs, ys = (np.asarray(v) for v in to_ll.transform(xs, ys))
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        return None
    x0, x1 = float(xs.min()) - FOOTPRINT_MARGIN_DEG, float(xs.max()) + FOOTPRINT_MARGIN_DEG
    if x0 < -170.0 or x1 > 170.0:
        return None
    return box(x0, float(ys.min()) - FOOTPRINT_MARGIN_DEG, x1, float(ys.max()) + FOOTPRINT_MARGIN_DEG)


def reduce_bands(image: EEImage, reducer: EEReducer) -> EEImage:
    """``Image.reduce``: per pixel across the bands, one band per reducer output named after it."""
    if not image.bands:
        raise EvaluationError("Image.reduce: The image has no bands.")
    singles = [EEImage(bands=(replace(b, name="input"),)) for b in image.bands]
    out = composite(singles, reducer, suffix=True)
    names = [name for name, _ in reducer.outputs()]
    return EEImage(
        bands=tuple(
            replace(b, name=n, grid=image.bands[0].grid) for b, n in zip(out.bands, names, strict=True)
        ),
        footprint=image.footprint,
    )


def mosaic(images: Sequence[EEImage]) -> EEImage:
    """``ImageCollection.mosaic``: the last valid pixel wins (later images on top)."""
    return composite(images, EEReducer("mosaic"), suffix=False)


def _typed(values: np.ndarray, ptype: PixelType) -> np.ndarray:
    if ptype.is_integer:
        return cast_values(np.asarray(values), ptype)
    return np.asarray(values, dtype=np.float64)


# ---- region reductions ----------------------------------------------------------------------------------


def reduce_region(
    image: EEImage,
    reducer: EEReducer,
    geometry: BaseGeometry | None,
    scale: float | None,
    crs: str | None,
    crs_transform: Sequence[float] | None,
    best_effort: bool,
    max_pixels: float,
) -> dict[str, Any]:
    """``Image.reduceRegion``: one dictionary entry per band and reducer output."""
    region = geometry if geometry is not None else image.footprint
    if region is None:
        raise EvaluationError(
            "Image.reduceRegion: Provide 'geometry' parameter when aggregating over an unbounded image."
        )
    if not image.bands:
        return {}
    first = image.bands[0].grid
    out_crs, transform = projection_grid(first, crs, crs_transform, scale)
    grid = region_grid(region, out_crs, transform)
    while best_effort and grid.width * grid.height > max_pixels:
        factor = math.sqrt(grid.width * grid.height / max_pixels) * 1.01
        sx, _, tx, _, sy, ty = transform
        transform = (sx * factor, 0.0, tx, 0.0, sy * factor, ty)
        grid = region_grid(region, out_crs, transform)
    check_pixels(grid, max_pixels, "Image.reduceRegion")
    ctx = EvalContext(grid)
    inside = covered(ctx, region)
    outputs = [] if reducer.kind == "toList" else reducer.outputs()
    result: dict[str, Any] = {}
    for band in image.bands:
        raster = band.evaluate(ctx)
        values = np.broadcast_to(raster.values, ctx.shape)
        valid = np.broadcast_to(raster.mask, ctx.shape) & inside
        chosen = values[valid]
        if reducer.kind == "toList":
            conv: Callable[[Any], Any] = int if band.pixel_type.is_integer else float
            result[band.name] = [conv(v) for v in chosen.tolist()]
            continue
        ones = np.ones(chosen.shape, dtype=bool)
        for out_name, kernel in outputs:
            key = band.name if len(outputs) == 1 else f"{band.name}_{out_name}"
            value, ok = kernel(chosen, ones)
            ptype = reducer.output_type(band.pixel_type, int(chosen.size))
            result[key] = _scalar(value, bool(ok), ptype, reducer)
    return result


def _scalar(value: np.ndarray, ok: bool, ptype: PixelType, reducer: EEReducer) -> Any:
    """One reduced number; over no values a sum is 0 (as in EE) and every other reducer null."""
    if not ok and reducer.kind != "sum":
        return None
    number = float(value)
    if ptype.is_integer:
        return int(number)
    return number


def get_region(
    images: Sequence[EEImage],
    geometry: BaseGeometry,
    scale: float | None,
    crs: str | None,
    crs_transform: Sequence[float] | None,
) -> list[list[Any]]:
    """``ImageCollection.getRegion``: a header row, then one row per image and covered pixel."""
    out_crs, transform = projection_grid(
        Grid("EPSG:4326", (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)), crs or "EPSG:4326", crs_transform, scale
    )
    grid = region_grid(geometry, out_crs, transform)
    ctx = EvalContext(grid)
    inside = covered(ctx, geometry)
    names = images[0].band_names() if images else []
    total = int(inside.sum()) * len(images) * max(len(names), 1)
    if total > MAX_REGION_VALUES:
        raise EvaluationError(
            f"ImageCollection.getRegion: Too many values: {int(inside.sum())} points x {len(names)} bands x "
            f"{len(images)} images > {MAX_REGION_VALUES}."
        )
    xs, ys = ctx.centres()
    xs, ys = np.broadcast_arrays(xs, ys)
    lon, lat = xs[inside], ys[inside]
    if not same_crs(out_crs, "EPSG:4326"):
        to_ll = Transformer.from_crs(resolve_crs(out_crs), "EPSG:4326", always_xy=True)
        lon, lat = (np.asarray(v) for v in to_ll.transform(lon, lat))
    rows: list[list[Any]] = [["id", "longitude", "latitude", "time", *names]]
    for image in images:
        charge(int(inside.sum()))
        columns = []
        for name in names:
            match = [b for b in image.bands if b.name == name]
            if not match:
                raise EvaluationError(f"ImageCollection.getRegion: Image has no band '{name}'.")
            band = match[0]
            raster = band.evaluate(ctx)
            values = np.broadcast_to(raster.values, ctx.shape)[inside]
            valid = np.broadcast_to(raster.mask, ctx.shape)[inside]
            conv: Callable[[Any], Any] = int if band.pixel_type.is_integer else float
            columns.append(
                [conv(v) if ok else None for v, ok in zip(values.tolist(), valid.tolist(), strict=True)]
            )
        index = image.property("system:index")
        time = image.property("system:time_start")
        for i in range(len(lon)):
            rows.append([index, float(lon[i]), float(lat[i]), time, *(c[i] for c in columns)])
    return rows


def reduce_columns(columns: Sequence[Sequence[Any]], reducer: EEReducer) -> dict[str, Any]:
    """``Collection.reduceColumns``: one input per selector, outputs by name (lists when repeated)."""
    expected = reducer.repeat or 1
    if len(columns) != expected:
        raise EvaluationError(
            f"Collection.reduceColumns: Need {expected} selectors for this reducer, got {len(columns)}."
        )
    if reducer.kind == "toList":
        lists = [list(c) for c in columns]
        return {"list": lists if reducer.repeat else lists[0]}
    per_input = []
    for column in columns:
        result = reduce_list(list(column), EEReducer(reducer.kind, reducer.percentiles, reducer.names))
        per_input.append(result if isinstance(result, dict) else {reducer.outputs()[0][0]: result})
    names = list(per_input[0])
    if not reducer.repeat:
        return per_input[0]
    return {name: [r[name] for r in per_input] for name in names}


def reduce_list(values: Sequence[Any], reducer: EEReducer) -> Any:
    """``List.reduce``: a number for one output, a dictionary ``{output: number}`` for several."""
    if reducer.kind == "toList":
        return [v for v in values if v is not None]
    numbers = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    ones = np.ones(numbers.shape, dtype=bool)
    integral = all(isinstance(v, int) and not isinstance(v, bool) for v in values if v is not None)
    in_type = PixelType("int", -(2**53), 2**53) if integral else PixelType("double")
    outputs = reducer.outputs()
    results = {}
    for name, kernel in outputs:
        value, ok = kernel(numbers, ones)
        results[name] = _scalar(value, bool(ok), reducer.output_type(in_type, int(numbers.size)), reducer)
    return results[outputs[0][0]] if len(outputs) == 1 else results


def sample_pixels(
    image: EEImage,
    region: BaseGeometry | None,
    scale: float | None,
    crs: str | None,
    factor: float | None,
    num_pixels: int | None,
    seed: int,
    drop_nulls: bool,
) -> list[tuple[float, float, dict[str, Any]]]:
    """``Image.sample``: the covered pixels of the region grid (as ``reduceRegion``), as lon/lat centres
    and band values. ``factor``/``numPixels`` draw a subset with numpy's generator seeded by ``seed``
    (EE's own random choice cannot be reproduced; the count and the values' origin are what is exact)."""
    area = region if region is not None else image.footprint
    if area is None:
        raise EvaluationError("Image.sample: Provide 'region' when sampling an unbounded image.")
    if not image.bands:
        return []
    out_crs, transform = projection_grid(image.bands[0].grid, crs, None, scale)
    grid = region_grid(area, out_crs, transform)
    check_pixels(grid, DEFAULT_MAX_PIXELS, "Image.sample")
    ctx = EvalContext(grid)
    inside = covered(ctx, area)
    columns = {}
    valid_all = inside.copy()
    for band in image.bands:
        raster = band.evaluate(ctx)
        columns[band.name] = (
            np.broadcast_to(raster.values, ctx.shape),
            np.broadcast_to(raster.mask, ctx.shape),
        )
        if drop_nulls:
            valid_all &= columns[band.name][1]
    rows_idx, cols_idx = np.nonzero(valid_all)
    order = np.arange(rows_idx.size)
    if factor is not None or num_pixels is not None:
        wanted = num_pixels if num_pixels is not None else round(rows_idx.size * float(factor or 0))
        rng = np.random.default_rng(seed)
        order = np.sort(rng.choice(rows_idx.size, size=min(wanted, rows_idx.size), replace=False))
    charge(int(order.size))
    xs, ys = ctx.centres()
    xs, ys = np.broadcast_arrays(xs, ys)
    px, py = xs[rows_idx[order], cols_idx[order]], ys[rows_idx[order], cols_idx[order]]
    if not same_crs(out_crs, "EPSG:4326"):
        to_ll = Transformer.from_crs(resolve_crs(out_crs), "EPSG:4326", always_xy=True)
        px, py = (np.asarray(v) for v in to_ll.transform(px, py))
    samples = []
    for k, i in enumerate(order):
        r, c = rows_idx[i], cols_idx[i]
        values: dict[str, Any] = {}
        for band in image.bands:
            vals, mask = columns[band.name]
            if mask[r, c]:
                values[band.name] = int(vals[r, c]) if band.pixel_type.is_integer else float(vals[r, c])
        samples.append((float(px[k]), float(py[k]), values))
    return samples


def quality_mosaic(images: Sequence[EEImage], quality_band: str) -> EEImage:
    """``ImageCollection.qualityMosaic``: per pixel, every band from the image whose ``quality_band`` is
    highest among those valid there (the earliest such image on ties, as ``argmax`` picks)."""
    if not images:
        return EEImage(bands=())
    qualities: list[EEBand] = []
    for image in images:
        match = [b for b in image.bands if b.name == quality_band]
        if not match:
            raise EvaluationError(f"ImageCollection.qualityMosaic: Image has no band '{quality_band}'.")
        qualities.append(match[0])
    bands: list[EEBand] = []
    for name in images[0].band_names():
        sources = []
        for image in images:
            match = [b for b in image.bands if b.name == name]
            if not match:
                raise EvaluationError(f"ImageCollection.qualityMosaic: Image has no band '{name}'.")
            sources.append(match[0])
        ptype = sources[0].pixel_type
        for other in sources[1:]:
            ptype = union_type(ptype, other.pixel_type)

        def compute(
            ctx: EvalContext, parts: tuple[EEBand, ...] = tuple(sources), t: PixelType = ptype
        ) -> Raster:
            charge(2 * len(parts))
            shape = ctx.shape
            q = [qb.evaluate(ctx) for qb in qualities]
            score = np.stack(
                [
                    np.where(np.broadcast_to(r.mask, shape), np.broadcast_to(r.values, shape), -np.inf)
                    for r in q
                ]
            ).astype(np.float64)
            best = np.argmax(score, axis=0)
            rasters = [p.evaluate(ctx) for p in parts]
            values = np.stack([np.broadcast_to(r.values, shape) for r in rasters])
            valid = np.stack([np.broadcast_to(r.mask, shape) for r in rasters])
            chosen = np.take_along_axis(values, best[None], axis=0)[0]
            ok = np.take_along_axis(valid, best[None], axis=0)[0] & np.isfinite(score.max(axis=0))
            return Raster(_typed(chosen, t), ok, ok)

        bands.append(EEBand(name, ptype, None, compute))
    return EEImage(bands=tuple(bands))


def to_bands(images: Sequence[EEImage]) -> EEImage:
    """``ImageCollection.toBands``: every image's bands, named ``<system:index>_<band>``."""
    bands: list[EEBand] = []
    for i, image in enumerate(images):
        index = image.property("system:index")
        prefix = str(index) if index is not None else str(i)
        bands.extend(replace(b, name=f"{prefix}_{b.name}") for b in image.bands)
    return EEImage(bands=tuple(bands))
