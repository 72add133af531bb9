"""pytest fixtures for testing Earth Engine code offline against the edown emulator.

Installed with edown as a pytest plugin, so any project can write::

    def test_my_pipeline(ee_emulator_session):
        ...  # ee is initialised against a fresh local Earth Engine; assert on ee_emulator_session.stats()

``ee_emulator`` is one emulator per test session (no latency, Earth Engine's quotas, no faults);
``ee_emulator_session`` additionally initialises the ``ee`` client against it and resets its statistics
and fault plan, so each test starts clean.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edown.emulator.behaviour import FaultPlan
from edown.emulator.server import Emulator, serve

EMULATOR_PROJECT = "edown-tests"


@pytest.fixture(scope="session")
def ee_emulator() -> Iterator[Emulator]:
    """A local Earth Engine for the whole test session."""
    with serve() as emulator:
        yield emulator


@pytest.fixture
def ee_emulator_session(ee_emulator: Emulator) -> Iterator[Emulator]:
    """The session emulator with the ``ee`` client initialised against it and clean statistics."""
    import ee

    ee.Reset()  # as a fresh process would: no retry count, deadline or transport left by an earlier test
    ee.Initialize(credentials=None, project=EMULATOR_PROJECT, opt_url=ee_emulator.url)
    ee_emulator.set_faults(FaultPlan())
    ee_emulator.reset_stats()
    yield ee_emulator
    ee_emulator.set_faults(FaultPlan())
