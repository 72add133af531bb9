"""Pictures of what was downloaded: a PNG of one GeoTIFF, or a dated time strip of a datacube.

One band is drawn in grey, three as red, green, blue. Without a choice of bands: true colour when the
red/green/blue bands can be found by name (S2 ``B4/B3/B2``, Landsat ``SR_B4/SR_B3/SR_B2``, MODIS
``sur_refl_b01/b04/b03``), else the first three bands; with only two bands (S2 ``B4`` and ``B8``, say) the
first in grey. Whenever bands were left out the caller is told, in one line, what is drawn and how to
choose (``notify``). Each channel is stretched between its 2nd and 98th percentiles over the valid pixels
(the top capped so that clouds do not darken the land); nodata is transparent (PNG alpha). Pillow only:
no plotting stack needed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edown.config import check_parent_folder
from edown.errors import ConfigError, user_folder
from edown.geotiff import GTIFF_ONLY

log = logging.getLogger("edown.quicklook")

RGB_NAMES = (
    ("B4", "B3", "B2"),
    ("red", "green", "blue"),
    ("SR_B4", "SR_B3", "SR_B2"),
    ("sur_refl_b01", "sur_refl_b04", "sur_refl_b03"),
)


def pick_bands(names: Sequence[str], wanted: Sequence[str] | None) -> tuple[list[int], str | None]:
    """Indices of the bands to draw (one: grey, three: RGB) and, when bands were left out, a one-line
    notice of what is drawn and how to choose."""
    names = list(names)
    if wanted:
        missing = [w for w in wanted if w not in names]
        if missing:
            raise ConfigError("bands", f"{', '.join(missing)} not in {', '.join(names)}")
        if len(wanted) not in (1, 3):
            raise ConfigError(
                "bands",
                f"{len(wanted)} bands given ({', '.join(wanted)}); a picture takes one (grey) or three (R, G, B)",
                f"e.g. -b {wanted[0]} for grey, or three -b for red, green, blue",
            )
        return [names.index(w) for w in wanted], None
    choose = "choose with -b BAND (grey) or three -b (R, G, B)"
    if len(names) == 1:
        return [0], None
    if len(names) == 2:
        return [0], f"{names[0]} drawn in grey (of {', '.join(names)}); {choose}"
    trio = next((t for t in RGB_NAMES if all(n in names for n in t)), None)
    picked = [names.index(n) for n in trio] if trio else [0, 1, 2]
    if len(names) == 3:
        return picked, None
    shown = ", ".join(names[i] for i in picked)
    kind = "true colour" if trio else "the first three"
    return picked, f"{shown} drawn as red, green, blue ({kind} of {', '.join(names)}); {choose}"


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
    """(bands, h, w) values -> (h, w, 4) uint8 stretched by ``limits``; invalid pixels transparent.

    One band fills red, green and blue alike (grey); see :func:`to_image` for a grey PNG.
    """
    limits = limits or stretch_limits(data, valid)
    channels = []
    for band, (lo, hi) in zip(data, limits, strict=True):
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        channels.append(np.clip((band.astype(np.float64) - lo) * scale, 0, 255).astype(np.uint8))
    if len(channels) == 1:
        channels = channels * 3
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    return np.dstack([*channels, alpha])


def to_image(data: np.ndarray, valid: np.ndarray, limits: list[tuple[float, float]] | None = None) -> Any:
    """A PIL image: grey with alpha (``LA``) for one band, ``RGBA`` for three."""
    from PIL import Image

    rgba = to_rgba(data, valid, limits)
    if len(data) == 1:
        return Image.fromarray(np.ascontiguousarray(rgba[..., [0, 3]]), "LA")
    return Image.fromarray(rgba, "RGBA")


def _valid(data: np.ndarray, nodata: float | None) -> np.ndarray:
    if nodata is None:
        return np.ones(data.shape[1:], dtype=bool)
    missing: np.ndarray = np.isnan(data) if np.isnan(nodata) else data == nodata
    return ~missing.any(axis=0)


def _open_geotiff(path: Path) -> Any:
    """Open ``path`` as a GeoTIFF and nothing else: a VRT named ``.tif`` would make GDAL read what it names."""
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        return rasterio.open(path, driver=GTIFF_ONLY)
    except RasterioIOError:
        raise ConfigError(
            "path", f"{path} is not a GeoTIFF", "quicklook draws edown's GeoTIFFs and datacubes"
        ) from None


def render_geotiff(
    path: Path,
    out: Path,
    bands: Sequence[str] | None = None,
    max_size: int = 1024,
    notify: Callable[[str], None] | None = None,
) -> Path:
    """A PNG of one GeoTIFF (decimated to at most ``max_size`` pixels per side)."""
    with _open_geotiff(path) as src:
        idx, notice = pick_bands([d or f"band{i + 1}" for i, d in enumerate(src.descriptions)], bands)
        factor = max(1, int(np.ceil(max(src.width, src.height) / max_size)))
        shape = (len(idx), max(1, src.height // factor), max(1, src.width // factor))
        data = src.read([i + 1 for i in idx], out_shape=shape)
        nodata = src.nodata
    _tell(notice, notify)
    image = to_image(data, _valid(data, nodata))
    _save(image, out)
    return out


def render_stack(
    path: Path,
    out: Path,
    bands: Sequence[str] | None = None,
    max_frames: int = 12,
    thumb: int = 256,
    notify: Callable[[str], None] | None = None,
) -> Path:
    """A time strip of a datacube: one thumbnail per time step (at most ``max_frames``), dated, on white;
    nodata (and cloud-masked) pixels are transparent, as in :func:`render_geotiff`."""
    from PIL import Image, ImageDraw

    from edown.stack import open_stack

    ds = open_stack(path)
    data_var = ds["data"]
    idx, notice = pick_bands([str(b) for b in ds.band.values], bands)
    _tell(notice, notify)
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
        (times[t], to_image(cube, _valid(cube, fill), limits)) for t, cube in zip(picks, cubes, strict=True)
    ]
    width, height = frames[0][1].size
    label = 16
    mode = frames[0][1].mode
    strip = Image.new(mode, (len(frames) * (width + 4) + 4, height + label + 8), "white")
    draw = ImageDraw.Draw(strip)
    for i, (stamp, tile) in enumerate(frames):
        x = 4 + i * (width + 4)
        strip.paste(tile, (x, 4))  # alpha and all: masked and nodata pixels stay transparent
        draw.text((x, height + 6), _date(stamp), fill="black")
    _save(strip, out)
    return out


def _save(image: Any, out: Path) -> None:
    """Write the PNG (:func:`render` has refused a missing folder the user named; the demo's own
    ``quicklooks`` folder is made here)."""
    with user_folder(out.parent, "quicklook folder", "--output"):
        out.parent.mkdir(parents=True, exist_ok=True)
        # Written beside, then renamed: a symbolic link (or a reader) at ``out`` never sees half a PNG, and
        # a link planted there is replaced, never written through.
        tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                image.save(handle, format="PNG")
            tmp.replace(out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _tell(notice: str | None, notify: Callable[[str], None] | None) -> None:
    if notice is None:
        return
    if notify is None:
        log.info("quicklook: %s", notice)
    else:
        notify(notice)


def _date(stamp: Any) -> str:
    millis = int(np.datetime64(stamp, "ms").astype(np.int64))
    return dt.datetime.fromtimestamp(millis / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d")


def render(
    path: Path,
    out: Path | None = None,
    bands: Sequence[str] | None = None,
    notify: Callable[[str], None] | None = None,
) -> Path:
    """A PNG of a GeoTIFF or a Zarr datacube, next to it unless ``out`` is given.

    ``out`` must be in an existing folder (a missing one is more likely a typo than a wish).
    ``notify`` receives the one-line notice when bands are left out (else it is logged).
    """
    path = Path(path)
    if out is not None:
        check_parent_folder(Path(out), "output")
    if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
        return render_geotiff(path, out or path.with_suffix(".png"), bands, notify=notify)
    if path.suffix in (".zarr", ".icechunk") and path.is_dir():
        return render_stack(path, out or path.with_name(path.stem + ".png"), bands, notify=notify)
    raise ConfigError("path", f"{path} is neither a GeoTIFF nor a .zarr or .icechunk datacube")
