"""Cloud masks: which pixels to drop as cloud or shadow, and how cloudy each image is inside the AOI.

A mask is applied on Earth Engine before ``unmask``, so a masked pixel arrives as nodata exactly like a
pixel outside the image, and every other pixel is unchanged. The mask band is read on the output grid by
Earth Engine itself, which samples a coarser band (SCL at 20 m under B4 at 10 m) at each output pixel's
centre, nearest neighbour.

The cloud fraction of an image is ``cloudy / valid`` among the pixels of the mask band, at the band's native
scale, whose centres lie inside the AOI (``valid``: the mask band has data). It is computed for all
candidates in a few ``value:compute`` requests (:data:`FRACTION_BATCH` images each): the collection is
filtered to the candidates, mapped to two sums per image, and read back with ``aggregate_array``.

The rules (which masks fit which collection, and the default for ``"auto"``) are data: :data:`RULES`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edown.errors import ConfigError

CLOUD_SCORE_PLUS = "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"
#: Candidate images per ``value:compute`` request when computing cloud fractions, for a mask band read
#: from the image itself at 20-30 m (:attr:`MaskKind.fraction_batch` says less for dearer masks).
FRACTION_BATCH = 100
DEFAULT_THRESHOLD = 0.6
#: The property names the batched fraction request sets on each image.
_CLOUDY, _VALID = "edown_cloudy_pixels", "edown_valid_pixels"


@dataclass(frozen=True)
class MaskKind:
    """One way of telling cloud from clear: the band it reads and what in that band is masked."""

    name: str
    band: str
    #: Where the band comes from: ``None`` for the image itself, else a collection linked by system:index.
    linked_collection: str | None
    #: SCL classes that are masked (``scl``).
    classes: tuple[int, ...] = ()
    #: QA bits of which any set is masked (``qa-pixel``).
    bits: tuple[int, ...] = ()
    #: Masked below the threshold (``cloud-score-plus``).
    thresholded: bool = False
    summary: str = ""
    #: Images per fraction request: a linked 10 m band (Cloud Score+) costs Earth Engine about four times
    #: the pixels of SCL plus a join, and 100 of them overrun a 60 s evaluation.
    fraction_batch: int = FRACTION_BATCH


MASKS: dict[str, MaskKind] = {
    "scl": MaskKind(
        "scl",
        "SCL",
        None,
        classes=(3, 8, 9, 10),
        summary="Sentinel-2 Scene Classification: 3 cloud shadow, 8 cloud medium, 9 cloud high, 10 cirrus",
    ),
    "cloud-score-plus": MaskKind(
        "cloud-score-plus",
        "cs_cdf",
        CLOUD_SCORE_PLUS,
        thresholded=True,
        fraction_batch=25,
        summary=f"Cloud Score+ ({CLOUD_SCORE_PLUS}) cs_cdf below cloud_score_threshold",
    ),
    "qa-pixel": MaskKind(
        "qa-pixel",
        "QA_PIXEL",
        None,
        bits=(1, 2, 3, 4),
        summary="Landsat Collection 2 QA_PIXEL bits 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow",
    ),
}
CHOICES = (*MASKS, "auto")

#: Which masks fit which collections (by id pattern); the first is what ``"auto"`` picks.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"COPERNICUS/S2_SR(_HARMONIZED)?", ("cloud-score-plus", "scl")),
    (r"COPERNICUS/S2(_HARMONIZED)?", ("cloud-score-plus",)),
    (r"LANDSAT/L[CTEO]0[4-9]/C02/T[12](_L2|_TOA|_RT|_RT_TOA)?", ("qa-pixel",)),
)


#: The collections of :data:`RULES`, as a hint says them.
KNOWN_COLLECTIONS = (
    "Sentinel-2 (COPERNICUS/S2, S2_HARMONIZED, S2_SR, S2_SR_HARMONIZED) and Landsat Collection 2"
    " (e.g. LANDSAT/LC09/C02/T1_L2, LANDSAT/LE07/C02/T1_TOA)"
)


def masks_for(collection_id: str) -> tuple[str, ...]:
    """The masks that fit a collection, best first (empty when edown knows none)."""
    for pattern, masks in RULES:
        if re.fullmatch(pattern, collection_id):
            return masks
    return ()


def resolve_mask(collection_id: str, mask: str | None) -> str | None:
    """The concrete mask for ``cloud_mask`` on this collection (``"auto"`` resolved, ``"none"`` is None);
    bad input raises, with a hint that only suggests what works for this collection."""
    if mask is None or mask == "none":
        return None
    if mask not in CHOICES:
        raise ConfigError("cloud_mask", f"{mask!r} is not one of {', '.join(CHOICES)}, none")
    fitting = masks_for(collection_id)
    if mask == "auto":
        if not fitting:
            raise ConfigError(
                "cloud_mask",
                f"'auto' knows no cloud mask for {collection_id}",
                f"masks exist for {KNOWN_COLLECTIONS}; drop --cloud-mask for this collection",
            )
        return fitting[0]
    if mask not in fitting:
        if not fitting:
            raise ConfigError(
                "cloud_mask",
                f"{mask!r} does not fit {collection_id}; no cloud mask fits it",
                f"masks exist for {KNOWN_COLLECTIONS}; drop --cloud-mask for this collection",
            )
        raise ConfigError(
            "cloud_mask",
            f"{mask!r} does not fit {collection_id}; it fits {', '.join(fitting)}",
            f"use --cloud-mask {fitting[0]}, or auto (which picks {fitting[0]})",
        )
    return mask


def check_threshold(mask: str | None, threshold: float, collection_id: str) -> None:
    """A ``cloud_score_threshold`` other than the default means nothing without ``cloud-score-plus``: refuse
    it rather than ignore it (as ``max_cloud_fraction`` without a mask is refused)."""
    if threshold == DEFAULT_THRESHOLD or (mask is not None and MASKS[mask].thresholded):
        return
    what = "there is no cloud mask" if mask is None else f"this run's cloud mask is {mask}"
    fits = "cloud-score-plus" in masks_for(collection_id)
    raise ConfigError(
        "cloud_score_threshold",
        f"applies to cloud-score-plus only, and {what}",
        "add --cloud-mask cloud-score-plus (cloud_mask='cloud-score-plus'), or drop --cloud-score-threshold"
        if fits
        else f"drop --cloud-score-threshold: cloud-score-plus does not fit {collection_id}",
    )


def mask_identity(mask: str | None, threshold: float) -> str:
    """What a run's pixels depend on from its cloud settings, as one short name: ``none``, ``scl``,
    ``qa-pixel`` or ``cloud-score-plus@<threshold>``.

    Finished GeoTIFFs carry it (tag :data:`IDENTITY_TAG`, and the sidecar) and stored chunks of a partial
    download carry it in their file names, so a run with other cloud settings never reuses pixels made
    with these. It uses only file-name-safe characters.
    """
    if mask is None:
        return "none"
    return f"{mask}@{threshold:g}" if MASKS[mask].thresholded else mask


#: The GeoTIFF tag holding :func:`mask_identity` (absent on files without a mask, so older files read as
#: ``none``).
IDENTITY_TAG = "EDOWN_CLOUD_MASK"


def check_fraction(value: Any, field_name: str) -> float:
    """A number in [0, 1] (threshold or maximum fraction), else bad input naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(field_name, f"must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ConfigError(field_name, f"{value:g} is outside [0, 1]")
    return float(value)


def cloudy(source: Any, kind: MaskKind, threshold: float) -> Any:
    """A one-band ``ee.Image``: 1 where ``kind`` masks the pixel, 0 where it is clear, masked without data.

    ``source`` must hold the kind's band (the image itself, or the image with its linked band).
    """
    band = source.select(kind.band)
    if kind.classes:
        out = band.eq(kind.classes[0])
        for value in kind.classes[1:]:
            out = out.Or(band.eq(value))
        return out.rename("cloudy")
    if kind.bits:
        return band.bitwiseAnd(sum(1 << b for b in kind.bits)).neq(0).rename("cloudy")
    return band.lt(threshold).rename("cloudy")


def clear_mask(image_id: str, system_index: str, mask: str, threshold: float) -> Any:
    """What ``updateMask`` takes for one image: non-zero where the pixel is kept."""
    import ee

    kind = MASKS[mask]
    source = ee.Image(
        image_id if kind.linked_collection is None else f"{kind.linked_collection}/{system_index}"
    )
    return cloudy(source, kind, threshold).Not()


@dataclass(frozen=True)
class CloudCount:
    """Masked and valid mask-band pixels of one image inside the AOI (Earth Engine's weighted sums)."""

    cloudy: float
    valid: float

    @property
    def fraction(self) -> float | None:
        """``cloudy / valid``, or None when the mask band has no data inside the AOI."""
        return self.cloudy / self.valid if self.valid else None


def count_clouds(
    collection_id: str,
    system_indices: Sequence[str],
    dates: tuple[str, str],
    aoi: dict[str, Any],
    mask: str,
    threshold: float,
    compute: Callable[[Any], Any],
    batch_size: int | None = None,
) -> dict[str, CloudCount]:
    """Cloudy and valid pixel counts inside ``aoi`` for every image, ``batch_size`` images per request
    (the mask's :attr:`~MaskKind.fraction_batch` by default).

    ``dates`` is the search's ``[start, end)`` (ISO dates): with the AOI it narrows the collection before
    the ``system:index`` filter, as Earth Engine's index is by time and place. ``compute`` evaluates an ee
    object (``getInfo`` through edown's pacer and retries). A batch that Earth Engine finds too big
    ("Computation timed out", "User memory limit exceeded") is asked again as two halves, down to single
    images, so a long search over a large AOI still completes.
    """
    import ee

    kind = MASKS[mask]
    region = ee.Geometry(aoi, None, False)
    out: dict[str, CloudCount] = {}

    def counts(image: Any) -> Any:
        source = image
        if kind.linked_collection is not None:
            source = image.linkCollection(ee.ImageCollection(kind.linked_collection), [kind.band])
        flag = cloudy(source, kind, threshold)
        # Two sums over the same mask: the cloudy pixels and the valid ones (sum over no pixels is 0).
        sums = flag.addBands(flag.gte(0).rename("valid")).reduceRegion(
            ee.Reducer.sum(), region, None, None, None, False, 1e13
        )
        return image.set({_CLOUDY: sums.get("cloudy"), _VALID: sums.get("valid")})

    def count_batch(batch: list[str]) -> None:
        mapped = (
            ee.ImageCollection(collection_id)
            .filterDate(*dates)
            .filterBounds(region)
            .filter(ee.Filter.inList("system:index", batch))
            .map(counts)
        )
        request = ee.List(
            [
                mapped.aggregate_array("system:index"),
                mapped.aggregate_array(_CLOUDY),
                mapped.aggregate_array(_VALID),
            ]
        )
        try:
            names, cloudy_px, valid_px = compute(request)
        except Exception as exc:
            if len(batch) < 2 or not too_big(exc):
                raise
            half = len(batch) // 2
            count_batch(batch[:half])
            count_batch(batch[half:])
            return
        for name, c, v in zip(names, cloudy_px, valid_px, strict=True):
            out[str(name)] = CloudCount(float(c), float(v))

    size = batch_size or kind.fraction_batch
    for start in range(0, len(system_indices), size):
        count_batch(list(system_indices[start : start + size]))
    return out


def too_big(exc: BaseException) -> bool:
    """Whether Earth Engine refused a computation for its size or duration (a smaller one may pass)."""
    text = str(exc)
    return "Computation timed out" in text or "User memory limit exceeded" in text
