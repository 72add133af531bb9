"""Lazy image algebra: what ``Image.load(...).select(...).multiply(...)`` means, band by band, on a grid.

An :class:`EEImage` is a list of :class:`EEBand`; each band knows its name, declared pixel type, native
grid and how to *evaluate* itself on a request grid. Nothing is computed until ``getPixels`` or
``computePixels`` asks for a grid; then every band is sampled (nearest neighbour, as Earth Engine does
by default) from its native grid onto the request grid. Masks follow Earth Engine's rules: masked
pixels are served as zeros; binary operations keep only pixels valid in both inputs; ``unmask`` with
``sameFootprint=True`` fills only inside the input's footprint.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry.base import BaseGeometry

from edown.crs import resolve_crs, same_crs
from edown.emulator.budget import charge
from edown.emulator.model import Grid, ImageAsset, PixelType
from edown.emulator.pixels import BandReader, Positions


class EvaluationError(Exception):
    """A computation Earth Engine would refuse (HTTP 400), with EE's wording where known."""


# ---- request grid and per-request cache ---------------------------------------------------------------


#: Rasters of one request kept for reuse, at most this many bytes; beyond, bands are evaluated afresh
#: (charged to the request's budget each time), so memory stays bounded whatever the expression.
RASTER_MEMO_BYTES = 256 * 1024 * 1024


@dataclass
class EvalContext:
    """One pixel request: its grid plus caches shared by all bands evaluated for it.

    Every band is evaluated once per request: an expression graph shares subtrees (``y.add(y)``), and
    evaluating each use afresh would double the work per level of sharing.
    """

    grid: Grid
    _positions: dict[Grid, Positions] = field(default_factory=dict)
    _readers: dict[tuple[str, Grid], BandReader] = field(default_factory=dict)
    _rasters: dict[int, tuple[Evaluator, Raster]] = field(default_factory=dict)
    _raster_bytes: int = 0

    def evaluate(self, band: EEBand) -> Raster:
        """``band`` on this request's grid, computed at most once (while the memo has room)."""
        key = id(band.compute)
        hit = self._rasters.get(key)
        if hit is not None:
            return hit[1]
        charge()
        raster = band.compute(self)
        size = raster.values.nbytes + raster.mask.nbytes + raster.footprint.nbytes
        if self._raster_bytes + size <= RASTER_MEMO_BYTES:
            # The evaluator is kept alongside so that its id cannot be reused while the entry lives.
            self._rasters[key] = (band.compute, raster)
            self._raster_bytes += size
        return raster

    @property
    def shape(self) -> tuple[int, int]:
        return (self.grid.height, self.grid.width)

    def positions_for(self, native: Grid) -> Positions:
        """Native row/column of every request pixel centre (nearest neighbour)."""
        if native not in self._positions:
            self._positions[native] = _map_positions(self.grid, native)
        return self._positions[native]

    def reader(self, asset: ImageAsset, native: Grid) -> BandReader:
        key = (asset.id, native)
        if key not in self._readers:
            self._readers[key] = BandReader(asset, self.positions_for(native))
        return self._readers[key]

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Request pixel centres in the request CRS, as broadcastable (H,1) and (1,W) or full arrays."""
        sx, shx, tx, shy, sy, ty = self.grid.transform
        j = np.arange(self.grid.width, dtype=np.float64) + 0.5
        i = np.arange(self.grid.height, dtype=np.float64) + 0.5
        if shx == 0 and shy == 0:
            return (tx + j * sx)[None, :], (ty + i * sy)[:, None]
        jj, ii = np.meshgrid(j, i)
        return tx + jj * sx + ii * shx, ty + jj * shy + ii * sy


def _map_positions(request: Grid, native: Grid) -> Positions:
    sx, _, tx, _, sy, ty = request.transform
    nsx, nshx, ntx, nshy, nsy, nty = native.transform
    if same_crs(request.crs, native.crs) and not request.has_shear and not native.has_shear:
        j = np.arange(request.width, dtype=np.float64) + 0.5
        i = np.arange(request.height, dtype=np.float64) + 0.5
        cols = np.floor(((tx + j * sx) - ntx) / nsx).astype(np.int64)
        rows = np.floor(((ty + i * sy) - nty) / nsy).astype(np.int64)
        return Positions(rows, cols, True)
    ctx = EvalContext(request)
    xs, ys = ctx.centres()
    xs, ys = np.broadcast_arrays(xs, ys)
    transformer = Transformer.from_crs(resolve_crs(request.crs), resolve_crs(native.crs), always_xy=True)
    nx, ny = transformer.transform(xs, ys)
    nx = np.asarray(nx, dtype=np.float64)
    ny = np.asarray(ny, dtype=np.float64)
    if nshx or nshy:
        det = nsx * nsy - nshx * nshy
        u = ((nx - ntx) * nsy - (ny - nty) * nshx) / det
        v = ((ny - nty) * nsx - (nx - ntx) * nshy) / det
    else:
        u = (nx - ntx) / nsx
        v = (ny - nty) / nsy
    bad = ~(np.isfinite(u) & np.isfinite(v))
    cols = np.where(bad, -1, np.floor(np.where(bad, 0, u))).astype(np.int64)
    rows = np.where(bad, -1, np.floor(np.where(bad, 0, v))).astype(np.int64)
    return Positions(rows, cols, False)


# ---- rasters and bands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raster:
    """One evaluated band on the request grid: values, mask (has data) and footprint (could have data)."""

    values: np.ndarray
    mask: np.ndarray
    footprint: np.ndarray


Evaluator = Callable[[EvalContext], Raster]


@dataclass(frozen=True)
class EEBand:
    """One band of an image value; ``compute`` makes its raster on a request grid (see ``evaluate``)."""

    name: str
    pixel_type: PixelType
    grid: Grid | None
    compute: Evaluator = field(compare=False, repr=False)

    def evaluate(self, ctx: EvalContext) -> Raster:
        return ctx.evaluate(self)

    def to_info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.name, "data_type": self.pixel_type.to_info()}
        grid = self.grid or DEFAULT_GRID
        out.update(grid.to_info())
        return out


#: Earth Engine's default projection for computed images with no native grid (constants).
DEFAULT_GRID = Grid(crs="EPSG:4326", transform=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0))


@dataclass(frozen=True)
class EEImage:
    """An image value: bands plus the metadata ``getInfo`` reports."""

    bands: tuple[EEBand, ...]
    properties: Mapping[str, Any] = field(default_factory=dict)
    image_id: str | None = None
    version: int | None = None
    footprint: BaseGeometry | None = None
    asset: ImageAsset | None = None

    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    def with_bands(self, bands: Sequence[EEBand], keep_identity: bool = True) -> EEImage:
        if keep_identity:
            return replace(self, bands=tuple(bands))
        # Like Earth Engine, per-pixel math drops the id and the properties (hence copyProperties).
        return EEImage(bands=tuple(bands), footprint=self.footprint)

    def property(self, name: str) -> Any:
        if name == "system:id":
            return self.image_id
        if name in self.properties:  # set on the image: it overrides the asset's, as in to_info
            return self.properties[name]
        if self.asset is not None:
            return self.asset.property_value(name)
        return None

    def to_info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "Image", "bands": [b.to_info() for b in self.bands]}
        if self.image_id is not None:
            out["id"] = self.image_id
        if self.version is not None:
            out["version"] = self.version
        props: dict[str, Any] = {}
        if self.asset is not None:
            props.update(self.asset.to_info()["properties"])
        props.update(self.properties)
        if props:
            out["properties"] = props
        return out


@dataclass(frozen=True)
class NativeRead:
    """A catalogue band read by nearest neighbour onto the request grid (``resample`` can replace it)."""

    asset: ImageAsset
    band_id: str
    grid: Grid
    is_integer: bool

    def __call__(self, ctx: EvalContext) -> Raster:
        values, valid = ctx.reader(self.asset, self.grid).read(self.band_id)
        return Raster(values, valid, valid)


def load_image(asset: ImageAsset) -> EEImage:
    """``Image.load``: one lazily-read band per catalogue band."""
    bands = []
    for info in asset.bands:
        read = NativeRead(asset, info.id, info.grid, info.pixel_type.is_integer)
        bands.append(EEBand(info.id, info.pixel_type, info.grid, read))
    return EEImage(
        bands=tuple(bands),
        image_id=asset.id,
        version=asset.version,
        footprint=asset.footprint.lonlat,
        asset=asset,
    )


def constant_image(value: Any) -> EEImage:
    """``Image.constant``: a number gives one band ``constant``; a list gives ``constant_0..n``."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise EvaluationError("Image.constant: at least one value is required.")
    bands = []
    for i, v in enumerate(values):
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise EvaluationError(f"Image.constant: expected a number, got {v!r}.")
        name = "constant" if len(values) == 1 else f"constant_{i}"
        if isinstance(v, int):
            ptype = PixelType("int", int(v), int(v))
            arr_value: int | float = int(v)
        else:
            ptype = PixelType("double")
            arr_value = float(v)

        def evaluate(ctx: EvalContext, c: int | float = arr_value) -> Raster:
            shape = ctx.shape
            arr = np.full(shape, c, dtype=np.int64 if isinstance(c, int) else np.float64)
            ones = np.ones(shape, dtype=bool)
            return Raster(arr, ones, ones)

        bands.append(EEBand(name, ptype, None, evaluate))
    return EEImage(bands=tuple(bands))


def as_image(value: Any) -> EEImage:
    """Promote numbers (and lists of numbers) to constant images, as the ee client would."""
    if isinstance(value, EEImage):
        return value
    if isinstance(value, int | float | list) and not isinstance(value, bool):
        return constant_image(value)
    raise EvaluationError(f"Expected an Image, got {type(value).__name__}.")


# ---- band selection and naming ----------------------------------------------------------------------


def select(image: EEImage, selectors: Sequence[Any], new_names: Sequence[str] | None = None) -> EEImage:
    """``Image.select``: selectors are band indices or regular expressions matched against whole names."""
    if not image.bands:
        raise EvaluationError("Image.select: Band pattern was applied to an Image with no bands.")
    chosen: list[EEBand] = []
    names = image.band_names()
    for sel in selectors:
        if isinstance(sel, int | float) and not isinstance(sel, bool):
            idx = int(sel)
            if not 0 <= idx < len(names):
                raise EvaluationError(
                    f"Image.select: Band index {idx} out of bounds (image has {len(names)} bands)."
                )
            chosen.append(image.bands[idx])
            continue
        if not isinstance(sel, str):
            raise EvaluationError(f"Image.select: Invalid band selector {sel!r}.")
        try:
            pattern = re.compile(sel)
        except re.error:
            raise EvaluationError(f"Image.select: Invalid band pattern '{sel}'.") from None
        matched = [b for b in image.bands if pattern.fullmatch(b.name)]
        if not matched:
            raise EvaluationError(f"Image.select: Pattern '{sel}' did not match any bands.")
        chosen.extend(matched)
    if new_names is not None:
        if len(new_names) != len(chosen):
            raise EvaluationError(
                f"Image.select: Number of new names ({len(new_names)}) does not match the number of bands "
                f"selected ({len(chosen)})."
            )
        chosen = [replace(b, name=str(n)) for b, n in zip(chosen, new_names, strict=True)]
    return image.with_bands(chosen)


def rename(image: EEImage, names: Sequence[str]) -> EEImage:
    if len(names) != len(image.bands):
        raise EvaluationError(
            f"Image.rename: The number of names ({len(names)}) must match the number of bands ({len(image.bands)})."
        )
    return image.with_bands([replace(b, name=str(n)) for b, n in zip(image.bands, names, strict=True)])


def add_bands(
    dst: EEImage, src: EEImage, names: Sequence[str] | None = None, overwrite: bool = False
) -> EEImage:
    """``Image.addBands``: append ``src``'s bands (optionally only ``names``), replacing on ``overwrite``
    and otherwise renaming a newcomer whose name is taken (``B4`` becomes ``B4_1``), as EE does."""
    incoming = list(src.bands)
    if names is not None:
        wanted = set(names)
        incoming = [b for b in incoming if b.name in wanted]
    bands = list(dst.bands)
    for band in incoming:
        existing = [i for i, b in enumerate(bands) if b.name == band.name]
        if existing and overwrite:
            bands[existing[0]] = band
        elif existing:
            # EE keeps both: the newcomer is renamed with the first free numeric suffix (B4 -> B4_1).
            taken = {b.name for b in bands}
            k = 1
            while f"{band.name}_{k}" in taken:
                k += 1
            bands.append(replace(band, name=f"{band.name}_{k}"))
        else:
            bands.append(band)
    return dst.with_bands(bands)


# ---- types --------------------------------------------------------------------------------------------


def union_type(a: PixelType, b: PixelType) -> PixelType:
    """The union of two pixel types (EE: "the type of the output pixels is the union of the input types")."""
    if "double" in (a.precision, b.precision):
        return PixelType("double")
    if "float" in (a.precision, b.precision):
        return PixelType("float")
    return PixelType("int", min(_lo(a), _lo(b)), max(_hi(a), _hi(b)))


def _lo(t: PixelType) -> int:
    return t.min if t.min is not None else -(2**31)


def _hi(t: PixelType) -> int:
    return t.max if t.max is not None else 2**31 - 1


def _arith_type(op: str, a: PixelType, b: PixelType) -> PixelType:
    if not (a.is_integer and b.is_integer):
        return union_type(a, b)
    if op == "divide":
        return PixelType("float")
    corners: list[int]
    if op == "add":
        corners = [_lo(a) + _lo(b), _hi(a) + _hi(b)]
    elif op == "subtract":
        corners = [_lo(a) - _hi(b), _hi(a) - _lo(b)]
    elif op == "multiply":
        corners = [x * y for x in (_lo(a), _hi(a)) for y in (_lo(b), _hi(b))]
    else:
        return union_type(a, b)
    return PixelType("int", max(min(corners), -(2**63)), min(max(corners), 2**63 - 1))


CAST_TYPES: dict[str, PixelType] = {
    "toFloat": PixelType("float"),
    "float": PixelType("float"),
    "toDouble": PixelType("double"),
    "double": PixelType("double"),
    "toUint8": PixelType.of_dtype("uint8"),
    "toByte": PixelType.of_dtype("uint8"),
    "uint8": PixelType.of_dtype("uint8"),
    "toInt8": PixelType.of_dtype("int8"),
    "int8": PixelType.of_dtype("int8"),
    "toUint16": PixelType.of_dtype("uint16"),
    "uint16": PixelType.of_dtype("uint16"),
    "toInt16": PixelType.of_dtype("int16"),
    "toShort": PixelType.of_dtype("int16"),
    "int16": PixelType.of_dtype("int16"),
    "toUint32": PixelType.of_dtype("uint32"),
    "uint32": PixelType.of_dtype("uint32"),
    "toInt32": PixelType.of_dtype("int32"),
    "toInt": PixelType.of_dtype("int32"),
    "int": PixelType.of_dtype("int32"),
    "int32": PixelType.of_dtype("int32"),
    "toInt64": PixelType.of_dtype("int64"),
    "toLong": PixelType.of_dtype("int64"),
    "int64": PixelType.of_dtype("int64"),
}


def cast_values(values: np.ndarray, target: PixelType) -> np.ndarray:
    """EE casts: floats truncate toward zero, out-of-range values clamp to the type's limits."""
    if target.precision == "float":
        return values.astype(np.float32).astype(np.float64)
    if target.precision == "double":
        return values.astype(np.float64)
    lo, hi = _lo(target), _hi(target)
    if values.dtype.kind == "f":
        clean = np.where(np.isfinite(values), values, 0.0)
        return np.clip(np.trunc(clean), lo, hi).astype(np.int64)
    return np.clip(values.astype(np.int64), lo, hi)


def cast(image: EEImage, target: PixelType) -> EEImage:
    bands = []
    for band in image.bands:

        def evaluate(ctx: EvalContext, src: EEBand = band) -> Raster:
            r = src.evaluate(ctx)
            return Raster(cast_values(r.values, target), r.mask, r.footprint)

        bands.append(replace(band, pixel_type=target, compute=evaluate))
    return image.with_bands(bands)


def cast_per_band(image: EEImage, band_types: Mapping[str, Any]) -> EEImage:
    """``Image.cast({band: PixelType or precision})``."""
    out = image
    for band in image.bands:
        if band.name not in band_types:
            continue
        target = band_types[band.name]
        ptype = target if isinstance(target, PixelType) else CAST_TYPES.get(str(target))
        if ptype is None:
            raise EvaluationError(f"Image.cast: Unknown pixel type {target!r} for band '{band.name}'.")
        single = cast(EEImage(bands=(band,)), ptype).bands[0]
        out = out.with_bands([single if b.name == band.name else b for b in out.bands])
    return out


# ---- per-pixel operations -----------------------------------------------------------------------------


def _as_float(values: np.ndarray) -> np.ndarray:
    return values if values.dtype == np.float64 else values.astype(np.float64)


def _as_int(values: np.ndarray) -> np.ndarray:
    return values if values.dtype == np.int64 else values.astype(np.int64)


def _compute(op: str, a: np.ndarray, b: np.ndarray, is_int: bool) -> np.ndarray:
    if is_int and op in (
        "add",
        "subtract",
        "multiply",
        "max",
        "min",
        "bitwiseAnd",
        "bitwiseOr",
        "rightShift",
        "leftShift",
    ):
        x, y = _as_int(a), _as_int(b)
    else:
        x, y = _as_float(a), _as_float(b)
    with np.errstate(all="ignore"):
        if op == "add":
            return x + y
        if op == "subtract":
            return x - y
        if op == "multiply":
            return x * y
        if op == "divide":
            return np.where(y == 0, 0.0, x / np.where(y == 0, 1.0, y))
        if op == "max":
            return np.maximum(x, y)
        if op == "min":
            return np.minimum(x, y)
        if op == "pow":
            return np.power(x, y)
        if op == "bitwiseAnd":
            return np.bitwise_and(_as_int(a), _as_int(b))
        if op == "bitwiseOr":
            return np.bitwise_or(_as_int(a), _as_int(b))
        if op == "rightShift":
            return np.right_shift(_as_int(a), _as_int(b))
        if op == "leftShift":
            return np.left_shift(_as_int(a), _as_int(b))
        comparisons = {
            "gt": np.greater,
            "lt": np.less,
            "gte": np.greater_equal,
            "lte": np.less_equal,
            "eq": np.equal,
            "neq": np.not_equal,
        }
        if op in comparisons:
            return comparisons[op](x, y).astype(np.int64)
        if op == "and":
            return ((x != 0) & (y != 0)).astype(np.int64)
        if op == "or":
            return ((x != 0) | (y != 0)).astype(np.int64)
    raise EvaluationError(f"Unsupported binary operation {op}.")


BOOLEAN_OPS = {"gt", "lt", "gte", "lte", "eq", "neq", "and", "or"}
BITWISE_OPS = {"bitwiseAnd", "bitwiseOr", "rightShift", "leftShift"}


def binary(op: str, image1: Any, image2: Any) -> EEImage:
    """A per-pixel binary operation with EE's band matching, naming and masking rules."""
    a, b = as_image(image1), as_image(image2)
    na, nb = len(a.bands), len(b.bands)
    if na == 0 or nb == 0:
        raise EvaluationError(f"Image.{op}: Images must have at least one band.")
    if na != nb and na != 1 and nb != 1:
        raise EvaluationError(
            f"Image.{op}: Images must contain the same number of bands or only 1 band. Got {na} and {nb}."
        )
    count = max(na, nb)
    names_from = a if na >= nb else b
    bands = []
    for i in range(count):
        ba = a.bands[0 if na == 1 else i]
        bb = b.bands[0 if nb == 1 else i]
        if op in BOOLEAN_OPS:
            ptype = PixelType("int", 0, 1)
        elif op in BITWISE_OPS:
            if not (ba.pixel_type.is_integer and bb.pixel_type.is_integer):
                raise EvaluationError(f"Image.{op}: Bitwise operands must be integer images.")
            ptype = union_type(ba.pixel_type, bb.pixel_type)
        else:
            ptype = _arith_type(op, ba.pixel_type, bb.pixel_type)
        is_int = ptype.is_integer

        def evaluate(
            ctx: EvalContext, x: EEBand = ba, y: EEBand = bb, t: PixelType = ptype, integer: bool = is_int
        ) -> Raster:
            ra, rb = x.evaluate(ctx), y.evaluate(ctx)
            values = _compute(op, ra.values, rb.values, integer)
            if t.precision == "float":
                values = values.astype(np.float32).astype(np.float64)
            return Raster(values, ra.mask & rb.mask, ra.footprint & rb.footprint)

        grid = ba.grid or bb.grid
        bands.append(EEBand(names_from.bands[i].name, ptype, grid, evaluate))
    return a.with_bands(bands, keep_identity=False)


UNARY_FUNCS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "abs": np.abs,
    "sqrt": np.sqrt,
    "round": np.round,
    "floor": np.floor,
    "ceil": np.ceil,
    "exp": np.exp,
    "log": np.log,
    "log10": np.log10,
}


def unary(op: str, image: Any) -> EEImage:
    img = as_image(image)
    bands = []
    for band in img.bands:
        if op == "not":
            ptype = PixelType("int", 0, 1)
        elif op in ("abs", "round", "floor", "ceil") and band.pixel_type.is_integer:
            ptype = (
                band.pixel_type
                if op != "abs"
                else PixelType("int", 0, max(abs(_lo(band.pixel_type)), abs(_hi(band.pixel_type))))
            )
        else:
            ptype = PixelType("double") if band.pixel_type.precision == "double" else PixelType("float")

        def evaluate(ctx: EvalContext, src: EEBand = band, t: PixelType = ptype) -> Raster:
            r = src.evaluate(ctx)
            with np.errstate(all="ignore"):
                if op == "not":
                    values = (r.values == 0).astype(np.int64)
                elif t.is_integer:
                    values = _as_int(UNARY_FUNCS[op](r.values))
                else:
                    values = UNARY_FUNCS[op](_as_float(r.values))
                    if t.precision == "float":
                        values = values.astype(np.float32).astype(np.float64)
            return Raster(values, r.mask, r.footprint)

        bands.append(replace(band, pixel_type=ptype, compute=evaluate))
    return img.with_bands(bands, keep_identity=False)


def clamp(image: EEImage, low: float, high: float) -> EEImage:
    """``Image.clamp``: values limited to ``[low, high]``, the type unchanged."""
    bands = []
    for band in image.bands:

        def evaluate(ctx: EvalContext, src: EEBand = band) -> Raster:
            r = src.evaluate(ctx)
            return Raster(np.clip(r.values, low, high), r.mask, r.footprint)

        bands.append(replace(band, compute=evaluate))
    return image.with_bands(bands, keep_identity=False)


def normalized_difference(image: EEImage, band_names: Sequence[str] | None) -> EEImage:
    pair = list(band_names) if band_names else image.band_names()[:2]
    if len(pair) != 2:
        raise EvaluationError("Image.normalizedDifference: Exactly two band names are required.")
    first, second = select(image, [pair[0]]), select(image, [pair[1]])
    diff = binary("subtract", first, second)
    total = binary("add", first, second)
    nd = binary("divide", diff, total)
    band = replace(nd.bands[0], name="nd", pixel_type=PixelType("float"))
    return EEImage(bands=(band,), properties=dict(image.properties))


# ---- masks --------------------------------------------------------------------------------------------


def mask_of(image: EEImage) -> EEImage:
    """``Image.mask()``: each band's mask as 0/1 values."""
    bands = []
    for band in image.bands:

        def evaluate(ctx: EvalContext, src: EEBand = band) -> Raster:
            r = src.evaluate(ctx)
            ones = np.ones(r.mask.shape, dtype=bool)
            return Raster(r.mask.astype(np.float64), ones, r.footprint)

        bands.append(replace(band, pixel_type=PixelType("float"), compute=evaluate))
    return image.with_bands(bands)


def update_mask(image: EEImage, mask: Any) -> EEImage:
    """``Image.updateMask``: pixels stay valid only where ``mask`` is valid and non-zero."""
    m = as_image(mask)
    if len(m.bands) != 1 and len(m.bands) != len(image.bands):
        raise EvaluationError(
            f"Image.updateMask: Mask must have 1 band or the same number of bands as the image ({len(image.bands)})."
        )
    bands = []
    for i, band in enumerate(image.bands):
        mb = m.bands[0 if len(m.bands) == 1 else i]

        def evaluate(ctx: EvalContext, src: EEBand = band, mband: EEBand = mb) -> Raster:
            r, rm = src.evaluate(ctx), mband.evaluate(ctx)
            keep = rm.mask & (rm.values != 0)
            return Raster(r.values, r.mask & keep, r.footprint)

        bands.append(replace(band, compute=evaluate))
    return image.with_bands(bands)


def unmask(image: EEImage, value: Any = None, same_footprint: bool = True) -> EEImage:
    """``Image.unmask``: replace masked pixels by ``value`` (0 by default).

    With ``sameFootprint=True`` (EE's default) pixels outside the input's footprint stay masked, which is
    why an honest nodata needs ``sameFootprint=False``.
    """
    fill = as_image(0 if value is None else value)
    if len(fill.bands) != 1 and len(fill.bands) != len(image.bands):
        raise EvaluationError("Image.unmask: The value image must have 1 band or as many bands as the input.")
    bands = []
    for i, band in enumerate(image.bands):
        fb = fill.bands[0 if len(fill.bands) == 1 else i]
        ptype = union_type(band.pixel_type, fb.pixel_type)

        def evaluate(
            ctx: EvalContext, src: EEBand = band, fband: EEBand = fb, t: PixelType = ptype
        ) -> Raster:
            r, rf = src.evaluate(ctx), fband.evaluate(ctx)
            region = ~r.mask & rf.mask
            if same_footprint:
                region &= r.footprint
            if t.is_integer:
                values = np.where(region, _as_int(rf.values), _as_int(r.values))
            else:
                values = np.where(region, _as_float(rf.values), _as_float(r.values))
            return Raster(values, r.mask | region, r.footprint)

        bands.append(replace(band, pixel_type=ptype, compute=evaluate))
    return image.with_bands(bands)


def self_mask(image: EEImage) -> EEImage:
    return update_mask(image, image)


def where(image: EEImage, test: Any, value: Any) -> EEImage:
    t, v = as_image(test), as_image(value)
    bands = []
    for i, band in enumerate(image.bands):
        tb = t.bands[0 if len(t.bands) == 1 else i]
        vb = v.bands[0 if len(v.bands) == 1 else i]
        ptype = union_type(band.pixel_type, vb.pixel_type)

        def evaluate(
            ctx: EvalContext,
            src: EEBand = band,
            tband: EEBand = tb,
            vband: EEBand = vb,
            pt: PixelType = ptype,
        ) -> Raster:
            r, rt, rv = src.evaluate(ctx), tband.evaluate(ctx), vband.evaluate(ctx)
            use = rt.mask & (rt.values != 0)
            conv = _as_int if pt.is_integer else _as_float
            values = np.where(use, conv(rv.values), conv(r.values))
            return Raster(values, np.where(use, rv.mask, r.mask), r.footprint)

        bands.append(replace(band, pixel_type=ptype, compute=evaluate))
    return image.with_bands(bands)


def clip(image: EEImage, geometry_lonlat: BaseGeometry) -> EEImage:
    """``Image.clip``: mask every pixel whose centre is outside the geometry."""
    bands = []
    for band in image.bands:

        def evaluate(ctx: EvalContext, src: EEBand = band) -> Raster:
            r = src.evaluate(ctx)
            inside = inside_mask(ctx, geometry_lonlat)
            return Raster(r.values, r.mask & inside, r.footprint & inside)

        bands.append(replace(band, compute=evaluate))
    footprint = geometry_lonlat if image.footprint is None else image.footprint.intersection(geometry_lonlat)
    return replace(image, bands=tuple(bands), footprint=footprint)


def inside_mask(ctx: EvalContext, geometry_lonlat: BaseGeometry) -> np.ndarray:
    xs, ys = ctx.centres()
    xs, ys = np.broadcast_arrays(xs, ys)
    if not same_crs(ctx.grid.crs, "EPSG:4326"):
        to_ll = Transformer.from_crs(resolve_crs(ctx.grid.crs), "EPSG:4326", always_xy=True)
        lon, lat = to_ll.transform(xs, ys)
        xs, ys = np.asarray(lon), np.asarray(lat)
    return np.asarray(shapely.contains_xy(geometry_lonlat, xs, ys), dtype=bool)


# ---- output -------------------------------------------------------------------------------------------


def render(image: EEImage, ctx: EvalContext) -> list[tuple[str, np.ndarray]]:
    """Evaluate every band on the request grid: (name, values in the band's dtype, zeros where masked)."""
    out = []
    for band in image.bands:
        r = band.evaluate(ctx)
        dtype = band.pixel_type.numpy_dtype
        values = np.broadcast_to(r.values, ctx.shape)
        mask = np.broadcast_to(r.mask, ctx.shape)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            if values.dtype != dtype:
                if values.dtype.kind == "f":
                    values = np.trunc(np.where(np.isfinite(values), values, 0.0))
                values = np.clip(values, info.min, info.max).astype(dtype)
        elif values.dtype != dtype:
            values = values.astype(dtype)
        out.append((band.name, np.where(mask, values, np.zeros((), dtype=dtype))))
    return out
