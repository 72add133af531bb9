"""The emulator's pixel values: a documented, exact function of (image, band, native row, native column).

Every test can compute what any output pixel must be, so downloads are checked to the pixel, not "looks
about right". The values are built to look like imagery (smooth terrain, vegetation that follows the
season, clouds that move from date to date) so a demo picture is worth looking at.

The function
------------
For band ``b`` of image ``i`` at native row ``r`` and column ``c``:

1. *Global indices.* With the band's grid origin ``(x0, y0)`` and pixel size ``res``:
   ``gc = c + floor(x0 / res + 1e-6)`` and ``gr = r + floor(-y0 / res + 1e-6)``. Grids that share a phase
   (all S2 tiles of a UTM zone, all Landsat dates of a zone) therefore share global indices, so the
   landscape continues across tile edges.
2. *Fields.* Three scalar fields in ``0..65535`` are looked up at ``(gr, gc)``::

       F(name, gr, gc) = clip(A_name[gr mod 2048, gc mod 2048] + B_name[(gr + 517) mod 1500, (gc + 911) mod 1500]
                              - 32768, 0, 65535)

   where ``A``/``B`` are periodic value-noise textures (three octaves each, lattice values from a
   SplitMix64 hash, bilinear weights in exact integer arithmetic; see :func:`texture`). The fields are
   ``terrain`` (``T``), ``vegetation`` and ``cloud``; the cloud field is shifted per acquisition by the
   image's ``cloud_seed`` so clouds move between dates.
3. *Derived quantities* (integers): ``season`` is a triangle wave of the day of year peaking on day 196
   (0..1000); ``veg = V * (400 + 3 * season // 5) // 1000``; ``water = T < 16000``. The *cloud field* is
   the one source of every cloud product. With ``thr = 32768 + (5000 - cloud_percent_x100) * 4`` (so that
   roughly ``CLOUDY_PIXEL_PERCENTAGE`` percent of an image is cloud) and ``C(dr, dc)`` the cloud field
   looked up ``dr`` rows and ``dc`` columns away:

   - *opacity* ``O = clip((C(0, 0) - thr) * 6, 0, 65535)``; *cloud* where ``O > 15000``, *opaque cloud*
     where ``O > 40000``;
   - *shadow*: the opacity ``O`` a fixed ``(30, 20)`` pixels away (south-east: the sun is in the
     south-east at overpass, so a cloud's shadow lies to its north-west) is above 15000, here is no
     cloud, and this is not water;
   - *cirrus* strength ``K = clip((C(733, 1291) - thr - 2000) * 3, 0, 65535)`` (an independent patch of
     the same field); *thin cirrus* where ``K > 8000`` and here is no cloud;
   - *dilated cloud*: ``C(0, 0) > thr - 1500`` and here is no cloud (a ring around every cloud: the field
     is smooth).

   Offsets are in pixels of the band's own grid.
4. *Band recipe.* Reflectance-like bands: ``base + (T * soil >> 16) + (veg * vegcoef >> 16)`` on land,
   ``water_level + (T >> 10)`` on water; then darkened to 45 % under a shadow, mixed towards the cloud
   brightness by ``K // 4`` (cirrus) and last by ``O``. Class and QA bands are the cloud field's classes
   (S2 ``SCL``: 3 shadow, 8 cloud, 9 opaque cloud, 10 thin cirrus, else 4 vegetation, 5 bare, 6 water;
   Landsat ``QA_PIXEL``: bit 1 dilated cloud, 2 cirrus, 3 cloud, 4 shadow, 6 clear, 7 water and the
   confidence pairs; see :func:`qa_pixel`); ``cs``/``cs_cdf`` of Cloud Score+ fall with ``max(O, K // 2,
   shadow * 30000)``; float bands are affine maps of the fields computed in float64 and rounded once to
   float32. The coefficients are the tables below.
5. *Validity.* A pixel has data when its centre ``(x0 + (c + 0.5) * res, y0 - (r + 0.5) * res)`` is inside
   the image footprint (exact half-plane tests in the native CRS), inside the grid, and, for MODIS, inside
   the sinusoidal projection's valid area, for ERA5-Land, on land (``T >= 16000``). Invalid pixels are
   served as 0, as Earth Engine serves masked pixels.

Use :func:`read_window` (or :func:`read_band` with arbitrary positions) to get exact expected values.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from edown.emulator.model import BandInfo, ImageAsset

TEXTURE_A = (2048, (256, 64, 16))
TEXTURE_B = (1500, (300, 60, 12))
FIELD_SEEDS = {"terrain": 0x7E44A1, "vegetation": 0x5E6E7A, "cloud": 0xC10D5}
B_SHIFT = (517, 911)
MODIS_SPHERE_RADIUS = 6371007.181
WATER_LEVEL = 16000
#: Opacity above which a pixel is cloud (S2 SCL 8, Landsat QA_PIXEL bit 3), and opaque cloud (SCL 9).
CLOUD_OPACITY = 15000
OPAQUE_OPACITY = 40000
#: Where a pixel's shadow-casting cloud is looked up, in (rows, columns) of the band's grid.
SHADOW_OFFSET = (30, 20)
#: Cirrus: an independent patch of the cloud field, thinner (above ``thr + margin``) and sparser.
CIRRUS_SHIFT = (733, 1291)
CIRRUS_MARGIN = 2000
CIRRUS_MIN = 8000
#: Dilated cloud: the cloud field within this margin below the cloud threshold.
DILATION_MARGIN = 1500
#: Shadows keep this share (percent) of the reflectance.
SHADOW_PERCENT = 45

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xD1B54A32D192ED03)
_M3 = np.uint64(0xBF58476D1CE4E5B9)
_M4 = np.uint64(0x94D049BB133111EB)
_texture_lock = threading.Lock()


def _lattice(seed: int, octave: int, n: int) -> np.ndarray:
    """``n x n`` lattice values in 0..1023 from a SplitMix64 hash of (seed, octave, row, col)."""
    iy = np.arange(n, dtype=np.uint64)[:, None]
    ix = np.arange(n, dtype=np.uint64)[None, :]
    z = np.uint64(seed * 1_000_003 + octave * 7919) + iy * _M1 + ix * _M2
    z = (z ^ (z >> np.uint64(30))) * _M3
    z = (z ^ (z >> np.uint64(27))) * _M4
    z = z ^ (z >> np.uint64(31))
    return (z & np.uint64(1023)).astype(np.float64)


def _weights(period: int, spacing: int) -> np.ndarray:
    """Periodic bilinear weight matrix (period x n): row r weighs lattice r//S by S - r%S and the next by r%S."""
    n = period // spacing
    r = np.arange(period)
    i = r // spacing
    f = r - i * spacing
    w = np.zeros((period, n), dtype=np.float64)
    w[r, i] = spacing - f
    w[r, (i + 1) % n] += f
    return w


@lru_cache(maxsize=16)
def _texture_cached(name: str, which: str) -> np.ndarray:
    period, spacings = TEXTURE_A if which == "A" else TEXTURE_B
    seed = FIELD_SEEDS[name] + (0 if which == "A" else 101)
    acc = np.zeros((period, period), dtype=np.int64)
    for octave, (spacing, weight) in enumerate(zip(spacings, (4, 2, 1), strict=True)):
        w = _weights(period, spacing)
        # Integer-valued float64 products below 2**53 are exact whatever the BLAS summation order.
        v = (w @ _lattice(seed, octave, period // spacing) @ w.T).astype(np.int64)
        acc += weight * (v * 64 // (spacing * spacing))
    out = (acc // 7).astype(np.uint16)
    out.setflags(write=False)
    return out


def texture(name: str, which: str) -> np.ndarray:
    """The periodic texture ``A`` or ``B`` of a field (uint16, built once per process, read-only)."""
    with _texture_lock:
        return _texture_cached(name, which)


@dataclass(frozen=True)
class Positions:
    """Native pixel positions to evaluate.

    *Separable* positions are a grid: ``rows`` (H,) and ``cols`` (W,) give an (H, W) result; this is the
    fast path for aligned and same-CRS requests. Otherwise ``rows`` and ``cols`` have one shape and give
    a result of that shape (reprojected requests).
    """

    rows: np.ndarray
    cols: np.ndarray
    separable: bool

    @staticmethod
    def window(row0: int, col0: int, height: int, width: int) -> Positions:
        return Positions(
            np.arange(row0, row0 + height, dtype=np.int64),
            np.arange(col0, col0 + width, dtype=np.int64),
            True,
        )

    @property
    def shape(self) -> tuple[int, ...]:
        if self.separable:
            return (int(self.rows.shape[0]), int(self.cols.shape[0]))
        return tuple(int(s) for s in self.rows.shape)

    def r(self) -> np.ndarray:
        """Rows, shaped to broadcast against :meth:`c`."""
        return self.rows[:, None] if self.separable else self.rows

    def c(self) -> np.ndarray:
        return self.cols[None, :] if self.separable else self.cols


def grid_offsets(band: BandInfo) -> tuple[int, int]:
    """``(row_offset, col_offset)`` turning native indices into global ones (step 1 of the function)."""
    sx, _, x0, _, sy, y0 = band.grid.transform
    return (
        math.floor(-y0 / abs(sy) + 1e-6) if sy < 0 else math.floor(y0 / sy + 1e-6),
        math.floor(x0 / sx + 1e-6),
    )


@dataclass
class _Context:
    """Lazily computed quantities shared by the bands of one request at one set of positions."""

    asset: ImageAsset
    pos: Positions
    row_offset: int
    col_offset: int
    _cache: dict[str, Any] = field(default_factory=dict)

    def _lookup(self, name: str, dr: int, dc: int) -> np.ndarray:
        gr = self.pos.rows + (self.row_offset + dr)
        gc = self.pos.cols + (self.col_offset + dc)
        out: np.ndarray | None = None
        for which, (shr, shc) in (("A", (0, 0)), ("B", B_SHIFT)):
            tex = texture(name, which)
            period = tex.shape[0]
            ri = (gr + shr) % period
            ci = (gc + shc) % period
            vals = tex[np.ix_(ri, ci)] if self.pos.separable else tex[ri, ci]
            out = vals.astype(np.int32) if out is None else out + vals
        assert out is not None
        return np.clip(out - 32768, 0, 65535)

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def terrain(self) -> np.ndarray:
        return self.get("T", lambda: self._lookup("terrain", 0, 0))

    @property
    def vegetation(self) -> np.ndarray:
        return self.get("V", lambda: self._lookup("vegetation", 0, 0))

    @property
    def season(self) -> int:
        doy = int(self.asset.seeds.get("day_of_year", 196))
        return 1000 - abs(((doy - 196) % 365) - 182) * 1000 // 182

    @property
    def veg(self) -> np.ndarray:
        return self.get("veg", lambda: self.vegetation * (400 + 3 * self.season // 5) // 1000)

    @property
    def water(self) -> np.ndarray:
        return self.get("water", lambda: self.terrain < WATER_LEVEL)

    @property
    def cloud(self) -> np.ndarray:
        def make() -> np.ndarray:
            seed = int(self.asset.seeds.get("cloud_seed", 0))
            return self._lookup("cloud", (seed * 37) % 3_072_000, (seed * 101) % 3_072_000)

        return self.get("C", make)

    @property
    def opacity(self) -> np.ndarray:
        def make() -> np.ndarray:
            return np.clip((self.cloud - self.cloud_threshold) * 6, 0, 65535)

        return self.get("O", make)

    def _opacity_at(self, dr: int, dc: int) -> np.ndarray:
        seed = int(self.asset.seeds.get("cloud_seed", 0))
        field_ = self._lookup("cloud", (seed * 37) % 3_072_000 + dr, (seed * 101) % 3_072_000 + dc)
        return np.clip((field_ - self.cloud_threshold) * 6, 0, 65535)

    @property
    def cloud_threshold(self) -> int:
        return 32768 + (5000 - int(self.asset.seeds.get("cloud_percent_x100", 0))) * 4

    @property
    def cloudy(self) -> np.ndarray:
        return self.get("cloudy", lambda: self.opacity > CLOUD_OPACITY)

    @property
    def shadow(self) -> np.ndarray:
        def make() -> np.ndarray:
            caster = self._opacity_at(*SHADOW_OFFSET) > CLOUD_OPACITY
            return caster & ~self.cloudy & ~self.water

        return self.get("shadow", make)

    @property
    def cirrus_strength(self) -> np.ndarray:
        def make() -> np.ndarray:
            seed = int(self.asset.seeds.get("cloud_seed", 0))
            dr, dc = CIRRUS_SHIFT
            field_ = self._lookup("cloud", (seed * 37) % 3_072_000 + dr, (seed * 101) % 3_072_000 + dc)
            return np.clip((field_ - self.cloud_threshold - CIRRUS_MARGIN) * 3, 0, 65535)

        return self.get("K", make)

    @property
    def cirrus(self) -> np.ndarray:
        return self.get("cirrus", lambda: (self.cirrus_strength > CIRRUS_MIN) & ~self.cloudy)

    @property
    def dilated(self) -> np.ndarray:
        return self.get(
            "dilated", lambda: (self.cloud > self.cloud_threshold - DILATION_MARGIN) & ~self.cloudy
        )

    @property
    def obstruction(self) -> np.ndarray:
        """What Cloud Score+ sees: clouds, a share of the cirrus, and shadows (0..65535)."""
        return self.get(
            "Q",
            lambda: np.maximum(
                np.maximum(self.opacity, self.cirrus_strength // 2), np.where(self.shadow, 30000, 0)
            ),
        )

    def global_rows(self) -> np.ndarray:
        return self.pos.r() + self.row_offset

    def global_cols(self) -> np.ndarray:
        return self.pos.c() + self.col_offset


# ---- recipes ----------------------------------------------------------------------------------------

# Reflectance coefficients: (base, soil, vegetation, water level, cloud brightness), reflectance x 10000.
REFLECTANCE: dict[str, tuple[int, int, int, int, int]] = {
    "coastal": (300, 1200, -200, 250, 8000),
    "blue": (350, 1400, -300, 400, 8200),
    "green": (500, 1500, 200, 500, 8300),
    "red": (400, 2200, -800, 300, 8400),
    "re1": (700, 2300, 600, 250, 8300),
    "re2": (900, 2300, 2200, 200, 8200),
    "re3": (1000, 2300, 2800, 180, 8100),
    "nir": (1100, 2300, 3400, 150, 8000),
    "nir_narrow": (1150, 2300, 3300, 140, 7900),
    "vapour": (400, 900, 900, 100, 5000),
    "swir1": (1200, 3000, -400, 60, 6500),
    "swir2": (800, 2800, -700, 40, 5500),
}

S2_REFLECTANCE = {
    "B1": "coastal",
    "B2": "blue",
    "B3": "green",
    "B4": "red",
    "B5": "re1",
    "B6": "re2",
    "B7": "re3",
    "B8": "nir",
    "B8A": "nir_narrow",
    "B9": "vapour",
    "B11": "swir1",
    "B12": "swir2",
}
LANDSAT_REFLECTANCE = {
    "SR_B1": "coastal",
    "SR_B2": "blue",
    "SR_B3": "green",
    "SR_B4": "red",
    "SR_B5": "nir",
    "SR_B6": "swir1",
    "SR_B7": "swir2",
}
MODIS_REFLECTANCE = {
    "sur_refl_b01": "red",
    "sur_refl_b02": "nir",
    "sur_refl_b03": "blue",
    "sur_refl_b04": "green",
    "sur_refl_b05": "nir_narrow",
    "sur_refl_b06": "swir1",
    "sur_refl_b07": "swir2",
}


def reflectance(ctx: _Context, kind: str) -> np.ndarray:
    """Surface reflectance x 10000 (int32) for a spectral kind, clouds included."""

    def make() -> np.ndarray:
        base, soil, vegc, water_level, cloud_level = REFLECTANCE[kind]
        land = base + ((ctx.terrain * soil) >> 16) + ((ctx.veg * vegc) >> 16)
        value = np.where(ctx.water, water_level + (ctx.terrain >> 10), land)
        value = np.where(ctx.shadow, value * SHADOW_PERCENT // 100, value)
        value = value + (((cloud_level - value) * (ctx.cirrus_strength // 4)) >> 16)
        return value + (((cloud_level - value) * ctx.opacity) >> 16)

    return ctx.get("refl:" + kind, make)


def _s2(ctx: _Context, band: str) -> np.ndarray:
    o = ctx.opacity
    if band in S2_REFLECTANCE:
        return reflectance(ctx, S2_REFLECTANCE[band])
    if band == "AOT":
        return 80 + (ctx.terrain >> 12)
    if band == "WVP":
        return 1200 + (ctx.vegetation >> 6)
    if band == "SCL":
        cls = np.where(ctx.veg > 20000, 4, 5)
        cls = np.where(ctx.water, 6, cls)
        cls = np.where(ctx.shadow, 3, cls)
        cls = np.where(ctx.cirrus, 10, cls)
        cls = np.where(ctx.cloudy, 8, cls)
        return np.where(o > OPAQUE_OPACITY, 9, cls)
    if band in ("TCI_R", "TCI_G", "TCI_B"):
        kind = {"TCI_R": "red", "TCI_G": "green", "TCI_B": "blue"}[band]
        return np.minimum(255, reflectance(ctx, kind) * 255 // 3000)
    if band == "MSK_CLDPRB":
        return o * 100 // 65535
    if band == "QA60":
        return np.where(o > OPAQUE_OPACITY, 1024, np.where(ctx.cirrus, 2048, 0))
    if band == "MSK_CLASSI_OPAQUE":
        return (o > OPAQUE_OPACITY).astype(np.int32)
    if band == "MSK_CLASSI_CIRRUS":
        return ctx.cirrus.astype(np.int32)
    if band in ("MSK_SNWPRB", "QA10", "QA20", "MSK_CLASSI_SNOW_ICE"):
        return np.zeros(ctx.pos.shape, dtype=np.int32)
    raise KeyError(band)


def _s2_clouds(ctx: _Context, band: str) -> np.ndarray:
    """Cloud Score+ and S2 cloud probability: views of the S2 image's own cloud opacity ``O``.

    With the obstruction ``Q = max(O, K // 2, 30000 where shadow)``: ``cs = 1 - Q / 65535`` and
    ``cs_cdf = 1 - min(1, 1.25 * Q / 65535)`` (float32, 1 = clear); ``probability = O * 100 // 65535``
    (uint8, the S2 image's ``MSK_CLDPRB`` on the 10 m grid).
    """
    o = ctx.obstruction.astype(np.float64)
    if band == "cs":
        return 1.0 - o / 65535.0
    if band == "cs_cdf":
        return 1.0 - np.minimum(1.0, 1.25 * o / 65535.0)
    if band == "probability":
        return ctx.opacity * 100 // 65535
    raise KeyError(band)


def _dem(ctx: _Context, band: str) -> np.ndarray:
    """SRTM-like elevation in metres: ``(T - 16000) // 24`` on land, 0 on water (int16)."""
    if band != "elevation":
        raise KeyError(band)
    return np.where(ctx.water, 0, (ctx.terrain - WATER_LEVEL) // 24)


def _landsat(ctx: _Context, band: str) -> np.ndarray:
    t, o = ctx.terrain, ctx.opacity
    if band in LANDSAT_REFLECTANCE:
        return 7273 + reflectance(ctx, LANDSAT_REFLECTANCE[band]) * 3636 // 1000
    simple: dict[str, Callable[[], np.ndarray]] = {
        "SR_QA_AEROSOL": lambda: 1 + 2 * (o > 20000) + 64 * (t > 50000),
        "ST_B10": lambda: 40000 + (t >> 3) - (ctx.veg >> 4) - (o >> 3),
        "ST_ATRAN": lambda: 6000 + (ctx.vegetation >> 5),
        "ST_CDIST": lambda: np.where(o > 0, 0, (65535 - ctx.cloud) >> 4),
        "ST_DRAD": lambda: 400 + (t >> 8),
        "ST_EMIS": lambda: 9600 + (ctx.veg >> 8),
        "ST_EMSD": lambda: 50 + (t >> 12),
        "ST_QA": lambda: 100 + (o >> 8),
        "ST_TRAD": lambda: 7000 + (t >> 5),
        "ST_URAD": lambda: 800 + (t >> 8),
        "QA_PIXEL": lambda: qa_pixel(ctx),
        "QA_RADSAT": lambda: np.zeros(ctx.pos.shape, dtype=np.int32),
    }
    return simple[band]()


def qa_pixel(ctx: _Context) -> np.ndarray:
    """Landsat Collection 2 ``QA_PIXEL`` from the cloud field.

    Bit 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow, 6 clear (neither cloud nor dilated cloud),
    7 water; confidence pairs (1 low, 2 medium, 3 high): cloud 8-9 (medium for cloud, high for opaque
    cloud), shadow 10-11, snow 12-13 (always low), cirrus 14-15 (high where cirrus).
    """
    o = ctx.opacity
    cloud_conf = np.where(o > OPAQUE_OPACITY, 3, np.where(ctx.cloudy, 2, 1))
    clear = ~ctx.cloudy & ~ctx.dilated
    return (
        ctx.dilated * 2
        + ctx.cirrus * 4
        + ctx.cloudy * 8
        + ctx.shadow * 16
        + clear * 64
        + ctx.water * 128
        + (cloud_conf << 8)
        + (np.where(ctx.shadow, 3, 1) << 10)
        + (1 << 12)
        + (np.where(ctx.cirrus, 3, 1) << 14)
    )


def _modis(ctx: _Context, band: str) -> np.ndarray:
    t, o = ctx.terrain, ctx.opacity
    if band in MODIS_REFLECTANCE:
        value = reflectance(ctx, MODIS_REFLECTANCE[band])
        if band in ("sur_refl_b06", "sur_refl_b07"):
            # Water is dark in the SWIR and the atmospheric correction overshoots: small negative values.
            value = np.where(ctx.water & (o == 0), -40 + (t >> 10) % 60, value)
        return value
    gr, gc = ctx.global_rows(), ctx.global_cols()
    simple: dict[str, Callable[[], np.ndarray]] = {
        "num_observations_1km": lambda: 1 + (t >> 14),
        "num_observations_500m": lambda: 1 + (t >> 14),
        "state_1km": lambda: (o > 40000) * 1 + ctx.water * 8 + 8192,
        "SensorZenith": lambda: ((gc % 1354) - 677) * 9,
        "SensorAzimuth": lambda: ((gc % 1354) - 677) * 26,
        "Range": lambda: 45000 + np.abs((gc % 1354) - 677) * 25,
        "SolarZenith": lambda: 2000 + np.abs(gr % 21600 - 10800) * 7000 // 10800,
        "SolarAzimuth": lambda: -9000 + (gr % 18000),
        "gflags": lambda: ctx.water * 8 + (o > 40000) * 64,
        "orbit_pnt": lambda: gr % 20,
        "granule_pnt": lambda: gc % 100,
        "QC_500m": lambda: np.where(o > 40000, 2147483648, 1073741824).astype(np.int64) + 12345,
        "obscov_500m": lambda: o * 100 // 65535,
        "iobs_res": lambda: 1 + (t >> 15),
        "q_scan": lambda: (gc % 4) + 4 * (gr % 4),
    }
    return simple[band]()


# ERA5-Land float bands: value = offset + scale * source, with source a field or derived quantity.
ERA5: dict[str, tuple[str, float, float]] = {
    "dewpoint_temperature_2m": ("terrain", 226.0, 80.0 / 65535.0),
    "temperature_2m": ("terrain", 230.0, 80.0 / 65535.0),
    "skin_temperature": ("terrain", 231.5, 82.0 / 65535.0),
    "soil_temperature_level_1": ("terrain", 231.0, 78.0 / 65535.0),
    "soil_temperature_level_2": ("terrain", 233.0, 74.0 / 65535.0),
    "soil_temperature_level_3": ("terrain", 235.0, 70.0 / 65535.0),
    "soil_temperature_level_4": ("terrain", 240.0, 60.0 / 65535.0),
    "volumetric_soil_water_layer_1": ("vegetation", 0.05, 0.4 / 65535.0),
    "surface_net_solar_radiation_sum": ("terrain", 5.0e6, 2.0e7 / 65535.0),
    "surface_pressure": ("terrain", 101325.0, -20000.0 / 65535.0),
    "total_precipitation_sum": ("rain", 0.0, 1.0e-6),
    "u_component_of_wind_10m": ("wind", 0.0, 15.0 / 32768.0),
    "v_component_of_wind_10m": ("wind", 0.0, -11.0 / 32768.0),
    "leaf_area_index_high_vegetation": ("veg", 0.0, 6.0 / 65535.0),
}


def _era5(ctx: _Context, band: str) -> np.ndarray:
    source, offset, scale = ERA5[band]
    sources: dict[str, Callable[[], np.ndarray]] = {
        "terrain": lambda: ctx.terrain,
        "vegetation": lambda: ctx.vegetation,
        "veg": lambda: ctx.veg,
        "rain": lambda: np.maximum(0, ctx.cloud - 40000),
        "wind": lambda: ctx.cloud - 32768,
    }
    return sources[source]().astype(np.float64) * scale + offset


RECIPES: dict[str, Callable[[_Context, str], np.ndarray]] = {
    "s2": _s2,
    "ls": _landsat,
    "modis": _modis,
    "era5": _era5,
    "s2clouds": _s2_clouds,
    "dem": _dem,
}


# ---- validity ---------------------------------------------------------------------------------------


def _valid(ctx: _Context, band: BandInfo) -> np.ndarray:
    grid = band.grid
    r, c = ctx.pos.r(), ctx.pos.c()
    valid = (r >= 0) & (r < grid.height) & (c >= 0) & (c < grid.width)
    sx, _, x0, _, sy, y0 = grid.transform
    footprint = ctx.asset.footprint
    if footprint.halfplanes:
        x = x0 + (c + 0.5) * sx
        y = y0 + (r + 0.5) * sy
        for a, b, k in footprint.halfplanes:
            valid = valid & ((a * x) + (b * y) + k >= 0)
    if footprint.mask_rule == "sinusoidal":
        x = x0 + (c + 0.5) * sx
        valid = valid & (np.abs(x) <= _sinusoidal_half_width(y0, sy, r))
    elif footprint.mask_rule == "land":
        valid = valid & ~ctx.water
    return np.broadcast_to(valid, ctx.pos.shape)


def _sinusoidal_half_width(y0: float, sy: float, rows: np.ndarray) -> np.ndarray:
    """Half the valid width of the sinusoidal grid at each row centre (scalar libm per distinct row)."""
    uniq, inverse = np.unique(rows, return_inverse=True)
    widths = np.array(
        [
            MODIS_SPHERE_RADIUS * math.pi * math.cos((y0 + (int(r) + 0.5) * sy) / MODIS_SPHERE_RADIUS)
            for r in uniq
        ],
        dtype=np.float64,
    )
    return widths[inverse].reshape(rows.shape)


# ---- public -----------------------------------------------------------------------------------------


class BandReader:
    """Reads bands of one image at one set of positions, sharing field lookups between bands."""

    def __init__(self, asset: ImageAsset, pos: Positions) -> None:
        self.asset = asset
        self.pos = pos
        self._contexts: dict[tuple[int, int], _Context] = {}

    def read(self, band_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Values (in the band's numpy dtype, 0 where invalid) and validity of one band."""
        band = self.asset.band(band_id)
        offsets = grid_offsets(band)
        ctx = self._contexts.get(offsets)
        if ctx is None:
            ctx = self._contexts[offsets] = _Context(self.asset, self.pos, offsets[0], offsets[1])
        family, _, name = band.recipe.partition(":")
        raw = np.broadcast_to(RECIPES[family](ctx, name), self.pos.shape)
        valid = np.ascontiguousarray(_valid(ctx, band))
        dtype = band.pixel_type.numpy_dtype
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            values = np.clip(raw, info.min, info.max).astype(dtype)
        else:
            values = raw.astype(dtype)
        return np.where(valid, values, np.zeros((), dtype=dtype)), valid


def read_band(asset: ImageAsset, band_id: str, pos: Positions) -> tuple[np.ndarray, np.ndarray]:
    """Values (in the band's numpy dtype, 0 where invalid) and validity of one band at ``pos``."""
    return BandReader(asset, pos).read(band_id)


def read_window(
    asset: ImageAsset, band_id: str, row0: int, col0: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact values and validity of a native-grid window of one band: the oracle for download tests."""
    return read_band(asset, band_id, Positions.window(row0, col0, height, width))
