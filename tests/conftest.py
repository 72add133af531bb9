"""Shared test configuration: every test talks to the local Earth Engine emulator (see edown.emulator).

The ``ee`` client is process-global; tests that initialise it themselves would leave edown's cached
initialisation pointing elsewhere, so it is forgotten after every test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edown import earthengine


@pytest.fixture(autouse=True)
def _fresh_earthengine_connection() -> Iterator[None]:
    yield
    earthengine.forget()
