"""``edown stack``: Zarr datacubes from download manifests."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from edown.cli.console import echo_json, stderr_console, stdout_console
from edown.cli.errors import VERBOSE, handle_errors
from edown.errors import ConfigError
from edown.stores import StoreURL, location


@click.command()
@click.option(
    "-m",
    "--manifest-path",
    "manifest_paths",
    multiple=True,
    metavar="PATH",
    help="Download manifest(s): files (a shell glob such as OUTPUT_ROOT/manifests/run-*.json), "
    "a manifests folder, or 'latest' (the newest run under --output-root, default data). Repeatable.",
)
@click.argument("more_manifests", nargs=-1, type=click.Path())
@click.option(
    "-o",
    "--output-root",
    type=click.Path(file_okay=False),
    help="Where the datacubes go (default: the manifests' output root).",
)
@click.option(
    "--backend",
    type=click.Choice(["threads", "dask-local", "dask-slurm"]),
    default="threads",
    show_default=True,
)
@click.option("--overwrite", is_flag=True, help="Rebuild stores instead of appending new dates.")
@click.option(
    "--store",
    type=click.Choice(["zarr", "icechunk"]),
    default="zarr",
    show_default=True,
    help="icechunk: each run is one commit of an icechunk repository, older snapshots stay readable "
    "(pip install 'edown[icechunk]').",
)
@click.option(
    "--n-workers", type=int, default=4, show_default=True, help="Dask workers (SLURM jobs for dask-slurm)."
)
@click.option("--cores-per-worker", type=int, default=1, show_default=True)
@click.option("--memory-per-worker", default="1GB", show_default=True)
@click.option("--slurm-queue", help="SLURM partition.")
@click.option("--slurm-account", help="SLURM account.")
@click.option("--walltime", default="01:00:00", show_default=True, help="SLURM job walltime.")
@click.option("--scheduler-host", help="Address SLURM workers use to reach the Dask scheduler.")
@click.option("--threads", type=int, help="Threads for the threads backend (default: CPU count).")
@click.option(
    "--chunk-size", type=int, default=512, show_default=True, help="Spatial chunk side of the Zarr arrays."
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@handle_errors
def stack(
    manifest_paths: tuple[str, ...], more_manifests: tuple[str, ...], as_json: bool, **params: Any
) -> None:
    """Build one Zarr datacube per alignment group of download manifests (appends new dates).

    Several manifests (e.g. one per month downloaded into the same root) are stacked together; an image
    found in several is taken once, from the newest run.

    \b
    Examples:
      edown stack -m data/manifests/run-*.json
      edown stack -m data/manifests
      edown stack -m latest -o data
      edown stack -m run.json --backend dask-slurm --slurm-queue normal --n-workers 8
      edown stack -m latest --store icechunk
    Open a result with: edown.open_stack("data/stacks/<collection>/<group>.zarr") (or <group>.icechunk)
    """
    from edown.config import StackConfig
    from edown.stack import manifest_files, stack_images

    given = _stack_manifests((*manifest_paths, *more_manifests), params.get("output_root"))
    on_store = [p for p in given if isinstance(p, StoreURL)]
    paths: list[Path | StoreURL] = (
        list(on_store) if on_store else list(manifest_files(p for p in given if isinstance(p, Path)))
    )
    config = StackConfig(
        manifest_path=paths[0],
        manifest_paths=tuple(paths[1:]),
        **{k: v for k, v in params.items() if v is not None},
        progress=True,
    )
    if not click.get_current_context().meta.get(VERBOSE):
        # Dask's scheduler and workers (other processes too) log every start at INFO; -v shows them.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    results = stack_images(config)
    stderr_console().print(
        f"manifests: {', '.join(str(_relative(p)) for p in paths)}"
        + (" (an image in several is taken from the newest)" if len(paths) > 1 else ""),
        markup=False,
        soft_wrap=True,
    )
    if as_json:
        echo_json([r.to_dict() for r in results])
    else:
        from rich.table import Table

        table = Table(title="stacks", title_justify="left")
        for column in ("group", "images", "appended", "shape (t, band, y, x)", "store / reason"):
            table.add_column(column)
        for r in results:
            where = (
                str(r.output_path) + (f" (commit {r.snapshot_id})" if r.snapshot_id else "")
                if r.output_path
                else (r.error and f"error: {r.error}") or r.skipped_reason or ""
            )
            table.add_row(r.group_id, str(r.image_count), str(r.appended), "x".join(map(str, r.shape)), where)
        stdout_console().print(table)
    if any(r.error for r in results):
        sys.exit(1)


def _stack_manifests(given: tuple[str, ...], output_root: str | None) -> list[Path | StoreURL]:
    """``-m`` values as paths: ``latest`` is the newest run under the output root (unless a file of that
    name exists)."""
    from edown.stack import latest_manifest

    if not given:
        raise ConfigError(
            "manifest_path",
            "give at least one download manifest",
            "e.g. -m data/manifests/run-*.json, -m data/manifests or -m latest",
        )
    root = location(output_root or "data", "output_root")
    named: list[Path | StoreURL] = []
    for value in given:
        if value == "latest" and not Path(value).exists():
            if isinstance(root, StoreURL):
                from edown.storestack import latest_on_store

                named.append(latest_on_store(root))
            else:
                named.append(latest_manifest(root))
            continue
        where = location(value, "manifest_path")
        if isinstance(where, StoreURL) and (not where.endswith(".json") or any(c in where for c in "*?[")):
            raise ConfigError(
                "manifest_path",
                f"{where} is not one manifest: on a store, edown stacks one run's manifest at a time",
                f"give its run-….json, or -m latest -o {where.split('/manifests')[0]} for the newest",
            )
        named.append(where)
    return named


def _relative(path: Path | StoreURL) -> Path | StoreURL:
    if isinstance(path, StoreURL):
        return path
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path
