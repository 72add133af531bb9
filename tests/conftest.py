"""Shared test configuration: every test talks to the local Earth Engine emulator (see edown.emulator).

The ``ee`` client is process-global; tests that initialise it themselves would leave edown's cached
initialisation pointing elsewhere, so it is forgotten after every test.

Tests marked ``slurm`` need a running SLURM (``scripts/test.sh`` starts one where it can). Where none can
be used they are skipped with the reason; ``EDOWN_SKIP_SLURM=1`` skips them anyway, and
``EDOWN_REQUIRE_SLURM=1`` (set by CI) makes them fail instead, so CI never passes by skipping them.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edown import earthengine
from edown.emulator.object_stores import StoreServer, start_server

SLURM_COMMANDS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``live`` talk to the real Earth Engine: only with EDOWN_LIVE_TESTS=1. Tests marked
    ``slurm`` are skipped, with the reason, where SLURM cannot be used (unless EDOWN_REQUIRE_SLURM=1)."""
    if os.environ.get("EDOWN_LIVE_TESTS") != "1":
        live = [item for item in items if item.get_closest_marker("live")]
        if live:
            config.hook.pytest_deselected(items=live)
            items[:] = [item for item in items if not item.get_closest_marker("live")]
    slurm = [item for item in items if item.get_closest_marker("slurm")]
    if not slurm or os.environ.get("EDOWN_REQUIRE_SLURM") == "1":
        return
    reason = slurm_unavailable()
    if reason is not None:
        skip = pytest.mark.skip(
            reason=f"SLURM test not run: {reason} (EDOWN_REQUIRE_SLURM=1 makes this a failure)"
        )
        for item in slurm:
            item.add_marker(skip)


@functools.cache
def slurm_unavailable() -> str | None:
    """Why the SLURM tests cannot run here, or None when a SLURM controller answers."""
    if os.environ.get("EDOWN_SKIP_SLURM") == "1":
        return "EDOWN_SKIP_SLURM=1"
    missing = [command for command in SLURM_COMMANDS if shutil.which(command) is None]
    if missing:
        return (
            f"SLURM is not installed here ({', '.join(missing)} not on PATH); ./scripts/test.sh starts one "
            "where it can (root, with apt-get), see scripts/slurm-up.sh --plan"
        )
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return (
            "SLURM's controller did not answer `scontrol ping` within 20 s; start it with scripts/slurm-up.sh"
        )
    if not re.search(r"\bUP\b", ping.stdout):
        answer = (ping.stdout or ping.stderr).strip().splitlines()
        return f"SLURM's controller is not up (`scontrol ping`: {answer[-1] if answer else 'no answer'}); start it with scripts/slurm-up.sh"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """With EDOWN_REQUIRE_SLURM=1 (CI) a ``slurm`` test that cannot use SLURM fails instead of skipping."""
    if item.get_closest_marker("slurm") is None or os.environ.get("EDOWN_REQUIRE_SLURM") != "1":
        return
    reason = slurm_unavailable()
    if reason is not None:
        pytest.fail(f"EDOWN_REQUIRE_SLURM=1 but SLURM cannot be used: {reason}", pytrace=False)


@pytest.fixture(autouse=True)
def _slurm_jobs_run_in_a_temporary_folder(request: pytest.FixtureRequest) -> None:
    """Submit SLURM jobs from the test's temporary folder, never from the checkout.

    A job submitted without an output path writes ``slurm-<job>.out`` in the folder it was submitted from.
    """
    if request.node.get_closest_marker("slurm") is not None:
        tmp_path: Path = request.getfixturevalue("tmp_path")
        request.getfixturevalue("monkeypatch").chdir(tmp_path)


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


# ---- object stores -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreServer]:
    """A real S3 API server (moto_server) on a free loopback port for the session; it must start."""
    server = start_server("s3", tmp_path_factory.mktemp("s3-server") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreServer]:
    """A real GCS emulator (fake-gcs-server) on a free loopback port for the session; it must start."""
    server = start_server("gcs", tmp_path_factory.mktemp("gcs-server") / "fake-gcs.log")
    yield server
    server.stop()


def _store_root(server: StoreServer, scheme: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    bucket = f"edown-{uuid.uuid4().hex[:12]}"
    server.create_bucket(bucket)
    return f"{scheme}://{bucket}/runs/data"


@pytest.fixture
def s3_root(s3_server: StoreServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<fresh bucket>/runs/data`` on the session's S3 server, with its endpoint and dummy keys in
    the environment."""
    return _store_root(s3_server, "s3", monkeypatch)


@pytest.fixture
def gs_root(gcs_server: StoreServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """``gs://<fresh bucket>/runs/data`` on the session's GCS emulator (``STORAGE_EMULATOR_HOST``)."""
    return _store_root(gcs_server, "gs", monkeypatch)
