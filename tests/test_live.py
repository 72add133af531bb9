"""Against the real Earth Engine: opt-in with EDOWN_LIVE_TESTS=1 (and credentials, see docs/auth.md).

Collected only when enabled (see conftest.py), so a normal run neither runs nor skips it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio

from edown import AOI, DownloadConfig, download_images


@pytest.mark.live
def test_a_small_sentinel2_download_from_earth_engine(tmp_path: Path) -> None:
    summary = download_images(
        DownloadConfig(
            collection_id="COPERNICUS/S2_SR_HARMONIZED",
            start_date="2024-06-01",
            end_date="2024-06-07",
            aoi=AOI.from_bbox((-0.13, 51.50, -0.12, 51.51)),
            bands=("B4", "B8"),
            project=os.environ.get("EE_PROJECT"),
            output_root=tmp_path,
        )
    )
    assert summary.downloaded >= 1 and summary.failed == 0
    result = next(r for r in summary.results if r.status == "downloaded")
    with rasterio.open(result.tiff_path) as src:
        assert src.dtypes == ("uint16", "uint16") and src.transform.a == 10.0
        assert np.asarray(src.read()).std() > 0
