"""What the user asks for: the area (AOI) and the search, download and stack configurations.

Every field is checked when the config is built, so a typo fails at once with one line that names the
field and the fix, never as a traceback from deep inside a run. Configs are frozen: derive variants with
:func:`dataclasses.replace`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon, box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from edown.clouds import DEFAULT_THRESHOLD, check_fraction, check_threshold, resolve_mask
from edown.errors import ConfigError
from edown.redaction import redact
from edown.rootstate import special_file_kind
from edown.stores import Location, location

HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
STANDARD_URL = "https://earthengine.googleapis.com"
DEFAULT_REQUEST_BYTE_LIMIT = 48 * 1024 * 1024
#: Earth Engine refuses request bodies past ~10 MB; a polygon this detailed must be simplified first.
MAX_AOI_VERTICES = 100_000
MAX_GEOJSON_BYTES = 20 * 1024 * 1024


# ---- AOI --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AOI:
    """Area of interest in WGS84 longitude/latitude: a Polygon or MultiPolygon.

    Build it with :meth:`from_bbox` or :meth:`from_geojson` (a file, a JSON string or a mapping; a
    Geometry, Feature or FeatureCollection whose polygons are merged). Edges are straight lines in
    longitude/latitude (planar), as in a bounding box.
    """

    geojson: str

    def __post_init__(self) -> None:
        _validate_aoi_geometry(self.shape, "aoi")

    @classmethod
    def from_bbox(cls, bbox: Sequence[float], field_name: str = "bbox") -> AOI:
        """``(xmin, ymin, xmax, ymax)`` in degrees."""
        try:
            values = [float(v) for v in bbox]
        except (TypeError, ValueError):
            raise ConfigError(
                field_name, f"expected four numbers xmin,ymin,xmax,ymax, got {bbox!r}"
            ) from None
        if len(values) != 4:
            raise ConfigError(field_name, f"expected four numbers xmin,ymin,xmax,ymax, got {len(values)}")
        xmin, ymin, xmax, ymax = values
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(field_name, "coordinates must be finite numbers")
        for name, value, lo, hi in (
            ("xmin", xmin, -180, 180),
            ("xmax", xmax, -180, 180),
            ("ymin", ymin, -90, 90),
            ("ymax", ymax, -90, 90),
        ):
            if not lo <= value <= hi:
                raise ConfigError(
                    field_name,
                    f"{name}={value:g} is outside [{lo}, {hi}]",
                    "bbox is longitude/latitude in degrees (EPSG:4326), ordered xmin,ymin,xmax,ymax",
                )
        # xmin > xmax is a box across the antimeridian when that box is the narrower reading of the two.
        if xmin - xmax > 180 and ymin < ymax:
            halves = f"{xmin:g},{ymin:g},180,{ymax:g} and -180,{ymin:g},{xmax:g},{ymax:g}"
            raise ConfigError(
                field_name,
                f"xmin={xmin:g} > xmax={xmax:g}: a box across the antimeridian (180°) cannot be one bbox",
                f"split it at 180°: run once per half ({halves}); one window cannot cross 180° without"
                " spanning the whole globe",
            )
        if xmin >= xmax or ymin >= ymax:
            raise ConfigError(
                field_name,
                f"inverted or empty box ({xmin:g},{ymin:g},{xmax:g},{ymax:g})",
                "order is xmin,ymin,xmax,ymax with xmin < xmax and ymin < ymax"
                + (
                    "; a box across the antimeridian (180°) is two boxes, one per side" if xmin > xmax else ""
                ),
            )
        return cls(json.dumps(mapping(box(xmin, ymin, xmax, ymax))))

    @classmethod
    def from_geojson(cls, source: str | Path | Mapping[str, Any], field_name: str = "geojson") -> AOI:
        """A GeoJSON file path, JSON text or mapping (Geometry, Feature or FeatureCollection)."""
        obj = _load_geojson(source, field_name)
        geom = _geojson_polygons(obj, field_name)
        _validate_aoi_geometry(geom, field_name)
        return cls(json.dumps(_round_trip(mapping(geom))))

    @cached_property
    def shape(self) -> BaseGeometry:
        """The AOI as a shapely geometry (lon/lat)."""
        try:
            return shape(json.loads(self.geojson))
        except Exception as exc:
            raise ConfigError("aoi", f"invalid geometry: {exc}") from None

    @property
    def geometry(self) -> dict[str, Any]:
        """GeoJSON geometry mapping."""
        return dict(json.loads(self.geojson))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)``."""
        xmin, ymin, xmax, ymax = self.shape.bounds
        return (float(xmin), float(ymin), float(xmax), float(ymax))

    def __repr__(self) -> str:
        return f"AOI(bounds={self.bounds}, type={self.geometry['type']})"


def _round_trip(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _load_geojson(source: str | Path | Mapping[str, Any], field_name: str) -> Any:
    if isinstance(source, Mapping):
        return dict(source)
    text = str(source)
    if isinstance(source, Path) or not text.lstrip().startswith("{"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(
                field_name, f"file not found: {path}", "give a GeoJSON file path or GeoJSON text"
            )
        size = path.stat().st_size
        if size > MAX_GEOJSON_BYTES:
            raise ConfigError(
                field_name,
                f"{path} is {size / 1e6:.0f} MB; Earth Engine request bodies are limited to about 10 MB",
                "simplify the polygon (e.g. ogr2ogr -simplify) or use its bounding box",
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(field_name, f"cannot read {path} ({reason or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            field_name, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def _geojson_polygons(obj: Any, field_name: str) -> BaseGeometry:
    if not isinstance(obj, dict) or "type" not in obj:
        raise ConfigError(field_name, "not a GeoJSON object (no 'type')")
    kind = obj["type"]
    if kind == "FeatureCollection":
        feats = obj.get("features") or []
        if not feats:
            raise ConfigError(field_name, "the FeatureCollection has no features")
        parts = [_geojson_polygons(f, field_name) for f in feats]
        return shapely.union_all(parts)
    if kind == "Feature":
        if obj.get("geometry") is None:
            raise ConfigError(field_name, "the Feature has no geometry")
        return _geojson_polygons(obj["geometry"], field_name)
    if kind not in ("Polygon", "MultiPolygon"):
        raise ConfigError(
            field_name,
            f"geometry type {kind} is not an area",
            "give a Polygon or MultiPolygon (buffer points/lines first)",
        )
    try:
        geom = shape(obj)
    except Exception as exc:
        raise ConfigError(field_name, f"invalid {kind} coordinates: {exc}") from None
    return geom


def _validate_aoi_geometry(geom: BaseGeometry, field_name: str) -> None:
    if not isinstance(geom, Polygon | MultiPolygon):
        raise ConfigError(field_name, f"expected a Polygon or MultiPolygon, got {geom.geom_type}")
    if geom.is_empty:
        raise ConfigError(field_name, "the geometry is empty")
    coords = shapely.get_coordinates(geom)
    if len(coords) > MAX_AOI_VERTICES:
        raise ConfigError(
            field_name,
            f"{len(coords)} vertices is too many for an Earth Engine request",
            f"simplify it below {MAX_AOI_VERTICES} vertices or use its bounding box",
        )
    if not (
        coords[:, 0].min() >= -180
        and coords[:, 0].max() <= 180
        and coords[:, 1].min() >= -90
        and coords[:, 1].max() <= 90
    ):
        raise ConfigError(
            field_name,
            "coordinates outside longitude [-180, 180] / latitude [-90, 90]",
            "reproject it to EPSG:4326",
        )
    if not geom.is_valid:
        raise ConfigError(
            field_name, f"invalid geometry: {explain_validity(geom)}", "fix it, e.g. with shapely.make_valid"
        )


# ---- dates, patterns, maps --------------------------------------------------------------------------


def parse_date(value: Any, field_name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        raise ConfigError(field_name, f"{value!r} is not a date", "use YYYY-MM-DD, e.g. 2024-06-01")
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError as exc:
        raise ConfigError(field_name, f"{value!r} is not a valid date ({exc})", "use YYYY-MM-DD") from None


#: What Earth Engine's listImages filter compares with (``==`` is read as ``=``).
OPERATORS = ("<", "<=", ">", ">=", "=", "==", "!=")
_LOOKALIKES = {"=<": "<=", "=>": ">=", "=!": "!=", "<>": "!=", "≤": "<=", "≥": ">=", "≠": "!=", "===": "=="}
_PROPERTY_FILTER = re.compile(r"^\s*([A-Za-z_][\w.:-]*)\s*([<>=!≤≥≠]+)\s*(.*?)\s*$")


@dataclass(frozen=True)
class PropertyFilter:
    """A server-side metadata filter such as ``CLOUDY_PIXEL_PERCENTAGE < 20``."""

    name: str
    op: str
    value: float | str | bool

    @staticmethod
    def parse(text: str, field_name: str = "property_filters") -> PropertyFilter:
        m = _PROPERTY_FILTER.match(text)
        if not m or not m.group(3):
            raise ConfigError(
                field_name,
                f"cannot parse {text!r}",
                f"write NAME OP VALUE with OP one of {' '.join(OPERATORS)}, e.g. 'CLOUDY_PIXEL_PERCENTAGE < 20'",
            )
        name, op, raw = m.groups()
        if op not in OPERATORS:
            meant = _LOOKALIKES.get(op)
            raise ConfigError(
                field_name,
                f"{text!r}: {op!r} is not an operator" + (f" (did you mean {meant!r}?)" if meant else ""),
                f"use one of {' '.join(OPERATORS)}",
            )
        if raw[:1] in "<>=!≤≥≠":
            raise ConfigError(
                field_name,
                f"{text!r}: the value {raw!r} starts with an operator",
                f"use one operator of {' '.join(OPERATORS)}, or quote a text value that starts with one",
            )
        op = "=" if op == "==" else op
        value: float | str | bool
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        elif raw[:1] in ("'", '"') and raw[-1:] == raw[:1] and len(raw) >= 2:
            value = raw[1:-1]
        else:
            try:
                value = float(raw)
            except ValueError:
                value = raw
        if isinstance(value, str) and op in ("<", "<=", ">", ">="):
            raise ConfigError(
                field_name, f"{text!r} compares text with {op}", "use a number, or = / != for text"
            )
        return PropertyFilter(name, op, value)

    def to_aip160(self) -> str:
        """The ``listAssets`` filter term (``properties.NAME<20``)."""
        if isinstance(self.value, bool):
            rendered = "true" if self.value else "false"
        elif isinstance(self.value, float):
            rendered = repr(int(self.value)) if self.value.is_integer() else repr(self.value)
        else:
            rendered = json.dumps(self.value)
        return f"properties.{self.name}{self.op}{rendered}"

    def __str__(self) -> str:
        if isinstance(self.value, str):
            value = json.dumps(self.value)
        elif isinstance(self.value, float):
            value = f"{self.value:g}"
        else:
            value = str(self.value).lower()
        return f"{self.name} {self.op} {value}"


def _as_tuple(value: Any, field_name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    try:
        items = tuple(value)
    except TypeError:
        raise ConfigError(field_name, f"expected a list of strings, got {value!r}") from None
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(field_name, f"expected non-empty strings, got {item!r}")
    return tuple(i.strip() for i in items)


def _as_map(value: Any, field_name: str, number: bool) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            example = '{"B4": 0.0001}' if number else '{"B4": "red"}'
            raise ConfigError(
                field_name, f"not valid JSON: {exc.msg}", f"write a JSON object, e.g. {example}"
            ) from None
    if not isinstance(value, Mapping):
        raise ConfigError(field_name, f"expected a mapping, got {type(value).__name__}")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise ConfigError(field_name, f"keys must be band names, got {k!r}")
        if number:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ConfigError(field_name, f"factor for {k!r} must be a finite number, got {v!r}")
            out[k] = float(v)
        else:
            if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", v):
                raise ConfigError(
                    field_name, f"new name for {k!r} must be letters, digits, '_', '.' or '-', got {v!r}"
                )
            out[k] = v
    return out


def _compile_all(patterns: tuple[str, ...], field_name: str) -> None:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(field_name, f"bad regular expression {pattern!r}: {exc}") from None


def _check_plugin_spec(spec: str | None) -> None:
    if spec is None:
        return
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec):
        raise ConfigError(
            "transform_plugin", f"{spec!r} is not module:function", "e.g. my_pkg.plugins:add_ndvi"
        )


def check_url(url: str) -> str:
    """An http(s) URL with a host and a valid port, without its trailing slash; else bad input."""
    from urllib.parse import urlsplit

    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url or ""):
        raise ConfigError(
            "server_url", f"{redact(str(url))!r} is not an http(s) URL", f"default is {HIGH_VOLUME_URL}"
        )
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises for a port outside 0-65535 or not a number
    except ValueError as exc:
        raise ConfigError("server_url", f"{redact(url)!r}: {exc}", f"default is {HIGH_VOLUME_URL}") from None
    if not parts.hostname:
        raise ConfigError("server_url", f"{redact(url)!r} has no host", f"default is {HIGH_VOLUME_URL}")
    return url.rstrip("/")


def check_parent_folder(path: Path, field_name: str, root: Path | None = None) -> None:
    """Refuse a file path whose folder does not exist (a typo, most likely) unless it lies under ``root``,
    the output root whose folders edown makes itself; and refuse a path that is something other than a
    file (``/dev/null``, a pipe, a folder): writing replaces what is there, and must never replace those."""
    option = "--" + field_name.replace("_", "-")
    kind = special_file_kind(path)
    if kind is not None:
        raise ConfigError(
            field_name, f"{path} is {kind}, not a file edown may replace", f"choose another {option}"
        )
    parent = path.parent
    if parent.is_dir():
        return
    if root is not None and (
        root.resolve() == parent.resolve() or root.resolve() in parent.resolve().parents
    ):
        return
    if parent.exists():
        raise ConfigError(field_name, f"{parent} is not a folder", f"choose another {option}")
    raise ConfigError(
        field_name, f"folder {parent} does not exist", f"create it first, or choose another {option}"
    )


def _check_positive_int(value: Any, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")


def _check_seconds_or_rate(value: Any, name: str, allow_zero: bool = False) -> None:
    """A finite number above zero (or at least zero): NaN and infinity pass ``<=`` checks and then fail
    deep inside a run (a timer that never fires, a JSON manifest that cannot hold them)."""
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(name, f"must be a finite number {bound}, got {value!r}")


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


# ---- SearchConfig -----------------------------------------------------------------------------------

RESAMPLE_CHOICES = ("none", "finest")


@dataclass(frozen=True)
class SearchConfig:
    """What to look for: a collection, inclusive dates, an AOI and the bands to keep.

    Extensions beyond the contract (all optional): ``project`` (Cloud project; else ``EE_PROJECT`` /
    ``GOOGLE_CLOUD_PROJECT`` / the credentials' project), ``credentials`` (google.auth credentials to use
    as they are), ``property_filters`` (server-side metadata filters such as ``"CLOUDY_PIXEL_PERCENTAGE <
    20"``), ``resample`` (``"none"``: bands of different resolutions become separate outputs, each on its
    native grid; ``"finest"``: one output per image on the finest selected grid, coarser bands resampled by
    nearest neighbour on the server), ``output_dtype`` (override the dtype of scaled/plugin output) and
    ``max_images`` (stop after this many images, oldest first), ``cloud_mask`` (``"scl"``,
    ``"cloud-score-plus"``, ``"qa-pixel"`` or ``"auto"``: drop cloud and shadow pixels on Earth Engine, see
    :mod:`edown.clouds`), ``cloud_score_threshold`` (Cloud Score+ ``cs_cdf`` below it is masked; 0.6) and
    ``max_cloud_fraction`` (keep only images whose masked share inside the AOI is at most this; needs a
    ``cloud_mask``). ``server_url`` defaults to the
    high-volume endpoint, or to ``$EDOWN_SERVER_URL`` when set (handy to point code at the emulator).
    """

    collection_id: str
    start_date: str
    end_date: str
    aoi: AOI
    bands: tuple[str, ...] = ()
    band_include: tuple[str, ...] = ()
    band_exclude: tuple[str, ...] = ()
    rename_map: dict[str, str] = field(default_factory=dict)
    scale_map: dict[str, float] = field(default_factory=dict)
    transform_plugin: str | None = None
    # Out of repr(): it may carry credentials (user:password@); manifests and messages show it redacted.
    server_url: str = field(
        default_factory=lambda: os.environ.get("EDOWN_SERVER_URL") or HIGH_VOLUME_URL, repr=False
    )
    project: str | None = None
    credentials: Any = field(default=None, repr=False, compare=False)
    property_filters: tuple[str, ...] = ()
    resample: str = "none"
    output_dtype: str | None = None
    max_images: int | None = None
    cloud_mask: str | None = None
    cloud_score_threshold: float = DEFAULT_THRESHOLD
    max_cloud_fraction: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.collection_id, str) or not re.fullmatch(
            r"[A-Za-z0-9_\-./]+", self.collection_id or ""
        ):
            raise ConfigError(
                "collection_id",
                f"{self.collection_id!r} is not an Earth Engine collection id",
                "e.g. COPERNICUS/S2_SR_HARMONIZED",
            )
        start = parse_date(self.start_date, "start_date")
        end = parse_date(self.end_date, "end_date")
        if end < start:
            raise ConfigError(
                "end_date",
                f"{end.isoformat()} is before start_date {start.isoformat()}",
                "both dates are inclusive; swap them",
            )
        _set(self, "start_date", start.isoformat())
        _set(self, "end_date", end.isoformat())
        if not isinstance(self.aoi, AOI):
            raise ConfigError(
                "aoi", f"expected an AOI, got {type(self.aoi).__name__}", "use AOI.from_bbox(...)"
            )
        _set(self, "bands", _as_tuple(self.bands, "bands"))
        _set(self, "band_include", _as_tuple(self.band_include, "band_include"))
        _set(self, "band_exclude", _as_tuple(self.band_exclude, "band_exclude"))
        _compile_all(self.band_include, "band_include")
        _compile_all(self.band_exclude, "band_exclude")
        _set(self, "rename_map", _as_map(self.rename_map, "rename_map", number=False))
        _set(self, "scale_map", _as_map(self.scale_map, "scale_map", number=True))
        _check_plugin_spec(self.transform_plugin)
        _set(self, "server_url", check_url(self.server_url))
        raw_filters: Any = self.property_filters
        filters = (
            (raw_filters,) if isinstance(raw_filters, str) else _as_tuple(raw_filters, "property_filters")
        )
        for text in filters:
            PropertyFilter.parse(text)
        _set(self, "property_filters", filters)
        if self.resample not in RESAMPLE_CHOICES:
            raise ConfigError("resample", f"{self.resample!r} is not one of {RESAMPLE_CHOICES}")
        if self.output_dtype is not None:
            from numpy import dtype

            try:
                kind = dtype(self.output_dtype)
            except TypeError:
                raise ConfigError("output_dtype", f"{self.output_dtype!r} is not a numpy dtype") from None
            if kind.kind not in "iuf":
                raise ConfigError("output_dtype", f"{self.output_dtype!r} is not a numeric dtype")
            _set(self, "output_dtype", kind.name)
        if self.max_images is not None:
            _check_positive_int(self.max_images, "max_images")
        if self.project is not None and not re.fullmatch(r"[a-z0-9][a-z0-9\-_.:]*", self.project):
            raise ConfigError("project", f"{self.project!r} is not a Google Cloud project id")
        _set(self, "cloud_mask", resolve_mask(self.collection_id, self.cloud_mask))
        _set(
            self, "cloud_score_threshold", check_fraction(self.cloud_score_threshold, "cloud_score_threshold")
        )
        check_threshold(self.cloud_mask, self.cloud_score_threshold, self.collection_id)
        if self.max_cloud_fraction is not None:
            _set(self, "max_cloud_fraction", check_fraction(self.max_cloud_fraction, "max_cloud_fraction"))
            if self.cloud_mask is None:
                raise ConfigError(
                    "max_cloud_fraction",
                    "needs a cloud mask to count cloudy pixels",
                    "add --cloud-mask auto (cloud_mask='auto') or name a mask",
                )

    @property
    def parsed_property_filters(self) -> tuple[PropertyFilter, ...]:
        return tuple(PropertyFilter.parse(t) for t in self.property_filters)

    def search_fields(self) -> dict[str, Any]:
        """The search part of this config as JSON-friendly values (no credentials)."""
        out: dict[str, Any] = {}
        for f in fields(SearchConfig):
            if f.name == "credentials":
                continue
            value = getattr(self, f.name)
            if f.name == "aoi":
                value = self.aoi.geometry
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


# ---- DownloadConfig ---------------------------------------------------------------------------------

CHUNK_MODES = ("auto", "fixed")
COMPRESSIONS = ("zstd", "deflate", "lzw", "none")


@dataclass(frozen=True)
class DownloadConfig(SearchConfig):
    """Search, then download native-grid GeoTIFFs.

    Extensions: ``dry_run`` (plan and report, fetch nothing), ``search_manifest`` (reuse a saved search
    instead of searching again), ``compression`` (zstd, deflate, lzw or none), ``cog`` (write Cloud
    Optimized GeoTIFFs with overviews), ``max_concurrent_requests`` / ``max_requests_per_second`` (the
    project's Earth Engine quotas: 40 and 100 by default), ``request_timeout_seconds`` (per-request
    deadline) and ``progress`` (show progress on a terminal).
    """

    output_root: Location = Path("data")
    manifest_path: Location | None = None
    chunk_size: int | None = None
    chunk_size_mode: str = "auto"
    prepare_workers: int = 10
    download_workers: int = 10
    max_inflight_chunks: int = 32
    max_retries: int = 4
    retry_delay_seconds: float = 2.0
    request_byte_limit: int = DEFAULT_REQUEST_BYTE_LIMIT
    overwrite: bool = False
    resume: bool = True
    nodata: float | None = None
    dry_run: bool = False
    search_manifest: Location | None = None
    compression: str = "zstd"
    cog: bool = False
    max_concurrent_requests: int = 40
    max_requests_per_second: float = 100.0
    request_timeout_seconds: float = 300.0
    progress: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, "output_root", location(self.output_root, "output_root"))
        if self.manifest_path is not None:
            _set(self, "manifest_path", location(self.manifest_path, "manifest_path"))
            if isinstance(self.manifest_path, Path):
                root = self.output_root if isinstance(self.output_root, Path) else None
                check_parent_folder(self.manifest_path, "manifest_path", root)
        if self.search_manifest is not None:
            _set(self, "search_manifest", location(self.search_manifest, "search_manifest"))
        if self.chunk_size_mode not in CHUNK_MODES:
            raise ConfigError("chunk_size_mode", f"{self.chunk_size_mode!r} is not one of {CHUNK_MODES}")
        if self.chunk_size is not None:
            _check_positive_int(self.chunk_size, "chunk_size", 16)
            if self.chunk_size > 32768:
                raise ConfigError(
                    "chunk_size", f"{self.chunk_size} exceeds Earth Engine's 32768 pixels per side"
                )
        if self.chunk_size_mode == "fixed" and self.chunk_size is None:
            raise ConfigError(
                "chunk_size", "chunk_size_mode='fixed' needs a chunk_size", "e.g. chunk_size=1024"
            )
        for name in ("prepare_workers", "download_workers", "max_inflight_chunks", "max_concurrent_requests"):
            _check_positive_int(getattr(self, name), name)
        _check_positive_int(self.max_retries, "max_retries", 0)
        _check_seconds_or_rate(self.retry_delay_seconds, "retry_delay_seconds", allow_zero=True)
        _check_positive_int(self.request_byte_limit, "request_byte_limit", 1024)
        if self.nodata is not None and (
            isinstance(self.nodata, bool) or not isinstance(self.nodata, int | float)
        ):
            raise ConfigError("nodata", f"must be a number or None (auto), got {self.nodata!r}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError("compression", f"{self.compression!r} is not one of {COMPRESSIONS}")
        _check_seconds_or_rate(self.max_requests_per_second, "max_requests_per_second")
        _check_seconds_or_rate(self.request_timeout_seconds, "request_timeout_seconds")

    @property
    def manifests_dir(self) -> Location:
        return self.output_root / "manifests"


# ---- StackConfig ------------------------------------------------------------------------------------

BACKENDS = ("threads", "dask-local", "dask-slurm")
#: ``zarr``: a plain Zarr v3 store; ``icechunk``: an icechunk repository, one commit per run (optional extra).
STORES = ("zarr", "icechunk")


@dataclass(frozen=True)
class StackConfig:
    """Build one Zarr datacube per alignment group of a download manifest.

    ``manifest_path`` may also be a folder (all its ``run-*.json``). Extensions: ``manifest_paths``
    (further manifests or folders stacked together with ``manifest_path``, e.g. the runs that downloaded
    successive months into one output root; an image in several manifests is taken once, from the newest
    run), ``threads`` (worker threads for the ``threads`` backend; default = cores), ``walltime``
    (SLURM job walltime), ``scheduler_host`` (address SLURM workers use to reach the Dask scheduler;
    default: dask-jobqueue's choice), ``worker_timeout_seconds`` (how long to wait for the first SLURM
    worker), ``chunk_size`` (spatial chunk side, default 512), ``progress``, ``store`` (``"zarr"``, or
    ``"icechunk"`` for an icechunk repository where each run is one commit and earlier snapshots stay
    readable; needs ``pip install 'edown[icechunk]'``).
    """

    manifest_path: Location
    output_root: Location | None = None
    backend: str = "threads"
    overwrite: bool = False
    n_workers: int = 4
    cores_per_worker: int = 1
    memory_per_worker: str = "1GB"
    slurm_queue: str | None = None
    slurm_account: str | None = None
    threads: int | None = None
    walltime: str = "01:00:00"
    scheduler_host: str | None = None
    worker_timeout_seconds: float = 300.0
    chunk_size: int = 512
    progress: bool = False
    manifest_paths: tuple[Location, ...] = ()
    store: str = "zarr"

    def __post_init__(self) -> None:
        _set(self, "manifest_path", location(self.manifest_path, "manifest_path"))
        extra: Any = self.manifest_paths
        if isinstance(extra, str | Path):
            extra = (extra,)
        _set(self, "manifest_paths", tuple(location(p, "manifest_paths") for p in extra))
        if self.output_root is not None:
            _set(self, "output_root", location(self.output_root, "output_root"))
        if self.backend not in BACKENDS:
            raise ConfigError("backend", f"{self.backend!r} is not one of {BACKENDS}")
        if self.store not in STORES:
            raise ConfigError("store", f"{self.store!r} is not one of {STORES}")
        _check_positive_int(self.n_workers, "n_workers")
        _check_positive_int(self.cores_per_worker, "cores_per_worker")
        _check_seconds_or_rate(self.worker_timeout_seconds, "worker_timeout_seconds")
        if self.threads is not None:
            _check_positive_int(self.threads, "threads")
        _check_positive_int(self.chunk_size, "chunk_size", 64)
        if not re.fullmatch(
            r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", str(self.memory_per_worker).strip(), re.I
        ):
            raise ConfigError(
                "memory_per_worker", f"{self.memory_per_worker!r} is not a size", "e.g. 2GB or 1500MiB"
            )
        if not re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", self.walltime):
            raise ConfigError("walltime", f"{self.walltime!r} is not HH:MM:SS")
