"""``edown stack`` over several manifests: a shell glob, a manifests folder, or ``latest``."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edown import StackConfig, open_stack, stack_images
from edown.emulator.server import Emulator
from edown.errors import StackError
from tests.helpers import EDOWN, S2, config, run_edown

T1 = "20240603T104058_20240603T104237_T30UXC"
T2 = "20240608T104030_20240608T104209_T30UXC"


def download(emu: Emulator, cwd: Path, end_date: str, manifest: str) -> dict:
    done = run_edown(
        "download",
        *("-c", S2, "--start-date", "2024-06-01", "--end-date", end_date),
        *("--bbox", "-0.60,51.48,-0.43,51.56", "-b", "B4", "-b", "B8", "--server-url", emu.url),
        *("-o", "data", "--manifest-path", f"data/manifests/{manifest}", "--json"),
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    summary: dict = json.loads(done.stdout)
    return summary


@pytest.fixture
def runs(ee_emulator: Emulator, tmp_path: Path) -> Path:
    """June 1-5 (one image), June 1-10 (that image skipped, a new one), June 1-10 again (all skipped),
    all into the same root."""
    first = download(ee_emulator, tmp_path, "2024-06-05", "run-20240601T000000Z.json")
    second = download(ee_emulator, tmp_path, "2024-06-10", "run-20240602T000000Z.json")
    third = download(ee_emulator, tmp_path, "2024-06-10", "run-20240603T000000Z.json")
    assert (first["downloaded"], second["downloaded"], second["skipped"]) == (1, 1, 1)
    assert (third["downloaded"], third["skipped"]) == (0, 2)
    return tmp_path


MANIFESTS = "manifests: " + ", ".join(f"data/manifests/run-2024060{d}T000000Z.json" for d in (1, 2, 3))


def test_a_shell_glob_of_runs_into_one_root_stacks_every_image_once(runs: Path) -> None:
    command = f"{shlex.quote(str(EDOWN))} stack -m data/manifests/run-*.json --json"
    done = subprocess.run(["bash", "-c", command], cwd=runs, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)
    assert (result["image_count"], result["appended"]) == (2, 2)
    assert result["shape"] == [2, 2, 931, 1210]
    assert f"{MANIFESTS} (an image in several is taken from the newest)" in done.stderr.splitlines()
    ds = open_stack(runs / "data" / result["output_path"])
    assert [v.split("/")[-1] for v in ds.image_id.values] == [T1, T2]
    assert list(ds.band.values) == ["B4", "B8"]
    assert not np.all(ds.data.isel(time=1).values == ds.data.attrs["_FillValue"])
    newest = json.loads((runs / "data/manifests/run-20240603T000000Z.json").read_text())
    assert [Path(p).name for p in newest["stack"]["manifests"]] == [
        "run-20240601T000000Z.json",
        "run-20240602T000000Z.json",
        "run-20240603T000000Z.json",
    ]


def test_a_manifests_folder_and_latest_name_the_runs_they_used(runs: Path) -> None:
    folder = run_edown("stack", "-m", "data/manifests", "--json", cwd=runs)
    assert folder.returncode == 0, folder.stderr
    assert json.loads(folder.stdout)[0]["image_count"] == 2
    assert f"{MANIFESTS} (an image in several is taken from the newest)" in folder.stderr.splitlines()
    latest = run_edown("stack", "-m", "latest", "--json", cwd=runs)
    assert latest.returncode == 0, latest.stderr
    [again] = json.loads(latest.stdout)
    assert (again["image_count"], again["appended"]) == (2, 0), "the newest run lists both images"
    assert "manifests: data/manifests/run-20240603T000000Z.json" in latest.stderr.splitlines()


def test_latest_without_runs_and_no_manifest_are_bad_input(tmp_path: Path) -> None:
    latest = run_edown("stack", "-m", "latest", "-o", "elsewhere", cwd=tmp_path)
    assert latest.returncode == 2
    assert latest.stderr.splitlines()[0] == (
        "error: manifest_path: latest: no run-*.json manifest in elsewhere/manifests"
    )
    none = run_edown("stack", cwd=tmp_path)
    assert none.returncode == 2
    assert none.stderr.splitlines()[0] == "error: manifest_path: give at least one download manifest"


def test_the_api_stacks_a_folder_and_refuses_manifests_of_two_roots(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    from edown import download_images

    a = download_images(config(ee_emulator, tmp_path, output_root=tmp_path / "a", bands=("B4",)))
    b = download_images(config(ee_emulator, tmp_path, output_root=tmp_path / "b", bands=("B4",)))
    [result] = stack_images(StackConfig(manifest_path=tmp_path / "a" / "manifests"))
    assert result.image_count == 2
    with pytest.raises(StackError, match=r"the manifests come from different output roots"):
        stack_images(StackConfig(manifest_path=a.manifest_path, manifest_paths=(b.manifest_path,)))
    [merged] = stack_images(
        StackConfig(
            manifest_path=a.manifest_path, manifest_paths=(b.manifest_path,), output_root=tmp_path / "c"
        )
    )
    assert merged.image_count == 2 and merged.output_path is not None
    assert merged.output_path.is_relative_to(tmp_path / "c")
