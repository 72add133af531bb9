"""Evaluate the expression graphs the ``ee`` client sends to ``value:compute`` and ``computePixels``.

The wire format (``ee.serializer.encode(obj, for_cloud_api=True)``) is ``{"result": key, "values": {key:
ValueNode}}`` where repeated subtrees are shared through ``valueReference``. Functions are looked up by
their Earth Engine names; a function we do not implement answers HTTP 400 naming it, so a client never
gets a silently wrong answer from the emulator.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable
from typing import Any

import shapely.affinity
import shapely.geometry
from shapely.geometry import Point
from shapely.geometry.base import BaseGeometry

from edown.crs import crs_is_geographic
from edown.emulator import images as im
from edown.emulator import projections, scalars
from edown.emulator.budget import charge
from edown.emulator.catalog import AssetNotFoundError, Catalog
from edown.emulator.images import EEImage, EvaluationError
from edown.emulator.neighbourhoods import fast_distance_transform
from edown.emulator.reducers import (
    REDUCER_KINDS,
    EEReducer,
    composite,
    get_region,
    make_reducer,
    mosaic,
    quality_mosaic,
    reduce_bands,
    reduce_columns,
    reduce_region,
    sample_pixels,
    to_bands,
)
from edown.emulator.regions import DEFAULT_MAX_PIXELS, METRES_PER_DEGREE
from edown.emulator.values import (
    AndFilter,
    CalendarFilter,
    CompareFilter,
    DateRangeFilter,
    EECollection,
    EEDate,
    EEDateRange,
    EEFeature,
    EEFilter,
    EEFunction,
    EEGeometry,
    EEProjection,
    IntersectsFilter,
    NotFilter,
    OrFilter,
    RangeFilter,
    advance,
    buffer_metres,
    check_field,
    element_property,
    flatten_filters,
    geodesic_area,
    geometry_argument,
    make_linestring,
    make_point,
    make_polygon,
    make_rectangle,
    to_lonlat,
    to_millis,
)
from edown.emulator.visualize import visualize

Function = Callable[..., Any]


class UnsupportedFunctionError(EvaluationError):
    """A real Earth Engine function the emulator does not implement."""


class Evaluator:
    """Evaluates one serialized expression against the catalogue."""

    def __init__(self, catalog: Catalog, known_functions: frozenset[str] = frozenset()) -> None:
        self.catalog = catalog
        self.known_functions = known_functions
        self.functions = build_registry(catalog)

    def evaluate(self, expression: dict[str, Any]) -> Any:
        try:
            values = expression["values"]
            result = expression["result"]
        except (KeyError, TypeError):
            raise EvaluationError("Invalid expression: expected 'result' and 'values'.") from None
        return _Run(self, values).ref(result, None)


class _Scope:
    """The arguments of one call of a client-side function, and the values already evaluated in it.

    Within one call a value reference always means the same value, so it is evaluated once, as EE does;
    re-evaluating each use would double the work per level of sharing (``n.add(n)``).
    """

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = args
        self.memo: dict[str, Any] = {}


class _Run:
    def __init__(self, evaluator: Evaluator, values: dict[str, Any]) -> None:
        self.evaluator = evaluator
        self.values = values
        self.memo: dict[str, Any] = {}

    def ref(self, key: str, scope: _Scope | None) -> Any:
        if key not in self.values:
            raise EvaluationError(f"Invalid expression: unknown value reference '{key}'.")
        memo = self.memo if scope is None else scope.memo
        if key not in memo:
            memo[key] = self.node(self.values[key], scope)
        return memo[key]

    def node(self, node: Any, scope: _Scope | None) -> Any:
        charge()
        if not isinstance(node, dict) or len(node) != 1:
            raise EvaluationError(f"Invalid expression node: {str(node)[:80]}")
        kind, body = next(iter(node.items()))
        if kind == "constantValue":
            return body
        if kind == "integerValue":
            return int(body)
        if kind == "arrayValue":
            return [self.node(v, scope) for v in body.get("values", [])]
        if kind == "dictionaryValue":
            return {k: self.node(v, scope) for k, v in body.get("values", {}).items()}
        if kind == "valueReference":
            return self.ref(body, scope)
        if kind == "argumentReference":
            if scope is None or body not in scope.args:
                raise EvaluationError(f"Invalid expression: unbound argument '{body}'.")
            return scope.args[body]
        if kind == "bytesValue":
            return base64.b64decode(body)
        if kind == "functionDefinitionValue":
            return self.define(body, scope)
        if kind == "functionInvocationValue":
            return self.invoke(body, scope)
        raise EvaluationError(f"Invalid expression: unknown node kind '{kind}'.")

    def define(self, body: dict[str, Any], scope: _Scope | None) -> EEFunction:
        names = tuple(body.get("argumentNames", []))
        result_key = body["body"]

        def call(args: dict[str, Any]) -> Any:
            inner = dict(scope.args) if scope is not None else {}
            inner.update(args)
            return self.ref(result_key, _Scope(inner))

        return EEFunction(names, call)

    def invoke(self, body: dict[str, Any], scope: _Scope | None) -> Any:
        if body.get("functionName") == "If":
            # Only the branch taken is evaluated, as in EE: the other may well be an error.
            raw = body.get("arguments", {})
            condition = self.node(raw["condition"], scope) if "condition" in raw else None
            branch = raw.get("trueCase" if scalars.truthy(condition) else "falseCase")
            return None if branch is None else self.node(branch, scope)
        args = {k: self.node(v, scope) for k, v in body.get("arguments", {}).items()}
        if "functionReference" in body:
            target = self.ref(body["functionReference"], scope)
            if not isinstance(target, EEFunction):
                raise EvaluationError("Invalid expression: functionReference is not a function.")
            return target(**args)
        name = body.get("functionName")
        if not isinstance(name, str):
            raise EvaluationError("Invalid expression: function invocation without a name.")
        fn = self.evaluator.functions.get(name)
        if fn is None:
            known = self.evaluator.known_functions
            if known and name not in known:
                raise EvaluationError(f"Unknown function: {name}.")
            raise UnsupportedFunctionError(
                f"Function '{name}' is not supported by the edown Earth Engine emulator."
            )
        try:
            return fn(**args)
        except TypeError as exc:
            text = str(exc)
            if "argument" in text:
                raise EvaluationError(f"{name}: {re.sub(r'^[^(]*[(][)] ', '', text)}.") from None
            raise


# ---- registry -----------------------------------------------------------------------------------------


def build_registry(catalog: Catalog) -> dict[str, Function]:
    reg: dict[str, Function] = {}

    def fn(name: str) -> Callable[[Function], Function]:
        def deco(f: Function) -> Function:
            reg[name] = f
            return f

        return deco

    # -- collections --
    @fn("ImageCollection.load")
    def _ic_load(id: str, version: Any = None) -> EECollection:
        if not catalog.has_collection(id):
            raise AssetNotFoundError(id)
        return EECollection(catalog, source=id)

    @fn("ImageCollection.fromImages")
    def _ic_from(images: list[Any]) -> EECollection:
        return EECollection(catalog, images=tuple(im.as_image(i) for i in images))

    @fn("Collection.filter")
    def _filter(collection: EECollection, filter: Any) -> EECollection:
        if not isinstance(filter, EEFilter):
            raise EvaluationError("Collection.filter: Expected a Filter.")
        return _collection(collection, "Collection.filter").then("filter", filter)

    @fn("Collection.size")
    def _size(collection: EECollection) -> int:
        return len(_collection(collection, "Collection.size").elements())

    @fn("Collection.limit")
    def _limit(
        collection: EECollection, limit: Any = None, key: str | None = None, ascending: bool = True
    ) -> EECollection:
        return _collection(collection, "Collection.limit").then("limit", (limit, key, ascending))

    @fn("Collection.first")
    def _first(collection: EECollection) -> Any:
        items = _collection(collection, "Collection.first").then("limit", (1, None, True)).elements()
        return items[0] if items else None

    @fn("Collection.toList")
    def _to_list(collection: EECollection, count: int, offset: int = 0) -> list[Any]:
        items = _collection(collection, "Collection.toList").elements()
        return items[int(offset) : int(offset) + int(count)]

    @fn("Collection.map")
    def _map(collection: EECollection, baseAlgorithm: EEFunction, dropNulls: bool = False) -> EECollection:
        if not isinstance(baseAlgorithm, EEFunction):
            raise EvaluationError("Collection.map: Expected a function.")
        name = baseAlgorithm.arg_names[0] if baseAlgorithm.arg_names else "_MAPPING_VAR_0_0"
        return _collection(collection, "Collection.map").then("map", lambda el: baseAlgorithm(**{name: el}))

    @fn("Collection.merge")
    def _merge(collection1: EECollection, collection2: EECollection) -> EECollection:
        return _collection(collection1, "Collection.merge").then(
            "merge", _collection(collection2, "Collection.merge")
        )

    @fn("ImageCollection.merge")
    def _ic_merge(collection1: EECollection, collection2: EECollection) -> EECollection:
        first = _collection(collection1, "ImageCollection.merge")
        second = _collection(collection2, "ImageCollection.merge")
        for part in (first, second):
            if part.kind != "ImageCollection":
                raise EvaluationError(f"ImageCollection.merge: Expected an ImageCollection, got {part.kind}.")
        return first.then("merge", second)

    @fn("Collection")
    def _feature_collection(features: list[Any]) -> EECollection:
        items = []
        for f in features:
            if isinstance(f, EEGeometry):
                f = EEFeature(f, {})
            if not isinstance(f, EEFeature):
                raise EvaluationError(f"Collection: Expected features, got {type(f).__name__}.")
            items.append(f)
        return EECollection(catalog, images=tuple(items), kind="FeatureCollection")

    @fn("ErrorMargin")
    def _error_margin(value: Any = None, unit: str = "meters") -> dict[str, Any]:
        return {"type": "ErrorMargin", "value": value, "unit": unit}

    @fn("Geometry.area")
    def _area(geometry: Any, maxError: Any = None, proj: Any = None) -> float:
        if proj is not None:
            raise UnsupportedFunctionError(
                "Geometry.area with a projection is not supported by the edown emulator."
            )
        return geodesic_area(geometry_argument(geometry))

    @fn("Geometry.bounds")
    def _bounds(geometry: Any, maxError: Any = None, proj: Any = None) -> EEGeometry:
        if proj is not None:
            raise UnsupportedFunctionError(
                "Geometry.bounds with a projection is not supported by the edown emulator."
            )
        return EEGeometry(shapely.geometry.box(*geometry_argument(geometry).bounds), False)

    @fn("Geometry.centroid")
    def _centroid(geometry: Any, maxError: Any = None, proj: Any = None) -> EEGeometry:
        if proj is not None:
            raise UnsupportedFunctionError(
                "Geometry.centroid with a projection is not supported by the edown emulator."
            )
        return EEGeometry(geometry_argument(geometry).centroid)

    @fn("Geometry.buffer")
    def _buffer(geometry: Any, distance: float, maxError: Any = None, proj: Any = None) -> EEGeometry:
        if proj is not None:
            raise UnsupportedFunctionError(
                "Geometry.buffer with a projection is not supported by the edown emulator."
            )
        return EEGeometry(buffer_metres(geometry_argument(geometry), float(distance)))

    @fn("Image.sample")
    def _sample(
        image: Any,
        region: Any = None,
        scale: Any = None,
        projection: Any = None,
        factor: Any = None,
        numPixels: Any = None,
        seed: int = 0,
        dropNulls: bool = True,
        tileScale: Any = 1,
        geometries: bool = False,
    ) -> EECollection:
        img = _image(image, "Image.sample")
        rows = sample_pixels(
            img,
            None if region is None else geometry_argument(region),
            None if scale is None else float(scale),
            crs_of(projection),
            None if factor is None else float(factor),
            None if numPixels is None else int(numPixels),
            int(seed),
            bool(dropNulls),
        )
        features = tuple(
            EEFeature(EEGeometry(Point(lon, lat)) if geometries else None, values)
            for lon, lat, values in rows
        )
        return EECollection(catalog, images=features, kind="FeatureCollection")

    @fn("AggregateFeatureCollection.array")
    def _agg_array(collection: EECollection, property: str) -> list[Any]:
        items = _collection(collection, "aggregate_array").elements()
        return [v for v in (element_property(el, property) for el in items) if v is not None]

    # -- filters --
    def compare(op: str) -> Function:
        def make(
            leftField: Any = None, rightValue: Any = None, rightField: Any = None, leftValue: Any = None
        ) -> EEFilter:
            if leftField is not None:
                check_field(leftField, f"Filter.{op}")
            if rightField is not None:
                check_field(rightField, f"Filter.{op}")
            return CompareFilter(op, leftField, leftValue, rightField, rightValue)

        return make

    for op in (
        "lessThan",
        "lessThanOrEquals",
        "greaterThan",
        "greaterThanOrEquals",
        "equals",
        "notEquals",
        "eq",
        "neq",
        "stringContains",
        "stringStartsWith",
        "stringEndsWith",
        "inList",
    ):
        reg[f"Filter.{op}"] = compare(op)

    @fn("Filter.listContains")
    def _list_contains(
        leftField: Any = None, rightValue: Any = None, rightField: Any = None, leftValue: Any = None
    ) -> EEFilter:
        # ee.Filter.inList(field, values) sends the list as leftValue and the field as rightField.
        if leftValue is not None and rightField is not None:
            return CompareFilter(
                "inList", check_field(rightField, "Filter.listContains"), None, None, leftValue
            )
        if leftField is not None:
            return CompareFilter(
                "contains", check_field(leftField, "Filter.listContains"), None, None, rightValue
            )
        raise EvaluationError("Filter.listContains: Expected a field and a value.")

    @fn("Filter.dateRangeContains")
    def _drc(
        leftField: Any = None, rightValue: Any = None, rightField: Any = None, leftValue: Any = None
    ) -> EEFilter:
        if isinstance(leftValue, EEDateRange) and isinstance(rightField, str):
            return DateRangeFilter(leftValue.start, leftValue.end, rightField)
        if isinstance(rightValue, EEDateRange) and isinstance(leftField, str):
            return DateRangeFilter(rightValue.start, rightValue.end, leftField)
        raise UnsupportedFunctionError(
            "Filter.dateRangeContains is only supported by the edown emulator with a DateRange and a field."
        )

    @fn("Filter.intersects")
    def _intersects(
        leftField: Any = None,
        rightValue: Any = None,
        rightField: Any = None,
        leftValue: Any = None,
        maxError: Any = None,
    ) -> EEFilter:
        if leftField is not None and rightValue is not None:
            return IntersectsFilter(geometry_argument(rightValue))
        if rightField is not None and leftValue is not None:
            return IntersectsFilter(geometry_argument(leftValue))
        raise EvaluationError("Filter.intersects: Expected a field and a geometry value.")

    @fn("Filter.isContained")
    def _contained(
        leftField: Any = None,
        rightValue: Any = None,
        rightField: Any = None,
        leftValue: Any = None,
        maxError: Any = None,
    ) -> EEFilter:
        value = rightValue if rightValue is not None else leftValue
        return IntersectsFilter(geometry_argument(value), contained=True)

    @fn("Filter.and")
    def _and(filters: list[Any]) -> EEFilter:
        return AndFilter(flatten_filters(filters))

    @fn("Filter.or")
    def _or(filters: list[Any]) -> EEFilter:
        return OrFilter(flatten_filters(filters))

    @fn("Filter.not")
    def _not(filter: Any) -> EEFilter:
        return NotFilter(flatten_filters([filter])[0])

    @fn("Filter.rangeContains")
    def _range(field: str, minValue: Any, maxValue: Any) -> EEFilter:
        return RangeFilter(check_field(field, "Filter.rangeContains"), minValue, maxValue)

    @fn("Filter.calendarRange")
    def _calendar(start: int, end: int | None = None, field: str = "day_of_year") -> EEFilter:
        return CalendarFilter(int(start), int(start if end is None else end), field)

    @fn("Filter.dayOfYear")
    def _doy(start: int, end: int) -> EEFilter:
        return CalendarFilter(int(start), int(end), "day_of_year")

    # -- dates --
    @fn("Date")
    def _date(value: Any, timeZone: Any = None) -> EEDate:
        return EEDate(to_millis(value))

    @fn("Date.fromYMD")
    def _ymd(year: int, month: int, day: int, timeZone: Any = None) -> EEDate:
        return EEDate(to_millis(f"{int(year):04d}-{int(month):02d}-{int(day):02d}"))

    @fn("Date.advance")
    def _advance(date: Any, delta: float, unit: str, timeZone: Any = None) -> EEDate:
        return EEDate(advance(to_millis(date), float(delta), unit))

    @fn("Date.millis")
    def _millis(date: Any) -> int:
        return to_millis(date)

    @fn("DateRange")
    def _daterange(start: Any, end: Any = None, timeZone: Any = None) -> EEDateRange:
        s = to_millis(start)
        e = s + 86_400_000 if end is None else to_millis(end)
        return EEDateRange(s, e)

    # -- geometry, features, projections --
    def crs_of(crs: Any) -> str | None:
        if crs is None:
            return None
        if isinstance(crs, EEProjection):
            return crs.crs
        if isinstance(crs, str):
            return crs
        raise EvaluationError("Geometry: Invalid crs argument.")

    def placed(geom: BaseGeometry, crs: Any) -> BaseGeometry:
        """Coordinates given in ``crs`` (a projection's transform maps them, as EE does) to lon/lat."""
        if (
            isinstance(crs, EEProjection)
            and crs.transform
            and crs.transform != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        ):
            a, b, c, d, e, f = crs.transform
            geom = shapely.affinity.affine_transform(geom, [a, b, d, e, c, f])
        return to_lonlat(geom, crs_of(crs))

    @fn("GeometryConstructors.Polygon")
    def _polygon(
        coordinates: Any, crs: Any = None, geodesic: Any = None, maxError: Any = None, evenOdd: Any = True
    ) -> EEGeometry:
        return EEGeometry(placed(make_polygon(coordinates, None), crs), geodesic is not False)

    @fn("GeometryConstructors.MultiPolygon")
    def _mpolygon(
        coordinates: Any, crs: Any = None, geodesic: Any = None, maxError: Any = None, evenOdd: Any = True
    ) -> EEGeometry:
        return EEGeometry(placed(make_polygon(coordinates, None, multi=True), crs), geodesic is not False)

    @fn("GeometryConstructors.Rectangle")
    def _rect(coordinates: Any, crs: Any = None, geodesic: Any = None, evenOdd: Any = True) -> EEGeometry:
        return EEGeometry(placed(make_rectangle(coordinates, None), crs), geodesic is not False)

    @fn("GeometryConstructors.BBox")
    def _bbox(west: float, south: float, east: float, north: float) -> EEGeometry:
        return EEGeometry(make_rectangle([west, south, east, north], None), False)

    @fn("GeometryConstructors.Point")
    def _point(coordinates: Any, crs: Any = None) -> EEGeometry:
        return EEGeometry(placed(make_point(coordinates, None), crs))

    @fn("GeometryConstructors.LineString")
    def _line(coordinates: Any, crs: Any = None, geodesic: Any = None, maxError: Any = None) -> EEGeometry:
        return EEGeometry(placed(make_linestring(coordinates, None), crs), geodesic is not False)

    @fn("Feature")
    def _feature(geometry: Any = None, metadata: Any = None, geometryKey: Any = None) -> EEFeature:
        geom = None
        if geometry is not None:
            geom = geometry if isinstance(geometry, EEGeometry) else EEGeometry(geometry_argument(geometry))
        return EEFeature(geom, dict(metadata or {}))

    @fn("Projection")
    def _projection(crs: Any, transform: Any = None, transformWkt: Any = None) -> EEProjection:
        if isinstance(crs, EEProjection):
            # ee.Projection(an existing projection) is that projection, transform included.
            return crs if not transform else EEProjection(crs.crs, tuple(float(v) for v in transform))
        return EEProjection(str(crs), tuple(float(v) for v in transform) if transform else None)

    @fn("Projection.crs")
    def _proj_crs(projection: EEProjection) -> str:
        return projection.crs

    @fn("Projection.transform")
    def _proj_transform(projection: EEProjection) -> str:
        return str(list(projection.transform or (1, 0, 0, 0, 1, 0)))

    @fn("Projection.nominalScale")
    def _nominal(proj: EEProjection) -> float:
        t = proj.transform or (1, 0, 0, 0, 1, 0)
        scale = math.hypot(t[0], t[3])
        return scale * METRES_PER_DEGREE if crs_is_geographic(proj.crs) else scale

    # -- images --
    @fn("Image.load")
    def _image_load(id: str, version: Any = None) -> EEImage:
        return im.load_image(catalog.image(id))

    @fn("Image.constant")
    def _constant(value: Any) -> EEImage:
        return im.constant_image(value)

    @fn("Image.select")
    def _select(input: Any, bandSelectors: list[Any], newNames: list[str] | None = None) -> EEImage:
        return im.select(_image(input, "Image.select"), bandSelectors, newNames)

    @fn("Image.slice")
    def _slice(image: Any, start: int, end: int | None = None) -> EEImage:
        img = _image(image, "Image.slice")
        return img.with_bands(img.bands[int(start) : None if end is None else int(end)])

    @fn("Image.rename")
    def _rename(input: Any, names: list[str]) -> EEImage:
        return im.rename(_image(input, "Image.rename"), names)

    @fn("Image.addBands")
    def _add_bands(
        dstImg: Any, srcImg: Any, names: list[str] | None = None, overwrite: bool = False
    ) -> EEImage:
        return im.add_bands(_image(dstImg, "Image.addBands"), im.as_image(srcImg), names, bool(overwrite))

    for op in (
        "add",
        "subtract",
        "multiply",
        "divide",
        "max",
        "min",
        "pow",
        "gt",
        "lt",
        "gte",
        "lte",
        "eq",
        "neq",
        "and",
        "or",
        "bitwiseAnd",
        "bitwiseOr",
        "rightShift",
        "leftShift",
    ):
        reg[f"Image.{op}"] = lambda image1, image2, _op=op: im.binary(_op, image1, image2)
    reg["Image.bitwise_and"] = reg["Image.bitwiseAnd"]
    for op in ("abs", "sqrt", "round", "floor", "ceil", "exp", "log", "log10", "not"):
        reg[f"Image.{op}"] = lambda value, _op=op: im.unary(_op, value)
    for cast_name, ptype in im.CAST_TYPES.items():
        reg[f"Image.{cast_name}"] = lambda value, _t=ptype: im.cast(im.as_image(value), _t)

    @fn("Image.cast")
    def _cast(image: Any, bandTypes: dict[str, Any], bandOrder: list[str] | None = None) -> EEImage:
        return im.cast_per_band(_image(image, "Image.cast"), bandTypes)

    @fn("Image.mask")
    def _mask(image: Any, mask: Any = None) -> EEImage:
        img = _image(image, "Image.mask")
        return im.mask_of(img) if mask is None else im.update_mask(img, mask)

    @fn("Image.updateMask")
    def _update_mask(image: Any, mask: Any) -> EEImage:
        return im.update_mask(_image(image, "Image.updateMask"), mask)

    @fn("Image.unmask")
    def _unmask(input: Any, value: Any = None, sameFootprint: Any = True) -> EEImage:
        return im.unmask(_image(input, "Image.unmask"), value, sameFootprint is not False)

    @fn("Image.selfMask")
    def _self_mask(image: Any) -> EEImage:
        return im.self_mask(_image(image, "Image.selfMask"))

    @fn("Image.where")
    def _where(input: Any, test: Any, value: Any) -> EEImage:
        return im.where(_image(input, "Image.where"), test, value)

    @fn("Image.clip")
    def _clip(input: Any, geometry: Any) -> EEImage:
        return im.clip(_image(input, "Image.clip"), geometry_argument(geometry))

    @fn("Image.normalizedDifference")
    def _nd(input: Any, bandNames: list[str] | None = None) -> EEImage:
        return im.normalized_difference(_image(input, "Image.normalizedDifference"), bandNames)

    @fn("Image.parseExpression")
    def _parse(
        expression: str, argName: str, vars: list[str], mapFreeVarsToDefaultImageBands: bool = False
    ) -> EEFunction:
        return parse_image_expression(expression, argName, tuple(vars))

    @fn("Image.bandNames")
    def _band_names(image: Any) -> list[str]:
        return _image(image, "Image.bandNames").band_names()

    @fn("Image.bandTypes")
    def _band_types(image: Any) -> dict[str, Any]:
        return {b.name: b.pixel_type.to_info() for b in _image(image, "Image.bandTypes").bands}

    @fn("Image.projection")
    def _projection_of(image: Any) -> EEProjection:
        img = _image(image, "Image.projection")
        grids = {b.grid for b in img.bands}
        if len(grids) > 1:
            raise EvaluationError(
                "Image.projection: The bands of the specified image contains different projections. "
                "Use Image.select to pick a single band."
            )
        grid = next(iter(grids), None) or im.DEFAULT_GRID
        return EEProjection(grid.crs, grid.transform)

    @fn("Image.date")
    def _image_date(image: Any) -> EEDate:
        return EEDate(int(_image(image, "Image.date").property("system:time_start")))

    @fn("Image.id")
    def _image_id(element: Any) -> Any:
        return element.image_id if isinstance(element, EEImage) else None

    @fn("Image.geometry")
    def _image_geometry(
        feature: Any, maxError: Any = None, proj: Any = None, geodesics: Any = None
    ) -> EEGeometry | None:
        geom = _image(feature, "Image.geometry").footprint
        return EEGeometry(geom) if geom is not None else None

    # -- elements, lists, numbers --
    @fn("Element.get")
    def _get(object: Any, property: str) -> Any:
        return element_property(object, property)

    @fn("Element.set")
    def _set(object: Any, key: str, value: Any = None) -> Any:
        if isinstance(object, EEImage):
            props = dict(object.properties)
            props[key] = value
            return EEImage(
                object.bands, props, object.image_id, object.version, object.footprint, object.asset
            )
        if isinstance(object, EEFeature):
            return EEFeature(object.geometry, {**object.properties, key: value})
        if isinstance(object, EECollection):
            return object.then("set", (key, value))
        raise EvaluationError("Element.set: Expected an element.")

    @fn("Element.propertyNames")
    def _prop_names(element: Any) -> list[str]:
        if isinstance(element, EEImage):
            names = set(element.properties)
            if element.asset is not None:
                names |= set(element.asset.to_info()["properties"])
            return sorted(names)
        if isinstance(element, EEFeature):
            return sorted(element.properties)
        if isinstance(element, EECollection):
            return sorted(element.properties())
        raise EvaluationError("Element.propertyNames: Expected an element.")

    @fn("Element.toDictionary")
    def _to_dict(element: Any, properties: list[str] | None = None) -> dict[str, Any]:
        names = (
            properties
            if properties is not None
            else [n for n in _prop_names(element) if not n.startswith("system:")]
        )
        return {n: element_property(element, n) for n in names if element_property(element, n) is not None}

    @fn("Element.copyProperties")
    def _copy_props(
        destination: Any,
        source: Any = None,
        properties: list[str] | None = None,
        exclude: list[str] | None = None,
    ) -> Any:
        if source is None:
            return destination
        names = properties if properties is not None else _prop_names(source)
        out = destination
        for name in names:
            if exclude and name in exclude:
                continue
            out = _set(out, name, element_property(source, name))
        return out

    reg["Image.copyProperties"] = _copy_props

    @fn("List.size")
    def _list_size(list: list[Any]) -> int:
        return len(list)

    @fn("List.get")
    def _list_get(list: list[Any], index: int) -> Any:
        try:
            return list[int(index)]
        except IndexError:
            raise EvaluationError(f"List.get: List index must be between 0 and {len(list) - 1}.") from None

    @fn("List.slice")
    def _list_slice(
        list: list[Any], start: int, end: int | None = None, step: int | None = None
    ) -> list[Any]:
        return list[int(start) : None if end is None else int(end) : None if step is None else int(step)]

    @fn("Dictionary")
    def _dictionary(input: Any = None) -> dict[str, Any]:
        return dict(input or {})

    # -- reducers and reductions --
    for kind in REDUCER_KINDS:
        reg[f"Reducer.{kind}"] = lambda _k=kind, **_: make_reducer(_k)

    @fn("Reducer.percentile")
    def _percentile(
        percentiles: list[Any],
        outputNames: list[str] | None = None,
        maxBuckets: Any = None,
        minBucketWidth: Any = None,
        maxRaw: Any = None,
    ) -> EEReducer:
        return make_reducer("percentile", percentiles, outputNames)

    @fn("Reducer.toList")
    def _to_list_reducer(tupleSize: Any = None, numOptional: Any = None) -> EEReducer:
        return EEReducer("toList")

    @fn("Reducer.repeat")
    def _repeat(reducer: Any, count: int) -> EEReducer:
        base = _reducer(reducer, "Reducer.repeat")
        return EEReducer(base.kind, base.percentiles, base.names, int(count))

    @fn("Collection.reduceColumns")
    def _reduce_columns(
        collection: Any, reducer: Any, selectors: list[str], weightSelectors: Any = None
    ) -> dict[str, Any]:
        items = _collection(collection, "Collection.reduceColumns").elements()
        columns = [[element_property(el, name) for el in items] for name in selectors]
        return reduce_columns(columns, _reducer(reducer, "Collection.reduceColumns"))

    @fn("Collection.iterate")
    def _iterate(collection: Any, function: EEFunction, first: Any = None) -> Any:
        if not isinstance(function, EEFunction) or len(function.arg_names) != 2:
            raise EvaluationError("Collection.iterate: Expected a function of two arguments.")
        element_arg, acc_arg = function.arg_names
        acc = first
        for element in _collection(collection, "Collection.iterate").elements():
            acc = function(**{element_arg: element, acc_arg: acc})
        return acc

    @fn("Image.reduceRegion")
    def _reduce_region(
        image: Any,
        reducer: Any,
        geometry: Any = None,
        scale: Any = None,
        crs: Any = None,
        crsTransform: Any = None,
        bestEffort: bool = False,
        maxPixels: Any = DEFAULT_MAX_PIXELS,
        tileScale: Any = 1,
    ) -> dict[str, Any]:
        return reduce_region(
            _image(image, "Image.reduceRegion"),
            _reducer(reducer, "Image.reduceRegion"),
            None if geometry is None else geometry_argument(geometry),
            None if scale is None else float(scale),
            crs_of(crs),
            crsTransform or (crs.transform if isinstance(crs, EEProjection) and scale is None else None),
            bool(bestEffort),
            float(maxPixels if maxPixels is not None else DEFAULT_MAX_PIXELS),
        )

    for kind in ("mean", "median", "min", "max", "sum", "count"):
        reg[f"reduce.{kind}"] = lambda collection, _k=kind: composite(
            _images(collection, f"ImageCollection.{_k}"), make_reducer(_k), suffix=False
        )

    @fn("ImageCollection.reduce")
    def _ic_reduce(collection: Any, reducer: Any, parallelScale: Any = 1) -> EEImage:
        return composite(
            _images(collection, "ImageCollection.reduce"),
            _reducer(reducer, "ImageCollection.reduce"),
            suffix=True,
        )

    @fn("Image.fastDistanceTransform")
    def _fdt(
        image: Any, neighborhood: Any = 256, units: str = "pixels", metric: str = "squared_euclidean"
    ) -> EEImage:
        return fast_distance_transform(
            _image(image, "Image.fastDistanceTransform"), int(neighborhood), str(units), str(metric)
        )

    @fn("Image.clamp")
    def _clamp(input: Any, low: float, high: float) -> EEImage:
        return im.clamp(_image(input, "Image.clamp"), float(low), float(high))

    @fn("Image.linkCollection")
    def _link(
        input: Any,
        imageCollection: Any,
        linkedBands: list[str] | None = None,
        linkedProperties: list[str] | None = None,
        matchPropertyName: str = "system:index",
    ) -> EEImage:
        img = _image(input, "Image.linkCollection")
        value = img.property(matchPropertyName)
        match_filter = CompareFilter("equals", matchPropertyName, None, None, value)
        found = _collection(imageCollection, "Image.linkCollection").then("filter", match_filter).elements()
        if not found:
            # EE: "If no match is found, new or updated bands are fully masked, and metadata is null."
            out = img
            for band in linkedBands or []:
                empty = im.update_mask(im.rename(im.constant_image(0.0), [str(band)]), im.constant_image(0))
                out = im.add_bands(out, empty, None, True)
            for name in linkedProperties or []:
                out = _set(out, name, None)
            return out
        other = im.as_image(found[0])
        out = img
        if linkedBands:
            out = im.add_bands(out, im.select(other, [re.escape(b) for b in linkedBands]), None, True)
        for name in linkedProperties or []:
            out = _set(out, name, other.property(name))
        return out

    @fn("Image.reduce")
    def _image_reduce(image: Any, reducer: Any) -> EEImage:
        return reduce_bands(_image(image, "Image.reduce"), _reducer(reducer, "Image.reduce"))

    @fn("ImageCollection.qualityMosaic")
    def _quality_mosaic(collection: Any, qualityBand: str) -> EEImage:
        return quality_mosaic(_images(collection, "ImageCollection.qualityMosaic"), str(qualityBand))

    @fn("ImageCollection.toBands")
    def _to_bands(collection: Any) -> EEImage:
        return to_bands(_images(collection, "ImageCollection.toBands"))

    @fn("ImageCollection.mosaic")
    def _mosaic(collection: Any) -> EEImage:
        return mosaic(_images(collection, "ImageCollection.mosaic"))

    @fn("ImageCollection.getRegion")
    def _get_region(
        collection: Any, geometry: Any, scale: Any = None, crs: Any = None, crsTransform: Any = None
    ) -> list[list[Any]]:
        return get_region(
            _images(collection, "ImageCollection.getRegion"),
            geometry_argument(geometry),
            None if scale is None else float(scale),
            crs_of(crs),
            crsTransform,
        )

    # -- grids and pictures --
    def grid_args(crs: Any, crsTransform: Any, scale: Any) -> tuple[str | None, Any, float | None]:
        transform = crsTransform
        if transform is None and isinstance(crs, EEProjection) and crs.transform and scale is None:
            transform = list(crs.transform)
        return crs_of(crs), transform, None if scale is None else float(scale)

    @fn("Image.setDefaultProjection")
    def _set_default_projection(image: Any, crs: Any, crsTransform: Any = None, scale: Any = None) -> EEImage:
        name, transform, size = grid_args(crs, crsTransform, scale)
        assert name is not None
        return projections.set_default_projection(
            _image(image, "Image.setDefaultProjection"), name, transform, size
        )

    @fn("Image.reproject")
    def _reproject(image: Any, crs: Any, crsTransform: Any = None, scale: Any = None) -> EEImage:
        name, transform, size = grid_args(crs, crsTransform, scale)
        assert name is not None
        return projections.reproject(_image(image, "Image.reproject"), name, transform, size)

    @fn("Image.resample")
    def _resample(image: Any, mode: str = "bilinear") -> EEImage:
        return projections.resample(_image(image, "Image.resample"), str(mode))

    @fn("Image.clipToBoundsAndScale")
    def _clip_to_bounds(
        input: Any,
        geometry: Any = None,
        width: Any = None,
        height: Any = None,
        maxDimension: Any = None,
        scale: Any = None,
    ) -> EEImage:
        img = _image(input, "Image.clipToBoundsAndScale")
        region = geometry_argument(geometry) if geometry is not None else img.footprint
        if region is None:
            raise EvaluationError("Image.clipToBoundsAndScale: The image is unbounded; give a geometry.")
        return projections.clip_to_bounds_and_scale(
            img,
            region,
            None if width is None else int(width),
            None if height is None else int(height),
            None if maxDimension is None else int(maxDimension),
            None if scale is None else float(scale),
        )

    @fn("Image.visualize")
    def _visualize(
        image: Any,
        bands: Any = None,
        gain: Any = None,
        bias: Any = None,
        min: Any = None,
        max: Any = None,
        gamma: Any = None,
        opacity: Any = None,
        palette: Any = None,
        forceRgbOutput: bool = False,
    ) -> EEImage:
        return visualize(
            _image(image, "Image.visualize"),
            bands,
            gain,
            bias,
            min,
            max,
            gamma,
            opacity,
            palette,
            bool(forceRgbOutput),
        )

    scalars.register(reg)
    return reg


def _images(value: Any, function: str) -> list[EEImage]:
    items = _collection(value, function).elements()
    return [im.as_image(i) for i in items]


def _reducer(value: Any, function: str) -> EEReducer:
    if not isinstance(value, EEReducer):
        raise EvaluationError(f"{function}: Expected a Reducer, got {type(value).__name__}.")
    return value


def _collection(value: Any, function: str) -> EECollection:
    if not isinstance(value, EECollection):
        raise EvaluationError(f"{function}: Expected a collection, got {type(value).__name__}.")
    return value


def _image(value: Any, function: str) -> EEImage:
    if isinstance(value, EEImage):
        return value
    if value is None:
        raise EvaluationError(f"{function}: Parameter 'image' is required and may not be null.")
    return im.as_image(value)


# ---- Image.expression -------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)"
    r"|(?P<str>'[^']*'|\"[^\"]*\")|(?P<name>[A-Za-z_]\w*)|(?P<op>\*\*|==|!=|<=|>=|&&|\|\||[-+*/%<>!?:(),.]))"
)
_BINARY = {
    "||": (1, "or"),
    "&&": (2, "and"),
    "==": (3, "eq"),
    "!=": (3, "neq"),
    "<": (4, "lt"),
    "<=": (4, "lte"),
    ">": (4, "gt"),
    ">=": (4, "gte"),
    "+": (5, "add"),
    "-": (5, "subtract"),
    "*": (6, "multiply"),
    "/": (6, "divide"),
    "%": (6, "mod"),
    "**": (8, "pow"),
}
_EXPR_FUNCS = {"abs", "sqrt", "round", "floor", "ceil", "exp", "log", "log10"}


def parse_image_expression(expression: str, arg_name: str, var_names: tuple[str, ...]) -> EEFunction:
    """``Image.parseExpression``: EE's band-math mini language, compiled to image operations."""
    tokens = _tokenize(expression)

    def call(args: dict[str, Any]) -> Any:
        parser = _ExprParser(tokens, args, arg_name)
        result = parser.parse()
        return im.as_image(result)

    return EEFunction(var_names, call)


def _tokenize(text: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise EvaluationError(f"Image.parseExpression: Syntax error at position {pos} in '{text}'.")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _ExprParser:
    def __init__(self, tokens: list[tuple[str, str]], args: dict[str, Any], default_arg: str) -> None:
        self.tokens = tokens
        self.i = 0
        self.args = args
        self.default = args.get(default_arg)

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise EvaluationError(f"Image.parseExpression: Expected '{value}'.")
        self.i += 1
        return tok

    def parse(self) -> Any:
        value = self.ternary()
        if self.peek() is not None:
            raise EvaluationError(f"Image.parseExpression: Unexpected '{self.peek()[1]}'.")  # type: ignore[index]
        return value

    def ternary(self) -> Any:
        cond = self.binary(1)
        tok = self.peek()
        if tok and tok[1] == "?":
            self.take("?")
            yes = self.ternary()
            self.take(":")
            no = self.ternary()
            return im.where(im.as_image(no), cond, yes)
        return cond

    def binary(self, min_prec: int) -> Any:
        left = self.unary()
        while True:
            tok = self.peek()
            if tok is None or tok[0] != "op" or tok[1] not in _BINARY:
                return left
            prec, op = _BINARY[tok[1]]
            if prec < min_prec:
                return left
            self.take()
            right = self.binary(prec + (0 if op == "pow" else 1))
            left = self.apply(op, left, right)

    def apply(self, op: str, left: Any, right: Any) -> Any:
        if isinstance(left, int | float) and isinstance(right, int | float):
            ops: dict[str, Callable[[Any, Any], Any]] = {
                "add": lambda a, b: a + b,
                "subtract": lambda a, b: a - b,
                "multiply": lambda a, b: a * b,
                "divide": lambda a, b: a / b if b else 0,
                "pow": lambda a, b: a**b,
                "mod": lambda a, b: a % b if b else 0,
            }
            if op in ops:
                return ops[op](left, right)
        if op == "mod":
            raise UnsupportedFunctionError(
                "Function 'Image.mod' is not supported by the edown Earth Engine emulator."
            )
        return im.binary(op, left, right)

    def unary(self) -> Any:
        tok = self.peek()
        if tok and tok[1] == "-":
            self.take()
            value = self.unary()
            return -value if isinstance(value, int | float) else im.binary("multiply", value, -1)
        if tok and tok[1] == "+":
            self.take()
            return self.unary()
        if tok and tok[1] == "!":
            self.take()
            return im.unary("not", self.unary())
        return self.postfix(self.primary())

    def postfix(self, value: Any) -> Any:
        tok = self.peek()
        while tok and tok[1] == ".":
            self.take()
            name = self.take()[1]
            value = im.select(im.as_image(value), [name])
            tok = self.peek()
        return value

    def primary(self) -> Any:
        tok = self.take()
        kind, text = tok
        if kind == "num":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "op" and text == "(":
            value = self.ternary()
            self.take(")")
            return value
        if kind == "name":
            nxt = self.peek()
            if nxt and nxt[1] == "(":
                return self.function(text)
            if text in self.args:
                return self.args[text]
            if self.default is not None and text in im.as_image(self.default).band_names():
                return im.select(im.as_image(self.default), [text])
            raise EvaluationError(f"Image.parseExpression: Unknown variable '{text}'.")
        raise EvaluationError(f"Image.parseExpression: Unexpected '{text}'.")

    def function(self, name: str) -> Any:
        self.take("(")
        args: list[Any] = []
        while self.peek() and self.peek()[1] != ")":  # type: ignore[index]
            tok = self.peek()
            if tok and tok[0] == "str":
                self.take()
                args.append(tok[1][1:-1])
            else:
                args.append(self.ternary())
            if self.peek() and self.peek()[1] == ",":  # type: ignore[index]
                self.take(",")
        self.take(")")
        if name == "b":
            if self.default is None:
                raise EvaluationError("Image.parseExpression: b() needs a default image.")
            if not args:
                return self.default
            return im.select(im.as_image(self.default), args)
        if name in _EXPR_FUNCS and len(args) == 1:
            return im.unary(name, args[0])
        if name in ("min", "max") and len(args) == 2:
            return im.binary(name, args[0], args[1])
        raise UnsupportedFunctionError(
            f"Image.parseExpression: function '{name}' is not supported by the edown emulator."
        )
