"""The emulator's data model: pixel types, grids, bands and image assets, in Earth Engine's two dialects.

Earth Engine describes the same image twice: the REST API (``listAssets``, ``getAsset``) speaks proto3
JSON (``dataType.precision = "INT"``, ``grid.affineTransform``, zero fields omitted, RFC 3339 times),
while ``value:compute`` (``getInfo``) speaks the older JSON (``data_type.precision = "int"``,
``crs_transform`` lists, ``system:*`` properties). Both renderings live here so that every endpoint tells
the same story about an asset.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

EARTHENGINE_PUBLIC = "projects/earthengine-public/assets/"

# (numpy dtype, EE precision, min, max) for every integer type EE can declare.
_INT_TYPES: tuple[tuple[str, int, int], ...] = (
    ("uint8", 0, 255),
    ("int8", -128, 127),
    ("uint16", 0, 65535),
    ("int16", -32768, 32767),
    ("uint32", 0, 4294967295),
    ("int32", -2147483648, 2147483647),
    ("int64", -(2**63), 2**63 - 1),
)


@dataclass(frozen=True)
class PixelType:
    """An EE pixel type: ``precision`` plus, for integers, the value range that decides the numpy dtype."""

    precision: str  # "int" | "float" | "double"
    min: int | None = None
    max: int | None = None

    @staticmethod
    def of_dtype(dtype: str) -> PixelType:
        """The pixel type EE declares for data stored as ``dtype``."""
        if dtype == "float32":
            return PixelType("float")
        if dtype == "float64":
            return PixelType("double")
        for name, lo, hi in _INT_TYPES:
            if name == dtype:
                return PixelType("int", lo, hi)
        raise ValueError(f"no EE pixel type for dtype {dtype!r}")

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The smallest numpy dtype that holds every value of the declared range (as EE stores it)."""
        if self.precision == "float":
            return np.dtype("float32")
        if self.precision == "double":
            return np.dtype("float64")
        lo = 0 if self.min is None else self.min
        hi = 0 if self.max is None else self.max
        for name, tlo, thi in _INT_TYPES:
            if tlo <= lo and hi <= thi:
                return np.dtype(name)
        return np.dtype("float64")

    @property
    def is_integer(self) -> bool:
        return self.precision == "int"

    def to_rest(self) -> dict[str, Any]:
        out: dict[str, Any] = {"precision": self.precision.upper()}
        if self.is_integer:
            rng: dict[str, Any] = {}
            if self.min:
                rng["min"] = self.min
            if self.max:
                rng["max"] = self.max
            if rng:
                out["range"] = rng
        return out

    def to_info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "PixelType", "precision": self.precision}
        if self.is_integer:
            out["min"] = self.min
            out["max"] = self.max
        return out


@dataclass(frozen=True)
class Grid:
    """A pixel grid: CRS, EE-ordered affine ``(scaleX, shearX, translateX, shearY, scaleY, translateY)``
    and, for a finite grid, its dimensions."""

    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int = 0
    height: int = 0

    @property
    def scale_x(self) -> float:
        return self.transform[0]

    @property
    def scale_y(self) -> float:
        return self.transform[4]

    @property
    def has_shear(self) -> bool:
        return self.transform[1] != 0 or self.transform[3] != 0

    def to_log(self) -> dict[str, Any]:
        """The grid as the request log and captured bodies record it."""
        return {
            "crs": self.crs,
            "transform": list(self.transform),
            "width": self.width,
            "height": self.height,
        }

    def to_rest(self) -> dict[str, Any]:
        sx, shx, tx, shy, sy, ty = self.transform
        names = ("scaleX", "shearX", "translateX", "shearY", "scaleY", "translateY")
        affine = {k: _num(v) for k, v in zip(names, (sx, shx, tx, shy, sy, ty), strict=True) if v != 0}
        out: dict[str, Any] = {"affineTransform": affine, "crsCode": self.crs}
        if self.width or self.height:
            out["dimensions"] = {"width": self.width, "height": self.height}
        return out

    def to_info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"crs": self.crs, "crs_transform": [_num(v) for v in self.transform]}
        if self.width or self.height:
            out["dimensions"] = [self.width, self.height]
        return out


@dataclass(frozen=True)
class BandInfo:
    """One band of a catalogue image: its id, declared type, native grid and pixel recipe name."""

    id: str
    pixel_type: PixelType
    grid: Grid
    recipe: str
    pyramiding_policy: str = "MEAN"

    def to_rest(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dataType": self.pixel_type.to_rest(),
            "grid": self.grid.to_rest(),
            "pyramidingPolicy": self.pyramiding_policy,
        }

    def to_info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "data_type": self.pixel_type.to_info()}
        out.update(self.grid.to_info())
        return out


@dataclass(frozen=True)
class Footprint:
    """Where an image has data, in two forms that agree.

    ``lonlat`` is the polygon EE publishes (``system:footprint``) and that region filters intersect.
    ``halfplanes`` decide, exactly, whether a pixel centre in the image's native CRS is inside: each
    ``(a, b, c)`` keeps points with ``a*x + b*y + c >= 0``. ``mask_rule`` names a rule evaluated per pixel
    instead (``"sinusoidal"`` for MODIS' valid area, ``"land"`` for a land-only product); ``None`` with
    no half-planes means the whole grid has data.
    """

    lonlat: BaseGeometry
    halfplanes: tuple[tuple[float, float, float], ...] = ()
    mask_rule: str | None = None


@dataclass(frozen=True)
class ImageAsset:
    """One synthetic catalogue image, with everything the endpoints and the pixel recipes need."""

    id: str
    collection_id: str
    start_ms: int
    end_ms: int
    bands: tuple[BandInfo, ...]
    properties: Mapping[str, Any]
    footprint: Footprint
    version: int
    size_bytes: int
    #: Per-image inputs of the pixel recipes (see :mod:`edown.emulator.pixels`).
    seeds: Mapping[str, int] = field(default_factory=dict)

    @property
    def system_index(self) -> str:
        return self.id.rsplit("/", 1)[-1]

    @property
    def name(self) -> str:
        return EARTHENGINE_PUBLIC + self.id

    def band(self, band_id: str) -> BandInfo:
        for band in self.bands:
            if band.id == band_id:
                return band
        raise KeyError(band_id)

    def band_ids(self) -> list[str]:
        return [b.id for b in self.bands]

    def system_properties(self) -> dict[str, Any]:
        """``system:*`` properties as getInfo reports them."""
        return {
            "system:time_start": self.start_ms,
            "system:time_end": self.end_ms,
            "system:index": self.system_index,
            "system:asset_size": self.size_bytes,
            "system:footprint": footprint_ring(self.footprint.lonlat),
            "system:version": self.version,
        }

    def property_value(self, name: str) -> Any:
        """A property by its EE name, system ones included (``None`` when absent)."""
        if name.startswith("system:"):
            return self.system_properties().get(name)
        return self.properties.get(name)

    def to_rest(self, view: str = "FULL") -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "IMAGE",
            "name": self.name,
            "id": self.id,
            "updateTime": rfc3339(self.version // 1000),
            "startTime": rfc3339(self.start_ms),
            "endTime": rfc3339(self.end_ms),
        }
        if view != "BASIC":
            out["properties"] = dict(self.properties)
            out["geometry"] = mapping_json(self.footprint.lonlat)
            out["bands"] = [b.to_rest() for b in self.bands]
            out["sizeBytes"] = str(self.size_bytes)
        return out

    def to_info(self) -> dict[str, Any]:
        props = dict(self.properties)
        props.update(self.system_properties())
        props.pop("system:version")
        return {
            "type": "Image",
            "bands": [b.to_info() for b in self.bands],
            "id": self.id,
            "version": self.version,
            "properties": props,
        }


def _num(value: float) -> float | int:
    """Render integral floats as ints, as EE's JSON does (``10`` not ``10.0``)."""
    if float(value).is_integer() and abs(value) < 2**53:
        return int(value)
    return float(value)


def rfc3339(ms: int) -> str:
    """RFC 3339 UTC time as proto3 JSON writes it (fraction only when non-zero)."""
    stamp = dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S")
    frac = ms % 1000
    return f"{text}.{frac:03d}Z" if frac else f"{text}Z"


def parse_rfc3339(text: str) -> int:
    """Milliseconds since the epoch for an RFC 3339 / ISO 8601 timestamp or date (UTC unless an offset).

    Raises :class:`ValueError` for anything else.
    """
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    stamp = dt.datetime.fromisoformat(value)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return round(stamp.timestamp() * 1000)


def mapping_json(geom: BaseGeometry) -> dict[str, Any]:
    """GeoJSON of a shapely geometry with plain lists (JSON-serialisable, stable)."""
    return _listify(mapping(geom))  # type: ignore[no-any-return]


def footprint_ring(geom: BaseGeometry) -> dict[str, Any]:
    """The ``system:footprint`` form: a LinearRing of the polygon's exterior."""
    coords = [[float(x), float(y)] for x, y in geom.exterior.coords]
    return {"type": "LinearRing", "coordinates": coords}


def _listify(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_listify(v) for v in value]
    return value
