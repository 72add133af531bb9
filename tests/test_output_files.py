"""What edown leaves on disk for others: file modes that follow the umask, as GeoTIFFs always did."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from edown.emulator.server import Emulator
from tests.helpers import run_edown

AREA = "-0.60,51.48,-0.43,51.56"


def download_args(emu: Emulator, root: Path, *extra: str) -> list[str]:
    return [
        "download",
        "-c",
        "COPERNICUS/S2_SR_HARMONIZED",
        "--start-date",
        "2024-06-01",
        "--end-date",
        "2024-06-05",
        "--bbox",
        AREA,
        "-b",
        "B4",
        "--server-url",
        emu.url,
        "-o",
        str(root),
        "--json",
        *extra,
    ]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o027, 0o640)])
def test_manifests_sidecars_and_geotiffs_follow_the_umask(
    ee_emulator: Emulator, tmp_path: Path, umask: int, expected: int
) -> None:
    root = tmp_path / "data"
    done = run_edown(*download_args(ee_emulator, root), cwd=tmp_path, umask=umask)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    [result] = summary["results"]
    tiff = Path(result["tiff_path"])
    tiff = tiff if tiff.is_absolute() else root / tiff
    search_manifest = tmp_path / "search.json"
    searched = run_edown(
        "search",
        *download_args(ee_emulator, root)[1:-3],
        "--manifest-path",
        str(search_manifest),
        "--json",
        cwd=tmp_path,
        umask=umask,
    )
    assert searched.returncode == 0, searched.stderr
    written = {
        "run manifest": Path(summary["manifest_path"]),
        "search manifest": search_manifest,
        "sidecar": tiff.with_suffix(".json"),
        "GeoTIFF": tiff,
        "lock": root / ".edown.lock",
    }
    assert {what: oct(mode(path)) for what, path in written.items()} == {
        what: oct(expected) for what in written
    }
