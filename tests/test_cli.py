"""The command line: options named after config fields, --json everywhere, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edown.cli import cli
from edown.emulator.server import Emulator

AREA = ["--bbox", "-0.60,51.48,-0.43,51.56"]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def base(emu: Emulator, *extra: str) -> list[str]:
    return [
        "-c",
        "COPERNICUS/S2_SR_HARMONIZED",
        "--start-date",
        "2024-06-01",
        "--end-date",
        "2024-06-10",
        *AREA,
        "-b",
        "B4",
        "-b",
        "B8",
        "--server-url",
        emu.url,
        *extra,
    ]


def test_search_json_and_manifest(ee_emulator: Emulator, tmp_path: Path) -> None:
    code, out, _ = run("search", *base(ee_emulator, "--json", "--manifest-path", str(tmp_path / "s.json")))
    assert code == 0
    doc = json.loads(out)
    assert doc["collection_id"] == "COPERNICUS/S2_SR_HARMONIZED" and len(doc["images"]) == 2
    assert doc["images"][0]["output_dtype"] == "uint16"
    assert json.loads((tmp_path / "s.json").read_text())["schema"] == "edown.manifest"


def test_search_table_lists_images(ee_emulator: Emulator) -> None:
    code, out, _ = run("search", *base(ee_emulator))
    assert code == 0
    assert "20240603T104058_20240603T104237_T30UXC" in out and "EPSG:32630" in out and "1210x931" in out


def test_download_then_stack_json_and_exit_codes(ee_emulator: Emulator, tmp_path: Path) -> None:
    root = tmp_path / "data"
    code, out, _ = run("download", *base(ee_emulator, "-o", str(root), "--json"))
    assert code == 0
    summary = json.loads(out)
    assert summary["downloaded"] == 2 and summary["failed"] == 0
    code, out, _ = run("stack", "-m", summary["manifest_path"], "--json")
    assert code == 0
    [stack] = json.loads(out)
    assert stack["image_count"] == 2 and stack["output_path"].endswith(".zarr")
    code, out, _ = run("download", *base(ee_emulator, "-o", str(root), "--dry-run", "--json"))
    assert code == 0 and json.loads(out)["dry_run"] is True


def test_download_from_a_search_manifest(ee_emulator: Emulator, tmp_path: Path) -> None:
    saved = tmp_path / "search.json"
    assert run("search", *base(ee_emulator, "--manifest-path", str(saved), "--json"))[0] == 0
    # The endpoint is the user's to give (flag or $EDOWN_SERVER_URL), never the manifest's.
    code, out, _ = run(
        "download",
        "--from-manifest",
        str(saved),
        "--server-url",
        ee_emulator.url,
        "-o",
        str(tmp_path / "d"),
        "--json",
    )
    assert code == 0 and json.loads(out)["downloaded"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--start-date", "2024-06-30", "--end-date", "2024-06-01"],
            "error: end_date: 2024-06-01 is before start_date 2024-06-30",
        ),
        (["--start-date", "yesterday"], "error: start_date: 'yesterday' is not a date"),
        (["--bbox", "1,2,3"], "error: bbox: expected four numbers xmin,ymin,xmax,ymax, got 3"),
        (["--bbox", "a,b,c,d"], "error: bbox: 'a,b,c,d' is not four numbers"),
        (["--rename-map", "{oops"], "error: rename_map: not valid JSON"),
        (["--scale-map", "[1]"], "error: scale_map: expected a mapping, got list"),
        (["--band-include", "B["], "error: band_include: bad regular expression 'B['"),
        (
            ["--transform-plugin", "nope_module_xyz:f"],
            "error: transform_plugin: cannot import module 'nope_module_xyz'",
        ),
    ],
)
def test_bad_input_is_one_red_line_and_exit_2(ee_emulator: Emulator, args: list[str], message: str) -> None:
    argv = base(ee_emulator)
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    code, out, err = run("search", *argv)
    assert code == 2, (out, err)
    assert err.splitlines()[0].startswith(message), err
    assert "Traceback" not in err and len(err.splitlines()) <= 3


def test_unknown_collection_and_no_images_and_unreachable_server(ee_emulator: Emulator) -> None:
    argv = base(ee_emulator)
    argv[argv.index("-c") + 1] = "COPERNICUS/NOPE"
    code, _, err = run("search", *argv)
    assert code == 2 and err.startswith(
        "error: collection_id: 'COPERNICUS/NOPE' was not found in Earth Engine"
    )
    code, _, err = run("search", *base(ee_emulator, "--filter", "CLOUDY_PIXEL_PERCENTAGE < 0"))
    assert code == 1 and err.startswith("error: no images in COPERNICUS/S2_SR_HARMONIZED")
    argv = base(ee_emulator)
    argv[argv.index("--server-url") + 1] = "http://127.0.0.1:9"
    code, _, err = run("search", *argv)
    assert code == 1 and err.startswith("error: cannot reach Earth Engine at http://127.0.0.1:9")


def test_stack_of_a_manifest_that_does_not_exist(tmp_path: Path) -> None:
    code, _, err = run("stack", "-m", str(tmp_path / "missing.json"))
    assert code == 2 and err.startswith("error: manifest_path: ") and "does not exist" in err


def test_doctor_reports_without_secrets(ee_emulator: Emulator) -> None:
    code, out, _ = run("doctor", "--server-url", ee_emulator.url, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True
    assert report["credentials"] == "none (local emulator)" and report["project"] == "edown-emulator"
    assert report["endpoint"].startswith("answers")


def test_every_command_has_help_with_examples() -> None:
    for command in ("search", "download", "stack", "emulator", "demo", "quicklook", "doctor"):
        code, out, _ = run(command, "--help")
        assert code == 0 and "--help" in out
        if command in ("search", "download", "stack", "emulator", "quicklook"):
            assert "Example" in out, command
    code, out, _ = run("download", "--help")
    for option in (
        "--collection-id",
        "--start-date",
        "--end-date",
        "--bbox",
        "--geojson",
        "--band",
        "--band-include",
        "--band-exclude",
        "--rename-map",
        "--scale-map",
        "--transform-plugin",
        "--server-url",
        "--output-root",
        "--manifest-path",
        "--chunk-size",
        "--chunk-size-mode",
        "--prepare-workers",
        "--download-workers",
        "--max-inflight-chunks",
        "--max-retries",
        "--retry-delay-seconds",
        "--request-byte-limit",
        "--overwrite",
        "--resume",
        "--nodata",
        "--dry-run",
        "--json",
    ):
        assert option in out, option
