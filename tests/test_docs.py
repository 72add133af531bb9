"""Docs that run: every Python and shell block of README.md and docs/*.md is executed against the emulator.

Each block is its own test (``README.md:42``, the line of its opening fence). The blocks of one file run
in order in one temporary folder, as a reader would run them, so a block may use what an earlier one
wrote (run alone, a block first runs the blocks before it); two files run at a time. The folder stands in for a checkout: its
``scripts``, ``src``, ``docs``, ``.venv``... are the repository's (linked), its outputs are its own.

- ``python`` blocks run in a subprocess with the project's Python, each a program of its own (so that
  each can be copied alone); a block that defines ``test_`` functions runs under pytest instead, where
  edown's emulator fixtures are.
- ``bash`` and ``sh`` blocks run through ``bash -e -o pipefail`` with the project's ``.venv/bin`` first
  on PATH; of a ``console`` block only the ``$ `` lines run.
- Every process sees a HOME with no stored credentials, no credentials in its environment, and
  ``EDOWN_SERVER_URL`` set to the test emulator. The docs' example emulator address ``127.0.0.1:8765``
  is the test emulator's.
- ``edown emulator`` runs until stopped: such a line is started on a free port in place of 8765, must
  say it is listening, and is stopped.
- ``<!-- live-ee: reason -->`` or ``<!-- not-run: reason -->`` right before a block skips it with that
  reason. ``text``, ``json``... blocks are output and are not run; every fence must name its language.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edown.emulator.server import Emulator

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
RUN = {"python": "python", "py": "python", "bash": "shell", "sh": "shell", "console": "console"}
OUTPUT = {"text", "json", "yaml", "toml", "ini", "csv", "diff"}
DOC_EMULATOR = "127.0.0.1:8765"
CREDENTIAL_VARIABLES = (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GEE_SERVICE_ACCOUNT",
    "GEE_SERVICE_ACCOUNT_KEY",
    "EE_PROJECT",
    "GOOGLE_CLOUD_PROJECT",
    "CLOUDSDK_CONFIG",
)
CHECKOUT = ("scripts", "src", "docs", "bench", "mkdocs.yml", "pyproject.toml", ".venv")
BLOCK_TIMEOUT = 300
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
MARK = re.compile(r"^\s*<!--\s*(?P<kind>live-ee|not-run):\s*(?P<reason>.*?)\s*-->\s*$")
SERVER = re.compile(r"^\s*edown\s+(?:-\S+\s+)*emulator\b(?!.*--help)")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    language: str
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def blocks_of(doc: Path) -> list[Block]:
    """The fenced blocks of a markdown file, with the skip reason of a marker right before one."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    skip: str | None = None
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            mark = MARK.match(lines[i])
            if mark is not None:
                kind = "needs live Earth Engine" if mark["kind"] == "live-ee" else "not run"
                skip = f"{kind}: {mark['reason']}"
            elif lines[i].strip():
                skip = None
            i += 1
            continue
        fence = opening["fence"]
        end = i + 1
        while end < len(lines) and not re.fullmatch(rf"\s*{fence[0]}{{{len(fence)},}}\s*", lines[end]):
            end += 1
        code = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"
        language = opening["info"].split()[0].lower() if opening["info"].strip() else ""
        blocks.append(Block(doc, i + 1, language, code, skip))
        skip = None
        i = end + 1
    return blocks


ALL_BLOCKS = [block for doc in DOCS for block in blocks_of(doc)]
RUN_BLOCKS = [block for block in ALL_BLOCKS if block.language in RUN]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def logical_lines(code: str) -> list[str]:
    """Shell commands of a block, continuation lines joined, comments and blank lines left out."""
    joined = re.sub(r"\\\n", " ", code)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@dataclass
class DocRun:
    """One document's temporary folder and the outcome of each of its blocks run so far."""

    blocks: list[Block]
    folder: Path
    env: dict[str, str]
    emulator_url: str
    outcomes: dict[int, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def through(self, block: Block) -> subprocess.CompletedProcess[str]:
        """Run the blocks before ``block`` that have not run yet, then ``block``; its outcome.

        Safe to call from several threads: each block runs once, in order.
        """
        for earlier in self.blocks:
            with self.lock:
                if earlier.line not in self.outcomes and earlier.skip is None:
                    self.outcomes[earlier.line] = self.run(earlier)
            if earlier is block:
                break
        return self.outcomes[block.line]

    def run(self, block: Block) -> subprocess.CompletedProcess[str]:
        code = block.code.replace(DOC_EMULATOR, self.emulator_url.removeprefix("http://"))
        kind = RUN[block.language]
        if kind == "python":
            return self.python(block, code)
        if kind == "console":
            code = "".join(line[2:] + "\n" for line in code.splitlines() if line.startswith("$ "))
        if any(SERVER.match(line) for line in logical_lines(code)):
            return self.shell_with_servers(block, code)
        script = self.folder / f"block_{block.line}.sh"
        script.write_text(code)
        return self.process(["bash", "-e", "-o", "pipefail", script.name])

    def python(self, block: Block, code: str) -> subprocess.CompletedProcess[str]:
        if re.search(r"^def test_", code, flags=re.MULTILINE):
            script = self.folder / f"test_block_{block.line}.py"
            script.write_text(code)
            return self.process([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", script.name])
        script = self.folder / f"block_{block.line}.py"
        script.write_text(code)
        return self.process([sys.executable, script.name])

    def process(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )

    def shell_with_servers(self, block: Block, code: str) -> subprocess.CompletedProcess[str]:
        """Run each command in turn; an emulator is started, must say it listens, and is stopped."""
        stdout, stderr = [], []
        for line in logical_lines(code):
            if SERVER.match(line):
                done = self.serve_briefly(re.sub(r"--port[ =]8765\b", f"--port {free_port()}", line))
            else:
                done = self.process(["bash", "-e", "-o", "pipefail", "-c", line])
            stdout.append(done.stdout)
            stderr.append(done.stderr)
            if done.returncode != 0:
                return subprocess.CompletedProcess(line, done.returncode, "".join(stdout), "".join(stderr))
        return subprocess.CompletedProcess(block.id, 0, "".join(stdout), "".join(stderr))

    def serve_briefly(self, line: str) -> subprocess.CompletedProcess[str]:
        server = subprocess.Popen(
            ["bash", "-c", f"exec {line}"],
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert server.stdout is not None
        first = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            if select.select([server.stdout], [], [], 0.5)[0]:
                first = server.stdout.readline()
                break
        listening = "listening on" in first and server.poll() is None
        server.send_signal(signal.SIGINT)
        try:
            out, err = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            out, err = server.communicate()
        status = 0 if listening else (server.returncode or 1)
        return subprocess.CompletedProcess(line, status, first + out, err)


def docs_env(home: Path, emulator_url: str) -> dict[str, str]:
    """A new user's environment: no credentials anywhere, the project's tools first, the emulator."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in CREDENTIAL_VARIABLES and not name.startswith(("EDOWN_", "PYTEST_", "VIRTUAL_ENV"))
    }
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    env.update(
        HOME=str(home),
        PATH=f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        EDOWN_SERVER_URL=emulator_url,
        MPLBACKEND="Agg",
        # Set-up scripts reuse the machine's package cache and pythons, which hold no credentials.
        UV_CACHE_DIR=os.environ.get("UV_CACHE_DIR") or str(Path(cache) / "uv"),
        PYENV_ROOT=os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv"),
    )
    return env


def readme_demo_and_snippet() -> tuple[Block, Block]:
    """The README's demo command and the Python block after it (what the demo prints last)."""
    readme = [block for block in RUN_BLOCKS if block.doc == REPO / "README.md"]
    demo = next(block for block in readme if "./scripts/demo.sh" in block.code)
    return demo, next(block for block in readme if block.line > demo.line and block.language == "python")


def selected_blocks(session: pytest.Session) -> dict[Path, Block]:
    """The last block of each file that a selected test needs."""
    last: dict[Path, Block] = {}
    for item in session.items:
        if not isinstance(item, pytest.Function) or item.module is None or item.module.__name__ != __name__:
            continue
        params = getattr(item, "callspec", None)
        if params is not None and "block" in params.params:
            needed: Block = params.params["block"]
        elif item.name == "test_the_demo_prints_the_readme_snippet_and_it_draws":
            needed = readme_demo_and_snippet()[1]
        else:
            continue
        if needed.skip is None and (needed.doc not in last or last[needed.doc].line < needed.line):
            last[needed.doc] = needed
    return last


@pytest.fixture(scope="module")
def doc_runs(
    request: pytest.FixtureRequest, ee_emulator: Emulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[Path, DocRun]]:
    """Every file's run, already going in the background (two files at a time) for the selected tests."""
    home = tmp_path_factory.mktemp("home")
    runs: dict[Path, DocRun] = {}
    for doc in DOCS:
        folder = tmp_path_factory.mktemp(doc.stem)
        for name in CHECKOUT:
            (folder / name).symlink_to(REPO / name)
        blocks = [block for block in RUN_BLOCKS if block.doc == doc]
        runs[doc] = DocRun(blocks, folder, docs_env(home, ee_emulator.url), ee_emulator.url)
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="docs")
    for doc, last in selected_blocks(request.session).items():
        pool.submit(runs[doc].through, last)
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


# A block's test may wait for the blocks before it (each bounded by BLOCK_TIMEOUT), the demo among them.
@pytest.mark.timeout(3 * BLOCK_TIMEOUT)
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[block.id for block in RUN_BLOCKS])
def test_block_runs(block: Block, doc_runs: dict[Path, DocRun]) -> None:
    if block.skip is not None:
        pytest.skip(f"{block.id}: {block.skip}")
    run = doc_runs[block.doc]
    done = run.through(block)
    failed_before = [
        b.id
        for b in run.blocks
        if b.line < block.line and b.line in run.outcomes and run.outcomes[b.line].returncode
    ]
    assert done.returncode == 0, (
        f"{block.id} failed (exit {done.returncode})"
        + (f"; earlier blocks of this file failed too: {', '.join(failed_before)}" if failed_before else "")
        + f"\n--- block\n{block.code}--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    )


def test_every_fence_names_a_known_language() -> None:
    unknown = [
        f"{b.id} ({b.language or 'no language'})" for b in ALL_BLOCKS if b.language not in {*RUN, *OUTPUT}
    ]
    assert not unknown, f"say what these blocks are (python, bash, console, or text for output): {unknown}"


@pytest.mark.timeout(3 * BLOCK_TIMEOUT)
def test_the_demo_prints_the_readme_snippet_and_it_draws(doc_runs: dict[Path, DocRun]) -> None:
    readme = doc_runs[REPO / "README.md"]
    demo, snippet = readme_demo_and_snippet()
    printed = readme.through(demo)
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert snippet.code in printed.stdout, printed.stdout
    drawn = readme.through(snippet)
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    with Image.open(readme.folder / "B4.png") as picture:
        pixels = np.asarray(picture.convert("L"))
    assert picture.size[0] >= 400 and pixels.std() > 10


def test_blocks_not_run_still_parse_and_name_files_that_exist() -> None:
    """A skipped block is still checked: its syntax, and the repository files it runs."""
    problems = []
    for block in RUN_BLOCKS:
        if block.skip is None:
            continue
        if RUN[block.language] == "python":
            try:
                compile(block.code, block.id, "exec")
            except SyntaxError as exc:
                problems.append(f"{block.id}: {exc}")
            continue
        parsed = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
        if parsed.returncode != 0:
            problems.append(f"{block.id}: {parsed.stderr.strip()}")
        for name in re.findall(r"(?:\./)?((?:scripts|bench)/[\w./-]+)", block.code):
            if not (REPO / name).is_file():
                problems.append(f"{block.id}: {name} does not exist")
    assert not problems, problems
