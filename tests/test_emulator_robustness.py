"""The emulator is a product feature: hostile or careless clients must not knock it over.

Each test here is an attack from issue 11 (finding 10) or a newcomer wall from issue 12, run against a real
emulator over real sockets: oversized and malformed bodies, slowloris connections, expressions whose work
doubles per level, remote control calls, a busy port, and the documented initialise call on a machine
with no stored credentials.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ee
import numpy as np
import pytest

from edown.emulator import EmulatorConfig, Limits, serve
from edown.emulator.server import Emulator

MiB = 1024 * 1024


def _raw_request(
    url: str, head: bytes, body: bytes = b"", timeout: float = 5.0
) -> tuple[int, dict[str, Any]]:
    """Send hand-made request bytes and return the status and JSON body of the answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        header, _, rest = data.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        length = int(re.search(rb"Content-Length: (\d+)", header).group(1))  # type: ignore[union-attr]
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, json.loads(rest)


def _post_head(path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: localhost", "Content-Type: application/json"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _compute(url: str, expression: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"expression": expression}).encode()
    head = _post_head("/v1/projects/edown-tests/value:compute", Content_Length=str(len(body)))
    return _raw_request(url, head, body, timeout=60)


# ---- request bodies ----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_2_gib_body_is_refused_413_naming_the_cap_before_it_is_read(ee_emulator: Emulator) -> None:
    """Failed before: the handler read the whole declared body into memory (the test timed out)."""
    head = _post_head("/v1/projects/edown-tests/value:compute", Content_Length=str(2 * 1024 * MiB))
    status, body = _raw_request(ee_emulator.url, head, b'{"expression": ')
    assert status == 413
    cap = ee_emulator.config.max_body_bytes
    assert body["error"]["code"] == 413
    assert f"{cap} bytes" in body["error"]["message"] and "max_body_bytes" in body["error"]["message"]


@pytest.mark.timeout(30)
def test_the_body_cap_is_configurable_and_a_body_under_it_still_works() -> None:
    with serve(EmulatorConfig(max_body_bytes=1000)) as emu:
        small = {"result": "0", "values": {"0": {"constantValue": 7}}}
        assert _compute(emu.url, small) == (200, {"result": 7})
        big = {"result": "0", "values": {"0": {"constantValue": "x" * 2000}}}
        status, body = _compute(emu.url, big)
        assert status == 413 and "1000 bytes" in body["error"]["message"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("length", ["abc", "-5", "12, 13", "1e3"])
def test_an_invalid_content_length_is_a_400_not_a_traceback(ee_emulator: Emulator, length: str) -> None:
    """Failed before: ``int("abc")`` raised in the handler thread and the connection died without an answer."""
    status, body = _raw_request(
        ee_emulator.url, _post_head("/v1/projects/p/value:compute", Content_Length=length)
    )
    assert status == 400
    assert "Content-Length" in body["error"]["message"]


@pytest.mark.timeout(30)
def test_a_chunked_body_without_content_length_is_a_400(ee_emulator: Emulator) -> None:
    """Failed before: the body was silently ignored and the chunk bytes were parsed as the next request."""
    head = _post_head("/v1/projects/p/value:compute", Transfer_Encoding="chunked")
    status, body = _raw_request(ee_emulator.url, head, b"2\r\n{}\r\n0\r\n\r\n")
    assert status == 400
    assert "Content-Length" in body["error"]["message"]


# ---- connections -----------------------------------------------------------------------------------------


def _wait_for(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def _closed_by_peer(sock: socket.socket, seconds: float) -> bool:
    """True when the server ends the connection (EOF or reset) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


@pytest.mark.timeout(60)
def test_slowloris_connections_are_capped_and_time_out() -> None:
    """Failed before: every connection got a thread forever (600 dribbling connections were all held)."""
    config = EmulatorConfig(max_connections=8, idle_timeout_seconds=0.8, header_timeout_seconds=0.8)
    with serve(config) as emu:
        host, port = emu.url.removeprefix("http://").rsplit(":", 1)
        socks = []
        try:
            for _ in range(20):
                s = socket.create_connection((host, int(port)), timeout=5)
                s.sendall(b"POST /v1/projects/p/value:compute HTTP/1.1\r\nHost: x\r\n")  # never finished
                socks.append(s)
            assert _wait_for(lambda: emu.open_connections() == 8, 3), emu.open_connections()
            time.sleep(0.2)
            assert emu.open_connections() == 8  # held at the cap, never more
            # Every connection is ended by the server: the extra ones at once, the held ones on timeout.
            assert all(_closed_by_peer(s, 5) for s in socks)
            assert _wait_for(lambda: emu.open_connections() == 0, 3), emu.open_connections()
            with urllib.request.urlopen(emu.url + "/_emulator/health", timeout=5) as resp:
                assert json.load(resp) == {"ok": True}
        finally:
            for s in socks:
                s.close()


@pytest.mark.timeout(60)
def test_a_dribbled_header_is_cut_at_the_header_deadline_not_per_byte() -> None:
    """A byte every 0.1 s defeats a per-read timeout; the header deadline counts from the first byte."""
    with serve(EmulatorConfig(idle_timeout_seconds=5, header_timeout_seconds=0.6)) as emu:
        host, port = emu.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            started = time.monotonic()
            closed = False
            for byte in b"GET /_emulator/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
                try:
                    s.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                time.sleep(0.1)
                if time.monotonic() - started > 4:
                    break
            assert closed or _closed_by_peer(s, 1)
            assert time.monotonic() - started < 4


@pytest.mark.timeout(60)
def test_a_body_that_stops_arriving_times_out_with_408() -> None:
    with serve(EmulatorConfig(body_timeout_seconds=0.5)) as emu:
        head = _post_head("/v1/projects/p/value:compute", Content_Length="100")
        started = time.monotonic()
        status, body = _raw_request(emu.url, head, b'{"expr')
        assert status == 408 and "0.5 s" in body["error"]["message"]
        assert time.monotonic() - started < 4
        assert _wait_for(lambda: emu.open_connections() == 0, 3)


# ---- evaluation budget -------------------------------------------------------------------------------------


def _doubling_merge(levels: int) -> dict[str, Any]:
    """``c = c.merge(c)`` ``levels`` times: the expression grows by one line, the collection doubles."""
    values: dict[str, Any] = {
        "0": {
            "functionInvocationValue": {
                "functionName": "ImageCollection.fromImages",
                "arguments": {
                    "images": {
                        "arrayValue": {
                            "values": [
                                {
                                    "functionInvocationValue": {
                                        "functionName": "Image.constant",
                                        "arguments": {"value": {"constantValue": 1}},
                                    }
                                }
                            ]
                        }
                    }
                },
            }
        }
    }
    for i in range(1, levels + 1):
        prev = {"valueReference": str(i - 1)}
        values[str(i)] = {
            "functionInvocationValue": {
                "functionName": "Collection.merge",
                "arguments": {"collection1": prev, "collection2": prev},
            }
        }
    values["size"] = {
        "functionInvocationValue": {
            "functionName": "Collection.size",
            "arguments": {"collection": {"valueReference": str(levels)}},
        }
    }
    return {"result": "size", "values": values}


@pytest.mark.timeout(60)
def test_an_expression_that_doubles_its_data_per_level_fails_fast_in_bounded_memory(
    ee_emulator: Emulator,
) -> None:
    """Failed before: 45 levels (2^45 images) ran until killed; 2 KB of JSON took gigabytes."""
    expression = _doubling_merge(45)
    assert len(json.dumps(expression, separators=(",", ":"))) < 8000
    tracemalloc.start()
    try:
        started = time.monotonic()
        status, body = _compute(ee_emulator.url, expression)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 400
    limit = ee_emulator.config.limits.max_evaluation_nodes
    assert f"{limit}" in body["error"]["message"] and "max_evaluation_nodes" in body["error"]["message"]
    assert elapsed < 20
    assert peak < 300 * MiB, peak
    # The same server still answers.
    assert _compute(ee_emulator.url, _doubling_merge(3)) == (200, {"result": 8})


def _doubling_numbers(levels: int) -> dict[str, Any]:
    """Inside a mapped function, ``n = n + n`` per level: shared subtrees, evaluated once each by EE."""
    body: dict[str, Any] = {"n0": {"argumentReference": "x"}}
    for i in range(1, levels + 1):
        prev = {"valueReference": f"n{i - 1}"}
        body[f"n{i}"] = {
            "functionInvocationValue": {
                "functionName": "Number.add",
                "arguments": {"left": prev, "right": prev},
            }
        }
    values: dict[str, Any] = dict(body)
    values["fn"] = {"functionDefinitionValue": {"argumentNames": ["x"], "body": f"n{levels}"}}
    values["call"] = {
        "functionInvocationValue": {"functionReference": "fn", "arguments": {"x": {"constantValue": 3}}}
    }
    return {"result": "call", "values": values}


@pytest.mark.timeout(60)
def test_shared_subexpressions_inside_a_function_are_evaluated_once(ee_emulator: Emulator) -> None:
    """Failed before: references inside a function body were re-evaluated per use, 2^60 additions."""
    started = time.monotonic()
    status, body = _compute(ee_emulator.url, _doubling_numbers(60))
    assert (status, body) == (200, {"result": 3 * 2**60})
    assert time.monotonic() - started < 10


@pytest.mark.timeout(120)
def test_shared_image_subexpressions_are_rendered_once_and_exactly(ee_emulator_session: Emulator) -> None:
    """Failed before: each band re-evaluated both operands of every level, 2^40 rasters for 40 levels."""
    img = ee.Image.constant(5.5).toFloat()
    y = img
    for _ in range(40):
        y = y.add(y).multiply(0.5)
    started = time.monotonic()
    out = ee.data.computePixels(
        {
            "expression": y,
            "fileFormat": "NUMPY_NDARRAY",
            "grid": {
                "dimensions": {"width": 64, "height": 32},
                "affineTransform": {"scaleX": 0.01, "translateX": 10, "scaleY": -0.01, "translateY": 50},
                "crsCode": "EPSG:4326",
            },
        }
    )
    assert time.monotonic() - started < 20
    values = out[out.dtype.names[0]]
    assert values.shape == (32, 64) and values.dtype == np.float64
    assert np.all(values == 5.5)


@pytest.mark.timeout(60)
def test_the_node_and_time_budgets_are_configurable_and_named() -> None:
    with serve(EmulatorConfig(limits=Limits(max_evaluation_nodes=50))) as emu:
        status, body = _compute(emu.url, _doubling_merge(10))
        assert status == 400 and "(Limits.max_evaluation_nodes)" in body["error"]["message"]
        assert "50 " in body["error"]["message"]
    with serve(EmulatorConfig(limits=Limits(max_evaluation_seconds=0.05))) as emu:
        ee.Initialize(credentials=None, project="edown-tests", opt_url=emu.url)
        y = ee.Image.constant(1.5)
        for i in range(30):
            y = y.add(ee.Image.constant(float(i))).sqrt()
        with pytest.raises(ee.EEException, match=r"Limits\.max_evaluation_seconds") as info:
            ee.data.computePixels(
                {
                    "expression": y,
                    "fileFormat": "NUMPY_NDARRAY",
                    "grid": {
                        "dimensions": {"width": 2000, "height": 2000},
                        "affineTransform": {"scaleX": 0.001, "scaleY": -0.001, "translateY": 50},
                        "crsCode": "EPSG:4326",
                    },
                }
            )
        assert "0.05 s" in str(info.value)


@pytest.mark.timeout(60)
def test_a_deeply_nested_expression_is_a_400_not_an_internal_error(ee_emulator: Emulator) -> None:
    """Failed before: Python's recursion limit surfaced as 500 "An internal error has occurred"."""
    values: dict[str, Any] = {"0": {"constantValue": 0}}
    for i in range(1, 5001):
        values[str(i)] = {
            "functionInvocationValue": {
                "functionName": "Number.add",
                "arguments": {"left": {"valueReference": str(i - 1)}, "right": {"constantValue": 1}},
            }
        }
    status, body = _compute(ee_emulator.url, {"result": "5000", "values": values})
    assert status == 400
    assert "nested too deeply" in body["error"]["message"]


# ---- who may talk to it ----------------------------------------------------------------------------------


def _lan_address() -> str | None:
    """This machine's address on a non-loopback interface (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else str(address)


def test_binding_a_non_loopback_address_warns(caplog: pytest.LogCaptureFixture) -> None:
    """Failed before: the emulator (no authentication, control endpoints) listened on 0.0.0.0 silently."""
    with caplog.at_level(logging.WARNING, logger="edown.emulator"):
        with serve(EmulatorConfig(host="0.0.0.0")):
            pass
        with serve(EmulatorConfig(host="127.0.0.1")):
            pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "0.0.0.0" in warnings[0] and "loopback" in warnings[0] and "--host 127.0.0.1" in warnings[0]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_control_calls_are_refused_from_other_machines_unless_allowed() -> None:
    """Failed before: anyone who could reach the port could inject faults or reset the statistics."""
    lan = _lan_address()
    if lan is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    with serve(EmulatorConfig(host="0.0.0.0")) as emu:
        port = emu.url.rsplit(":", 1)[1]
        remote = f"http://{lan}:{port}"
        assert _status(f"{remote}/_emulator/stats") == 403
        request = urllib.request.Request(f"{remote}/_emulator/faults", data=b'{"rules": []}', method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        assert info.value.code == 403
        message = json.load(info.value)["error"]["message"]
        assert "loopback" in message and "--allow-remote-control" in message
        # The Earth Engine API itself stays reachable, and loopback clients keep control.
        assert _status(f"{remote}/$discovery/rest?version=v1") == 200
        assert _status(f"http://127.0.0.1:{port}/_emulator/stats") == 200
    with serve(EmulatorConfig(host="0.0.0.0", allow_remote_control=True)) as emu:
        port = emu.url.rsplit(":", 1)[1]
        assert _status(f"http://{lan}:{port}/_emulator/stats") == 200


# ---- the command line --------------------------------------------------------------------------------------


def _edown() -> str:
    return str(Path(sys.executable).with_name("edown"))


@contextlib.contextmanager
def _emulator_process(*args: str) -> Iterator[tuple[str, str]]:
    """``edown emulator`` in a subprocess: yields its URL and the snippet its banner prints."""
    proc = subprocess.Popen(
        [_edown(), "emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        url = first.rsplit(" ", 1)[-1].strip()
        banner = proc.stderr.readline()
        yield url, banner
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _no_credentials_env(home: Path) -> dict[str, str]:
    """The environment of a machine where nobody ever ran ``earthengine authenticate``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GEE_", "CLOUDSDK_", "EE_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), CLOUDSDK_CONFIG=str(home / "gcloud"))
    return env


@pytest.mark.timeout(120)
def test_the_banner_snippet_works_on_a_machine_without_stored_credentials(tmp_path: Path) -> None:
    """Failed before: the banner's ``ee.Initialize(project=..., opt_url=...)`` asked to authenticate."""
    home = tmp_path / "home"
    home.mkdir()
    with _emulator_process() as (url, banner):
        assert url.startswith("http://127.0.0.1:")
        snippet = banner.split("use it with:", 1)[1].strip()
        assert "credentials=None" in snippet and url in snippet
        check = snippet + "\nprint(ee.Image.constant(41).add(1).getInfo()['bands'][0]['data_type'])\n"
        done = subprocess.run(
            [sys.executable, "-c", check],
            env=_no_credentials_env(home),
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().replace("'", '"')) == {
        "type": "PixelType",
        "precision": "int",
        "min": 42,
        "max": 42,
    }


def test_emulator_help_shows_the_call_that_works_without_credentials() -> None:
    done = subprocess.run([_edown(), "emulator", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "ee.Initialize(credentials=None," in done.stdout
    assert "--allow-remote-control" in done.stdout


@pytest.mark.timeout(60)
def test_a_busy_port_is_one_line_naming_it_and_the_fix_exit_2() -> None:
    """Failed before: "OSError: [Errno 98] Address already in use ... report it", exit 1."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [_edown(), "emulator", "--port", str(port)], capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 2, done.stderr
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert f"port {port}" in error_lines[0] and "in use" in error_lines[0]
    assert "--port 0" in done.stderr
    assert "report it" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.timeout(60)
def test_a_query_over_the_whole_world_stops_at_the_time_budget() -> None:
    """Failed before: a week of global Sentinel-2 enumerated every tile for ~90 s, past any deadline."""
    with serve(EmulatorConfig(limits=Limits(max_evaluation_seconds=1))) as emu:
        ee.Initialize(credentials=None, project="edown-tests", opt_url=emu.url)
        week = ee.ImageCollection("COPERNICUS/S2_SR_HARMONIZED").filterDate("2024-06-01", "2024-06-08")
        started = time.monotonic()
        with pytest.raises(ee.EEException, match=r"Computation timed out.*1 s.*max_evaluation_seconds"):
            week.size().getInfo()
        assert time.monotonic() - started < 10


@pytest.mark.timeout(120)
def test_remembered_download_ids_cannot_fill_the_memory(ee_emulator: Emulator) -> None:
    """Each thumbnails.create is remembered for its GET; beyond 64 MiB of requests the oldest are forgotten."""
    padding = "x" * (9 * MiB)
    expression = {
        "result": "0",
        "values": {
            "0": {
                "functionInvocationValue": {
                    "functionName": "Element.set",
                    "arguments": {
                        "object": {
                            "functionInvocationValue": {
                                "functionName": "Image.constant",
                                "arguments": {"value": {"constantValue": 1}},
                            }
                        },
                        "key": {"constantValue": "pad"},
                        "value": {"constantValue": padding},
                    },
                }
            }
        },
    }
    body = json.dumps({"expression": expression, "fileFormat": "NPY"}).encode()
    names = []
    for _ in range(9):
        head = _post_head("/v1/projects/edown-tests/thumbnails", Content_Length=str(len(body)))
        status, answer = _raw_request(ee_emulator.url, head, body, timeout=60)
        assert status == 200
        names.append(answer["name"])
    assert _status(f"{ee_emulator.url}/v1/{names[0]}:getPixels") == 404  # forgotten: 81 MiB > 64 MiB
    assert _status(f"{ee_emulator.url}/v1/{names[-1]}:getPixels") == 400  # kept (a constant has no grid)


def test_json_nested_too_deeply_is_a_400_not_a_500(ee_emulator: Emulator) -> None:
    deep = ("[" * 200_000 + "]" * 200_000).encode()
    request = urllib.request.Request(
        ee_emulator.url + "/v1/projects/p/value:compute",
        data=deep,
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400 and b"nested too deeply" in caught.value.read()
