"""Where edown writes: file modes that follow the umask, and folders the OS refuses as bad input (exit 2).

Read-only folders are read-only for real (see ``tests.helpers.read_only``).
"""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from edown import download_images
from edown.emulator.server import Emulator
from tests.helpers import config, read_only, run_edown

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
        "lock": root / ".edown" / "lock",
        "root marker": root / ".edown" / "root.json",
    }
    assert {what: oct(mode(path)) for what, path in written.items()} == {
        what: oct(expected) for what in written
    }


def first_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.splitlines()[0]


def test_an_output_root_under_a_file_is_bad_input(ee_emulator: Emulator, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    done = run_edown(*download_args(ee_emulator, Path("notes.txt/data")), cwd=tmp_path)
    assert done.returncode == 2
    assert first_line(done) == "error: output root notes.txt/data: notes.txt is a file, not a folder"
    assert done.stderr.splitlines()[1] == "hint: move it away or choose another --output-root / output_root"


def test_a_read_only_output_root_is_bad_input(ee_emulator: Emulator, tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    with read_only(tmp_path / "shared"):
        done = run_edown(*download_args(ee_emulator, Path("shared")), cwd=tmp_path)
    assert done.returncode == 2
    assert first_line(done).startswith("error: output root shared is not writable (")
    assert first_line(done).endswith(": shared/.edown)")
    assert (
        done.stderr.splitlines()[1] == "hint: make it writable or choose another --output-root / output_root"
    )


def test_stacking_into_a_read_only_root_is_bad_input(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download_images(config(ee_emulator, tmp_path, end_date="2024-06-05", bands=("B4",)))
    root = tmp_path / "data"
    with read_only(root):
        done = run_edown("stack", "-m", str(summary.manifest_path), cwd=tmp_path)
    assert done.returncode == 2
    assert first_line(done).startswith(f"error: output root {root} is not writable (")
    assert not (root / "stacks").exists()
    (tmp_path / "archive").mkdir()
    with read_only(tmp_path / "archive"):
        elsewhere = run_edown("stack", "-m", str(summary.manifest_path), "-o", "archive", cwd=tmp_path)
    assert elsewhere.returncode == 2
    assert first_line(elsewhere).startswith("error: output root archive is not writable (")


def test_a_manifest_path_in_a_missing_or_read_only_folder_is_bad_input(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    root = Path("data")
    download = run_edown(*download_args(ee_emulator, root, "--manifest-path", "runs/june.json"), cwd=tmp_path)
    assert download.returncode == 2
    assert first_line(download) == "error: manifest_path: folder runs does not exist"
    assert not (tmp_path / "data").exists(), "refused before anything was fetched"
    search = download_args(ee_emulator, root)[1:-3]
    missing = run_edown("search", *search, "--manifest-path", "runs/june.json", cwd=tmp_path)
    assert missing.returncode == 2
    assert first_line(missing) == "error: manifest_path: folder runs does not exist"
    (tmp_path / "runs").mkdir()
    with read_only(tmp_path / "runs"):
        refused = run_edown("search", *search, "--manifest-path", "runs/june.json", cwd=tmp_path)
    assert refused.returncode == 2
    assert first_line(refused).startswith("error: manifest folder runs is not writable (")
    inside = run_edown(
        *download_args(ee_emulator, root, "--manifest-path", "data/runs/june.json"), cwd=tmp_path
    )
    assert inside.returncode == 0, "folders under the output root are edown's own to make"
    assert (tmp_path / "data/runs/june.json").is_file()


def test_another_selection_in_the_same_root_says_what_differs_and_both_ways_out(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    root = Path("data")
    first = run_edown(*download_args(ee_emulator, root), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    tiff = "data/images/COPERNICUS.S2_SR_HARMONIZED/20240603T104058_20240603T104237_T30UXC.tif"
    hint = "hint: replace it with --overwrite (overwrite=True), or keep both with another --output-root"
    why = "(a file's name comes from its image only, not from the bands, AOI, nodata or cloud mask)"

    bands = run_edown(*download_args(ee_emulator, root, "-b", "B8"), cwd=tmp_path)
    assert bands.returncode == 2
    assert bands.stderr.splitlines() == [
        f"error: {tiff} exists but with bands B4; this run makes bands B4, B8 {why}",
        hint,
    ]
    args = download_args(ee_emulator, root, "--nodata", "0")
    args[args.index("--bbox") + 1] = "-0.61,51.48,-0.44,51.56"
    moved = run_edown(*args, cwd=tmp_path)
    assert moved.returncode == 2
    assert moved.stderr.splitlines() == [
        f"error: {tiff} exists but with size 1210x931 px, nodata 65535, grid origin 666360,5715240 step 10;"
        f" this run makes size 1211x930 px, nodata 0, grid origin 665660,5715210 step 10 {why}",
        hint,
    ]
    other_root = run_edown(*download_args(ee_emulator, Path("data-b8"), "-b", "B8"), cwd=tmp_path)
    assert other_root.returncode == 0, other_root.stderr
    replaced = run_edown(*download_args(ee_emulator, root, "-b", "B8", "--overwrite"), cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads(replaced.stdout)["downloaded"] == 1
