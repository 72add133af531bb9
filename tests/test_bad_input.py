"""Every bad input gets one clear line on the command line and a typed exception in the API.

The table below is the one in docs/reliability.md ("Bad input"): keep them together.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edown import (
    AOI,
    CollectionNotFoundError,
    ConfigError,
    DownloadConfig,
    EarthEngineError,
    ManifestError,
    SearchConfig,
    StackConfig,
    StackError,
    download_images,
    search_images,
    stack_images,
)
from edown.cli import cli
from edown.emulator import EmulatorConfig, serve
from edown.emulator.server import Emulator

AREA = "-0.60,51.48,-0.43,51.56"


def cli_error(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr
    return result.exit_code, lines[0] if lines else ""


def search_args(emu: Emulator, **over: str) -> list[str]:
    opts = {
        "-c": "COPERNICUS/S2_SR_HARMONIZED",
        "--start-date": "2024-06-01",
        "--end-date": "2024-06-10",
        "--bbox": AREA,
        "-b": "B4",
        "--server-url": emu.url,
    }
    opts.update(over)
    args: list[str] = []
    for flag, value in opts.items():
        if value:
            args += [flag, value]
    return ["search", *args]


def api_config(emu: Emulator, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "collection_id": "COPERNICUS/S2_SR_HARMONIZED",
        "start_date": "2024-06-01",
        "end_date": "2024-06-10",
        "aoi": AOI.from_bbox((-0.60, 51.48, -0.43, 51.56)),
        "bands": ("B4",),
        "server_url": emu.url,
    }
    base.update(over)
    return base


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "raising_plugin.py").write_text(
        textwrap.dedent(
            """
        def boom(image, metadata, config):
            raise RuntimeError("cloud mask failed")
        """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


# (case, CLI overrides, CLI exit code, CLI first line, API call, API exception, API message)
SEARCH_CASES: list[tuple[str, dict[str, str], int, str, dict[str, Any], type[Exception], str]] = [
    (
        "bad date",
        {"--start-date": "2024-02-30"},
        2,
        "error: start_date: '2024-02-30' is not a valid date",
        {"start_date": "2024-02-30"},
        ConfigError,
        r"start_date: '2024-02-30' is not a valid date",
    ),
    (
        "reversed dates",
        {"--start-date": "2024-06-10", "--end-date": "2024-06-01"},
        2,
        "error: end_date: 2024-06-01 is before start_date 2024-06-10",
        {"start_date": "2024-06-10", "end_date": "2024-06-01"},
        ConfigError,
        r"end_date: 2024-06-01 is before start_date 2024-06-10",
    ),
    (
        "bbox out of range",
        {"--bbox": "-0.6,51.4,0.4,95"},
        2,
        "error: bbox: ymax=95 is outside [-90, 90]",
        {},
        ConfigError,
        "",
    ),
    (
        "bbox inverted",
        {"--bbox": "0.4,51.5,-0.6,51.4"},
        2,
        "error: bbox: inverted or empty box (0.4,51.5,-0.6,51.4)",
        {},
        ConfigError,
        "",
    ),
    (
        "bbox across the antimeridian",
        {"--bbox": "170,-20,-170,-10"},
        2,
        "error: bbox: xmin=170 > xmax=-170: a box across the antimeridian (180°) cannot be one bbox",
        {},
        ConfigError,
        "",
    ),
    (
        "unknown collection",
        {"-c": "COPERNICUS/S2_NOPE"},
        2,
        "error: collection_id: 'COPERNICUS/S2_NOPE' was not found in Earth Engine",
        {"collection_id": "COPERNICUS/S2_NOPE"},
        CollectionNotFoundError,
        r"collection_id: 'COPERNICUS/S2_NOPE' was not found",
    ),
    (
        "no matching bands",
        {"-b": "B99"},
        2,
        "error: bands: B99 is not a band of any image found; available: B1, B2",
        {"bands": ("B99",)},
        ConfigError,
        r"bands: B99 is not a band of any image found; available: B1, B2",
    ),
    (
        "bad regex",
        {"-b": "", "--band-include": "B(4"},
        2,
        "error: band_include: bad regular expression 'B(4'",
        {"bands": (), "band_include": ("B(4",)},
        ConfigError,
        r"band_include: bad regular expression 'B\(4'",
    ),
    (
        "bad rename JSON",
        {"--rename-map": "{B4: red}"},
        2,
        "error: rename_map: not valid JSON",
        {"rename_map": "{B4: red}"},
        ConfigError,
        r"rename_map: not valid JSON",
    ),
    (
        "bad scale JSON",
        {"--scale-map": '{"B4": "x"}'},
        2,
        "error: scale_map: factor for 'B4' must be a finite number",
        {"scale_map": '{"B4": "x"}'},
        ConfigError,
        r"scale_map: factor for 'B4' must be a finite number",
    ),
    *[
        (
            f"filter operator {op}",
            {"--filter": f"CLOUDY_PIXEL_PERCENTAGE {op} 20"},
            2,
            f"error: property_filters: 'CLOUDY_PIXEL_PERCENTAGE {op} 20': '{op}' is not an operator"
            f" (did you mean '{meant}'?)",
            {"property_filters": (f"CLOUDY_PIXEL_PERCENTAGE {op} 20",)},
            ConfigError,
            rf"property_filters: .* is not an operator \(did you mean '{meant}'\?\)",
        )
        for op, meant in (("=>", ">="), ("=<", "<="), ("=!", "!="), ("<>", "!="), ("≥", ">="))
    ],
    (
        "filter value starting with an operator",
        {"--filter": "CLOUDY_PIXEL_PERCENTAGE = > 20"},
        2,
        "error: property_filters: 'CLOUDY_PIXEL_PERCENTAGE = > 20': the value '> 20' starts with an operator",
        {},
        ConfigError,
        "",
    ),
    (
        "filter on a property no image has",
        {"--filter": "CLOUDY_PERCENTAGE < 20"},
        2,
        "error: property_filters: no image of COPERNICUS/S2_SR_HARMONIZED in these dates and AOI has "
        "'CLOUDY_PERCENTAGE' (did you mean 'CLOUDY_PIXEL_PERCENTAGE'?); they have: CLOUDY_PIXEL_PERCENTAGE, "
        "CLOUD_COVERAGE_ASSESSMENT, DATASTRIP_ID,",
        {"property_filters": ("CLOUDY_PERCENTAGE < 20",)},
        ConfigError,
        r"property_filters: no image of .* has 'CLOUDY_PERCENTAGE'",
    ),
    (
        "plugin not importable",
        {"--transform-plugin": "nowhere_xyz:fn"},
        2,
        "error: transform_plugin: cannot import module 'nowhere_xyz'",
        {"transform_plugin": "nowhere_xyz:fn"},
        ConfigError,
        r"transform_plugin: cannot import module 'nowhere_xyz'",
    ),
    (
        "plugin raising",
        {"--transform-plugin": "raising_plugin:boom"},
        2,
        "error: transform_plugin: raising_plugin:boom raised RuntimeError: cloud mask failed",
        {"transform_plugin": "raising_plugin:boom"},
        ConfigError,
        r"transform_plugin: raising_plugin:boom raised RuntimeError: cloud mask failed",
    ),
]


@pytest.mark.parametrize(
    ("case", "cli_over", "code", "line", "api_over", "exc", "message"),
    SEARCH_CASES,
    ids=[c[0] for c in SEARCH_CASES],
)
def test_search_input(
    ee_emulator: Emulator,
    plugin_dir: Path,
    case: str,
    cli_over: dict[str, str],
    code: int,
    line: str,
    api_over: dict[str, Any],
    exc: type[Exception],
    message: str,
) -> None:
    got_code, got_line = cli_error(*search_args(ee_emulator, **cli_over))
    assert (got_code, got_line[: len(line)]) == (code, line)
    if message:
        with pytest.raises(exc, match=message):
            search_images(SearchConfig(**api_config(ee_emulator, **api_over)))


@pytest.mark.parametrize(
    ("geojson", "line"),
    [
        ("{not json", "error: geojson: not valid JSON"),
        (
            json.dumps({"type": "FeatureCollection", "features": []}),
            "error: geojson: the FeatureCollection has no features",
        ),
        (
            json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}),
            "error: geojson: invalid geometry: Self-intersection",
        ),
        (
            json.dumps(
                {
                    "type": "Polygon",
                    "coordinates": [[[i * 1e-6, 0] for i in range(120_000)] + [[0, 1], [0, 0]]],
                }
            ),
            "error: geojson: 120002 vertices is too many for an Earth Engine request",
        ),
        (
            json.dumps({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}),
            "error: geojson: geometry type LineString is not an area",
        ),
    ],
    ids=["invalid", "empty", "self-intersecting", "huge", "not an area"],
)
def test_geojson_input(ee_emulator: Emulator, tmp_path: Path, geojson: str, line: str) -> None:
    path = tmp_path / "aoi.geojson"
    path.write_text(geojson)
    code, first = cli_error(*search_args(ee_emulator, **{"--bbox": "", "--geojson": str(path)}))
    assert code == 2 and first.startswith(line)
    with pytest.raises(ConfigError, match=re.escape(line.removeprefix("error: "))):
        AOI.from_geojson(path)


def test_chunk_size_too_large_for_the_byte_limit(ee_emulator: Emulator, tmp_path: Path) -> None:
    args = search_args(ee_emulator)
    args[0] = "download"
    code, line = cli_error(*args, "-o", str(tmp_path), "--chunk-size", "8000", "--chunk-size-mode", "fixed")
    assert code == 2 and line.startswith(
        "error: chunk_size: 8000x8000 px of 1 band(s) x 2 byte(s) is 192000000 bytes"
    )
    with pytest.raises(ConfigError, match=r"chunk_size: 8000x8000 px"):
        download_images(
            DownloadConfig(
                **api_config(ee_emulator), output_root=tmp_path, chunk_size=8000, chunk_size_mode="fixed"
            )
        )


def test_unreachable_server(tmp_path: Path) -> None:
    code, line = cli_error(
        "search",
        "-c",
        "COPERNICUS/S2_SR_HARMONIZED",
        "--start-date",
        "2024-06-01",
        "--end-date",
        "2024-06-02",
        "--bbox",
        AREA,
        "--server-url",
        "http://127.0.0.1:9",
    )
    assert code == 1 and line.startswith("error: cannot reach Earth Engine at http://127.0.0.1:9")
    with pytest.raises(EarthEngineError, match=re.escape("cannot reach Earth Engine at http://127.0.0.1:9")):
        search_images(
            SearchConfig(
                "COPERNICUS/S2_SR_HARMONIZED",
                "2024-06-01",
                "2024-06-02",
                AOI.from_bbox((-0.6, 51.48, -0.43, 51.56)),
                server_url="http://127.0.0.1:9",
            )
        )


def test_wrong_project() -> None:
    with serve(EmulatorConfig(allowed_projects=("right-project",))) as emu:
        code, line = cli_error(*search_args(emu), "--project", "wrong-project")
        assert code == 1 and "Caller does not have required permission to use project wrong-project" in line
        with pytest.raises(EarthEngineError, match="permission to use project wrong-project") as info:
            search_images(SearchConfig(**api_config(emu), project="wrong-project"))
        assert info.value.status == 403


MANIFEST_CASES: list[tuple[str, Callable[[Path], Path], type[Exception], str]] = [
    (
        "unknown schema version",
        lambda d: _write(d / "m.json", {"schema": "edown.manifest", "schema_version": 7}),
        ManifestError,
        "has schema_version 7; this edown reads version 1",
    ),
    (
        "another tool's manifest",
        lambda d: _write(d / "m.json", {"schema_version": 1, "config": {}, "search": {}}),
        ManifestError,
        "is not an edown manifest",
    ),
    ("not JSON", lambda d: _text(d / "m.json", "{oops"), ManifestError, "is not valid JSON"),
    (
        "no downloads",
        lambda d: _write(
            d / "m.json",
            {
                "schema": "edown.manifest",
                "schema_version": 1,
                "search": {"config": {}, "result": {"collection_id": "X", "images": []}},
            },
        ),
        StackError,
        "records no downloads",
    ),
]


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))
    return path


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("case", "make", "exc", "message"), MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES]
)
def test_manifest_input(
    tmp_path: Path, case: str, make: Callable[[Path], Path], exc: type[Exception], message: str
) -> None:
    path = make(tmp_path)
    code, line = cli_error("stack", "-m", str(path))
    assert code == 2 and line.startswith("error: manifest_path: ") and message in line
    with pytest.raises(exc, match=re.escape(message)):
        stack_images(StackConfig(manifest_path=path))


@pytest.mark.parametrize(
    ("option", "value", "field", "bound"),
    [
        ("--max-requests-per-second", "nan", "max_requests_per_second", "> 0"),
        ("--max-requests-per-second", "inf", "max_requests_per_second", "> 0"),
        ("--retry-delay-seconds", "nan", "retry_delay_seconds", ">= 0"),
        ("--request-timeout-seconds", "inf", "request_timeout_seconds", "> 0"),
    ],
)
def test_not_a_finite_number_is_one_line_before_anything_runs(
    ee_emulator: Emulator, tmp_path: Path, option: str, value: str, field: str, bound: str
) -> None:
    # NaN and infinity passed the "> 0" checks and failed after the download (a manifest cannot hold
    # NaN) or inside ee's initialisation (an infinite deadline), as "report it".
    args = search_args(ee_emulator)[1:]
    code, line = cli_error("download", *args, "-o", str(tmp_path / "out"), option, value)
    assert (code, line) == (2, f"error: {field}: must be a finite number {bound}, got {float(value)!r}")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=f"{field}: must be a finite number"):
        DownloadConfig(**api_config(ee_emulator), **{field: float(value)})
