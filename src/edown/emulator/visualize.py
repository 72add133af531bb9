"""``Image.visualize``: the 8-bit picture ``getThumbURL`` and map tiles show.

Each chosen band is stretched linearly from ``min`` to ``max`` (or by ``gain``/``bias``), clamped to
0..1, raised to ``1/gamma``, and scaled to 0..255 (rounded). One band without a palette gives ``vis-gray``;
one band with a palette looks its stretched value up along the palette's evenly spaced colours (linear
interpolation between neighbours); three bands give ``vis-red``, ``vis-green``, ``vis-blue``. Defaults
where EE's are not documented: ``min`` 0, ``max`` 1 for float bands and the type's maximum for integer
bands. Masked pixels stay masked (transparent in a PNG).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edown.emulator.images import EEBand, EEImage, EvalContext, EvaluationError, Raster, select
from edown.emulator.model import PixelType

UINT8 = PixelType("int", 0, 255)


def _per_band(value: Any, count: int, name: str) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    items = value if isinstance(value, list) else [value]
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        raise EvaluationError(f"Image.visualize: '{name}' must be a number or a list of numbers.") from None
    if len(numbers) == 1:
        return numbers * count
    if len(numbers) != count:
        raise EvaluationError(f"Image.visualize: '{name}' needs 1 or {count} values, got {len(numbers)}.")
    return numbers


def _palette(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    colours = []
    for item in items:
        text = str(item).strip().lstrip("#")
        if len(text) == 3:
            text = "".join(c * 2 for c in text)
        if len(text) != 6:
            raise EvaluationError(f"Image.visualize: Invalid palette colour '{item}'.")
        try:
            colours.append([int(text[i : i + 2], 16) for i in (0, 2, 4)])
        except ValueError:
            raise EvaluationError(f"Image.visualize: Invalid palette colour '{item}'.") from None
    if not colours:
        raise EvaluationError("Image.visualize: The palette is empty.")
    return np.asarray(colours, dtype=np.float64)


def visualize(
    image: EEImage,
    bands: Any = None,
    gain: Any = None,
    bias: Any = None,
    min: Any = None,
    max: Any = None,
    gamma: Any = None,
    opacity: Any = None,
    palette: Any = None,
    force_rgb: bool = False,
) -> EEImage:
    chosen = image
    if bands is not None:
        names = [b.strip() for b in bands.split(",")] if isinstance(bands, str) else [str(b) for b in bands]
        chosen = EEImage(bands=tuple(select(image, [n]).bands[0] for n in names))
    elif len(image.bands) >= 3:
        chosen = EEImage(bands=image.bands[:3])
    elif image.bands:
        chosen = EEImage(bands=image.bands[:1])
    count = len(chosen.bands)
    if count not in (1, 3):
        raise EvaluationError(f"Image.visualize: Expected 1 or 3 bands, got {count}.")
    colours = _palette(palette)
    if colours is not None and count != 1:
        raise EvaluationError("Image.visualize: A palette can only be used with 1 band.")
    if (gain is not None or bias is not None) and (min is not None or max is not None):
        raise EvaluationError("Image.visualize: Specify either gain/bias or min/max, not both.")
    lows = _per_band(min, count, "min")
    highs = _per_band(max, count, "max")
    gains = _per_band(gain, count, "gain")
    biases = _per_band(bias, count, "bias")
    gammas = _per_band(gamma, count, "gamma")
    alpha = 1.0 if opacity is None else float(opacity)

    def stretch(i: int, band: EEBand) -> Stretch:
        if gains is not None or biases is not None:
            g = gains[i] if gains else 1.0
            b = biases[i] if biases else 0.0
            lo, hi = -b / g if g else 0.0, (255.0 - b) / g if g else 1.0
            return Stretch(band, lo, hi, gammas[i] if gammas else 1.0)
        default_hi = float(band.pixel_type.max or 255) if band.pixel_type.is_integer else 1.0
        lo = lows[i] if lows else 0.0
        hi = highs[i] if highs else default_hi
        return Stretch(band, lo, hi, gammas[i] if gammas else 1.0)

    parts = [stretch(i, b) for i, b in enumerate(chosen.bands)]
    out: list[EEBand] = []
    if count == 1 and colours is None and not force_rgb:
        out.append(EEBand("vis-gray", UINT8, parts[0].band.grid, _Channel(parts, None, 0, alpha)))
    else:
        for channel, name in enumerate(("vis-red", "vis-green", "vis-blue")):
            out.append(EEBand(name, UINT8, parts[0].band.grid, _Channel(parts, colours, channel, alpha)))
    return EEImage(bands=tuple(out), footprint=image.footprint)


class Stretch:
    def __init__(self, band: EEBand, lo: float, hi: float, gamma: float) -> None:
        self.band, self.lo, self.hi, self.gamma = band, lo, hi, gamma

    def unit(self, ctx: EvalContext) -> tuple[np.ndarray, np.ndarray]:
        r = self.band.evaluate(ctx)
        span = self.hi - self.lo
        with np.errstate(all="ignore"):
            x = (np.asarray(r.values, dtype=np.float64) - self.lo) / (span if span else 1.0)
        x = np.clip(np.nan_to_num(x), 0.0, 1.0)
        if self.gamma != 1.0:
            x = x ** (1.0 / self.gamma)
        return x, np.asarray(r.mask)


class _Channel:
    """One output channel, computed from the stretched inputs (and palette)."""

    def __init__(
        self, parts: Sequence[Stretch], colours: np.ndarray | None, channel: int, alpha: float
    ) -> None:
        self.parts, self.colours, self.channel, self.alpha = parts, colours, channel, alpha

    def __call__(self, ctx: EvalContext) -> Raster:
        if self.colours is not None:
            x, mask = self.parts[0].unit(ctx)
            stops = np.linspace(0.0, 1.0, len(self.colours))
            value = (
                np.interp(x, stops, self.colours[:, self.channel])
                if len(self.colours) > 1
                else np.full(x.shape, self.colours[0, self.channel])
            )
        else:
            part = self.parts[self.channel if len(self.parts) == 3 else 0]
            x, mask = part.unit(ctx)
            value = x * 255.0
        values = np.floor(np.asarray(value, dtype=np.float64) + 0.5)
        keep = mask if self.alpha > 0 else np.zeros_like(mask)
        return Raster(values, keep, keep)
