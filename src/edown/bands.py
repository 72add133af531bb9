"""Which bands, named and typed how, and the server-side expression that produces them.

Earth Engine declares integer types only by a range (``precision: int``, ``min``/``max``), so the numpy
dtype is derived from the range: S2 reflectance (0..65535) is uint16, never int16. Band names are matched
exactly, then case-insensitively, then ignoring zero padding (``B04`` finds ``B4``, ``B08A`` finds
``B8A``), so names from ESA or other tools work.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edown.config import SearchConfig
from edown.errors import ConfigError
from edown.grid import GridSpec

_INT_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64")


@dataclass(frozen=True)
class BandMeta:
    """One band of one image as Earth Engine describes it."""

    id: str
    dtype: str
    grid: GridSpec


def dtype_from_ee(precision: str, lo: float | None, hi: float | None) -> str:
    """The numpy dtype of an EE pixel type: floats by precision, integers by the smallest fitting range."""
    p = precision.lower()
    if p == "float":
        return "float32"
    if p == "double":
        return "float64"
    lo_v = int(lo if lo is not None else 0)
    hi_v = int(hi if hi is not None else 0)
    for name in _INT_DTYPES:
        info = np.iinfo(name)
        if info.min <= lo_v and hi_v <= info.max:
            return name
    return "float64"


def band_meta_from_ee(band: Mapping[str, Any]) -> BandMeta:
    """A :class:`BandMeta` from a band of ``listAssets`` (REST) or ``getInfo`` output."""
    from edown.grid import grid_from_ee_band

    if "dataType" in band:
        dtype_info = band.get("dataType") or {}
        rng = dtype_info.get("range") or {}
        # proto3 JSON omits zero: a missing bound is 0.
        dtype = dtype_from_ee(dtype_info.get("precision", "FLOAT"), rng.get("min", 0), rng.get("max", 0))
    else:
        dt_info = band.get("data_type") or {}
        dtype = dtype_from_ee(dt_info.get("precision", "float"), dt_info.get("min"), dt_info.get("max"))
    return BandMeta(str(band["id"]), dtype, grid_from_ee_band(dict(band)))


def _norm(name: str) -> str:
    return re.sub(r"^([A-Za-z_]+?)0+(?=\d)", r"\1", name).lower()


def resolve_band(name: str, available: Sequence[str]) -> str | None:
    """The available band meant by ``name`` (exact, then case-insensitive, then ignoring zero padding)."""
    if name in available:
        return name
    lowered = [a for a in available if a.lower() == name.lower()]
    if len(lowered) == 1:
        return lowered[0]
    normalised = [a for a in available if _norm(a) == _norm(name)]
    return normalised[0] if len(normalised) == 1 else None


def select_bands(config: SearchConfig, available: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(selected band ids in output order, requested ids missing from this image)``.

    Explicit ``bands`` come first in the order given, then bands matching any ``band_include`` pattern in
    the image's order; with neither, every band. ``band_exclude`` patterns then remove bands (exclude
    wins). Patterns are regular expressions matched against whole band names, as Earth Engine's
    ``select`` does.
    """
    chosen: list[str] = []
    missing: list[str] = []
    for name in config.bands:
        found = resolve_band(name, available)
        if found is None:
            missing.append(name)
        elif found not in chosen:
            chosen.append(found)
    for pattern in config.band_include:
        rx = re.compile(pattern)
        chosen.extend(b for b in available if rx.fullmatch(b) and b not in chosen)
    if not config.bands and not config.band_include:
        chosen = list(available)
    if config.band_exclude:
        rxs = [re.compile(p) for p in config.band_exclude]
        chosen = [b for b in chosen if not any(rx.fullmatch(b) for rx in rxs)]
    return chosen, missing


def output_names(config: SearchConfig, selected: Sequence[str]) -> list[str]:
    return [config.rename_map.get(b, b) for b in selected]


def check_maps(config: SearchConfig, selected_anywhere: set[str]) -> None:
    """``rename_map``/``scale_map`` keys must be selected bands; output names must be unique."""
    for field_name, mapping in (("rename_map", config.rename_map), ("scale_map", config.scale_map)):
        renamed = {config.rename_map.get(b, b) for b in selected_anywhere}
        for key in mapping:
            if key not in selected_anywhere and not (field_name == "scale_map" and key in renamed):
                raise ConfigError(
                    field_name,
                    f"{key!r} is not one of the selected bands ({', '.join(sorted(selected_anywhere)) or 'none'})",
                    "use band ids as Earth Engine names them",
                )
    names = [config.rename_map.get(b, b) for b in sorted(selected_anywhere)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            "rename_map", f"two bands would both be named {dupes[0]!r}", "give every band a unique name"
        )


def output_dtype(config: SearchConfig, band_dtypes: Sequence[str], transformed: bool) -> str:
    """The GeoTIFF dtype: the user's choice; else float32 when scaled or transformed by a plugin; else the
    smallest type holding every selected band."""
    if config.output_dtype:
        return config.output_dtype
    if transformed:
        return "float32"
    if not band_dtypes:
        return "float32"
    return str(np.result_type(*[np.dtype(d) for d in band_dtypes]).name)


def default_nodata(dtype: str) -> float:
    """Auto nodata: NaN for floats, the dtype's maximum for integers."""
    kind = np.dtype(dtype)
    if kind.kind == "f":
        return float("nan")
    return float(np.iinfo(kind).max)


def fill_value(dtype: str, nodata: float) -> float:
    """What the server writes where there is no data: ``nodata``, or for NaN the float type's lowest value
    (JSON has no NaN), which the client turns back into NaN."""
    if nodata != nodata:
        return float(np.finfo(np.dtype(dtype)).min)
    return nodata


CAST_METHODS = {
    "uint8": "toUint8",
    "int8": "toInt8",
    "uint16": "toUint16",
    "int16": "toInt16",
    "uint32": "toUint32",
    "int32": "toInt32",
    "int64": "toInt64",
    "float32": "toFloat",
    "float64": "toDouble",
}


def check_nodata_fits(nodata: float, dtype: str) -> None:
    if nodata != nodata:
        if np.dtype(dtype).kind != "f":
            raise ConfigError(
                "nodata", f"NaN cannot be stored in {dtype}", "give an integer nodata or output_dtype=float32"
            )
        return
    kind = np.dtype(dtype)
    if kind.kind in "iu":
        info = np.iinfo(kind)
        if not float(nodata).is_integer() or not info.min <= nodata <= info.max:
            raise ConfigError("nodata", f"{nodata:g} does not fit {dtype} ({info.min}..{info.max})")


def build_image(
    image_id: str,
    selected: Sequence[str],
    names: Sequence[str],
    dtype: str,
    fill: float,
    scale_map: Mapping[str, float],
    plugin: Callable[[Any], Any] | None = None,
    clear: Any = None,
) -> Any:
    """The ``ee.Image`` edown asks Earth Engine to compute for one record.

    ``plugin`` (already bound to the image's metadata and config) runs first on the full image; then the
    selected bands, the scale factors (one multiply by a per-band constant), the output names, the cloud
    mask (``updateMask(clear)``, ``clear`` from :func:`edown.clouds.clear_mask`, read by Earth Engine at each
    output pixel's centre), ``unmask(fill, sameFootprint=False)`` so masked pixels arrive as nodata instead
    of zeros, and last the
    cast to the output dtype. The cast must come last: ``unmask`` takes the union of the image's type and
    the fill's, so a float fill would otherwise turn uint16 into double and quadruple the bytes per pixel.
    """
    import ee

    image = ee.Image(image_id)
    if plugin is not None:
        image = plugin(image)
    image = image.select(list(selected))
    factors = [
        float(scale_map.get(band, scale_map.get(name, 1.0)))
        for band, name in zip(selected, names, strict=True)
    ]
    if any(f != 1.0 for f in factors):
        image = image.multiply(ee.Image.constant(factors if len(factors) > 1 else factors[0]))
    image = image.rename(list(names))
    if clear is not None:
        image = image.updateMask(clear)
    fill_arg: float | int = int(fill) if np.dtype(dtype).kind in "iu" else fill
    image = image.unmask(fill_arg, False)
    return getattr(image, CAST_METHODS[dtype])()
