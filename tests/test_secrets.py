"""No secret leaves edown: a service account key (a path, JSON text or base64, as CI secret stores hold it)
is accepted on purpose, and neither it nor its private key ever appears in what edown prints, logs or
stores, on success, on bad input, or when the token endpoint refuses it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edown import AuthenticationError, earthengine
from edown.emulator.server import Emulator
from tests.test_auth import REMOTE, write_service_account_key

ACCOUNT = "robot@sa-project.iam.gserviceaccount.com"
AREA = ["--bbox", "-0.60,51.48,-0.43,51.56"]
SEARCH = [
    "-c",
    "COPERNICUS/S2_SR_HARMONIZED",
    "--start-date",
    "2024-06-01",
    "--end-date",
    "2024-06-04",
    *AREA,
    "-b",
    "B4",
]


# ---- helpers ----------------------------------------------------------------------------------------------


def fragments(secret: str, size: int = 20) -> set[str]:
    """Every ``size``-character substring of ``secret`` (of each of its lines, too)."""
    parts = {secret, *secret.splitlines()}
    return {p[i : i + size] for p in parts for i in range(len(p) - size + 1)}


def assert_no_fragment(text: str, *secrets: str) -> None:
    for secret in secrets:
        found = [f for f in fragments(secret) if f in text]
        assert not found, (
            f"output contains {len(found)} 20-character fragments of a secret, e.g. {found[0]!r}"
        )


def make_key(tmp_path: Path, token_uri: str) -> tuple[Path, str, str]:
    """``(key file, its private key PEM, the key as base64)``."""
    key_file = tmp_path / "key.json"
    pem = write_service_account_key(key_file, token_uri)
    return key_file, pem, base64.b64encode(key_file.read_bytes()).decode()


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with no ambient Google credentials (a fresh HOME, no metadata server)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GEE_", "GOOGLE_", "CLOUDSDK_", "EDOWN_")) and k not in ("EE_PROJECT",)
    }
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), CLOUDSDK_CONFIG=str(home / "gcloud"), NO_GCE_CHECK="True", NO_COLOR="1")
    env.update(extra)
    return env


def edown(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the installed ``edown`` entry point in a fresh process."""
    exe = Path(sys.executable).with_name("edown")
    return subprocess.run(
        [str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def refusing_token_endpoint() -> Iterator[str]:
    """A token endpoint answering as Google does for a deleted key, echoing the signed request it got."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            answer = json.dumps(
                {"error": "invalid_grant", "error_description": f"Invalid JWT Signature. Request: {body}"}
            ).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()


# ---- finding 4: base64 keys are accepted; every bad key is one line naming the variable --------------------


def _b64_variants(raw: bytes) -> dict[str, str]:
    standard = base64.b64encode(raw).decode()
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    return {
        "standard": standard,
        "standard-unpadded": standard.rstrip("="),
        "urlsafe": urlsafe,
        "urlsafe-unpadded": urlsafe.rstrip("="),
        "wrapped-76": "\n".join(standard[i : i + 76] for i in range(0, len(standard), 76)) + "\n",
    }


@pytest.mark.parametrize(
    "variant", ["standard", "standard-unpadded", "urlsafe", "urlsafe-unpadded", "wrapped-76"]
)
def test_base64_key_is_accepted(
    variant: str, no_ambient_credentials: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key_file, _, _ = make_key(tmp_path, "https://oauth2.googleapis.com/token")
    raw = key_file.read_bytes()
    # Pad the JSON so that its base64 needs padding (and holds '-'/'_' in the urlsafe alphabet).
    for pad in range(3):
        if len(raw + b" " * pad) % 3:
            raw += b" " * pad
            break
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT_KEY", _b64_variants(raw)[variant])
    creds, project, method = earthengine.resolve_credentials(REMOTE, None, None)
    assert creds.service_account_email == ACCOUNT
    assert project == "sa-project" and method == f"service account {ACCOUNT}"


def test_key_file_holding_base64_is_accepted(
    no_ambient_credentials: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, _, b64 = make_key(tmp_path, "https://oauth2.googleapis.com/token")
    encoded = tmp_path / "key.b64"
    encoded.write_text(b64 + "\n")
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT_KEY", str(encoded))
    creds, project, _ = earthengine.resolve_credentials(REMOTE, None, None)
    assert creds.service_account_email == ACCOUNT and project == "sa-project"


def _bad_keys(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (GEE_SERVICE_ACCOUNT_KEY value, what the message must say)."""
    key_file, pem, b64 = make_key(tmp_path, "https://oauth2.googleapis.com/token")
    key = json.loads(key_file.read_text())
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "notjson.json").write_text("private_key = " + pem)
    (tmp_path / "big.json").write_bytes(b" " * (2 << 20))
    no_token_uri = {k: v for k, v in key.items() if k != "token_uri"}
    return {
        "too long for a file name": (b64 + "!", "is neither a key file, nor JSON, nor base64"),
        "bare pem": (pem, "holds a bare PEM private key"),
        "a directory": (str(tmp_path / "a-directory"), "names a directory"),
        "below a file": (str(key_file / "key.json"), "not a folder"),
        "missing file": (str(tmp_path / "nope.json"), "points to a file that does not exist"),
        "too large": (str(tmp_path / "big.json"), "is too large"),
        "too long inline": ("A" * (100 * 1024), "is too long to be a key"),
        "file not json": (str(tmp_path / "notjson.json"), "is not JSON"),
        "json text broken": (json.dumps(key)[:-40], "is not valid JSON"),
        "base64 of non-json": (base64.b64encode(b"\x89PNG" + pem.encode()).decode(), "not JSON"),
        "base64 of a list": (base64.b64encode(json.dumps([key]).encode()).decode(), "not a JSON object"),
        "no private key": (
            base64.b64encode(json.dumps({**key, "private_key": None}).encode()).decode(),
            "private_key",
        ),
        "no token uri": (json.dumps(no_token_uri), "token_uri"),
        "private key a number": (json.dumps({**key, "private_key": 12345}), "private_key"),
        "user credentials": (
            json.dumps({**key, "type": "authorized_user"}),
            "'authorized_user', not a service account key",
        ),
        "token uri in clear": (
            json.dumps({**key, "token_uri": "http://tokens.example.com/token"}),
            "has a token_uri that is not https",
        ),
        "mangled private key": (
            json.dumps({**key, "private_key": pem.replace("\n", "\n@", 3)}),
            "private key that cannot be read",
        ),
    }


BAD_KEY_NAMES = [
    "too long for a file name",
    "bare pem",
    "a directory",
    "below a file",
    "missing file",
    "too large",
    "too long inline",
    "file not json",
    "json text broken",
    "base64 of non-json",
    "base64 of a list",
    "no private key",
    "no token uri",
    "private key a number",
    "user credentials",
    "token uri in clear",
    "mangled private key",
]


@pytest.mark.parametrize("case", BAD_KEY_NAMES)
def test_every_bad_key_is_one_line_naming_the_variable_never_its_content(
    case: str, no_ambient_credentials: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    value, expected = _bad_keys(tmp_path)[case]
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT_KEY", value)
    with pytest.raises(AuthenticationError) as info:
        earthengine.resolve_credentials(REMOTE, None, None)
    message = str(info.value)
    assert message.startswith("GEE_SERVICE_ACCOUNT_KEY "), message
    assert expected in message
    assert "\n" not in message
    pem = json.loads((tmp_path / "key.json").read_text())["private_key"]
    assert_no_fragment(message, value if len(value) > 200 else "", pem)
    assert info.value.exit_code == 2


def test_key_pasted_into_the_account_variable_is_not_echoed(
    no_ambient_credentials: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, pem, b64 = make_key(tmp_path, "https://oauth2.googleapis.com/token")
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT", b64)
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT_KEY", b64)
    with pytest.raises(AuthenticationError) as info:
        earthengine.resolve_credentials(REMOTE, None, None)
    assert str(info.value).startswith("GEE_SERVICE_ACCOUNT is not a service account's e-mail address")
    assert_no_fragment(str(info.value), b64, pem)


def test_account_and_key_of_different_service_accounts_are_refused(
    no_ambient_credentials: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, _, b64 = make_key(tmp_path, "https://oauth2.googleapis.com/token")
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT", "other@sa-project.iam.gserviceaccount.com")
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT_KEY", b64)
    with pytest.raises(AuthenticationError, match=f"GEE_SERVICE_ACCOUNT_KEY is a key of {ACCOUNT}"):
        earthengine.resolve_credentials(REMOTE, None, None)


# ---- finding 4: doctor, search and download in a fresh process never print the key ---------------------------


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
@pytest.mark.parametrize("form", ["base64", "json", "file"])
def test_key_works_and_never_shows_in_doctor_search_download(
    form: str, verbose: bool, ee_emulator: Emulator, tmp_path: Path
) -> None:
    key_file, pem, b64 = make_key(tmp_path, ee_emulator.url + "/token")
    value = {"base64": b64, "json": key_file.read_text(), "file": str(key_file)}[form]
    # The JSON and the file hold the account's e-mail, which edown does show; the private key it never does.
    secrets = (b64, pem) if form == "base64" else (pem,)
    env = clean_env(tmp_path, GEE_SERVICE_ACCOUNT=ACCOUNT, GEE_SERVICE_ACCOUNT_KEY=value)
    flag = ["-v"] if verbose else []
    root = tmp_path / "data"
    ee_emulator.reset_stats()
    runs = {
        "doctor": edown(env, *flag, "doctor", "--server-url", ee_emulator.url, "--json"),
        "search": edown(env, *flag, "search", *SEARCH, "--server-url", ee_emulator.url),
        "download": edown(
            env, *flag, "download", *SEARCH, "--server-url", ee_emulator.url, "-o", str(root), "--json"
        ),
    }
    for name, run in runs.items():
        assert run.returncode == 0, (name, run.stderr[-2000:])
        assert_no_fragment(run.stdout + run.stderr, *secrets)
    assert ee_emulator.stats()["requests"]["token"] >= 3  # each process signed in as the service account
    report = json.loads(runs["doctor"].stdout)
    assert report["credentials"] == f"service account {ACCOUNT}" and report["project"] == "sa-project"
    assert report["ok"] is True
    assert "T30UXC" in runs["search"].stdout
    summary = json.loads(runs["download"].stdout)
    assert summary["downloaded"] >= 1 and summary["failed"] == 0
    for stored in root.rglob("*.json"):
        assert_no_fragment(stored.read_text(), *secrets)


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
@pytest.mark.parametrize("command", ["doctor", "search", "download"])
def test_unusable_base64_key_is_one_line_in_every_command(
    command: str, verbose: bool, ee_emulator: Emulator, tmp_path: Path
) -> None:
    key_file, pem, _ = make_key(tmp_path, ee_emulator.url + "/token")
    key = json.loads(key_file.read_text())
    broken = base64.b64encode(json.dumps({**key, "client_email": 7}).encode()).decode()
    env = clean_env(tmp_path, GEE_SERVICE_ACCOUNT=ACCOUNT, GEE_SERVICE_ACCOUNT_KEY=broken)
    flag = ["-v"] if verbose else []
    args = {
        "doctor": ["doctor", "--server-url", ee_emulator.url],
        "search": ["search", *SEARCH, "--server-url", ee_emulator.url],
        "download": ["download", *SEARCH, "--server-url", ee_emulator.url, "-o", str(tmp_path / "d")],
    }[command]
    run = edown(env, *flag, *args)
    output = run.stdout + run.stderr
    assert_no_fragment(output, broken, pem)
    assert "GEE_SERVICE_ACCOUNT_KEY" in output and "client_email" in output
    if command == "doctor":
        assert run.returncode == 1  # doctor reports, then exits 1 when something does not work
    else:
        assert run.returncode == 2, output[-2000:]
        errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith("error: GEE_SERVICE_ACCOUNT_KEY "), run.stderr


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
@pytest.mark.parametrize("command", ["doctor", "search", "download"])
def test_token_endpoint_refusing_the_key_is_reported_without_the_key(
    command: str, verbose: bool, ee_emulator: Emulator, refusing_token_endpoint: str, tmp_path: Path
) -> None:
    _, pem, b64 = make_key(tmp_path, refusing_token_endpoint)
    env = clean_env(tmp_path, GEE_SERVICE_ACCOUNT=ACCOUNT, GEE_SERVICE_ACCOUNT_KEY=b64)
    flag = ["-v"] if verbose else []
    args = {
        "doctor": ["doctor", "--server-url", ee_emulator.url, "--json"],
        "search": ["search", *SEARCH, "--server-url", ee_emulator.url],
        "download": ["download", *SEARCH, "--server-url", ee_emulator.url, "-o", str(tmp_path / "d")],
    }[command]
    run = edown(env, *flag, *args)
    output = run.stdout + run.stderr
    assert_no_fragment(output, b64, pem)
    assert "eyJ" not in output  # nor the signed request (a JWT good for an hour) the endpoint echoed
    assert "the token endpoint refused the credentials (invalid_grant: Invalid JWT Signature." in (
        " ".join(output.split())
    )
    assert run.returncode == (1 if command == "doctor" else 2), output[-2000:]


# ---- finding 11: credentials in --server-url are never shown or stored ----------------------------------------


@pytest.mark.parametrize(
    ("shown", "expected"),
    [
        ("http://user:pass@host:8080/v1", "http://***@host:8080/v1"),
        ("https://token@example.com", "https://***@example.com"),
        ("http://u:p@ss@host/x@y", "http://***@host/x@y"),
        ("at http://a:b@127.0.0.1:9: refused", "at http://***@127.0.0.1:9: refused"),
        ("https://h/x?key=AIzaSyA-123&alt=json", "https://h/x?key=***&alt=json"),
        ("https://h/x?alt=json&access_token=ya29.abc", "https://h/x?alt=json&access_token=***"),
        ("https://h/o?X-Goog-Signature=00ff&b=1", "https://h/o?X-Goog-Signature=***&b=1"),
        ("Authorization: Bearer ya29.a0AfB_byC", "Authorization: Bearer ***"),
        ("{'authorization': 'Basic cm9ib3Q6czNjcmV0'}", "{'authorization': 'Basic ***'}"),
        ('{"access_token": "ya29.x", "expires_in": 3599}', '{"access_token": "***", "expires_in": 3599}'),
        ("{'private_key': '-----BEGIN PRIVATE KEY-----\\nMIIE'}", "{'private_key': '***'}"),
        ("assertion=eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJyb2JvdCJ9.c2ln", "assertion=***"),
        ("https://earthengine-highvolume.googleapis.com", "https://earthengine-highvolume.googleapis.com"),
        ("user@example.com is not a URL", "user@example.com is not a URL"),
    ],
)
def test_redact_hides_url_credentials_key_like_query_values_and_tokens(shown: str, expected: str) -> None:
    from edown.redaction import redact

    assert redact(shown) == expected


def test_redact_masks_any_run_of_a_registered_secret_however_it_was_wrapped() -> None:
    import secrets

    from edown.redaction import MIN_SECRET_RUN, redact, register_secret

    lines = [secrets.token_hex(32) for _ in range(3)]
    register_secret("-----BEGIN TEST KEY-----\n" + "\n".join(lines) + "\n-----END TEST KEY-----\n")
    quoted = f"bad key {{'private_key': '{lines[0]}\\n{lines[1][:30]}'}} in /tmp/x.json"
    assert redact(quoted) == "bad key {'private_key': '***'} in /tmp/x.json"
    short = lines[2][: MIN_SECRET_RUN - 1]
    assert redact(f"id {short} ok") == f"id {short} ok"  # shorter runs recur in ordinary text
    with pytest.raises(ValueError, match="too long to register"):
        register_secret("x" * (1 << 18))


USERINFO_SECRET = "s3cret-Pa55word"


def _with_userinfo(url: str) -> str:
    return url.replace("http://", f"http://robot:{USERINFO_SECRET}@")


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_doctor_never_shows_url_credentials(verbose: bool, ee_emulator: Emulator, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    url = _with_userinfo(ee_emulator.url)
    flag = ["-v"] if verbose else []
    as_json = edown(env, *flag, "doctor", "--server-url", url, "--json")
    table = edown(env, *flag, "doctor", "--server-url", url)
    by_env = edown({**env, "EDOWN_SERVER_URL": url + "/?key=AIzaSy-not-a-real-key"}, *flag, "doctor")
    for run in (as_json, table, by_env):
        output = run.stdout + run.stderr
        assert USERINFO_SECRET not in output and "robot:" not in output and "AIzaSy" not in output
    assert as_json.returncode == 0 and table.returncode == 0, as_json.stderr[-2000:]
    report = json.loads(as_json.stdout)
    assert report["server_url"] == "http://***@" + ee_emulator.url.removeprefix("http://")
    assert report["ok"] is True
    assert "http://***@127.0.0.1" in table.stdout
    assert "key=***" in by_env.stdout


def test_library_debug_logs_never_show_url_credentials(
    ee_emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    from edown import AOI, SearchConfig, search_images

    config = SearchConfig(
        collection_id="COPERNICUS/S2_SR_HARMONIZED",
        start_date="2024-06-01",
        end_date="2024-06-04",
        aoi=AOI.from_bbox((-0.60, 51.48, -0.43, 51.56)),
        server_url=_with_userinfo(ee_emulator.url),
    )
    assert USERINFO_SECRET not in repr(config) and USERINFO_SECRET not in str(config)
    with caplog.at_level("DEBUG"):
        assert search_images(config).images
    assert "URL being requested" in caplog.text and "http://***@127.0.0.1" in caplog.text
    assert USERINFO_SECRET not in caplog.text
    assert USERINFO_SECRET not in repr([r.getMessage() for r in caplog.records])


def test_unreachable_server_error_never_shows_url_credentials(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    url = f"http://robot:{USERINFO_SECRET}@127.0.0.1:9"
    for flag in ([], ["-v"]):
        run = edown(env, *flag, "search", *SEARCH, "--server-url", url, timeout=120)
        output = run.stdout + run.stderr
        assert USERINFO_SECRET not in output, output[-2000:]
        assert run.returncode == 1 and "cannot reach Earth Engine at http://***@127.0.0.1:9" in output
    bad = edown(env, "search", *SEARCH, "--server-url", f"ftp://robot:{USERINFO_SECRET}@host")
    assert bad.returncode == 2 and USERINFO_SECRET not in bad.stdout + bad.stderr
    assert "server_url: 'ftp://***@host' is not an http(s) URL" in bad.stderr


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_download_manifest_and_output_never_hold_url_credentials(
    verbose: bool, ee_emulator: Emulator, tmp_path: Path
) -> None:
    env = clean_env(tmp_path)
    url = _with_userinfo(ee_emulator.url)
    root = tmp_path / "data"
    flag = ["-v"] if verbose else []
    search = edown(
        env, *flag, "search", *SEARCH, "--server-url", url, "--manifest-path", str(tmp_path / "s.json")
    )
    run = edown(env, *flag, "download", *SEARCH, "--server-url", url, "-o", str(root), "--json")
    assert search.returncode == 0 and run.returncode == 0, run.stderr[-2000:]
    for output in (search.stdout + search.stderr, run.stdout + run.stderr):
        assert USERINFO_SECRET not in output and "robot:" not in output
    manifests = [tmp_path / "s.json", *sorted(root.rglob("*.json"))]
    assert len(manifests) >= 2
    for path in manifests:
        text = path.read_text()
        assert USERINFO_SECRET not in text and "robot:" not in text, path
    doc = json.loads(Path(json.loads(run.stdout)["manifest_path"]).read_text())
    redacted = "http://***@" + ee_emulator.url.removeprefix("http://")
    assert doc["search"]["config"]["server_url"] == redacted
    assert doc["download"]["config"]["server_url"] == redacted
    assert json.loads((tmp_path / "s.json").read_text())["search"]["config"]["server_url"] == redacted
    assert json.loads(run.stdout)["downloaded"] >= 1
    # The saved search names the same endpoint (redacted): reusing it with the user's URL is not a change.
    again = edown(
        env,
        *flag,
        "download",
        "--from-manifest",
        str(tmp_path / "s.json"),
        "--server-url",
        url,
        "-o",
        str(tmp_path / "again"),
        "--json",
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "note:" not in again.stderr and USERINFO_SECRET not in again.stdout + again.stderr
