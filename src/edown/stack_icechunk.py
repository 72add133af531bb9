"""``store="icechunk"``: a datacube kept as an icechunk repository, where each ``stack_images`` run is one
commit.

``<output_root>/stacks/<collection>/<group_id>.icechunk`` is an icechunk repository on the local file
system whose branch ``main`` holds the same Zarr hierarchy as a plain stack (``docs/zarr.md``), written by
the same code: ``data(time, band, y, x)``, the per-time coordinates and the CF grid mapping.

Transactions: a run writes into one writable session and commits it at the end, with a message naming the
manifest and the run's metadata; until that commit the branch points at the previous snapshot, so readers,
and a run that was killed before committing, see the stack as it was. Chunks a killed run had written are
referenced by no snapshot; icechunk's own ``Repository.garbage_collect`` removes them. Every earlier commit
stays readable (``open_stack(path, snapshot=...)`` or ``as_of=...``, or icechunk's API).

Backends: on threads every task writes into the run's session (icechunk sessions are thread-safe). The
dask backends fork the session (``Session.fork``), pickle the fork to each task, and merge the forks the
tasks return before the commit: icechunk's way of writing one transaction from several processes or
machines. The workers must see the repository under the same path (a shared file system on SLURM, as
for a plain Zarr store).

A new repository is built under a temporary name and renamed into place after its first commit, so a run
killed while creating it leaves nothing under the stack's name. ``overwrite=True`` on an existing
repository commits the rebuilt stack on top of it: the replaced one stays readable as an older snapshot.
Runs into one output root are serialised by its lock, so the local file system's lack of safe concurrent
commits (icechunk warns about it) does not arise.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edown._version import __version__
from edown.config import StackConfig
from edown.errors import StackError
from edown.manifest import Manifest
from edown.outputs import store_temporary
from edown.records import AlignmentGroup, ImageRecord, StackResult, utc_iso
from edown.rootstate import check_no_links, journalled
from edown.stack import (
    SliceTask,
    TimeStep,
    _attrs,
    _encoding,
    _run,
    _tasks,
    _template,
    _time_steps,
    check_appends_later,
    committed_image_ids,
    extend_time,
    time_arrays,
    write_slice,
)

SUFFIX = ".icechunk"
BRANCH = "main"
EXTRA_HINT = "pip install 'edown[icechunk]' (on Python >= 3.12)"


def require_icechunk() -> Any:
    """The icechunk module, or the one line saying which extra installs it."""
    try:
        import icechunk
    except ImportError:
        raise StackError(
            "store='icechunk' needs the optional extra edown[icechunk]", hint=EXTRA_HINT
        ) from None
    if "ICECHUNK_LOG" not in os.environ:
        # Two warnings on every run, moot here: local-file-system commits are not safe concurrently
        # (edown's root lock serialises them), and conditional writes without write ids (same).
        icechunk.set_logs_filter("warn,icechunk_arrow_object_store=error,icechunk_storage::readback=error")
    return icechunk


def repository_path(zarr_path: Path) -> Path:
    """Where the icechunk repository of the stack that would be ``zarr_path`` as a plain store lives."""
    return zarr_path.with_suffix(SUFFIX)


def is_repository(path: Path) -> bool:
    """Whether ``path`` looks like an icechunk repository (tested without importing icechunk)."""
    return (path / "repo").is_file() and (path / "snapshots").is_dir()


def _repository(path: Path) -> Any:
    icechunk = require_icechunk()
    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(path.absolute())))


def open_repository(path: Path, masked: bool, snapshot: str | None, as_of: dt.datetime | None) -> Any:
    """The stack at branch ``main``'s head, at the commit ``snapshot``, or as it was at ``as_of``."""
    import xarray as xr

    icechunk = require_icechunk()
    repo = _repository(path)
    try:
        if snapshot is not None:
            session = repo.readonly_session(snapshot_id=snapshot)
        elif as_of is not None:
            session = repo.readonly_session(BRANCH, as_of=as_of)
        else:
            session = repo.readonly_session(BRANCH)
    except icechunk.IcechunkError as exc:
        raise StackError(
            f"{path}: no snapshot {snapshot or as_of} ({exc})".splitlines()[0],
            hint="list the commits with icechunk: Repository.open(...).ancestry(branch='main')",
        ) from None
    return xr.open_zarr(session.store, consolidated=False, mask_and_scale=masked)


# ---- writing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionSlice:
    """One time step and the session it is written into: the run's own on threads, a fork (pickled to
    the worker and back) on the dask backends."""

    slice: SliceTask
    session: Any


def write_session_slice(task: SessionSlice) -> dict[str, Any]:
    """Write one time step; return the statistics and the session holding the write (merged later)."""
    import zarr

    stats: dict[str, Any] = dict(write_slice(zarr.open_array(task.session.store, path="data"), task.slice))
    stats["session"] = task.session
    return stats


def stack_group(
    config: StackConfig,
    collection_id: str,
    group: AlignmentGroup,
    pairs: list[tuple[ImageRecord, Path]],
    zarr_path: Path,
    output_root: Path,
    manifest: Manifest,
    nodata: float,
    log_dir: Path,
    started: float,
) -> StackResult:
    """Create, extend or rebuild one group's repository in one commit."""
    icechunk = require_icechunk()
    target = repository_path(zarr_path)
    check_no_links(output_root.absolute(), target.absolute())
    try:
        return _stack_group(config, collection_id, group, pairs, target, manifest, nodata, log_dir, started)
    except icechunk.ConflictError:
        raise StackError(
            f"{target}: another writer committed to the repository during this run; nothing was committed",
            hint="edown's own runs wait for each other; stop the other writer, then run again",
        ) from None
    except icechunk.IcechunkError as exc:
        raise StackError(
            f"{target}: icechunk: {str(exc).strip().splitlines()[0]}",
            hint="the previous snapshot is intact; check the repository with icechunk, or use --overwrite",
        ) from None


def _stack_group(
    config: StackConfig,
    collection_id: str,
    group: AlignmentGroup,
    pairs: list[tuple[ImageRecord, Path]],
    target: Path,
    manifest: Manifest,
    nodata: float,
    log_dir: Path,
    started: float,
) -> StackResult:
    if not target.exists():
        return _create(config, collection_id, group, pairs, target, manifest, nodata, log_dir, started)
    if not is_repository(target):
        raise StackError(
            f"{target} exists and is not an icechunk repository",
            hint="move it away; edown writes icechunk stacks only where there is none or one of its own",
        )
    repo = _repository(target)
    session = repo.writable_session(BRANCH)
    if config.overwrite:
        _check_own(session, target)
        steps = _time_steps(pairs)
        _write_new(config, session, collection_id, group, steps, target, manifest, nodata, log_dir)
        return _commit(session, "rebuild", group, steps, len(steps), target, manifest, started)
    return _append(config, session, group, pairs, target, manifest, nodata, log_dir, started)


def _create(
    config: StackConfig,
    collection_id: str,
    group: AlignmentGroup,
    pairs: list[tuple[ImageRecord, Path]],
    target: Path,
    manifest: Manifest,
    nodata: float,
    log_dir: Path,
    started: float,
) -> StackResult:
    icechunk = require_icechunk()
    tmp = store_temporary(target, "tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    with journalled(tmp, "dir"):
        try:
            repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp.absolute())))
            session = repo.writable_session(BRANCH)
            steps = _time_steps(pairs)
            _write_new(config, session, collection_id, group, steps, target, manifest, nodata, log_dir)
            result = _commit(session, "create", group, steps, len(steps), target, manifest, started)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return result


def _write_new(
    config: StackConfig,
    session: Any,
    collection_id: str,
    group: AlignmentGroup,
    steps: list[TimeStep],
    target: Path,
    manifest: Manifest,
    nodata: float,
    log_dir: Path,
) -> None:
    ds = _template(group, steps, nodata, config.chunk_size, _attrs(collection_id, group, manifest, nodata))
    # Icechunk's snapshot is the commit point, so no consolidated metadata; mode "w" replaces what the
    # branch held (a rebuild), which stays in the older snapshots.
    ds.to_zarr(
        session.store,
        mode="w",
        compute=False,
        zarr_format=3,
        consolidated=False,
        encoding=_encoding(ds, config.chunk_size),
    )
    _write_steps(config, session, _tasks(str(target), group, steps, 0, nodata, config.chunk_size), log_dir)


def _append(
    config: StackConfig,
    session: Any,
    group: AlignmentGroup,
    pairs: list[tuple[ImageRecord, Path]],
    target: Path,
    manifest: Manifest,
    nodata: float,
    log_dir: Path,
    started: float,
) -> StackResult:
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr
    import zarr

    with contextlib.closing(
        xr.open_zarr(session.store, consolidated=False, mask_and_scale=False)
    ) as committed:
        existing_ids = committed_image_ids(committed, group, target)
        t_committed = committed.sizes["time"]
        check_appends_later(committed, [r for r, _ in pairs if r.image_id not in existing_ids], target)
    steps = _time_steps([(r, p) for r, p in pairs if r.image_id not in existing_ids])
    shape = (t_committed + len(steps), len(group.band_names), group.height, group.width)
    if not steps:
        return StackResult(
            group.group_id,
            t_committed,
            target,
            None,
            appended=0,
            shape=shape,
            seconds=time.monotonic() - started,
            snapshot_id=session.snapshot_id,
        )
    root = zarr.open_group(session.store, mode="r+")
    arrays = time_arrays(root)
    extend_time(arrays, t_committed, steps, root)
    # An append keeps the store's own chunking, whatever chunk_size says today.
    chunk = max(arrays["data"].chunks[-2:])
    _write_steps(config, session, _tasks(str(target), group, steps, t_committed, nodata, chunk), log_dir)
    return _commit(session, "append", group, steps, shape[0], target, manifest, started)


def _write_steps(config: StackConfig, session: Any, tasks: list[SliceTask], log_dir: Path) -> None:
    """Write the time steps on the configured backend into ``session`` (through forks on dask)."""
    if config.backend == "threads":
        _run(config, [SessionSlice(t, session) for t in tasks], log_dir, write_session_slice)
        return
    fork = session.fork()
    outcomes = _run(config, [SessionSlice(t, fork) for t in tasks], log_dir, write_session_slice)
    session.merge(*(o["session"] for o in outcomes))


def _check_own(session: Any, target: Path) -> None:
    """Only a repository edown wrote (or an empty one) is rebuilt by ``overwrite``."""
    import zarr

    attrs = dict(zarr.open_group(session.store, mode="r").attrs)
    if attrs and "edown_layout_version" not in attrs:
        raise StackError(
            f"{target} is an icechunk repository edown did not write",
            hint="give another output root; edown rebuilds only its own stacks",
        )


def _commit(
    session: Any,
    verb: str,
    group: AlignmentGroup,
    steps: list[TimeStep],
    total: int,
    target: Path,
    manifest: Manifest,
    started: float,
) -> StackResult:
    times = tuple(utc_iso(s.records[0].acquisition_time_utc) for s in steps)
    snapshot = session.commit(
        f"edown stack: {verb} group {group.group_id} with {len(steps)} time step(s) "
        f"from {manifest.path.name}",
        metadata={
            "edown_version": __version__,
            "manifest": str(manifest.path),
            "group_id": group.group_id,
            "operation": verb,
            "times": list(times),
        },
    )
    return StackResult(
        group.group_id,
        total,
        target,
        None,
        appended=len(steps),
        times=times,
        shape=(total, len(group.band_names), group.height, group.width),
        seconds=time.monotonic() - started,
        snapshot_id=snapshot,
    )
