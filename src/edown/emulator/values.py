"""Earth Engine values other than images: dates, geometries, features, projections, filters, collections.

Each type renders itself the way ``getInfo`` does, so the client's deserialisation sees what it would see
from Earth Engine. Collections stay lazy until a query needs their elements; then the leading filters
bound what the catalogue enumerates (dates and region), and every filter is applied exactly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import shapely
from pyproj import Transformer
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box, shape
from shapely.geometry.base import BaseGeometry

from edown.crs import resolve_crs, same_crs
from edown.emulator.budget import charge
from edown.emulator.catalog import Catalog, CatalogError
from edown.emulator.images import EEImage, EvaluationError, load_image
from edown.emulator.model import mapping_json, parse_rfc3339

#: Earth Engine refuses to return more elements than this from a collection getInfo.
MAX_COLLECTION_ELEMENTS = 5000


@dataclass(frozen=True)
class EEDate:
    millis: int

    def to_info(self) -> dict[str, Any]:
        return {"type": "Date", "value": self.millis}


@dataclass(frozen=True)
class EEDateRange:
    start: int
    end: int

    def to_info(self) -> dict[str, Any]:
        return {"type": "DateRange", "dates": [self.start, self.end]}


@dataclass(frozen=True)
class EEProjection:
    crs: str
    transform: tuple[float, ...] | None = None

    def to_info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "Projection", "crs": self.crs}
        out["transform"] = list(self.transform) if self.transform else [1, 0, 0, 0, 1, 0]
        return out


@dataclass(frozen=True)
class EEGeometry:
    """A geometry, held in lon/lat (EPSG:4326) whatever CRS it was built in."""

    geom: BaseGeometry
    geodesic: bool = True

    def to_info(self) -> dict[str, Any]:
        out = mapping_json(self.geom)
        if not self.geodesic:
            out["geodesic"] = False
        return out


@dataclass(frozen=True)
class EEFeature:
    geometry: EEGeometry | None
    properties: dict[str, Any] = field(default_factory=dict)

    def to_info(self) -> dict[str, Any]:
        return {
            "type": "Feature",
            "geometry": self.geometry.to_info() if self.geometry else None,
            "properties": {k: to_info(v) for k, v in self.properties.items()},
        }


@dataclass(frozen=True)
class EEFunction:
    """A callable value: a client-side function definition or a parsed ``Image.expression``."""

    arg_names: tuple[str, ...]
    call: Callable[[dict[str, Any]], Any]

    def __call__(self, **kwargs: Any) -> Any:
        return self.call(kwargs)


# ---- geometry constructors ----------------------------------------------------------------------------


def to_lonlat(geom: BaseGeometry, crs: str | None) -> BaseGeometry:
    if crs is None or same_crs(crs, "EPSG:4326"):
        return geom
    t = Transformer.from_crs(resolve_crs(crs), "EPSG:4326", always_xy=True)
    return shapely.transform(geom, t.transform, interleaved=False)


def geometry_from_geojson(obj: dict[str, Any]) -> BaseGeometry:
    try:
        geom = shape(obj)
    except Exception as exc:
        raise EvaluationError(f"Invalid GeoJSON geometry: {exc}") from None
    return geom


def make_polygon(coordinates: Any, crs: str | None, multi: bool = False) -> BaseGeometry:
    try:
        if multi:
            polys = [Polygon(p[0], p[1:]) for p in coordinates]
            geom: BaseGeometry = MultiPolygon(polys)
        else:
            rings = coordinates
            if rings and isinstance(rings[0][0], int | float):
                rings = [rings]
            geom = Polygon(rings[0], rings[1:])
    except Exception as exc:
        raise EvaluationError(f"Geometry.Polygon: Invalid coordinates: {exc}") from None
    return to_lonlat(geom, crs)


def make_rectangle(coordinates: Any, crs: str | None) -> BaseGeometry:
    flat = (
        [c for pair in coordinates for c in pair]
        if coordinates and isinstance(coordinates[0], list)
        else coordinates
    )
    if len(flat) != 4:
        raise EvaluationError("Geometry.Rectangle: Expected 4 coordinates (xmin, ymin, xmax, ymax).")
    x0, y0, x1, y1 = (float(v) for v in flat)
    return to_lonlat(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), crs)


def make_point(coordinates: Sequence[float], crs: str | None) -> BaseGeometry:
    return to_lonlat(Point(float(coordinates[0]), float(coordinates[1])), crs)


def make_linestring(coordinates: Any, crs: str | None) -> BaseGeometry:
    return to_lonlat(LineString(coordinates), crs)


# ---- geometry measures ---------------------------------------------------------------------------


def geodesic_area(geometry: BaseGeometry) -> float:
    """Area in square metres on the WGS84 ellipsoid (points and lines: 0), as ``Geometry.area``."""
    from pyproj import Geod

    if geometry.area == 0:
        return 0.0
    area, _ = Geod(ellps="WGS84").geometry_area_perimeter(geometry)
    return abs(float(area))


def buffer_metres(geometry: BaseGeometry, distance: float) -> BaseGeometry:
    """``Geometry.buffer`` by ``distance`` metres (negative shrinks), computed in an azimuthal equidistant
    projection centred on the geometry, so distances are true ones near it."""
    centre = geometry.centroid
    local = f"+proj=aeqd +lat_0={centre.y} +lon_0={centre.x} +datum=WGS84 +units=m"
    forward = Transformer.from_crs("EPSG:4326", local, always_xy=True)
    back = Transformer.from_crs(local, "EPSG:4326", always_xy=True)
    projected = shapely.transform(geometry, forward.transform, interleaved=False)
    return shapely.transform(projected.buffer(distance, quad_segs=16), back.transform, interleaved=False)


# ---- dates --------------------------------------------------------------------------------------------


def to_millis(value: Any) -> int:
    """A date argument (EEDate, number of ms, or ISO string) in milliseconds since the epoch."""
    if isinstance(value, EEDate):
        return value.millis
    if isinstance(value, bool):
        raise EvaluationError(f"Date: Invalid date value {value!r}.")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        try:
            return parse_rfc3339(value)
        except ValueError:
            raise EvaluationError(f"Date: Unable to parse date string '{value}'.") from None
    raise EvaluationError(f"Date: Invalid date value {value!r}.")


def advance(millis: int, delta: float, unit: str) -> int:
    unit = unit.lower().rstrip("s")
    fixed = {"second": 1000, "minute": 60_000, "hour": 3_600_000, "day": 86_400_000, "week": 604_800_000}
    if unit in fixed:
        return int(millis + delta * fixed[unit])
    stamp = dt.datetime.fromtimestamp(millis / 1000, tz=dt.timezone.utc)
    months = int(delta) * (12 if unit == "year" else 1) if unit in ("year", "month") else None
    if months is None:
        raise EvaluationError(f"Date.advance: Unknown unit '{unit}'.")
    month_index = stamp.month - 1 + months
    year = stamp.year + month_index // 12
    month = month_index % 12 + 1
    day = min(
        stamp.day,
        [
            31,
            29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28,
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ][month - 1],
    )
    return int(stamp.replace(year=year, month=month, day=day).timestamp() * 1000)


# ---- elements -----------------------------------------------------------------------------------------


def element_property(element: Any, name: str) -> Any:
    if isinstance(element, EEImage):
        return element.property(name)
    if isinstance(element, EEFeature):
        return element.properties.get(name)
    if isinstance(element, EECollection):
        return element.properties().get(name)
    raise EvaluationError(f"Element.get: Expected an element, got {type(element).__name__}.")


def element_geometry(element: Any) -> BaseGeometry | None:
    if isinstance(element, EEImage):
        return element.footprint
    if isinstance(element, EEFeature):
        return element.geometry.geom if element.geometry else None
    return None


def comparable(value: Any) -> Any:
    if isinstance(value, EEDate):
        return value.millis
    return value


# ---- filters ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """What a filter guarantees about matching images: start time in ``[start, end)`` and region."""

    start: int | None = None
    end: int | None = None
    region: BaseGeometry | None = None
    #: ``system:index`` equality: the one image the catalogue needs to look at.
    index: str | None = None

    def meet(self, other: Bounds) -> Bounds:
        start = max((v for v in (self.start, other.start) if v is not None), default=None)
        end = min((v for v in (self.end, other.end) if v is not None), default=None)
        region = (
            self.region
            if other.region is None
            else (other.region if self.region is None else self.region.intersection(other.region))
        )
        return Bounds(start, end, region, self.index if self.index is not None else other.index)


class EEFilter:
    def test(self, element: Any) -> bool:
        raise NotImplementedError

    def bounds(self) -> Bounds:
        return Bounds()

    def to_info(self) -> dict[str, Any]:
        return {"type": "Filter", "filter": type(self).__name__}


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "lessThan": lambda a, b: a < b,
    "lessThanOrEquals": lambda a, b: a <= b,
    "greaterThan": lambda a, b: a > b,
    "greaterThanOrEquals": lambda a, b: a >= b,
    "equals": lambda a, b: a == b,
    "eq": lambda a, b: a == b,
    "notEquals": lambda a, b: a != b,
    "neq": lambda a, b: a != b,
    "stringContains": lambda a, b: isinstance(a, str) and isinstance(b, str) and b in a,
    "stringStartsWith": lambda a, b: isinstance(a, str) and isinstance(b, str) and a.startswith(b),
    "stringEndsWith": lambda a, b: isinstance(a, str) and isinstance(b, str) and a.endswith(b),
    "inList": lambda a, b: isinstance(b, list) and a in b,
    "contains": lambda a, b: isinstance(a, list) and b in a,
}


@dataclass(frozen=True)
class CompareFilter(EEFilter):
    op: str
    left_field: str | None
    left_value: Any
    right_field: str | None
    right_value: Any

    def test(self, element: Any) -> bool:
        a = element_property(element, self.left_field) if self.left_field else self.left_value
        b = element_property(element, self.right_field) if self.right_field else self.right_value
        a, b = comparable(a), comparable(b)
        if a is None or b is None:
            return False
        try:
            return bool(_OPS[self.op](a, b))
        except TypeError:
            return False

    def bounds(self) -> Bounds:
        if (
            self.left_field == "system:index"
            and self.right_field is None
            and self.op in ("equals", "eq")
            and isinstance(self.right_value, str)
        ):
            return Bounds(index=self.right_value)
        if self.left_field == "system:time_start" and self.right_field is None:
            value = comparable(self.right_value)
            if isinstance(value, int | float):
                if self.op in ("greaterThanOrEquals",):
                    return Bounds(start=int(value))
                if self.op == "greaterThan":
                    return Bounds(start=int(value) + 1)
                if self.op == "lessThan":
                    return Bounds(end=int(value))
                if self.op == "lessThanOrEquals":
                    return Bounds(end=int(value) + 1)
        return Bounds()


@dataclass(frozen=True)
class DateRangeFilter(EEFilter):
    """``Filter.dateRangeContains``: a field's time inside a date range ``[start, end)``."""

    start: int
    end: int
    field: str

    def test(self, element: Any) -> bool:
        value = comparable(element_property(element, self.field))
        return isinstance(value, int | float) and self.start <= value < self.end

    def bounds(self) -> Bounds:
        if self.field == "system:time_start":
            return Bounds(start=self.start, end=self.end)
        return Bounds()


@dataclass(frozen=True)
class RangeFilter(EEFilter):
    field: str
    lo: Any
    hi: Any

    def test(self, element: Any) -> bool:
        value = comparable(element_property(element, self.field))
        try:
            return value is not None and comparable(self.lo) <= value <= comparable(self.hi)
        except TypeError:
            return False


@dataclass(frozen=True)
class IntersectsFilter(EEFilter):
    geometry: BaseGeometry
    contained: bool = False

    def test(self, element: Any) -> bool:
        geom = element_geometry(element)
        if geom is None:
            return False
        return bool(self.geometry.within(geom) if self.contained else geom.intersects(self.geometry))

    def bounds(self) -> Bounds:
        return Bounds(region=self.geometry)


@dataclass(frozen=True)
class CalendarFilter(EEFilter):
    start: int
    end: int
    field: str

    def test(self, element: Any) -> bool:
        millis = comparable(element_property(element, "system:time_start"))
        if not isinstance(millis, int | float):
            return False
        stamp = dt.datetime.fromtimestamp(millis / 1000, tz=dt.timezone.utc)
        value = {
            "year": stamp.year,
            "month": stamp.month,
            "week_of_year": stamp.isocalendar()[1],
            "day_of_year": stamp.timetuple().tm_yday,
            "day_of_month": stamp.day,
            "day_of_week": stamp.weekday(),
            "hour": stamp.hour,
            "minute": stamp.minute,
        }.get(self.field)
        if value is None:
            raise EvaluationError(f"Filter.calendarRange: Unknown field '{self.field}'.")
        if self.start <= self.end:
            return self.start <= value <= self.end
        return value >= self.start or value <= self.end


@dataclass(frozen=True)
class AndFilter(EEFilter):
    filters: tuple[EEFilter, ...]

    def test(self, element: Any) -> bool:
        return all(f.test(element) for f in self.filters)

    def bounds(self) -> Bounds:
        out = Bounds()
        for f in self.filters:
            out = out.meet(f.bounds())
        return out


@dataclass(frozen=True)
class OrFilter(EEFilter):
    filters: tuple[EEFilter, ...]

    def test(self, element: Any) -> bool:
        return any(f.test(element) for f in self.filters)


@dataclass(frozen=True)
class NotFilter(EEFilter):
    inner: EEFilter

    def test(self, element: Any) -> bool:
        return not self.inner.test(element)


def geometry_argument(value: Any) -> BaseGeometry:
    if isinstance(value, EEGeometry):
        return value.geom
    if isinstance(value, EEFeature) and value.geometry is not None:
        return value.geometry.geom
    if isinstance(value, EEImage) and value.footprint is not None:
        return value.footprint
    if isinstance(value, dict) and "type" in value:
        return geometry_from_geojson(value)
    raise EvaluationError(f"Expected a geometry, got {type(value).__name__}.")


# ---- collections --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EECollection:
    """An image collection: a catalogue source or explicit images, then filters, maps and limits in order."""

    catalog: Catalog = field(compare=False, repr=False)
    source: str | None = None
    images: tuple[Any, ...] | None = None
    ops: tuple[tuple[str, Any], ...] = ()
    #: ``ImageCollection`` or ``FeatureCollection`` (what ``getInfo`` calls it).
    kind: str = "ImageCollection"

    def properties(self) -> dict[str, Any]:
        """The collection's own properties (a collection is an element too), ``system:id`` included."""
        props: dict[str, Any] = {}
        if self.source is not None:
            props.update(self.catalog.collection(self.source).to_info_header()["properties"])
            props["system:id"] = self.source
        for op, arg in self.ops:
            if op == "set":
                props[arg[0]] = arg[1]
        return props

    def then(self, op: str, arg: Any) -> EECollection:
        return EECollection(self.catalog, self.source, self.images, (*self.ops, (op, arg)), self.kind)

    def elements(self) -> list[Any]:
        leading = Bounds()
        for op, arg in self.ops:
            if op != "filter":
                break
            leading = leading.meet(arg.bounds())
        items: list[Any]
        if self.source is not None:
            items = []
            if leading.index is not None:
                # Linking by system:index (Cloud Score+ to S2...): one look-up, as EE's index makes it.
                with contextlib.suppress(CatalogError):
                    items.append(load_image(self.catalog.image(f"{self.source}/{leading.index}")))
            else:
                # Charged one by one: a query without a region enumerates the whole world, slowly.
                for asset in self.catalog.query(self.source, leading.start, leading.end, leading.region):
                    charge()
                    items.append(load_image(asset))
        else:
            items = list(self.images or ())
            charge(len(items))
        for op, arg in self.ops:
            if op == "filter":
                items = [el for el in items if arg.test(el)]
            elif op == "map":
                mapped = [arg(el) for el in items]
                items = [m for m in mapped if m is not None]
            elif op == "limit":
                count, key, ascending = arg
                if key is not None:
                    items = sorted(
                        items,
                        key=lambda el: _sort_key(element_property(el, key)),
                        reverse=not ascending,
                    )
                if count is not None:
                    items = items[: int(count)]
            elif op == "merge":
                items = items + arg.elements()
            # Every element produced is a step: a collection merged with itself doubles per level.
            charge(len(items))
        return items

    def to_info(self) -> dict[str, Any]:
        elements = self.elements()
        if len(elements) > MAX_COLLECTION_ELEMENTS:
            raise EvaluationError(
                f"Collection query aborted after accumulating over {MAX_COLLECTION_ELEMENTS} elements."
            )
        if self.source is not None:
            header = self.catalog.collection(self.source).to_info_header()
        else:
            header = (
                {"type": self.kind, "bands": []} if self.kind == "ImageCollection" else {"type": self.kind}
            )
        own = {k: v for k, v in self.properties().items() if k != "system:id"}
        if own:
            header["properties"] = {k: to_info(v) for k, v in own.items()}
        header["features"] = [to_info(el) for el in elements]
        return header


def _sort_key(value: Any) -> tuple[int, Any]:
    value = comparable(value)
    if value is None:
        return (1, 0)
    return (0, value)


def to_info(value: Any) -> Any:
    """The ``getInfo`` JSON of any evaluated value."""
    if hasattr(value, "to_info"):
        return value.to_info()
    if isinstance(value, list | tuple):
        return [to_info(v) for v in value]
    if isinstance(value, dict):
        return {k: to_info(v) for k, v in value.items()}
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return value
    return value


def flatten_filters(filters: Iterable[Any]) -> tuple[EEFilter, ...]:
    out = []
    for f in filters:
        if not isinstance(f, EEFilter):
            raise EvaluationError(f"Filter.and: Expected a Filter, got {type(f).__name__}.")
        out.append(f)
    return tuple(out)


_FIELD_RE = re.compile(r"^[\w:.\-]+$")


def check_field(name: Any, function: str) -> str:
    if not isinstance(name, str) or not _FIELD_RE.match(name):
        raise EvaluationError(f"{function}: Invalid field name {name!r}.")
    return name
