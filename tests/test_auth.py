"""Authentication order and its one-line failures; no secret ever appears in a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edown import AOI, AuthenticationError, EarthEngineError, SearchConfig, earthengine, search_images
from edown.emulator.server import Emulator

REMOTE = "https://earthengine-highvolume.googleapis.com"


def write_service_account_key(path: Path, token_uri: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "sa-project",
                "private_key_id": "kid-1",
                "private_key": pem.decode(),
                "client_email": "robot@sa-project.iam.gserviceaccount.com",
                "client_id": "42",
                "token_uri": token_uri,
            }
        )
    )
    return pem.decode()


def test_remote_endpoint_without_credentials_lists_every_method_tried(no_ambient_credentials: Path) -> None:
    with pytest.raises(AuthenticationError) as info:
        earthengine.resolve_credentials(REMOTE, None, None)
    message = str(info.value)
    assert message.startswith(
        "no Earth Engine credentials worked; tried: service account (GEE_SERVICE_ACCOUNT and"
    )
    assert "Earth Engine user credentials (none stored; run `earthengine authenticate`)" in message
    assert (
        "application default credentials (" in message and "gcloud auth application-default login" in message
    )
    assert "\n" not in message


def test_half_configured_service_account_is_reported(
    no_ambient_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT", "robot@x.iam.gserviceaccount.com")
    with pytest.raises(
        AuthenticationError, match=r"tried: service account \(only one of GEE_SERVICE_ACCOUNT"
    ):
        earthengine.resolve_credentials(REMOTE, None, None)


def test_missing_key_file_is_one_line(
    no_ambient_credentials: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT", "robot@x.iam.gserviceaccount.com")
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT_KEY", str(tmp_path / "nope.json"))
    with pytest.raises(
        AuthenticationError, match=r"GEE_SERVICE_ACCOUNT_KEY points to a file that does not exist"
    ):
        earthengine.resolve_credentials(REMOTE, None, None)


def test_loopback_needs_no_credentials(no_ambient_credentials: Path) -> None:
    creds, project, method = earthengine.resolve_credentials("http://127.0.0.1:9", None, None)
    assert creds is None and project == "edown-emulator" and method == "none (local emulator)"


def test_service_account_from_env_authenticates_via_token_uri(
    ee_emulator: Emulator, no_ambient_credentials: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key_file = tmp_path / "key.json"
    pem = write_service_account_key(key_file, ee_emulator.url + "/token")
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT", "robot@sa-project.iam.gserviceaccount.com")
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT_KEY", str(key_file))
    ee_emulator.reset_stats()
    conn = earthengine.connect(ee_emulator.url)
    assert conn.auth_method == "service account robot@sa-project.iam.gserviceaccount.com"
    assert conn.project == "sa-project"
    result = search_images(
        SearchConfig(
            collection_id="COPERNICUS/S2_SR_HARMONIZED",
            start_date="2024-06-01",
            end_date="2024-06-07",
            aoi=AOI.from_bbox((-0.15, 51.48, 0.02, 51.56)),
            bands=("B4",),
            server_url=ee_emulator.url,
        )
    )
    assert len(result.images) == 2  # T30UXC and T30UYC
    stats = ee_emulator.stats(include_log=True)
    assert stats["requests"]["token"] >= 1
    assert {r["project"] for r in stats["log"] if r["kind"] == "listAssets"} == {"sa-project"}
    assert pem.splitlines()[1] not in repr(conn)


def test_key_json_in_the_variable_itself(
    ee_emulator: Emulator, no_ambient_credentials: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key_file = tmp_path / "key.json"
    write_service_account_key(key_file, ee_emulator.url + "/token")
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT", "robot@sa-project.iam.gserviceaccount.com")
    monkeypatch.setenv("GEE_SERVICE_ACCOUNT_KEY", key_file.read_text())
    creds, project, method = earthengine.resolve_credentials(ee_emulator.url, "explicit-project", None)
    assert project == "explicit-project" and method.startswith("service account")
    assert creds.service_account_email == "robot@sa-project.iam.gserviceaccount.com"


def test_wrong_project_is_a_clear_error(no_ambient_credentials: Path) -> None:
    from edown.emulator import EmulatorConfig, serve

    with serve(EmulatorConfig(allowed_projects=("good-project",))) as emu:
        config = SearchConfig(
            collection_id="COPERNICUS/S2_SR_HARMONIZED",
            start_date="2024-06-01",
            end_date="2024-06-07",
            aoi=AOI.from_bbox((-0.15, 51.48, 0.02, 51.56)),
            server_url=emu.url,
            project="bad-project",
        )
        with pytest.raises(EarthEngineError) as info:
            search_images(config)
        assert info.value.status == 403
        assert "Caller does not have required permission to use project bad-project" in str(info.value)
        assert info.value.hint is not None and "--project" in info.value.hint
        ok = search_images(
            SearchConfig(**{**config.search_fields(), "aoi": config.aoi, "project": "good-project"})
        )
        assert ok.images


def test_edown_initialises_again_after_someone_else_reinitialised_ee(
    ee_emulator: Emulator, no_ambient_credentials: Path
) -> None:
    import ee

    first = earthengine.connect(ee_emulator.url)
    assert earthengine.connect(ee_emulator.url) is first  # cached while ee still runs on edown's transport
    ee.Reset()
    ee.Initialize(credentials=None, project="someone-else", opt_url=ee_emulator.url)
    again = earthengine.connect(ee_emulator.url)
    assert again is not first
    assert ee.data._get_state().http_transport is again.transport
    assert ee.data._get_state().max_retries == 0  # edown's own retries, not ee's hidden ones
    assert ee.data._get_state().cloud_api_user_project == again.project == "edown-emulator"
