"""The ``edown`` command line: ``search``, ``download``, ``stack``, ``emulator`` and friends.

One module per command, as in rasterio's ``rio``, so that a command's options, output and helpers read
together. Conventions (also rasterio's): options are named after the config fields (``--collection-id``,
``--start-date``...), ``--json`` prints machine-readable output on stdout, progress goes to stderr and only
on a terminal, ``NO_COLOR`` is honoured. Exit codes: 0 success, 1 some images failed (or Earth Engine
failed), 2 bad input. Errors are one line plus a hint; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import gc
import logging

import click

from edown._version import __version__
from edown.cli.errors import VERBOSE, set_verbose
from edown.redaction import guard_handlers


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="edown")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    expose_value=False,
    callback=set_verbose,
    help="Show tracebacks and debug logs (also accepted after the command).",
)
def cli() -> None:
    """Native-grid Earth Engine downloads, Zarr datacubes, and a local Earth Engine emulator.

    \b
    Typical run:
      edown search   -c COPERNICUS/S2_SR_HARMONIZED --start-date 2024-06-01 --end-date 2024-06-30 \\
                     --bbox -0.15,51.48,0.02,51.56 --band B4 --band B8
      edown download ...same options... --output-root data
      edown stack    -m data/manifests/run-*.json
    """
    logging.basicConfig(
        level=logging.DEBUG if click.get_current_context().meta.get(VERBOSE) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    guard_handlers(logging.getLogger().handlers)


def _finish_commands(group: click.Group) -> None:
    """Accept ``edown download ... -v`` as well as ``edown -v download ...``, and show docstrings as help
    without the reStructuredText literals (double backticks) that the API docs need."""
    for command in (group, *group.commands.values()):
        if command.help:
            command.help = command.help.replace("``", "")
    for command in group.commands.values():
        command.params.append(
            click.Option(
                ["-v", "--verbose"],
                is_flag=True,
                expose_value=False,
                callback=set_verbose,
                help="Show tracebacks and debug logs.",
            )
        )


def _add_commands(group: click.Group) -> None:
    from edown.cli.demo import demo
    from edown.cli.doctor import auth, doctor
    from edown.cli.download import download
    from edown.cli.emulator import emulator
    from edown.cli.quicklook import quicklook
    from edown.cli.search import search
    from edown.cli.stack import stack

    for command in (search, download, stack, demo, quicklook, doctor, auth, emulator):
        group.add_command(command)


_add_commands(cli)
_finish_commands(cli)


def main() -> None:
    """Run the command line. On the way out the garbage collector is frozen: the interpreter's final
    collections walk the object graphs of ee, rasterio and pyproj for 0.1-0.25 s after the work is done
    and every output closed (a small download's whole tail); reference counting still frees everything."""
    try:
        cli()
    finally:
        gc.freeze()
