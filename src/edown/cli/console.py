"""What the commands print: rich consoles that behave in pipes and logs, JSON, one-line errors."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import traceback
from typing import IO, Any, cast

import click

from edown.redaction import redact


def stderr_console() -> Any:
    return _console(sys.stderr)


def stdout_console() -> Any:
    return _console(sys.stdout)


def _console(stream: Any) -> Any:
    """Rich output on ``stream``: on a terminal as wide as the terminal; elsewhere (pipes, CI and SLURM
    logs) lines are never wrapped at 80 columns nor padded with spaces, and tables get 200 columns to lay
    out in (rich would assume 80 and squeeze the ids away)."""
    from rich.console import Console

    terminal = stream.isatty()
    return Console(
        file=stream if terminal else cast(IO[str], _Unpadded(stream)),
        no_color=bool(os.environ.get("NO_COLOR")),
        highlight=False,
        width=None if terminal else 200,
        soft_wrap=not terminal,
    )


class _Unpadded(io.TextIOBase):
    """A text stream that drops the spaces rich pads lines with (table titles, justified cells)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(_TRAILING_SPACES.sub("\n", text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


_TRAILING_SPACES = re.compile(r"[ \t]+\n")


def print_error(message: str, hint: str | None) -> None:
    from rich.markup import escape

    console = stderr_console()
    console.print(f"[bold red]error:[/] {escape(redact(message))}", markup=True, soft_wrap=True)
    if hint:
        console.print(f"[dim]hint:[/] {escape(redact(hint))}", markup=True, soft_wrap=True)


def print_traceback() -> None:
    """The current exception's traceback (``--verbose``), with any secret it quotes removed."""
    sys.stderr.write(redact(traceback.format_exc()))


def echo_json(obj: Any) -> None:
    click.echo(redact(json.dumps(obj, indent=1, default=str)))
