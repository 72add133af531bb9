"""Shared test configuration: every test talks to the local Earth Engine emulator (see edown.emulator).

The ``ee`` client is process-global; tests that initialise it themselves would leave edown's cached
initialisation pointing elsewhere, so it is forgotten after every test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

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
