"""A local Earth Engine: an HTTP server the unmodified ``earthengine-api`` client talks to.

Start one with :func:`serve` (a context manager), the ``edown emulator`` command, or the ``ee_emulator``
pytest fixture; point the client at it with
``ee.Initialize(credentials=None, project="any", opt_url=emulator.url)`` (``credentials=None``: no stored
Google credentials needed). See
:mod:`edown.emulator.catalog` for the collections and :mod:`edown.emulator.pixels` for the exact pixel
values every test can check against.
"""

from edown.emulator.behaviour import FaultPlan, FaultRule, Latency, Limits
from edown.emulator.catalog import Catalog
from edown.emulator.server import Emulator, EmulatorConfig, serve

__all__ = ["Catalog", "Emulator", "EmulatorConfig", "FaultPlan", "FaultRule", "Latency", "Limits", "serve"]
