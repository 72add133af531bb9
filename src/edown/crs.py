"""Coordinate reference systems as Earth Engine names them, resolved for PROJ/GDAL.

Earth Engine reports most grids with an EPSG code, but some catalogue products use codes that PROJ does
not know. The one that matters most is ``SR-ORG:6974`` (MODIS sinusoidal): EE means the sinusoidal
projection on a *sphere* of radius 6371007.181 m. spatialreference.org's own definition of that code puts
it on the WGS84 ellipsoid, about 19 km off in y, so it must never be looked up by name. This module is
the single place where EE CRS strings become :class:`pyproj.CRS` objects, used by the client and the
emulator alike.
"""

from __future__ import annotations

from functools import lru_cache

from pyproj import CRS

MODIS_SINUSOIDAL_PROJ4 = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs +type=crs"

#: EE CRS codes that PROJ cannot resolve by name, with what Earth Engine means by them.
EE_CRS_DEFINITIONS: dict[str, str] = {
    "SR-ORG:6974": MODIS_SINUSOIDAL_PROJ4,
    # The older MODIS sinusoidal code; EE uses the same sphere for it.
    "SR-ORG:6842": MODIS_SINUSOIDAL_PROJ4,
}


class CRSError(ValueError):
    """A CRS string that neither EE's aliases nor PROJ can resolve."""


@lru_cache(maxsize=256)
def resolve_crs(code_or_wkt: str) -> CRS:
    """Return the :class:`pyproj.CRS` Earth Engine means by ``code_or_wkt``.

    Accepts EPSG codes (``EPSG:32630``), EE's ``SR-ORG`` aliases and WKT. Cached because every chunk of
    every image asks the same few questions.
    """
    text = code_or_wkt.strip()
    definition = EE_CRS_DEFINITIONS.get(text.upper(), text)
    try:
        return CRS.from_user_input(definition)
    except Exception as exc:  # pyproj raises its own CRSError subclasses and sometimes TypeError
        raise CRSError(f"unknown CRS {code_or_wkt!r}: {exc}") from None


def crs_wkt(code_or_wkt: str) -> str:
    """WKT2 text for a CRS, for GeoTIFF/Zarr metadata that must not depend on a registry lookup."""
    return str(resolve_crs(code_or_wkt).to_wkt())


def crs_is_geographic(code_or_wkt: str) -> bool:
    """Whether the CRS has degrees for axes (pixel sizes are then in degrees, not metres)."""
    return bool(resolve_crs(code_or_wkt).is_geographic)


def same_crs(a: str, b: str) -> bool:
    """Whether two EE CRS strings denote the same CRS (cheap when the strings are equal)."""
    if a == b:
        return True
    return bool(resolve_crs(a) == resolve_crs(b))
