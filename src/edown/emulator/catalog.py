"""A synthetic but faithful Earth Engine catalogue, generated on demand and deterministic.

Nothing is stored: an image exists because a rule says a satellite saw that place on that day, and every
fact about it (id, times, grid, footprint, properties) is a pure function of that rule. The rules follow
the real products closely enough that the mistakes people make against real Earth Engine also happen
here:

``COPERNICUS/S2_SR_HARMONIZED``
    Sentinel-2 L2A on MGRS tiles. Real band list in the real order (B1 at 60 m comes *first*), uint16
    reflectance, 10/20/60 m grids that share the tile's upper-left corner. A tile is 109.8 km on a side
    with its corner at the MGRS 100 km square, snapped to 60 m exactly as the real products are
    (``600000, 5800020`` for T30UXC; ``699960`` for its eastern neighbour), so neighbours overlap by
    9.8 km and every tile of a UTM zone shares one pixel phase. Tile names are real MGRS names. Two
    satellites alternate on a 5-day revisit; one tile in four sits at a swath edge and is only partly
    covered (the rest of the tile has no data).
``LANDSAT/LC09/C02/T1_L2`` and ``LANDSAT/LC08/C02/T1_L2``
    Landsat Collection 2 L2 on a WRS-2-like path/row layout, 16-day repeat, the two satellites 8 days
    apart. Each scene is a tilted 185 km footprint inside a 30 m UTM grid whose pixel edges sit at
    15 m mod 30 m; the grid origin and size move by whole pixels from date to date (so footprints and
    transforms differ, but the grid phase is shared).
``MODIS/061/MOD09GA``
    One global image a day in ``SR-ORG:6974`` sinusoidal; band 0 is at 1 km, the surface reflectance
    bands at 500 m (int16 with negative values). Pixels outside the sinusoidal "eye" have no data.
``ECMWF/ERA5_LAND/DAILY_AGGR``
    Daily float32 fields on the EPSG:4326 0.1° grid ``[0.1, 0, -180.05, 0, -0.1, 90.05]``, 3600 x 1801,
    land only (the sea is masked).

Pixel values are produced by :mod:`edown.emulator.pixels` from the ``seeds`` recorded on each asset.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Any

from pyproj import Transformer
from shapely import affinity
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry

from edown.crs import resolve_crs
from edown.emulator.budget import charge
from edown.emulator.model import BandInfo, Footprint, Grid, ImageAsset, PixelType

DAY_MS = 86_400_000
WORLD = box(-180.0, -90.0, 180.0, 90.0)


class CatalogError(Exception):
    """A request the catalogue refuses (maps to HTTP 400)."""


class AssetNotFoundError(CatalogError):
    """An asset id that does not exist (maps to HTTP 404)."""

    def __init__(self, asset_id: str) -> None:
        super().__init__(f"Asset '{asset_id}' does not exist or doesn't allow this operation.")
        self.asset_id = asset_id


def stable_hash(*parts: object) -> int:
    """A 63-bit hash of ``parts`` that is the same on every machine and in every process."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def unit_hash(*parts: object) -> float:
    """A deterministic number in [0, 1)."""
    return stable_hash(*parts) / float(2**63)


def day_of(ms: int) -> int:
    """Days since 1970-01-01 (UTC) of a millisecond timestamp."""
    return ms // DAY_MS


def date_str(ms: int, fmt: str) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime(fmt)


def day_number(date: str) -> int:
    return (dt.date.fromisoformat(date) - dt.date(1970, 1, 1)).days


@lru_cache(maxsize=512)
def _to_lonlat(crs: str) -> Transformer:
    return Transformer.from_crs(resolve_crs(crs), "EPSG:4326", always_xy=True)


@lru_cache(maxsize=512)
def _from_lonlat(crs: str) -> Transformer:
    return Transformer.from_crs("EPSG:4326", resolve_crs(crs), always_xy=True)


def polygon_to_lonlat(crs: str, coords: list[tuple[float, float]], densify: int = 8) -> Polygon:
    """Reproject a native-CRS ring to lon/lat, densifying edges so the shape survives the projection."""
    pts: list[tuple[float, float]] = []
    ring = [*coords, coords[0]]
    for (x0, y0), (x1, y1) in pairwise(ring):
        for i in range(densify):
            f = i / densify
            pts.append((x0 + (x1 - x0) * f, y0 + (y1 - y0) * f))
    xs, ys = _to_lonlat(crs).transform([p[0] for p in pts], [p[1] for p in pts])
    ring_ll = [(round(float(x), 9), round(float(y), 9)) for x, y in zip(xs, ys, strict=True)]
    poly = Polygon(ring_ll)
    if not poly.is_valid:
        poly = poly.buffer(0)
    return poly


def halfplanes_of_convex(coords: list[tuple[float, float]]) -> tuple[tuple[float, float, float], ...]:
    """Half-planes ``a*x + b*y + c >= 0`` whose intersection is the convex polygon ``coords`` (CCW)."""
    planes = []
    ring = [*coords, coords[0]]
    for (x1, y1), (x2, y2) in pairwise(ring):
        # inside when cross((p2 - p1), (p - p1)) >= 0 for a counter-clockwise ring
        a = -(y2 - y1)
        b = x2 - x1
        c = -(a * x1 + b * y1)
        planes.append((float(a), float(b), float(c)))
    return tuple(planes)


def _ccw(coords: list[tuple[float, float]]) -> list[tuple[float, float]]:
    area = sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(coords, [*coords[1:], coords[0]], strict=True))
    return coords if area > 0 else list(reversed(coords))


# --------------------------------------------------------------------------------------------------
# Collections
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BandTemplate:
    """A band as a collection defines it: id, numpy dtype and pixel size relative to the base grid."""

    id: str
    dtype: str
    resolution: float
    recipe: str


class SyntheticCollection:
    """Base class: a collection knows its bands and how to enumerate images in a time range and region."""

    id: str = ""
    title: str = ""
    first_day: str = "1970-01-01"
    last_day: str = "2026-10-31"
    #: Bound on the candidate images one query may enumerate; EE times out on such queries too.
    max_candidates: int = 250_000

    def images(
        self, start_ms: int | None, end_ms: int | None, region: BaseGeometry | None
    ) -> Iterator[ImageAsset]:
        """Images whose start time is in ``[start_ms, end_ms)`` and whose footprint meets ``region``."""
        raise NotImplementedError

    def image(self, system_index: str) -> ImageAsset:
        """The image with this ``system:index`` (raises :class:`AssetNotFoundError`)."""
        raise NotImplementedError

    def day_range(self, start_ms: int | None, end_ms: int | None, slack_days: int = 1) -> range:
        first = day_number(self.first_day)
        last = day_number(self.last_day)
        lo = first if start_ms is None else max(first, day_of(start_ms) - slack_days)
        hi = last if end_ms is None else min(last, day_of(end_ms - 1) + slack_days)
        return range(lo, hi + 1)

    def in_time(self, asset: ImageAsset, start_ms: int | None, end_ms: int | None) -> bool:
        return (start_ms is None or asset.start_ms >= start_ms) and (
            end_ms is None or asset.start_ms < end_ms
        )

    def check_budget(self, count: int) -> None:
        if count > self.max_candidates:
            raise CatalogError(
                "Computation timed out. (The emulator refuses queries over more than "
                f"{self.max_candidates} candidate images of {self.id}; narrow the dates or region.)"
            )

    def to_rest(self) -> dict[str, Any]:
        return {
            "type": "IMAGE_COLLECTION",
            "name": "projects/earthengine-public/assets/" + self.id,
            "id": self.id,
            "updateTime": "2026-10-31T00:00:00Z",
            "title": self.title,
            "startTime": f"{self.first_day}T00:00:00Z",
            "endTime": f"{self.last_day}T00:00:00Z",
            "properties": {"title": self.title},
        }

    def to_info_header(self) -> dict[str, Any]:
        return {
            "type": "ImageCollection",
            "bands": [],
            "id": self.id,
            "version": 1761868800000000,
            "properties": {"title": self.title, "system:visualization_0_name": self.title},
        }


def _seeds(cloud_seed: int, cloud_percent_x100: int, start_ms: int) -> dict[str, int]:
    """The per-image inputs of the pixel recipes (see :mod:`edown.emulator.pixels`)."""
    return {
        "cloud_seed": cloud_seed,
        "cloud_percent_x100": cloud_percent_x100,
        "day_of_year": int(date_str(start_ms, "%j")),
    }


def _grid_for(
    template: BandTemplate, crs: str, x0: float, y0: float, width_m: float, height_m: float
) -> Grid:
    res = template.resolution
    return Grid(
        crs=crs,
        transform=(res, 0.0, x0, 0.0, -res, y0),
        width=round(width_m / res),
        height=round(height_m / res),
    )


def _pixel_type(dtype: str) -> PixelType:
    return PixelType.of_dtype(dtype)


# ---- Sentinel-2 -------------------------------------------------------------------------------------

S2_BANDS: tuple[BandTemplate, ...] = (
    BandTemplate("B1", "uint16", 60, "s2:B1"),
    BandTemplate("B2", "uint16", 10, "s2:B2"),
    BandTemplate("B3", "uint16", 10, "s2:B3"),
    BandTemplate("B4", "uint16", 10, "s2:B4"),
    BandTemplate("B5", "uint16", 20, "s2:B5"),
    BandTemplate("B6", "uint16", 20, "s2:B6"),
    BandTemplate("B7", "uint16", 20, "s2:B7"),
    BandTemplate("B8", "uint16", 10, "s2:B8"),
    BandTemplate("B8A", "uint16", 20, "s2:B8A"),
    BandTemplate("B9", "uint16", 60, "s2:B9"),
    BandTemplate("B11", "uint16", 20, "s2:B11"),
    BandTemplate("B12", "uint16", 20, "s2:B12"),
    BandTemplate("AOT", "uint16", 10, "s2:AOT"),
    BandTemplate("WVP", "uint16", 10, "s2:WVP"),
    BandTemplate("SCL", "uint8", 20, "s2:SCL"),
    BandTemplate("TCI_R", "uint8", 10, "s2:TCI_R"),
    BandTemplate("TCI_G", "uint8", 10, "s2:TCI_G"),
    BandTemplate("TCI_B", "uint8", 10, "s2:TCI_B"),
    BandTemplate("MSK_CLDPRB", "uint8", 20, "s2:MSK_CLDPRB"),
    BandTemplate("MSK_SNWPRB", "uint8", 20, "s2:MSK_SNWPRB"),
    BandTemplate("QA10", "uint16", 10, "s2:QA10"),
    BandTemplate("QA20", "uint32", 20, "s2:QA20"),
    BandTemplate("QA60", "uint16", 60, "s2:QA60"),
    BandTemplate("MSK_CLASSI_OPAQUE", "uint8", 60, "s2:MSK_CLASSI_OPAQUE"),
    BandTemplate("MSK_CLASSI_CIRRUS", "uint8", 60, "s2:MSK_CLASSI_CIRRUS"),
    BandTemplate("MSK_CLASSI_SNOW_ICE", "uint8", 60, "s2:MSK_CLASSI_SNOW_ICE"),
)

MGRS_COLUMN_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
MGRS_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"
MGRS_LATBAND_LETTERS = "CDEFGHJKLMNPQRSTUVWXX"
S2_TILE_SIZE_M = 109_800


def utm_epsg(zone: int, north: bool) -> str:
    return f"EPSG:{32600 + zone if north else 32700 + zone}"


def utm_zone_of(lon: float) -> int:
    return min(60, max(1, math.floor((lon + 180.0) / 6.0) + 1))


@dataclass(frozen=True)
class MgrsTile:
    """An S2 tile: UTM zone/hemisphere and the MGRS 100 km square indices ``k`` (easting) and ``j``."""

    zone: int
    north: bool
    k: int
    j: int

    @property
    def crs(self) -> str:
        return utm_epsg(self.zone, self.north)

    @property
    def ulx(self) -> int:
        return (100_000 * self.k // 60) * 60

    @property
    def uly(self) -> int:
        return -((-100_000 * self.j) // 60) * 60  # ceil to a multiple of 60

    @property
    def corners(self) -> list[tuple[float, float]]:
        x0, y0, s = float(self.ulx), float(self.uly), float(S2_TILE_SIZE_M)
        return [(x0, y0 - s), (x0 + s, y0 - s), (x0 + s, y0), (x0, y0)]

    @property
    def name(self) -> str:
        col = MGRS_COLUMN_LETTERS[((self.zone - 1) % 3) * 8 + (self.k - 1)]
        # The square north of northing 100 km * (j - 1); even zones shift the letter cycle by five.
        row = MGRS_ROW_LETTERS[(self.j - 1 + (5 if self.zone % 2 == 0 else 0)) % 20]
        lat = self.center_lonlat[1]
        band = MGRS_LATBAND_LETTERS[max(0, min(20, math.floor((lat + 80.0) / 8.0)))]
        return f"{self.zone:02d}{band}{col}{row}"

    @property
    def center_lonlat(self) -> tuple[float, float]:
        x = self.ulx + S2_TILE_SIZE_M / 2
        y = self.uly - S2_TILE_SIZE_M / 2
        lon, lat = _to_lonlat(self.crs).transform(x, y)
        return float(lon), float(lat)


def _square_in_zone(tile: MgrsTile, zlon0: float) -> bool:
    """Whether the tile's 100 km MGRS square reaches into its zone's 6-degree band (as real tiles do)."""
    y = tile.uly - S2_TILE_SIZE_M / 2
    (west, east), _ = _to_lonlat(tile.crs).transform([tile.ulx, tile.ulx + 100_000], [y, y])
    return bool(west < zlon0 + 6.0 and east > zlon0)


@lru_cache(maxsize=20_000)
def _s2_tile_geometry(tile: MgrsTile) -> tuple[Polygon, tuple[tuple[float, float, float], ...]]:
    """Footprint of a tile in lon/lat plus the exact half-planes in UTM (swath-edge tiles are cut)."""
    corners = _ccw(tile.corners)
    planes = list(halfplanes_of_convex(corners))
    coords_native = corners
    if stable_hash("s2-swath-edge", tile.name) % 4 == 0:
        # A swath edge crosses the tile, tilted ~13 degrees from north like the descending orbit.
        frac = 0.3 + 0.4 * unit_hash("s2-swath-frac", tile.name)
        px = tile.ulx + frac * S2_TILE_SIZE_M
        py = tile.uly - S2_TILE_SIZE_M / 2
        a, b = 974.0, -225.0  # normal of the edge direction (225, 974)
        side = 1.0 if stable_hash("s2-swath-side", tile.name) % 2 else -1.0
        plane = (side * a, side * b, -side * (a * px + b * py))
        planes.append(plane)
        coords_native = _clip_convex(corners, plane)
    footprint = polygon_to_lonlat(tile.crs, coords_native)
    return footprint, tuple(planes)


def _clip_convex(
    coords: list[tuple[float, float]], plane: tuple[float, float, float]
) -> list[tuple[float, float]]:
    """Sutherland-Hodgman clip of a convex ring by one half-plane."""
    a, b, c = plane
    out: list[tuple[float, float]] = []
    ring = [*coords, coords[0]]
    for (x1, y1), (x2, y2) in pairwise(ring):
        d1 = a * x1 + b * y1 + c
        d2 = a * x2 + b * y2 + c
        if d1 >= 0:
            out.append((x1, y1))
        if (d1 >= 0) != (d2 >= 0):
            t = d1 / (d1 - d2)
            out.append((x1 + t * (x2 - x1), y1 + t * (y2 - y1)))
    return out


class Sentinel2(SyntheticCollection):
    band_templates: tuple[BandTemplate, ...] = S2_BANDS
    id = "COPERNICUS/S2_SR_HARMONIZED"
    title = "Harmonized Sentinel-2 MSI: MultiSpectral Instrument, Level-2A (SR) [emulated]"
    first_day = "2017-03-28"
    revisit_days = 5

    def tiles_for(self, region: BaseGeometry | None) -> list[MgrsTile]:
        """MGRS tiles whose footprint meets ``region`` (every tile between 56S and 84N when None)."""
        area = WORLD if region is None else region
        lon0, lat0, lon1, lat1 = area.bounds
        lat0, lat1 = max(lat0, -56.0), min(lat1, 84.0)
        if lat0 > lat1:
            return []
        tiles: list[MgrsTile] = []
        # Edge tiles reach up to ~1.5 degrees beyond their zone, so look at neighbouring zones too.
        for zone in range(utm_zone_of(lon0 - 2.0), utm_zone_of(lon1 + 2.0) + 1):
            zlon0 = -180.0 + 6.0 * (zone - 1)
            for north in (True, False):
                hlat0, hlat1 = (max(lat0, -1.0), lat1) if north else (lat0, min(lat1, 1.0))
                if hlat0 > hlat1:
                    continue
                part = box(max(lon0, zlon0 - 2.0), hlat0, min(lon1, zlon0 + 8.0), hlat1)
                clipped = part if region is None else part.intersection(area)
                if clipped.is_empty:
                    continue
                tiles.extend(self._zone_tiles(zone, north, clipped, region))
        return sorted(set(tiles), key=lambda t: (t.zone, not t.north, t.k, -t.j))

    def _zone_tiles(
        self, zone: int, north: bool, part: BaseGeometry, region: BaseGeometry | None
    ) -> list[MgrsTile]:
        crs = utm_epsg(zone, north)
        bx0, by0, bx1, by1 = part.bounds
        xs = [bx0 + (bx1 - bx0) * i / 8 for i in range(9)]
        ys = [by0 + (by1 - by0) * i / 8 for i in range(9)]
        grid_x = [x for x in xs for _ in ys]
        grid_y = [y for _ in xs for y in ys]
        ex, ny = _from_lonlat(crs).transform(grid_x, grid_y)
        fx = [v for v in ex if math.isfinite(v)]
        fy = [v for v in ny if math.isfinite(v)]
        if not fx or not fy:
            return []
        k_lo = max(1, math.floor((min(fx) - S2_TILE_SIZE_M) / 100_000))
        k_hi = min(8, math.floor(max(fx) / 100_000) + 1)
        j_lo = max(1, math.floor(min(fy) / 100_000))
        j_hi = min(100, math.floor((max(fy) + S2_TILE_SIZE_M) / 100_000) + 1)
        zlon0 = -180.0 + 6.0 * (zone - 1)
        out = []
        for k in range(k_lo, k_hi + 1):
            for j in range(j_lo, j_hi + 1):
                charge()  # a query over the whole world looks at thousands of tiles
                tile = MgrsTile(zone, north, k, j)
                _, clat = tile.center_lonlat
                if not -56.0 <= clat <= 84.0 or not _square_in_zone(tile, zlon0):
                    continue
                if region is None or _s2_tile_geometry(tile)[0].intersects(region):
                    out.append(tile)
        return out

    def images(
        self, start_ms: int | None, end_ms: int | None, region: BaseGeometry | None
    ) -> Iterator[ImageAsset]:
        days = self.day_range(start_ms, end_ms)
        tiles = self.tiles_for(region)
        self.check_budget(len(tiles) * (len(days) // self.revisit_days + 1))
        found = []
        for tile in tiles:
            phase = _s2_phase(tile)
            first = days.start + ((phase - days.start) % self.revisit_days)
            for day in range(first, days.stop, self.revisit_days):
                charge()
                # The start time is cheap and rules out most candidates of the slack days unbuilt.
                start = _s2_start_ms(tile, day)
                if (start_ms is None or start >= start_ms) and (end_ms is None or start < end_ms):
                    found.append(self._asset(tile, day))
        found.sort(key=lambda a: (a.start_ms, a.id))
        yield from found

    def image(self, system_index: str) -> ImageAsset:
        parts = system_index.split("_")
        if len(parts) != 3 or not parts[2].startswith("T") or len(parts[2]) != 6:
            raise AssetNotFoundError(f"{self.id}/{system_index}")
        try:
            day = day_number(dt.datetime.strptime(parts[1][:8], "%Y%m%d").date().isoformat())
        except ValueError:
            raise AssetNotFoundError(f"{self.id}/{system_index}") from None
        name = parts[2][1:]
        zone = int(name[:2]) if name[:2].isdigit() else 0
        for tile in self.tiles_for_name(zone, name):
            for d in (day - 1, day, day + 1):
                if (d - _s2_phase(tile)) % self.revisit_days:
                    continue
                if not (day_number(self.first_day) <= d <= day_number(self.last_day)):
                    continue
                asset = self._asset(tile, d)
                if asset.system_index == system_index:
                    return asset
        raise AssetNotFoundError(f"{self.id}/{system_index}")

    @staticmethod
    def tiles_for_name(zone: int, name: str) -> Iterator[MgrsTile]:
        """Tiles named ``name`` (``30UXC``): the letters give ``k`` and ``j`` modulo the MGRS cycles."""
        if not 1 <= zone <= 60 or len(name) != 5:
            return
        col_set = MGRS_COLUMN_LETTERS[((zone - 1) % 3) * 8 : ((zone - 1) % 3) * 8 + 8]
        if name[3] not in col_set or name[4] not in MGRS_ROW_LETTERS:
            return
        k = col_set.index(name[3]) + 1
        row_idx = (MGRS_ROW_LETTERS.index(name[4]) - (5 if zone % 2 == 0 else 0)) % 20
        for north in (True, False):
            for j in range(row_idx + 1, 101, 20):
                tile = MgrsTile(zone, north, k, j)
                if tile.name == name:
                    yield tile

    def _asset(self, tile: MgrsTile, day: int) -> ImageAsset:
        return _s2_asset(self.id, tile, day, self.band_templates)


def _s2_strip(tile: MgrsTile) -> tuple[int, int, int]:
    """Tiles imaged together: blocks of 3 x 3 MGRS squares of one zone share dates and timestamps."""
    return (tile.zone, (tile.k - 1) // 3, tile.j // 3)


def _s2_phase(tile: MgrsTile) -> int:
    return stable_hash("s2-phase", *_s2_strip(tile)[:2]) % 5


def _s2_start_ms(tile: MgrsTile, day: int) -> int:
    """``system:time_start``: ~10:30 local solar time. Tiles of one datatake block share it (as in Earth
    Engine, where neighbouring tiles of one pass often carry the same timestamp); granule times differ."""
    strip = _s2_strip(tile)
    zone_lon = -177.0 + 6.0 * (tile.zone - 1)
    seconds = int(37_800 - zone_lon * 240 + stable_hash("s2-t", *strip, day) % 30)
    return day * DAY_MS + seconds * 1000 + stable_hash("s2-ms", *strip, day) % 1000


@lru_cache(maxsize=50_000)
def _s2_asset(
    collection_id: str, tile: MgrsTile, day: int, templates: tuple[BandTemplate, ...] = S2_BANDS
) -> ImageAsset:
    _, clat = tile.center_lonlat
    strip = _s2_strip(tile)
    cycle = (day - _s2_phase(tile)) // 5
    spacecraft = "Sentinel-2A" if (cycle + stable_hash("s2-sat", *strip)) % 2 == 0 else "Sentinel-2B"
    start_ms = _s2_start_ms(tile, day)
    datatake_ms = start_ms - 90_000
    datatake = date_str(datatake_ms, "%Y%m%dT%H%M%S")
    granule = date_str(start_ms + (tile.j % 3) * 9_000 + (tile.k % 3) * 3_000, "%Y%m%dT%H%M%S")
    system_index = f"{datatake}_{granule}_T{tile.name}"
    footprint, planes = _s2_tile_geometry(tile)
    orbit = 1 + stable_hash("s2-orbit", *strip[:2]) % 143
    absolute_orbit = 30_000 + day % 100_000
    cloud = round(100.0 * unit_hash("s2-cloud", system_index) ** 2, 6)
    nodata_pct = 0.0 if len(planes) == 4 else round(100.0 * (1 - _coverage(tile, footprint)), 6)
    sat = "S2A" if spacecraft.endswith("A") else "S2B"
    processing = date_str(start_ms + 3 * 3_600_000, "%Y%m%dT%H%M%S")
    properties: dict[str, Any] = {
        "CLOUDY_PIXEL_PERCENTAGE": cloud,
        "CLOUD_COVERAGE_ASSESSMENT": cloud,
        "MGRS_TILE": tile.name,
        "SPACECRAFT_NAME": spacecraft,
        "SENSING_ORBIT_NUMBER": orbit,
        "SENSING_ORBIT_DIRECTION": "DESCENDING",
        "PRODUCT_ID": f"{sat}_MSIL2A_{datatake}_N0510_R{orbit:03d}_T{tile.name}_{processing}",
        "DATATAKE_IDENTIFIER": f"G{sat}_{datatake}_{absolute_orbit:06d}_N05.10",
        "GRANULE_ID": f"L2A_T{tile.name}_A{absolute_orbit:06d}_{granule}",
        "PROCESSING_BASELINE": "05.10",
        "MEAN_SOLAR_ZENITH_ANGLE": round(
            abs(clat - 23.44 * math.cos(2 * math.pi * ((day + 10) % 365) / 365)), 6
        ),
        "NODATA_PIXEL_PERCENTAGE": nodata_pct,
        "DATASTRIP_ID": f"{sat}_OPER_MSI_L2A_DS_{processing}_S{datatake}_N05.10",
    }
    bands = tuple(
        BandInfo(
            id=t.id,
            pixel_type=_pixel_type(t.dtype),
            grid=_grid_for(t, tile.crs, tile.ulx, tile.uly, S2_TILE_SIZE_M, S2_TILE_SIZE_M),
            recipe=t.recipe,
        )
        for t in templates
    )
    seeds = _seeds(stable_hash("s2-datatake", datatake[:8], orbit) % 1_000_003, int(cloud * 100), start_ms)
    return ImageAsset(
        id=f"{collection_id}/{system_index}",
        collection_id=collection_id,
        start_ms=start_ms,
        end_ms=start_ms,
        bands=bands,
        properties=properties,
        footprint=Footprint(lonlat=footprint, halfplanes=planes),
        version=(start_ms + 2 * DAY_MS) * 1000 + 123,
        size_bytes=700_000_000 + stable_hash("s2-size", system_index) % 300_000_000,
        seeds=seeds,
    )


def _coverage(tile: MgrsTile, footprint: Polygon) -> float:
    full = polygon_to_lonlat(tile.crs, _ccw(tile.corners))
    return float(footprint.area / full.area) if full.area else 1.0


# ---- Landsat ----------------------------------------------------------------------------------------

LANDSAT_BANDS: tuple[BandTemplate, ...] = (
    BandTemplate("SR_B1", "uint16", 30, "ls:SR_B1"),
    BandTemplate("SR_B2", "uint16", 30, "ls:SR_B2"),
    BandTemplate("SR_B3", "uint16", 30, "ls:SR_B3"),
    BandTemplate("SR_B4", "uint16", 30, "ls:SR_B4"),
    BandTemplate("SR_B5", "uint16", 30, "ls:SR_B5"),
    BandTemplate("SR_B6", "uint16", 30, "ls:SR_B6"),
    BandTemplate("SR_B7", "uint16", 30, "ls:SR_B7"),
    BandTemplate("SR_QA_AEROSOL", "uint8", 30, "ls:SR_QA_AEROSOL"),
    BandTemplate("ST_B10", "uint16", 30, "ls:ST_B10"),
    BandTemplate("ST_ATRAN", "int16", 30, "ls:ST_ATRAN"),
    BandTemplate("ST_CDIST", "int16", 30, "ls:ST_CDIST"),
    BandTemplate("ST_DRAD", "int16", 30, "ls:ST_DRAD"),
    BandTemplate("ST_EMIS", "int16", 30, "ls:ST_EMIS"),
    BandTemplate("ST_EMSD", "int16", 30, "ls:ST_EMSD"),
    BandTemplate("ST_QA", "int16", 30, "ls:ST_QA"),
    BandTemplate("ST_TRAD", "int16", 30, "ls:ST_TRAD"),
    BandTemplate("ST_URAD", "int16", 30, "ls:ST_URAD"),
    BandTemplate("QA_PIXEL", "uint16", 30, "ls:QA_PIXEL"),
    BandTemplate("QA_RADSAT", "uint16", 30, "ls:QA_RADSAT"),
)

WRS2_PATHS = 233
WRS2_ROW_SPACING_DEG = 1.3865
WRS2_PATH1_LON = -64.6
LANDSAT_SCENE_ALONG_M = 180_000
LANDSAT_SCENE_ACROSS_M = 185_000
LANDSAT_HEADING_DEG = -12.0


def wrs2_center(path: int, row: int) -> tuple[float, float]:
    """Scene centre (lon, lat) of a WRS-2-like path/row; row 60 crosses the equator, paths go west."""
    lat = (60 - row) * WRS2_ROW_SPACING_DEG
    lon = WRS2_PATH1_LON - (path - 1) * 360.0 / WRS2_PATHS + 0.12 * lat
    lon = (lon + 180.0) % 360.0 - 180.0
    return lon, lat


class Landsat(SyntheticCollection):
    spacecraft = "LANDSAT_9"
    prefix = "LC09"
    cycle_offset = 0
    repeat_days = 16

    def scenes_for(self, region: BaseGeometry | None) -> list[tuple[int, int]]:
        area = WORLD if region is None else region
        lon0, lat0, lon1, lat1 = area.bounds
        rows = range(
            max(1, int(60 - lat1 / WRS2_ROW_SPACING_DEG) - 2),
            min(122, int(60 - lat0 / WRS2_ROW_SPACING_DEG) + 3) + 1,
        )
        out = []
        for row in rows:
            for path in range(1, WRS2_PATHS + 1):
                clon, clat = wrs2_center(path, row)
                half_lon = 1.6 / max(0.05, math.cos(math.radians(clat)))
                if region is not None and not _lon_overlaps(clon - half_lon, clon + half_lon, lon0, lon1):
                    continue
                if region is None or _landsat_geometry(path, row, 0)[0].intersects(region):
                    out.append((path, row))
        return out

    def images(
        self, start_ms: int | None, end_ms: int | None, region: BaseGeometry | None
    ) -> Iterator[ImageAsset]:
        days = self.day_range(start_ms, end_ms)
        scenes = self.scenes_for(region)
        self.check_budget(len(scenes) * (len(days) // self.repeat_days + 1))
        found = []
        for path, row in scenes:
            phase = (path * 7 + self.cycle_offset) % self.repeat_days
            first = days.start + ((phase - days.start) % self.repeat_days)
            for day in range(first, days.stop, self.repeat_days):
                charge()
                asset = _landsat_asset(self.id, self.prefix, self.spacecraft, path, row, day)
                if self.in_time(asset, start_ms, end_ms) and (
                    region is None or asset.footprint.lonlat.intersects(region)
                ):
                    found.append(asset)
        found.sort(key=lambda a: (a.start_ms, a.id))
        yield from found

    def image(self, system_index: str) -> ImageAsset:
        parts = system_index.split("_")
        if len(parts) != 3 or parts[0] != self.prefix or len(parts[1]) != 6 or not parts[1].isdigit():
            raise AssetNotFoundError(f"{self.id}/{system_index}")
        path, row = int(parts[1][:3]), int(parts[1][3:])
        try:
            day = day_number(dt.datetime.strptime(parts[2], "%Y%m%d").date().isoformat())
        except ValueError:
            raise AssetNotFoundError(f"{self.id}/{system_index}") from None
        phase = (path * 7 + self.cycle_offset) % self.repeat_days
        valid_day = day_number(self.first_day) <= day <= day_number(self.last_day)
        if not (
            1 <= path <= WRS2_PATHS
            and 1 <= row <= 122
            and valid_day
            and (day - phase) % self.repeat_days == 0
        ):
            raise AssetNotFoundError(f"{self.id}/{system_index}")
        return _landsat_asset(self.id, self.prefix, self.spacecraft, path, row, day)


def _lon_overlaps(a0: float, a1: float, b0: float, b1: float) -> bool:
    return any(a0 + shift <= b1 and b0 <= a1 + shift for shift in (-360.0, 0.0, 360.0))


@lru_cache(maxsize=20_000)
def _landsat_geometry(
    path: int, row: int, day: int
) -> tuple[Polygon, tuple[tuple[float, float, float], ...], str, Grid]:
    """Footprint (lon/lat), exact half-planes and 30 m grid of one scene on one day.

    The scene is a tilted rectangle around the WRS-2 centre; on each date it moves along track by a
    whole number of pixels and the grid around it grows or shrinks by whole pixels, keeping the
    15 m mod 30 m pixel edges of Landsat Collection 2.
    """
    clon, clat = wrs2_center(path, row)
    zone = utm_zone_of(clon)
    crs = utm_epsg(zone, clat >= 0)
    cx, cy = _from_lonlat(crs).transform(clon, clat)
    shift = (stable_hash("ls-shift", path, row, day) % 9) - 4
    cx = float(round(cx / 30.0) * 30 + shift * 30 * 0.2)
    cy = float(round(cy / 30.0) * 30 - shift * 30)
    rect = box(
        -LANDSAT_SCENE_ACROSS_M / 2,
        -LANDSAT_SCENE_ALONG_M / 2,
        LANDSAT_SCENE_ACROSS_M / 2,
        LANDSAT_SCENE_ALONG_M / 2,
    )
    tilted = affinity.rotate(rect, LANDSAT_HEADING_DEG, origin=(0, 0))
    corners = [(round(x + cx), round(y + cy)) for x, y in list(tilted.exterior.coords)[:-1]]
    corners = _ccw([(float(x), float(y)) for x, y in corners])
    xs = [c[0] for c in corners]
    ys = [c[1] for c in corners]
    pad = stable_hash("ls-pad", path, row, day) % 4
    x0 = 30.0 * math.floor((min(xs) - 15.0) / 30.0) + 15.0 - 30.0 * pad
    y0 = 30.0 * math.ceil((max(ys) - 15.0) / 30.0) + 15.0 + 30.0 * (3 - pad)
    width = math.ceil((max(xs) - x0) / 30.0) + 1 + (stable_hash("ls-w", path, row, day) % 3)
    height = math.ceil((y0 - min(ys)) / 30.0) + 1 + (stable_hash("ls-h", path, row, day) % 3)
    grid = Grid(crs=crs, transform=(30.0, 0.0, x0, 0.0, -30.0, y0), width=width, height=height)
    return polygon_to_lonlat(crs, corners), halfplanes_of_convex(corners), crs, grid


@lru_cache(maxsize=50_000)
def _landsat_asset(
    collection_id: str, prefix: str, spacecraft: str, path: int, row: int, day: int
) -> ImageAsset:
    footprint, planes, crs, grid = _landsat_geometry(path, row, day)
    clon, clat = wrs2_center(path, row)
    seconds = int(36_400 - clon * 240 + (60 - row) * 5 + stable_hash("ls-t", path, row, day) % 20)
    start_ms = day * DAY_MS + seconds * 1000 + stable_hash("ls-ms", path, row, day) % 1000
    date = date_str(day * DAY_MS, "%Y%m%d")
    system_index = f"{prefix}_{path:03d}{row:03d}_{date}"
    cloud = round(100.0 * unit_hash("ls-cloud", system_index) ** 2, 2)
    processed = date_str((day + 1 + stable_hash("ls-proc", system_index) % 10) * DAY_MS, "%Y%m%d")
    properties: dict[str, Any] = {
        "CLOUD_COVER": cloud,
        "CLOUD_COVER_LAND": round(min(100.0, cloud * 1.1), 2),
        "WRS_PATH": path,
        "WRS_ROW": row,
        "SPACECRAFT_ID": spacecraft,
        "LANDSAT_PRODUCT_ID": f"{prefix}_L2SP_{path:03d}{row:03d}_{date}_{processed}_02_T1",
        "LANDSAT_SCENE_ID": f"{prefix[:2]}{prefix[3]}{path:03d}{row:03d}{date_str(start_ms, '%Y%j')}LGN00",
        "DATE_ACQUIRED": date_str(start_ms, "%Y-%m-%d"),
        "SCENE_CENTER_TIME": date_str(start_ms, "%H:%M:%S") + f".{start_ms % 1000:03d}0000Z",
        "SUN_ELEVATION": round(
            90.0 - abs(clat - 23.44 * math.cos(2 * math.pi * ((day + 10) % 365) / 365)), 6
        ),
        "UTM_ZONE": int(crs[-2:]),
        "COLLECTION_CATEGORY": "T1",
    }
    bands = tuple(
        BandInfo(id=t.id, pixel_type=_pixel_type(t.dtype), grid=grid, recipe=t.recipe) for t in LANDSAT_BANDS
    )
    seeds = _seeds(stable_hash("ls-clouds", system_index) % 1_000_003, int(cloud * 100), start_ms)
    return ImageAsset(
        id=f"{collection_id}/{system_index}",
        collection_id=collection_id,
        start_ms=start_ms,
        end_ms=start_ms,
        bands=bands,
        properties=properties,
        footprint=Footprint(lonlat=footprint, halfplanes=planes),
        version=(start_ms + 3 * DAY_MS) * 1000 + 456,
        size_bytes=900_000_000 + stable_hash("ls-size", system_index) % 200_000_000,
        seeds=seeds,
    )


class Landsat9(Landsat):
    id = "LANDSAT/LC09/C02/T1_L2"
    title = "USGS Landsat 9 Level 2, Collection 2, Tier 1 [emulated]"
    first_day = "2021-10-31"
    spacecraft = "LANDSAT_9"
    prefix = "LC09"
    cycle_offset = 8


class Landsat8(Landsat):
    id = "LANDSAT/LC08/C02/T1_L2"
    title = "USGS Landsat 8 Level 2, Collection 2, Tier 1 [emulated]"
    first_day = "2013-03-18"
    spacecraft = "LANDSAT_8"
    prefix = "LC08"
    cycle_offset = 0


# ---- Daily global products --------------------------------------------------------------------------


class DailyGlobal(SyntheticCollection):
    """One image a day covering the globe; ``system:index`` is the date in ``index_format``."""

    index_format = "%Y_%m_%d"
    footprint_polygon: Polygon = WORLD
    band_grids: dict[str, Grid] = {}  # noqa: RUF012  (class-level constant per subclass)
    band_templates: tuple[BandTemplate, ...] = ()
    mask_rule: str | None = None

    def images(
        self, start_ms: int | None, end_ms: int | None, region: BaseGeometry | None
    ) -> Iterator[ImageAsset]:
        days = self.day_range(start_ms, end_ms, slack_days=0)
        self.check_budget(len(days))
        if region is not None and not self.footprint_polygon.intersects(region):
            return
        for day in days:
            charge()
            asset = self._asset(day)
            if self.in_time(asset, start_ms, end_ms):
                yield asset

    def image(self, system_index: str) -> ImageAsset:
        try:
            day_date = dt.datetime.strptime(system_index, self.index_format).date()
        except ValueError:
            raise AssetNotFoundError(f"{self.id}/{system_index}") from None
        day = (day_date - dt.date(1970, 1, 1)).days
        if not day_number(self.first_day) <= day <= day_number(self.last_day):
            raise AssetNotFoundError(f"{self.id}/{system_index}")
        return self._asset(day)

    def _asset(self, day: int) -> ImageAsset:
        return _daily_asset(self, day)

    def properties_for(self, day: int) -> dict[str, Any]:
        return {}


@lru_cache(maxsize=20_000)
def _daily_asset(collection: DailyGlobal, day: int) -> ImageAsset:
    start_ms = day * DAY_MS
    system_index = date_str(start_ms, collection.index_format)
    bands = tuple(
        BandInfo(id=t.id, pixel_type=_pixel_type(t.dtype), grid=collection.band_grids[t.id], recipe=t.recipe)
        for t in collection.band_templates
    )
    seeds = _seeds(stable_hash(collection.id, "clouds", day) % 1_000_003, 3000, start_ms)
    return ImageAsset(
        id=f"{collection.id}/{system_index}",
        collection_id=collection.id,
        start_ms=start_ms,
        end_ms=start_ms + DAY_MS,
        bands=bands,
        properties=collection.properties_for(day),
        footprint=Footprint(lonlat=collection.footprint_polygon, mask_rule=collection.mask_rule),
        version=(start_ms + 5 * DAY_MS) * 1000 + 789,
        size_bytes=2_000_000_000 + stable_hash(collection.id, "size", day) % 500_000_000,
        seeds=seeds,
    )


MODIS_CRS = "SR-ORG:6974"
MODIS_X0 = -20015109.354
MODIS_Y0 = 10007554.677
MODIS_500M = 463.312716527917
MODIS_1KM = 926.625433055833


def _modis_grid(res: float) -> Grid:
    return Grid(
        crs=MODIS_CRS,
        transform=(res, 0.0, MODIS_X0, 0.0, -res, MODIS_Y0),
        width=round(2 * -MODIS_X0 / res),
        height=round(2 * MODIS_Y0 / res),
    )


MODIS_BANDS: tuple[BandTemplate, ...] = (
    BandTemplate("num_observations_1km", "int8", MODIS_1KM, "modis:num_observations_1km"),
    BandTemplate("state_1km", "uint16", MODIS_1KM, "modis:state_1km"),
    BandTemplate("SensorZenith", "int16", MODIS_1KM, "modis:SensorZenith"),
    BandTemplate("SensorAzimuth", "int16", MODIS_1KM, "modis:SensorAzimuth"),
    BandTemplate("Range", "uint16", MODIS_1KM, "modis:Range"),
    BandTemplate("SolarZenith", "int16", MODIS_1KM, "modis:SolarZenith"),
    BandTemplate("SolarAzimuth", "int16", MODIS_1KM, "modis:SolarAzimuth"),
    BandTemplate("gflags", "uint8", MODIS_1KM, "modis:gflags"),
    BandTemplate("orbit_pnt", "int8", MODIS_1KM, "modis:orbit_pnt"),
    BandTemplate("granule_pnt", "uint8", MODIS_1KM, "modis:granule_pnt"),
    BandTemplate("num_observations_500m", "int8", MODIS_500M, "modis:num_observations_500m"),
    BandTemplate("sur_refl_b01", "int16", MODIS_500M, "modis:sur_refl_b01"),
    BandTemplate("sur_refl_b02", "int16", MODIS_500M, "modis:sur_refl_b02"),
    BandTemplate("sur_refl_b03", "int16", MODIS_500M, "modis:sur_refl_b03"),
    BandTemplate("sur_refl_b04", "int16", MODIS_500M, "modis:sur_refl_b04"),
    BandTemplate("sur_refl_b05", "int16", MODIS_500M, "modis:sur_refl_b05"),
    BandTemplate("sur_refl_b06", "int16", MODIS_500M, "modis:sur_refl_b06"),
    BandTemplate("sur_refl_b07", "int16", MODIS_500M, "modis:sur_refl_b07"),
    BandTemplate("QC_500m", "uint32", MODIS_500M, "modis:QC_500m"),
    BandTemplate("obscov_500m", "int8", MODIS_500M, "modis:obscov_500m"),
    BandTemplate("iobs_res", "uint8", MODIS_500M, "modis:iobs_res"),
    BandTemplate("q_scan", "uint8", MODIS_500M, "modis:q_scan"),
)


class ModisDaily(DailyGlobal):
    id = "MODIS/061/MOD09GA"
    title = "MOD09GA.061 Terra Surface Reflectance Daily Global 1km and 500m [emulated]"
    first_day = "2000-02-24"
    index_format = "%Y_%m_%d"
    band_templates = MODIS_BANDS
    band_grids = {t.id: _modis_grid(t.resolution) for t in MODIS_BANDS}  # noqa: RUF012
    mask_rule = "sinusoidal"

    def properties_for(self, day: int) -> dict[str, Any]:
        return {"google:max_source_file_timestamp": (day + 2) * DAY_MS}


ERA5_GRID = Grid(crs="EPSG:4326", transform=(0.1, 0.0, -180.05, 0.0, -0.1, 90.05), width=3600, height=1801)

ERA5_BANDS: tuple[BandTemplate, ...] = tuple(
    BandTemplate(name, "float32", 0.1, f"era5:{name}")
    for name in (
        "dewpoint_temperature_2m",
        "temperature_2m",
        "skin_temperature",
        "soil_temperature_level_1",
        "soil_temperature_level_2",
        "soil_temperature_level_3",
        "soil_temperature_level_4",
        "volumetric_soil_water_layer_1",
        "surface_net_solar_radiation_sum",
        "surface_pressure",
        "total_precipitation_sum",
        "u_component_of_wind_10m",
        "v_component_of_wind_10m",
        "leaf_area_index_high_vegetation",
    )
)


class Era5LandDaily(DailyGlobal):
    id = "ECMWF/ERA5_LAND/DAILY_AGGR"
    title = "ERA5-Land Daily Aggregated - ECMWF Climate Reanalysis [emulated]"
    first_day = "1950-01-02"
    index_format = "%Y%m%d"
    band_templates = ERA5_BANDS
    band_grids = {t.id: ERA5_GRID for t in ERA5_BANDS}  # noqa: RUF012
    mask_rule = "land"

    def properties_for(self, day: int) -> dict[str, Any]:
        date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
        return {"year": date.year, "month": date.month, "day": date.day}


# ---- The catalogue ----------------------------------------------------------------------------------


class Catalog:
    """Every emulated collection, addressed by EE asset id."""

    def __init__(self, collections: Iterable[SyntheticCollection] | None = None) -> None:
        chosen = list(collections) if collections is not None else default_collections()
        self._collections = {c.id: c for c in chosen}

    @property
    def collection_ids(self) -> list[str]:
        return sorted(self._collections)

    def collection(self, collection_id: str) -> SyntheticCollection:
        try:
            return self._collections[collection_id]
        except KeyError:
            raise AssetNotFoundError(collection_id) from None

    def has_collection(self, asset_id: str) -> bool:
        return asset_id in self._collections

    def image(self, image_id: str) -> ImageAsset:
        if image_id == SRTM_ID:
            return srtm_asset()
        collection_id, _, system_index = image_id.rpartition("/")
        if collection_id not in self._collections or not system_index:
            raise AssetNotFoundError(image_id)
        return self._collections[collection_id].image(system_index)

    def query(
        self,
        collection_id: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        region: BaseGeometry | None = None,
        predicate: Callable[[ImageAsset], bool] | None = None,
    ) -> Iterator[ImageAsset]:
        """Images of a collection by start time ``[start_ms, end_ms)``, region and any other predicate."""
        for asset in self.collection(collection_id).images(start_ms, end_ms, region):
            if predicate is None or predicate(asset):
                yield asset


class CloudScorePlus(Sentinel2):
    """``GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED``: one image per S2 image, same ``system:index``."""

    id = "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"
    title = "Cloud Score+ S2_HARMONIZED V1 [emulated]"
    first_day = "2017-03-28"
    band_templates = (
        BandTemplate("cs", "float32", 10, "s2clouds:cs"),
        BandTemplate("cs_cdf", "float32", 10, "s2clouds:cs_cdf"),
    )


class S2CloudProbability(Sentinel2):
    """``COPERNICUS/S2_CLOUD_PROBABILITY``: one image per S2 image, same ``system:index``."""

    id = "COPERNICUS/S2_CLOUD_PROBABILITY"
    title = "Sentinel-2: Cloud Probability [emulated]"
    band_templates = (BandTemplate("probability", "uint8", 10, "s2clouds:probability"),)


#: ``USGS/SRTMGL1_003``: one global image, int16 elevation on a 1 arc-second EPSG:4326 grid, 56S..60N.
SRTM_ID = "USGS/SRTMGL1_003"
_ARC_SECOND = 1.0 / 3600.0


@lru_cache(maxsize=1)
def srtm_asset() -> ImageAsset:
    width, height = 360 * 3600, 116 * 3600
    grid = Grid(
        "EPSG:4326", (_ARC_SECOND, 0.0, -180.0 - _ARC_SECOND / 2, 0.0, -_ARC_SECOND, 60.0 + _ARC_SECOND / 2)
    )
    grid = Grid(grid.crs, grid.transform, width + 1, height + 1)
    footprint = box(-180.0, -56.0, 180.0, 60.0)
    start = day_number("2000-02-11") * DAY_MS
    return ImageAsset(
        id=SRTM_ID,
        collection_id="",
        start_ms=start,
        end_ms=start + 11 * DAY_MS,
        bands=(BandInfo("elevation", PixelType.of_dtype("int16"), grid, "dem:elevation"),),
        properties={"title": "NASA SRTM Digital Elevation 30m [emulated]"},
        footprint=Footprint(lonlat=footprint, mask_rule=None),
        version=1_641_990_767_055_141,
        size_bytes=132_792_638_523,
        seeds={},
    )


def default_collections() -> list[SyntheticCollection]:
    return [
        Sentinel2(),
        Landsat9(),
        Landsat8(),
        ModisDaily(),
        Era5LandDaily(),
        CloudScorePlus(),
        S2CloudProbability(),
    ]
