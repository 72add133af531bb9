"""How a command fails: one line and a hint, the documented exit code, the traceback only with ``-v``."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from edown.cli.console import print_error, print_traceback
from edown.errors import EdownError

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Turn edown errors into one red line, a hint and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = bool(click.get_current_context().meta.get(VERBOSE))
        try:
            return func(*args, **kwargs)
        except EdownError as exc:
            if verbose:
                print_traceback()
            print_error(exc.message, exc.hint)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            print_error("interrupted", "run the same command again to resume where it stopped")
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except Exception as exc:  # unexpected: still one line, the traceback only with --verbose
            if verbose:
                print_traceback()
            print_error(
                f"{type(exc).__name__}: {exc}",
                "please report it with the traceback above"
                if verbose
                else "run with --verbose for the traceback and report it",
            )
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


#: Key in the click context's ``meta`` (shared by the group and its command) set by ``-v``.
VERBOSE = "edown.verbose"


def set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[VERBOSE] = True
        logging.getLogger().setLevel(logging.DEBUG)
