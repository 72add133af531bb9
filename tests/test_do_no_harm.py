"""Do no harm: what edown must never do to a user's files, credentials or machine, whatever the input.

Each test reproduces an attack or an accident (issue 11) and checks the outcome on disk and on the wire.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edown import StackConfig, download_images, search_images, stack_images
from edown.emulator import serve
from edown.emulator.server import Emulator
from edown.errors import OutputLockedError, UnsafePathError
from edown.grid import Window
from edown.manifest import load_manifest, new_manifest, set_search
from edown.outputs import ChunkStore, image_tiff_path, partial_dir
from edown.rootstate import journalled, locked_root
from edown.writer import ChunkSink
from tests.helpers import check_all_exact, config

ROOT = Path(__file__).resolve().parents[1]
EDOWN = str(Path(sys.executable).with_name("edown"))


def edown(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The real entry point in a fresh process (nothing initialised, nothing cached)."""
    return subprocess.run(
        [EDOWN, *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def write_files(base: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# ---- 1: the sweep deletes only what the journal says edown created ---------------------------------------

USER_FILES = {
    "code/.draft.tmp": "draft",
    "code/.git/.COMMIT_EDITMSG.tmp": "message",
    "results.zarr.old-cafebabe/zarr.json": "{}",
    "results.zarr.tmp-0123abcd/zarr.json": "{}",
    "notes/.x.json.k3j_x9.tmp": "x",
}


def test_a_download_never_touches_files_it_did_not_create(ee_emulator: Emulator, tmp_path: Path) -> None:
    root = tmp_path / "V"
    write_files(root, USER_FILES)
    # Look-alikes even inside edown's own folders survive: a name proves nothing.
    inside = {"images/COPERNICUS.S2_SR_HARMONIZED/.mine.tif.tmp": "mine", "manifests/.run.json.ab.tmp": "m"}
    write_files(root, inside)
    summary = download_images(config(ee_emulator, tmp_path, output_root=root, end_date="2024-06-05"))
    check_all_exact(ee_emulator, summary)
    stack_images(StackConfig(manifest_path=summary.manifest_path, chunk_size=256))
    for name, text in {**USER_FILES, **inside}.items():
        assert (root / name).read_text() == text, name


KILLED_MID_WRITE = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from edown.rootstate import journalled, locked_root
    root = Path(sys.argv[1])
    store = root / "stacks" / "C" / "g.zarr.tmp-0123abcd"
    manifest_tmp = root / "manifests" / ".run-1.json.5f3a9c1e.tmp"
    for p in (store, manifest_tmp.parent):
        p.mkdir(parents=True, exist_ok=True)
    with locked_root(root, "a run about to be killed"):
        with journalled(store, "dir"), journalled(manifest_tmp):
            (store / "zarr.json").write_text("{}")
            manifest_tmp.write_text("{half")
            os._exit(9)  # what SIGKILL leaves: journal entries and their temporaries
    """
)


def test_a_killed_runs_journalled_temporaries_are_swept_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_MID_WRITE, str(root)], env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert proc.returncode == 9
    left = [root / "stacks/C/g.zarr.tmp-0123abcd", root / "manifests/.run-1.json.5f3a9c1e.tmp"]
    assert all(p.exists() for p in left)
    assert len(list((root / ".edown" / "journal").iterdir())) == 2
    decoys = {"stacks/C/g.zarr.tmp-89abcdef/zarr.json": "{}", "manifests/.other.json.1.tmp": "u"}
    write_files(root, decoys)
    resume_state = root / "images/C/x.tif.partial/c0_r0_w1_h1.npy"
    resume_state.parent.mkdir(parents=True)
    resume_state.write_bytes(b"chunk")

    with locked_root(root, "the next run"):
        pass

    assert not [p for p in left if p.exists()]
    assert not list((root / ".edown" / "journal").iterdir())
    for name, text in decoys.items():
        assert (root / name).read_text() == text
    assert resume_state.read_bytes() == b"chunk"


def test_a_forged_journal_entry_cannot_name_a_users_file(tmp_path: Path) -> None:
    root = tmp_path / "data"
    with locked_root(root, "first"):
        pass
    victims = {"../outside.tmp": tmp_path / "outside.tmp", "code/.draft.tmp": root / "code/.draft.tmp"}
    for relative, victim in victims.items():
        victim.parent.mkdir(parents=True, exist_ok=True)
        victim.write_text("keep")
        entry = root / ".edown" / "journal" / f"{abs(hash(relative))}.json"
        entry.write_text(json.dumps({"path": relative, "kind": "file"}))
    (root / ".edown" / "journal" / "abs.json").write_text(json.dumps({"path": str(tmp_path / "outside.tmp")}))
    with locked_root(root, "second"):
        pass
    assert all(v.read_text() == "keep" for v in victims.values())


# ---- 2: a manifest does not choose where edown writes -----------------------------------------------------


def test_a_hand_edited_manifest_cannot_send_a_stack_elsewhere(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download_images(config(ee_emulator, tmp_path, end_date="2024-06-05"))
    elsewhere = tmp_path / "elsewhere"
    write_files(elsewhere, {"code/.draft.tmp": "draft", "old.zarr.old-cafebabe/zarr.json": "{}"})
    doc = json.loads(summary.manifest_path.read_text())
    doc["output_root"] = str(elsewhere)
    evil = tmp_path / "evil.json"
    evil.write_text(json.dumps(doc))

    proc = edown("stack", "-m", str(evil))

    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and "edown did not create" in lines[0] and "--output-root" in lines[1], lines
    assert sorted(p.name for p in elsewhere.iterdir()) == ["code", "old.zarr.old-cafebabe"]
    assert (elsewhere / "code/.draft.tmp").read_text() == "draft"
    # The user may name the root themselves.
    proc = edown("stack", "-m", str(evil), "--output-root", str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stderr


def test_a_manifest_in_its_own_root_still_works_after_the_root_moved(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    summary = download_images(config(ee_emulator, tmp_path, end_date="2024-06-05"))
    moved = tmp_path / "moved"
    (tmp_path / "data").rename(moved)
    [result] = stack_images(StackConfig(manifest_path=moved / "manifests" / summary.manifest_path.name))
    assert result.output_path is not None and moved in result.output_path.parents


def test_a_manifest_listing_files_outside_its_root_is_refused(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download_images(config(ee_emulator, tmp_path, end_date="2024-06-05"))
    secret = tmp_path / "secret.tif"
    secret.write_bytes(b"not yours")
    for forged in ("../secret.tif", str(secret), "images/../../secret.tif"):
        doc = json.loads(summary.manifest_path.read_text())
        doc["download"]["results"][0]["tiff_path"] = forged
        summary.manifest_path.write_text(json.dumps(doc))
        proc = edown("stack", "-m", str(summary.manifest_path))
        assert proc.returncode == 2, proc.stderr
        assert "is not under" in proc.stderr and forged in proc.stderr


# ---- 3: never through a symbolic link ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["overwrite", "resume"])
def test_a_symlinked_partial_folder_costs_nothing(ee_emulator: Emulator, tmp_path: Path, mode: str) -> None:
    cfg = config(ee_emulator, tmp_path, end_date="2024-06-05", bands=("B4",))
    record = search_images(cfg).images[0]
    tiff = image_tiff_path(cfg.output_root, record.collection_id, record.system_index, record.grid_label)
    victim = tmp_path / "victim"
    write_files(victim, {"c0_r0_w16_h16.npy": "precious", "thesis.tex": "precious", ".tmp-x.npy": "precious"})
    tiff.parent.mkdir(parents=True)
    if mode == "overwrite":
        download_images(cfg)
        assert tiff.is_file()
        cfg = config(ee_emulator, tmp_path, end_date="2024-06-05", bands=("B4",), overwrite=True)
    partial_dir(tiff).symlink_to(victim, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="is a symbolic link inside edown's output folder"):
        download_images(cfg)
    assert sorted(p.name for p in victim.iterdir()) == [".tmp-x.npy", "c0_r0_w16_h16.npy", "thesis.tex"]
    assert all(p.read_text() == "precious" for p in victim.iterdir())


def test_symlinked_own_folders_are_bad_input(ee_emulator: Emulator, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for folder in (".edown", "manifests", "images"):
        root = tmp_path / f"root-{folder}"
        root.mkdir()
        (root / folder).symlink_to(elsewhere, target_is_directory=True)
        proc = edown("download", *cli_job(ee_emulator), "--output-root", str(root))
        assert proc.returncode == 2, proc.stderr
        assert "symbolic link" in proc.stderr and folder in proc.stderr
    assert list(elsewhere.iterdir()) == []


def cli_job(emu: Emulator | str) -> list[str]:
    """A small S2 job's CLI options, sent to an emulator (or to any server URL)."""
    url = emu if isinstance(emu, str) else emu.url
    dates = ["--start-date", "2024-06-01", "--end-date", "2024-06-05"]
    area = ["--bbox", "-0.60,51.48,-0.43,51.56"]
    return ["-c", "COPERNICUS/S2_SR_HARMONIZED", *dates, *area, "-b", "B4", "--server-url", url]


# ---- 5: a manifest does not choose the endpoint, the project or code to run -----------------------------


@pytest.fixture
def saved_search(ee_emulator: Emulator, tmp_path: Path) -> Path:
    cfg = config(ee_emulator, tmp_path, end_date="2024-06-05", bands=("B4",))
    path = tmp_path / "search.json"
    manifest = new_manifest(path, None)
    set_search(manifest, cfg, search_images(cfg))
    manifest.write()
    return path


def test_a_manifests_server_url_never_receives_requests(
    ee_emulator: Emulator, saved_search: Path, tmp_path: Path
) -> None:
    with serve() as other:
        doc = json.loads(saved_search.read_text())
        doc["search"]["config"]["server_url"] = other.url
        doc["search"]["config"]["project"] = "someone-elses-project"
        saved_search.write_text(json.dumps(doc))
        proc = edown(
            "download",
            "--from-manifest",
            str(saved_search),
            "--output-root",
            str(tmp_path / "out"),
            env={"EDOWN_SERVER_URL": ee_emulator.url},
        )
        assert proc.returncode == 0, proc.stderr
        assert other.stats()["requests"] == {}, other.stats()
        assert "a manifest never chooses where your credentials go" in proc.stderr
        assert other.url not in proc.stderr + proc.stdout  # named by host only
    assert list((tmp_path / "out" / "images").rglob("*.tif"))


def test_a_plugin_named_only_by_a_manifest_never_runs(saved_search: Path, tmp_path: Path) -> None:
    ran = tmp_path / "plugin-ran"
    (tmp_path / "evil_plugin.py").write_text(
        f"from pathlib import Path\nPath({str(ran)!r}).write_text('imported')\ndef run(image, metadata):\n    return image\n"
    )
    doc = json.loads(saved_search.read_text())
    doc["search"]["config"]["transform_plugin"] = "evil_plugin:run"
    saved_search.write_text(json.dumps(doc))
    for extra in ((), ("--dry-run",)):
        proc = edown(
            "download",
            "--from-manifest",
            str(saved_search),
            "--output-root",
            str(tmp_path / "out"),
            *extra,
            env={"PYTHONPATH": str(tmp_path)},
            cwd=tmp_path,
        )
        assert proc.returncode == 2, proc.stderr
        assert "--transform-plugin evil_plugin:run" in proc.stderr
        assert not ran.exists()


# ---- 6: --from-manifest in a fresh process ------------------------------------------------------------


def test_download_from_a_manifest_in_a_fresh_process(
    ee_emulator: Emulator, saved_search: Path, tmp_path: Path
) -> None:
    proc = edown(
        "download",
        "--from-manifest",
        str(saved_search),
        "--server-url",
        ee_emulator.url,
        "--output-root",
        str(tmp_path / "fresh"),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["downloaded"] >= 1 and summary["failed"] == 0
    manifest = load_manifest(Path(summary["manifest_path"]))
    records = {r.record_key: r for r in manifest.search.images} if manifest.search else {}
    from tests.helpers import assert_tiff_exact

    for result in manifest.downloads_in(tmp_path / "fresh"):
        assert result.tiff_path is not None
        assert_tiff_exact(ee_emulator, records[result.record_key], result.tiff_path, result.nodata or 0.0)


# ---- 7: a run refused by the lock has touched nothing -----------------------------------------------------


def test_a_refused_second_run_leaves_the_first_runs_chunks(ee_emulator: Emulator, tmp_path: Path) -> None:
    cfg = config(ee_emulator, tmp_path, end_date="2024-06-05", bands=("B4",))
    record = search_images(cfg).images[0]
    tiff = image_tiff_path(cfg.output_root, record.collection_id, record.system_index, record.grid_label)
    store = partial_dir(tiff)
    store.mkdir(parents=True)
    chunks = {
        "c0_r0_w4_h4.npy": b"a chunk the first run is still writing",
        ".tmp-abc.npy": b"the first run's temporary",
    }
    for name, data in chunks.items():
        (store / name).write_bytes(data)
    with locked_root(cfg.output_root, "the first run"), pytest.raises(OutputLockedError):
        download_images(cfg)
    assert {p.name: p.read_bytes() for p in store.iterdir()} == chunks


# ---- 8: NPY bodies in Fortran order -----------------------------------------------------------------------


def test_decode_honours_fortran_order(tmp_path: Path) -> None:
    window = Window(0, 0, 5, 3)
    values = np.arange(15, dtype=np.uint16).reshape(3, 5)
    structured = np.zeros((3, 5), dtype=[("B4", "<u2")])
    structured["B4"] = values
    for i, array in enumerate((structured, np.asfortranarray(structured))):
        buffer = io.BytesIO()
        np.save(buffer, array)
        sink = ChunkSink(ChunkStore(tmp_path / str(i), tmp_path), window, ("B4",), "uint16", None)
        sink.write(buffer.getvalue())
        decoded = np.load(sink.commit())
        np.testing.assert_array_equal(decoded[0], values)


class _FortranProxy(http.server.BaseHTTPRequestHandler):
    """Forwards to the emulator and re-encodes every NPY answer in Fortran order (valid NPY)."""

    upstream = ""

    def do_GET(self) -> None:
        self._forward(None)

    def do_POST(self) -> None:
        self._forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def _forward(self, body: bytes | None) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        request = urllib.request.Request(self.upstream + self.path, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request) as response:
                status, data, kind = (
                    response.status,
                    response.read(),
                    response.headers.get("Content-Type", ""),
                )
        except urllib.error.HTTPError as err:
            status, data, kind = err.code, err.read(), err.headers.get("Content-Type", "")
        if data.startswith(b"\x93NUMPY"):
            array = np.load(io.BytesIO(data), allow_pickle=False)
            buffer = io.BytesIO()
            np.save(buffer, np.asfortranarray(array))
            data = buffer.getvalue()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fortran_server(ee_emulator: Emulator) -> Iterator[str]:
    handler = type("Handler", (_FortranProxy,), {"upstream": ee_emulator.url.rstrip("/")})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_server_sending_fortran_order_still_gives_exact_pixels(
    ee_emulator: Emulator, fortran_server: str, tmp_path: Path
) -> None:
    cfg = config(ee_emulator, tmp_path, end_date="2024-06-05", server_url=fortran_server, chunk_size=200)
    summary = download_images(cfg)
    check_all_exact(ee_emulator, summary)


# ---- 9: stack opens GeoTIFFs only ---------------------------------------------------------------------


def test_stack_never_lets_gdal_open_a_vrt_dressed_as_tif(ee_emulator: Emulator, tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    summary = download_images(config(ee_emulator, tmp_path, end_date="2024-06-05", bands=("B4",)))
    tif = summary.results[0].tiff_path
    assert tif is not None
    tif.write_text(
        f'<VRTDataset rasterXSize="{1}" rasterYSize="1"><VRTRasterBand dataType="UInt16" band="1">'
        f"<SimpleSource><SourceFilename>/vsicurl/http://127.0.0.1:{port}/x.tif</SourceFilename>"
        "</SimpleSource></VRTRasterBand></VRTDataset>"
    )
    results = stack_images(StackConfig(manifest_path=summary.manifest_path))
    assert any(r.error and "not recognized" in r.error for r in results), results
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


def test_journalled_outside_a_locked_root_records_nothing(tmp_path: Path) -> None:
    with journalled(tmp_path / ".x.tmp") as tmp:
        tmp.write_text("x")
    assert not (tmp_path / ".edown").exists()


# ---- outside review: what a newcomer tried -----------------------------------------------------------------


def test_a_device_or_pipe_given_as_manifest_path_is_refused_and_never_replaced(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    targets = {"pipe": tmp_path / "pipe.json"}
    os.mkfifo(targets["pipe"])
    if os.geteuid() == 0:  # only root can make a device node; as root a rename over /dev/null is the harm
        targets["device"] = tmp_path / "null"
        os.mknod(targets["device"], 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    for kind, target in targets.items():
        for command in ("search", "download"):
            root = ("-o", str(tmp_path / "d")) if command == "download" else ()
            proc = edown(command, *cli_job(ee_emulator), "--manifest-path", str(target), *root)
            assert proc.returncode == 2, (kind, command, proc.stderr)
            assert "not a file edown may replace" in proc.stderr
            mode = target.lstat().st_mode
            assert stat.S_ISFIFO(mode) if kind == "pipe" else stat.S_ISCHR(mode)


def test_a_damaged_manifest_is_one_line_of_bad_input(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download_images(config(ee_emulator, tmp_path, end_date="2024-06-05", bands=("B4",)))
    doc = json.loads(summary.manifest_path.read_text())
    del doc["download"]["results"][0]["image_id"]
    summary.manifest_path.write_text(json.dumps(doc))
    proc = edown("stack", "-m", str(summary.manifest_path))
    assert proc.returncode == 2, proc.stderr
    assert "is damaged (KeyError: missing 'image_id')" in proc.stderr and "report it" not in proc.stderr
    doc = json.loads(summary.manifest_path.read_text())
    doc["schema_version"] = "1"
    summary.manifest_path.write_text(json.dumps(doc))
    proc = edown("stack", "-m", str(summary.manifest_path))
    assert proc.returncode == 2 and "which is not a whole number" in proc.stderr


def test_a_read_only_manifest_folder_is_bad_input_for_download(ee_emulator: Emulator, tmp_path: Path) -> None:
    from tests.helpers import read_only

    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder):
        proc = edown(
            "download",
            *cli_job(ee_emulator),
            "-o",
            str(tmp_path / "d"),
            "--manifest-path",
            str(folder / "x.json"),
        )
    assert proc.returncode == 2, proc.stderr
    assert (
        "manifest folder" in proc.stderr and "not writable" in proc.stderr and "report it" not in proc.stderr
    )


# ---- outside review: what an attacker tried ------------------------------------------------------------


def test_quicklook_replaces_a_planted_link_and_never_writes_through_it(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    summary = download_images(config(ee_emulator, tmp_path, end_date="2024-06-05", bands=("B4",)))
    tif = summary.results[0].tiff_path
    assert tif is not None
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    tif.with_suffix(".png").symlink_to(victim)
    (tmp_path / "link.png").symlink_to(victim)
    assert edown("quicklook", str(tif)).returncode == 0
    assert edown("quicklook", str(tif), "-o", str(tmp_path / "link.png")).returncode == 0
    assert victim.read_text() == "precious"
    for png in (tif.with_suffix(".png"), tmp_path / "link.png"):
        assert not png.is_symlink() and png.read_bytes().startswith(b"\x89PNG")


def test_quicklook_never_lets_gdal_open_a_vrt_dressed_as_tif(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    evil = tmp_path / "evil.tif"
    evil.write_text(
        '<VRTDataset rasterXSize="10" rasterYSize="10"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        f"<SourceFilename>/vsicurl/http://127.0.0.1:{listener.getsockname()[1]}/x.tif</SourceFilename>"
        "</SimpleSource></VRTRasterBand></VRTDataset>"
    )
    proc = edown("quicklook", str(evil), "-o", str(tmp_path / "evil.png"))
    assert proc.returncode == 2 and "is not a GeoTIFF" in proc.stderr, proc.stderr
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


def test_a_manifest_link_in_the_root_is_not_followed_when_stack_records_its_results(
    ee_emulator: Emulator, tmp_path: Path
) -> None:
    summary = download_images(config(ee_emulator, tmp_path, end_date="2024-06-05", bands=("B4",)))
    elsewhere = tmp_path / "elsewhere.json"
    summary.manifest_path.rename(elsewhere)
    summary.manifest_path.symlink_to(elsewhere)
    before = elsewhere.read_bytes()
    proc = edown("stack", "-m", str(summary.manifest_path))
    assert proc.returncode == 0, proc.stderr
    assert elsewhere.read_bytes() == before
    assert not summary.manifest_path.is_symlink() and "stack" in json.loads(summary.manifest_path.read_text())


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(
            lambda d: d["search"]["result"]["alignment_groups"][0].update(width=10**9), id="huge-group"
        ),
        pytest.param(
            lambda d: d["search"]["result"]["alignment_groups"][0].update(band_names=["B4"] * 1000),
            id="many-bands",
        ),
        pytest.param(
            lambda d: [r.update(collection_id="X/Y") for r in d["search"]["result"]["images"]], id="ids"
        ),
        pytest.param(lambda d: d["download"]["results"][0].update(tiff_path="images/a\x00b.tif"), id="nul"),
    ],
)
def test_a_manifest_edited_to_steer_memory_or_keys_is_one_line_of_bad_input(
    ee_emulator: Emulator, tmp_path: Path, edit: Any
) -> None:
    summary = download_images(config(ee_emulator, tmp_path, end_date="2024-06-05", bands=("B4",)))
    doc = json.loads(summary.manifest_path.read_text())
    edit(doc)
    summary.manifest_path.write_text(json.dumps(doc))
    proc = edown("stack", "-m", str(summary.manifest_path))
    assert proc.returncode in (0, 2), proc.stderr
    assert "report it" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 0:  # the edit made the images unknown: nothing was stacked, nothing allocated
        assert "no downloaded images" in proc.stdout + proc.stderr


def test_a_deeply_nested_manifest_is_bad_input(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"schema": "edown.manifest", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    proc = edown("stack", "-m", str(deep))
    assert proc.returncode == 2 and "nested too deeply" in proc.stderr, proc.stderr


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "file:///etc/passwd", "http://:80"])
def test_a_bad_server_url_is_bad_input_everywhere(url: str) -> None:
    for command in (
        ("doctor",),
        ("search", "-c", "C/D", "--start-date", "2024-06-01", "--end-date", "2024-06-02"),
    ):
        proc = (
            edown(*command, "--bbox", "0,0,1,1", "--server-url", url)
            if command[0] == "search"
            else edown(*command, "--server-url", url)
        )
        assert proc.returncode == 2, (command, proc.stderr)
        assert "server_url" in proc.stderr and "report it" not in proc.stderr


# ---- bad servers ----------------------------------------------------------------------------------------


class _RogueServer(http.server.BaseHTTPRequestHandler):
    """Answers every request with a 200 whose body trickles (one byte per 0.2 s) or never ends."""

    protocol_version = "HTTP/1.1"
    mode = "trickle"

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer()

    def _answer(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.mode == "trickle":
            self.send_header("Content-Length", "100000")
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(600):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.2)
        else:
            self.send_header("Connection", "close")
            self.end_headers()
            block = b"[" * (1 << 20)
            with contextlib.suppress(OSError):
                for _ in range(2048):
                    self.wfile.write(block)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize("mode", ["trickle", "endless"])
def test_a_server_that_trickles_or_never_stops_meets_the_deadline_and_the_size_cap(
    tmp_path: Path, mode: str
) -> None:
    handler = type("Handler", (_RogueServer,), {"mode": mode})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    started = time.monotonic()
    proc = edown(
        "download",
        *cli_job(url),
        "--request-timeout-seconds",
        # An endless body must meet the size cap, not the deadline, even on a loaded machine.
        "2" if mode == "trickle" else "40",
        "--max-retries",
        "0",
        "-o",
        str(tmp_path / "d"),
    )
    elapsed = time.monotonic() - started
    server.shutdown()
    assert proc.returncode == 1, proc.stderr
    assert elapsed < 90, elapsed
    expected = "deadline" if mode == "trickle" else "more than 256 MiB"
    assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
