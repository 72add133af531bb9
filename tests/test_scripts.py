"""The repository's scripts on a machine where SLURM cannot be started, simulated by hiding its commands.

``scripts/test.sh`` must pass there, saying what it skipped and why, without installing or starting
anything; CI (``EDOWN_REQUIRE_SLURM=1``) must fail instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SLURM_AND_MUNGE = frozenset(
    {
        "sbatch", "squeue", "scancel", "sinfo", "scontrol", "srun", "salloc", "sacct", "sstat",
        "slurmctld", "slurmd", "slurmdbd", "slurmstepd", "munge", "unmunge", "munged",
    }
)  # fmt: skip
SLURM_TEST = "tests/test_stack.py::test_dask_slurm_on_a_real_slurm_writes_the_same_bytes"


def path_without_slurm(bin_dir: Path) -> str:
    """A PATH with every command of this one except SLURM's and munge's (linked into ``bin_dir``)."""
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not folder or not Path(folder).is_dir():
            continue
        for entry in Path(folder).iterdir():
            target = bin_dir / entry.name
            if entry.name in SLURM_AND_MUNGE or target.exists() or not os.access(entry, os.X_OK):
                continue
            target.symlink_to(entry.resolve())
    return str(bin_dir)


def env_without_slurm(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDOWN_", "PYTEST_"))}
    env.update(PATH=path_without_slurm(tmp_path / "bin"), EDOWN_NO_APT="1", TMPDIR=str(tmp_path), **extra)
    return env


def test_test_sh_without_slurm_passes_and_says_what_it_skipped(tmp_path: Path) -> None:
    env = env_without_slurm(tmp_path)
    run = subprocess.run(
        ["./scripts/test.sh", SLURM_TEST, "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    # Before pytest: why SLURM is not started, and that nothing is installed.
    assert (
        "SLURM: cannot start SLURM here: it is not installed (slurmctld slurmd slurm-client munge) "
        "and EDOWN_NO_APT=1 forbids apt-get"
    ) in run.stderr
    assert "install with apt-get" not in output and "SLURM ready" not in output
    # At the end: the skip, where it is, and why.
    tail = run.stderr[run.stderr.index("== skipped") :]
    assert "SKIPPED [1] tests/test_stack.py:" in tail
    assert "SLURM is not installed here (sbatch, squeue, scancel, sinfo, scontrol not on PATH)" in tail
    assert "EDOWN_REQUIRE_SLURM=1 makes this a failure" in tail
    assert "1 skipped" in run.stdout


def pytest_slurm_test(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", SLURM_TEST, "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ci_setting_turns_the_slurm_skip_into_a_failure(tmp_path: Path) -> None:
    run = pytest_slurm_test(env_without_slurm(tmp_path, EDOWN_REQUIRE_SLURM="1"))
    assert run.returncode == 1, run.stdout
    assert "EDOWN_REQUIRE_SLURM=1 but SLURM cannot be used: SLURM is not installed here" in run.stdout
    assert "1 error" in run.stdout and "skipped" not in run.stdout
    assert "EDOWN_REQUIRE_SLURM=1" in (REPO / ".ci" / "run").read_text()


def test_skip_slurm_skips_even_where_slurm_is_installed(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDOWN_", "PYTEST_"))}
    run = pytest_slurm_test({**env, "EDOWN_SKIP_SLURM": "1"})
    assert run.returncode == 0, run.stdout
    assert "SKIPPED [1] tests/test_stack.py:" in run.stdout
    assert "SLURM test not run: EDOWN_SKIP_SLURM=1" in run.stdout


def test_slurm_up_refuses_without_root_before_touching_anything() -> None:
    command = ["./scripts/slurm-up.sh"]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    # The commands must be reachable for nobody too (pytest's own temporary folders are private).
    with tempfile.TemporaryDirectory() as public:
        Path(public).chmod(0o755)
        env = {**os.environ, "PATH": path_without_slurm(Path(public) / "bin")}
        run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr.startswith("slurm-up: cannot start SLURM here: it needs root"), run.stderr
    assert run.stdout == ""
