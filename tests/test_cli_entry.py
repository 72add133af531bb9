"""The ``edown`` command as a user meets it in a shell: flags, help, piped output, Ctrl-C, odd paths."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from edown.emulator import EmulatorConfig, Latency, serve
from edown.emulator.server import Emulator
from tests.helpers import EDOWN, S2, run_edown

COMMANDS = ("search", "download", "stack", "demo", "quicklook", "doctor", "auth", "emulator")


def search_args(emu: Emulator, *extra: str) -> list[str]:
    return [
        *("-c", S2, "--start-date", "2024-06-01", "--end-date", "2024-06-10"),
        *("--bbox", "-0.60,51.48,-0.43,51.56", "-b", "B4", "--server-url", emu.url, *extra),
    ]


def test_verbose_is_accepted_after_the_command_too(ee_emulator: Emulator, tmp_path: Path) -> None:
    before = run_edown("-v", "search", *search_args(ee_emulator), cwd=tmp_path)
    after = run_edown("search", *search_args(ee_emulator, "-v"), cwd=tmp_path)
    quiet = run_edown("search", *search_args(ee_emulator), cwd=tmp_path)
    assert before.returncode == after.returncode == quiet.returncode == 0
    assert "DEBUG " in before.stderr and "DEBUG " in after.stderr and "DEBUG " not in quiet.stderr
    bad = run_edown(
        "search", *search_args(ee_emulator, "--start-date", "yesterday", "--verbose"), cwd=tmp_path
    )
    assert bad.returncode == 2 and "Traceback" in bad.stderr
    assert "error: start_date: 'yesterday' is not a date" in bad.stderr.splitlines()


def test_after_verbose_the_hint_no_longer_asks_for_verbose(tmp_path: Path) -> None:
    # A real bug, simulated: reading a manifest raises what no edown error covers (every bad manifest is
    # bad input now, so the crash is planted through sitecustomize in the child process only).
    (tmp_path / "sitecustomize.py").write_text(
        "import edown.manifest\n"
        "def _bug(*args, **kwargs):\n"
        "    raise RuntimeError('simulated bug')\n"
        "edown.manifest.load_manifest = _bug\n"
    )
    bug = {"PYTHONPATH": str(tmp_path)}
    broken = tmp_path / "run.json"
    broken.write_text("{}")
    plain = run_edown("stack", "-m", str(broken), cwd=tmp_path, env=bug)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr and "simulated bug" in plain.stderr
    assert plain.stderr.splitlines()[-1] == "hint: run with --verbose for the traceback and report it"
    for argv in (["stack", "-m", str(broken), "-v"], ["-v", "stack", "-m", str(broken)]):
        verbose = run_edown(*argv, cwd=tmp_path, env=bug)
        assert verbose.returncode == 1 and "Traceback" in verbose.stderr
        assert verbose.stderr.splitlines()[-1] == "hint: please report it with the traceback above"


def test_help_texts_show_no_restructuredtext_literals(tmp_path: Path) -> None:
    for argv in ([], *([command] for command in COMMANDS)):
        shown = run_edown(*argv, "--help", cwd=tmp_path)
        assert shown.returncode == 0 and "Usage: edown" in shown.stdout
        assert "``" not in shown.stdout and ":func:" not in shown.stdout, (argv, shown.stdout)
    assert "Same as edown doctor" in run_edown("auth", "--help", cwd=tmp_path).stdout


def test_piped_output_is_neither_wrapped_at_80_columns_nor_padded(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    manifest = tmp_path / (
        "a-search-manifest-with-a-name-long-enough-to-pass-eighty-columns" + "-x" * 10 + ".json"
    )
    done = run_edown("search", *search_args(ee_emulator, "--manifest-path", str(manifest)), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"manifest: {manifest}" in done.stderr.splitlines(), "one line, however long"
    lines = done.stdout.splitlines()
    assert lines[0] == "COPERNICUS/S2_SR_HARMONIZED: 2 image record(s), 1 alignment group(s)"
    table = [line for line in lines if "20240603T104058_20240603T104237_T30UXC" in line]
    assert len(table) == 1 and 80 < len(table[0]) < 200, "a table row is whole, as wide as its content"
    assert [line for line in lines if line != line.rstrip()] == [], "no padding with spaces"


def test_ctrl_c_leaves_a_manifest_whose_state_is_interrupted(tmp_path: Path) -> None:
    with serve(EmulatorConfig(latency=Latency(base_seconds=0.3))) as emu:
        proc = subprocess.Popen(
            [
                str(EDOWN),
                "download",
                *search_args(
                    emu, "-b", "B8", "-o", "data", "--chunk-size", "128", "--chunk-size-mode", "fixed"
                ),
                *("--max-inflight-chunks", "2"),
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(tmp_path.glob("data/images/*/*.partial/c*.npy")):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "error: interrupted" in err.splitlines()
    [manifest] = tmp_path.glob("data/manifests/run-*.json")
    section = json.loads(manifest.read_text())["download"]
    assert section["state"] == "interrupted" and section["finished_utc"] is not None
    assert {r["status"] for r in section["results"]} >= {"failed"}
    assert any(
        r["error"] == "interrupted before completion (run again to resume)" for r in section["results"]
    )


def test_a_device_or_folder_as_a_manifest_says_what_it_is(tmp_path: Path) -> None:
    stack = run_edown("stack", "-m", "/dev/null", cwd=tmp_path)
    assert stack.returncode == 2
    assert stack.stderr.splitlines()[0] == (
        "error: manifest_path: /dev/null is a character device, not a manifest file"
    )
    download = run_edown("download", "--from-manifest", "/dev/null", cwd=tmp_path)
    assert download.returncode == 2
    assert download.stderr.splitlines()[0] == (
        "error: --from-manifest: /dev/null is a character device, not a manifest file"
    )
    (tmp_path / "saved").mkdir()
    for path, what in (("saved", "is a folder, not a manifest file"), ("nope.json", "does not exist")):
        done = run_edown("download", "--from-manifest", path, cwd=tmp_path)
        assert done.returncode == 2
        assert done.stderr.splitlines()[0] == f"error: --from-manifest: {path} {what}"
