"""Pictures of what was downloaded: a PNG of one GeoTIFF, or a dated time strip of a datacube.

True colour when the red/green/blue bands can be found by name (S2 ``B4/B3/B2``, Landsat
``SR_B4/SR_B3/SR_B2``, MODIS ``sur_refl_b01/b04/b03``), else the first three bands (or one band in grey).
Each channel is stretched between its 2nd and 98th percentiles over the valid pixels (the top capped so
that clouds do not darken the land); nodata is transparent. Pillow only: no plotting stack needed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edown.errors import ConfigError

RGB_NAMES = (
    ("B4", "B3", "B2"),
    ("red", "green", "blue"),
    ("SR_B4", "SR_B3", "SR_B2"),
    ("sur_refl_b01", "sur_refl_b04", "sur_refl_b03"),
)


def pick_bands(names: Sequence[str], wanted: Sequence[str] | None) -> list[int]:
    """Indices of the bands to show: ``wanted`` by name, else true colour, else the first three."""
    names = list(names)
    if wanted:
        missing = [w for w in wanted if w not in names]
        if missing:
            raise ConfigError("bands", f"{', '.join(missing)} not in {', '.join(names)}")
        return [names.index(w) for w in wanted]
    for trio in RGB_NAMES:
        if all(n in names for n in trio):
            return [names.index(n) for n in trio]
    return list(range(min(3, len(names)))) if len(names) >= 3 else [0]


def stretch_limits(data: np.ndarray, valid: np.ndarray) -> list[tuple[float, float]]:
    """Per-band ``(lo, hi)``: the 2nd and 98th percentiles of valid pixels, with ``hi`` capped at three times
    the median above ``lo`` so that bright clouds do not leave the land black."""
    limits = []
    for band in data:
        values = band[valid].astype(np.float64)
        if not values.size:
            limits.append((0.0, 1.0))
            continue
        lo, median, hi = np.percentile(values, (2.0, 50.0, 98.0))
        if median > lo:
            hi = min(hi, lo + 3.0 * (median - lo))
        limits.append((float(lo), float(hi)))
    return limits


def to_rgba(
    data: np.ndarray, valid: np.ndarray, limits: list[tuple[float, float]] | None = None
) -> np.ndarray:
    """(bands, h, w) values -> (h, w, 4) uint8 stretched by ``limits``; invalid pixels transparent."""
    limits = limits or stretch_limits(data, valid)
    channels = []
    for band, (lo, hi) in zip(data, limits, strict=True):
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        channels.append(np.clip((band.astype(np.float64) - lo) * scale, 0, 255).astype(np.uint8))
    if len(channels) == 1:
        channels = channels * 3
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    return np.dstack([*channels, alpha])


def _valid(data: np.ndarray, nodata: float | None) -> np.ndarray:
    if nodata is None:
        return np.ones(data.shape[1:], dtype=bool)
    missing: np.ndarray = np.isnan(data) if np.isnan(nodata) else data == nodata
    return ~missing.any(axis=0)


def render_geotiff(path: Path, out: Path, bands: Sequence[str] | None = None, max_size: int = 1024) -> Path:
    """A PNG of one GeoTIFF (decimated to at most ``max_size`` pixels per side)."""
    import rasterio
    from PIL import Image

    with rasterio.open(path) as src:
        idx = pick_bands([d or f"band{i + 1}" for i, d in enumerate(src.descriptions)], bands)
        factor = max(1, int(np.ceil(max(src.width, src.height) / max_size)))
        shape = (len(idx), max(1, src.height // factor), max(1, src.width // factor))
        data = src.read([i + 1 for i in idx], out_shape=shape)
        nodata = src.nodata
    image = Image.fromarray(to_rgba(data, _valid(data, nodata)), "RGBA")
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


def render_stack(
    path: Path, out: Path, bands: Sequence[str] | None = None, max_frames: int = 12, thumb: int = 256
) -> Path:
    """A time strip of a datacube: one thumbnail per time step (at most ``max_frames``), dated."""
    from PIL import Image, ImageDraw

    from edown.stack import open_stack

    ds = open_stack(path)
    data_var = ds["data"]
    idx = pick_bands([str(b) for b in ds.band.values], bands)
    times = ds.time.values
    picks = np.unique(np.linspace(0, len(times) - 1, num=min(max_frames, len(times))).round().astype(int))
    nodata = data_var.attrs.get("_FillValue")
    step = max(1, int(np.ceil(max(ds.sizes["y"], ds.sizes["x"]) / thumb)))
    fill = None if nodata is None else float(nodata)
    window = {"y": slice(None, None, step), "x": slice(None, None, step)}
    cubes = [data_var.isel(time=int(t), band=idx, **window).values for t in picks]
    # One stretch for the whole strip, so the dates can be compared by eye.
    everything = np.concatenate(cubes, axis=2)
    limits = stretch_limits(everything, _valid(everything, fill))
    frames = [
        (times[t], to_rgba(cube, _valid(cube, fill), limits)) for t, cube in zip(picks, cubes, strict=True)
    ]
    height, width = frames[0][1].shape[:2]
    label = 16
    strip = Image.new("RGBA", (len(frames) * (width + 4) + 4, height + label + 8), (255, 255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, (stamp, rgba) in enumerate(frames):
        x = 4 + i * (width + 4)
        tile = Image.fromarray(rgba, "RGBA")
        strip.paste(tile, (x, 4), tile)
        draw.text((x, height + 6), _date(stamp), fill=(0, 0, 0, 255))
    out.parent.mkdir(parents=True, exist_ok=True)
    strip.save(out)
    return out


def _date(stamp: Any) -> str:
    millis = int(np.datetime64(stamp, "ms").astype(np.int64))
    return dt.datetime.fromtimestamp(millis / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d")


def render(path: Path, out: Path | None = None, bands: Sequence[str] | None = None) -> Path:
    """A PNG of a GeoTIFF or a Zarr datacube, next to it unless ``out`` is given."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
        return render_geotiff(path, out or path.with_suffix(".png"), bands)
    if path.suffix == ".zarr" and path.is_dir():
        return render_stack(path, out or path.with_name(path.stem + ".png"), bands)
    raise ConfigError("path", f"{path} is neither a GeoTIFF nor a .zarr datacube")
