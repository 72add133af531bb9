"""The emulator's cloud field: every cloud class a mask removes occurs over an ordinary AOI within a couple
of weeks, and every cloud product (SCL, QA60, QA_PIXEL, reflectance) follows the one documented field."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from shapely.geometry import box

from edown.emulator.catalog import Catalog
from edown.emulator.model import ImageAsset
from edown.emulator.pixels import SHADOW_OFFSET, read_window
from edown.grid import GridSpec, aoi_window

CENTRAL_LONDON = box(-0.15, 51.48, 0.02, 51.56)
S2 = "COPERNICUS/S2_SR_HARMONIZED"
L9 = "LANDSAT/LC09/C02/T1_L2"


def _ms(day: str) -> int:
    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc).timestamp() * 1000)


def _images(collection: str, start: str, end: str) -> list[ImageAsset]:
    return list(Catalog().query(collection, _ms(start), _ms(end), CENTRAL_LONDON))


def _aoi_band(asset: ImageAsset, band: str, grow: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Values and validity of ``band`` over central London (grown by ``grow`` pixels), and the window origin."""
    g = asset.band(band).grid
    window = aoi_window(CENTRAL_LONDON, GridSpec(g.crs, g.transform, g.width, g.height))
    r0, c0 = window.row_off - grow, window.col_off - grow
    values, valid = read_window(asset, band, r0, c0, window.height + 2 * grow, window.width + 2 * grow)
    return values.astype(np.int64), valid, (r0, c0)


def test_every_scl_cloud_class_occurs_over_central_london_in_two_weeks() -> None:
    images = _images(S2, "2024-06-01", "2024-06-15")
    assert len(images) >= 4
    seen: set[int] = set()
    for asset in images:
        scl, valid, _ = _aoi_band(asset, "SCL")
        seen.update(np.unique(scl[valid]).tolist())
    assert {3, 8, 9, 10} <= seen, seen
    assert {4, 5, 6} <= seen, seen


def test_every_qa_pixel_cloud_bit_occurs_over_central_london_in_ten_days() -> None:
    images = _images(L9, "2024-06-01", "2024-06-11")
    assert images
    seen = 0
    for asset in images:
        qa, valid, _ = _aoi_band(asset, "QA_PIXEL")
        for bit in (1, 2, 3, 4):
            if ((qa[valid] >> bit) & 1).any():
                seen |= 1 << bit
    assert seen == 0b11110


@pytest.mark.parametrize("collection", [S2, L9])
def test_shadows_lie_north_west_of_their_clouds(collection: str) -> None:
    band, shadow_of, cloud_of = (
        ("SCL", lambda v: v == 3, lambda v: (v == 8) | (v == 9))
        if collection == S2
        else ("QA_PIXEL", lambda v: (v >> 4) & 1 == 1, lambda v: (v >> 3) & 1 == 1)
    )
    dr, dc = SHADOW_OFFSET
    shadows = 0
    for asset in _images(collection, "2024-06-01", "2024-06-15"):
        values, valid, (r0, c0) = _aoi_band(asset, band)
        h, w = values.shape
        caster, caster_valid = read_window(asset, band, r0 + dr, c0 + dc, h, w)
        shadow = shadow_of(values) & valid & caster_valid
        shadows += int(shadow.sum())
        assert cloud_of(caster.astype(np.int64))[shadow].all()
        assert not cloud_of(values)[shadow].any()
    assert shadows > 100


def test_dilated_cloud_rings_every_landsat_cloud() -> None:
    rings = 0
    for asset in _images(L9, "2024-06-01", "2024-06-11"):
        qa, valid, _ = _aoi_band(asset, "QA_PIXEL", grow=1)
        cloud = (qa >> 3) & 1 == 1
        dilated = (qa >> 1) & 1 == 1
        assert not (cloud & dilated).any()
        assert np.array_equal((qa >> 6) & 1 == 1, ~cloud & ~dilated)
        core = cloud[1:-1, 1:-1] & valid[1:-1, 1:-1]
        for nr, nc in ((0, 1), (2, 1), (1, 0), (1, 2)):
            neighbour = cloud[nr : nr + core.shape[0], nc : nc + core.shape[1]]
            ring = dilated[nr : nr + core.shape[0], nc : nc + core.shape[1]]
            # A cloud pixel's neighbour is cloud or dilated cloud: the ring is closed.
            assert (neighbour | ring)[core].all()
        rings += int(dilated[valid].sum())
    assert rings > 100


def test_s2_cloud_products_follow_one_field() -> None:
    cirrus_seen = opaque_seen = 0
    for asset in _images(S2, "2024-06-01", "2024-06-15"):
        qa60, valid60, (r0, c0) = _aoi_band(asset, "QA60")
        h, w = qa60.shape
        cirrus = read_window(asset, "MSK_CLASSI_CIRRUS", r0, c0, h, w)[0]
        opaque = read_window(asset, "MSK_CLASSI_OPAQUE", r0, c0, h, w)[0]
        np.testing.assert_array_equal(cirrus[valid60] == 1, (qa60[valid60] & 2048) > 0)
        np.testing.assert_array_equal(opaque[valid60] == 1, (qa60[valid60] & 1024) > 0)
        cirrus_seen += int(cirrus[valid60].sum())
        opaque_seen += int(opaque[valid60].sum())
        # On the SCL grid (20 m): shadows are darker than the same classes' clear land, clouds brighter.
        scl, valid, (r0, c0) = _aoi_band(asset, "SCL")
        re1 = read_window(asset, "B5", r0, c0, *scl.shape)[0].astype(np.int64)
        land = valid & ((scl == 4) | (scl == 5))
        if ((scl == 3) & valid).sum() > 50 and land.sum() > 50:
            assert re1[(scl == 3) & valid].mean() < re1[land].mean()
        if ((scl == 9) & valid).sum() > 50 and land.sum() > 50:
            assert re1[(scl == 9) & valid].mean() > re1[land].mean()
    assert cirrus_seen and opaque_seen
