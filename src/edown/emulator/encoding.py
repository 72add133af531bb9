"""Response bodies for pixel requests: NPY, GeoTIFF, zipped GeoTIFFs, PNG and JPEG.

NPY is a structured (H, W) array with one field per band in request order, as EE sends it. GeoTIFFs
carry the request grid's CRS and transform and band names as descriptions. Zips hold one GeoTIFF
(``<prefix>.tif``) or one per band (``<prefix>.<band>.tif``). PNG and JPEG take 1 (grey) or 3 (RGB) uint8
bands; masked pixels are transparent in a PNG and black in a JPEG.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np

from edown.crs import resolve_crs
from edown.emulator.images import EEImage, EvalContext, EvaluationError
from edown.emulator.model import Grid


def encode_npy(bands: list[tuple[str, np.ndarray]]) -> bytes:
    """A structured (H, W) array with one field per band, in request order, as EE's NPY output."""
    h, w = bands[0][1].shape
    out = np.empty((h, w), dtype=[(name, values.dtype) for name, values in bands])
    for name, values in bands:
        out[name] = values
    buf = io.BytesIO()
    np.save(buf, out, allow_pickle=False)
    return buf.getvalue()


def valid_everywhere(image: EEImage, ctx: EvalContext) -> np.ndarray:
    """Pixels valid in every band: the GeoTIFF's dataset mask (GDAL keeps one mask per dataset)."""
    masks = [np.broadcast_to(band.evaluate(ctx).mask, ctx.shape) for band in image.bands]
    return np.logical_and.reduce(masks) if masks else np.ones(ctx.shape, dtype=bool)


def encode_geotiff(bands: list[tuple[str, np.ndarray]], grid: Grid, valid: np.ndarray | None = None) -> bytes:
    """A GeoTIFF; with ``valid``, an internal mask (as EE's, which readers such as geedim rely on)."""
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.transform import Affine

    dtype = np.result_type(*[v.dtype for _, v in bands])
    sx, shx, tx, shy, sy, ty = grid.transform
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": len(bands),
        "dtype": dtype.name,
        "crs": rasterio.crs.CRS.from_wkt(resolve_crs(grid.crs).to_wkt()),
        "transform": Affine(sx, shx, tx, shy, sy, ty),
    }
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), MemoryFile() as mem:
        with mem.open(**profile) as dst:
            for i, (name, values) in enumerate(bands, start=1):
                dst.write(values.astype(dtype, copy=False), i)
                dst.set_band_description(i, name)
            if valid is not None and not valid.all():
                dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
        return bytes(mem.read())


def encode_zip(
    bands: list[tuple[str, np.ndarray]],
    grid: Grid,
    prefix: str,
    per_band: bool,
    masks: list[np.ndarray] | None = None,
) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        if per_band:
            for i, (name, values) in enumerate(bands):
                mask = masks[i] if masks is not None else None
                archive.writestr(f"{prefix}.{name}.tif", encode_geotiff([(name, values)], grid, mask))
        else:
            valid = np.logical_and.reduce(masks) if masks else None
            archive.writestr(f"{prefix}.tif", encode_geotiff(bands, grid, valid))
    return buf.getvalue()


def encode_picture(image: EEImage, ctx: EvalContext, fmt: str) -> bytes:
    """A PNG (with transparency where masked) or JPEG of a 1- or 3-band uint8 image."""
    from PIL import Image

    if len(image.bands) not in (1, 3):
        raise EvaluationError(f"A {fmt} thumbnail needs 1 or 3 bands, got {len(image.bands)}.")
    channels = []
    masks = []
    for band in image.bands:
        r = band.evaluate(ctx)
        values = np.broadcast_to(np.asarray(r.values, dtype=np.float64), ctx.shape)
        channels.append(np.clip(values, 0, 255).astype(np.uint8))
        masks.append(np.broadcast_to(r.mask, ctx.shape))
    valid = np.logical_and.reduce(masks)
    channels = [np.where(valid, c, 0).astype(np.uint8) for c in channels]
    buf = io.BytesIO()
    if fmt == "PNG":
        alpha = np.where(valid, 255, 0).astype(np.uint8)
        mode = "LA" if len(channels) == 1 else "RGBA"
        Image.fromarray(np.dstack([*channels, alpha]), mode=mode).save(buf, format="PNG")
    else:
        picture = channels[0] if len(channels) == 1 else np.dstack(channels)
        Image.fromarray(picture, mode="L" if len(channels) == 1 else "RGB").save(
            buf, format="JPEG", quality=95
        )
    return buf.getvalue()
