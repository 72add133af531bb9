"""Object-store roots against real servers on loopback: moto_server (S3) and fake-gcs-server (GCS).

The fixtures ``s3_root`` / ``gs_root`` (tests/conftest.py) give a fresh bucket on a server started for
the session, with its endpoint in the environment; nothing here mocks a storage client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from edown import DownloadConfig, download_images
from edown.emulator.object_stores import StoreServer
from edown.emulator.server import Emulator
from edown.errors import OutputLockedError
from edown.stores import ObjectStore, StoreURL, location
from edown.storeroot import LOCK_KEY
from tests.helpers import config, run_edown

pytestmark = pytest.mark.timeout(300)


def _keys(root: str) -> list[str]:
    return [o.key for o in ObjectStore(StoreURL(root)).list("")]


def _read_tiff(root: str, key: str, into: Path) -> dict[str, Any]:
    """A GeoTIFF on the store, downloaded and read with rasterio."""
    into.parent.mkdir(parents=True, exist_ok=True)
    ObjectStore(StoreURL(root)).download(key, into)
    with rasterio.open(into) as src:
        return {
            "pixels": src.read(),
            "transform": tuple(src.transform),
            "crs": src.crs.to_wkt(),
            "dtype": src.dtypes[0],
            "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
            "overviews": src.overviews(1),
            "blocks": src.block_shapes[0],
        }


@pytest.mark.parametrize("root_fixture", ["s3_root", "gs_root"])
def test_same_job_to_local_and_store_gives_identical_cogs(
    ee_emulator_session: Emulator, tmp_path: Path, root_fixture: str, request: pytest.FixtureRequest
) -> None:
    root: str = request.getfixturevalue(root_fixture)
    local = download_images(config(ee_emulator_session, tmp_path))
    remote = download_images(config(ee_emulator_session, tmp_path, output_root=root))
    assert local.downloaded == remote.downloaded > 0
    assert remote.failed == 0
    assert isinstance(remote.manifest_path, StoreURL)
    assert remote.manifest_path.startswith(f"{root}/manifests/run-")
    keys = _keys(root)
    manifest_key = StoreURL(remote.manifest_path).relative_to(StoreURL(root))
    assert manifest_key in keys
    doc = json.loads(ObjectStore(StoreURL(root)).read_bytes(manifest_key))
    assert doc["output_root"] == root
    assert doc["download"]["state"] == "finished"
    assert doc["download"]["counts"]["downloaded"] == remote.downloaded
    # no chunk, partial or temporary object is left; every image has its COG and sidecar
    assert not [k for k in keys if ".partial/" in k or k.endswith(".tmp")]
    by_key = {r.record_key: r for r in local.results}
    for result in remote.results:
        assert isinstance(result.tiff_path, StoreURL)
        key = result.tiff_path.relative_to(StoreURL(root))
        assert key in keys and key.removesuffix(".tif") + ".json" in keys
        there = _read_tiff(root, key, tmp_path / "fetched" / key)
        mine = by_key[result.record_key].tiff_path
        assert isinstance(mine, Path)
        with rasterio.open(mine) as src:
            np.testing.assert_array_equal(there["pixels"], src.read())
            assert there["transform"] == tuple(src.transform)
            assert there["crs"] == src.crs.to_wkt()
            assert there["dtype"] == src.dtypes[0]
        assert there["layout"] == "COG"
        assert there["blocks"] == (256, 256)
    # the lock was released, the marker stays
    assert LOCK_KEY not in keys
    assert ".edown/root.json" in keys


def test_unsupported_scheme_is_one_line_exit_2(tmp_path: Path) -> None:
    done = run_edown(
        "download", "--collection-id", "X/Y", "--start-date", "2024-01-01", "--end-date", "2024-01-02",
        "--bbox", "0,0,1,1", "-o", "ftp://host/data", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: output_root: ftp://host/data uses ftp://"), done.stderr
    assert all(line.startswith("hint: ") for line in lines[1:]) and "Traceback" not in done.stderr
    with pytest.raises(Exception, match="ftp://"):
        location("ftp://host/data", "output_root")
