"""Shared test configuration: every test talks to the local Earth Engine emulator (see edown.emulator).

The ``ee`` client is process-global; tests that initialise it themselves would leave edown's cached
initialisation pointing elsewhere, so it is forgotten after every test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edown import earthengine


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``live`` talk to the real Earth Engine: only with EDOWN_LIVE_TESTS=1."""
    if os.environ.get("EDOWN_LIVE_TESTS") == "1":
        return
    live = [item for item in items if item.get_closest_marker("live")]
    if live:
        config.hook.pytest_deselected(items=live)
        items[:] = [item for item in items if not item.get_closest_marker("live")]


@pytest.fixture(autouse=True)
def _fresh_earthengine_connection() -> Iterator[None]:
    yield
    earthengine.forget()


@pytest.fixture
def no_ambient_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME without Earth Engine or gcloud credentials, and no metadata-server probing."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(home / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    for name in (
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GEE_SERVICE_ACCOUNT",
        "GEE_SERVICE_ACCOUNT_KEY",
        "EE_PROJECT",
        "GOOGLE_CLOUD_PROJECT",
        "CLOUDSDK_CORE_PROJECT",
    ):
        monkeypatch.delenv(name, raising=False)
    return home
