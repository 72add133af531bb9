"""stack_images: one analysis-ready Zarr (v3) datacube per alignment group, in bounded memory.

Layout of ``<output_root>/stacks/<collection>/<group_id>.zarr`` (documented in ``docs/zarr.md``):

* ``data(time, band, y, x)`` in the group's dtype, Zarr ``fill_value`` and ``_FillValue`` = the downloads'
  nodata; chunks of one time step, all bands and ``chunk_size`` x ``chunk_size`` pixels (512 by default),
  compressed with Blosc/lz4 + byte shuffle. One image owns its chunks, so parallel writers and later
  appends never share a chunk; ``bench/zarr_layout.py`` measured this layout fastest for scene, window
  and time-series reads among the append-safe ones (``docs/performance.md``).
* coordinates ``time`` (UTC acquisition, int64 milliseconds on disk), ``band`` (output names), ``y``/``x``
  (pixel centres), per-time ``image_id`` and the images' scalar properties (e.g.
  ``CLOUDY_PIXEL_PERCENTAGE``), ``cloud_fraction`` when the download computed it (the first image's, for
  a mosaicked time step; NaN where unknown), and the CF grid mapping ``spatial_ref`` (``crs_wkt``, ``GeoTransform``), so
  ``xr.open_zarr(path).rio.crs`` / ``.rio.transform()`` and odc-geo's ``.odc.geobox`` are right.

Images of a group whose AOI windows differ (edge tiles) are placed on the group's common grid. Images
with the *same* acquisition time (neighbouring tiles of one pass on one grid) are mosaicked into one time
step, first valid pixel wins in image-id order, and ``image_id`` lists them joined by ``|``.

Writing streams: each time step is one task that reads its GeoTIFF window by window and writes whole
chunks, so memory is a few chunks per worker whatever the number of images. The same task runs on a
thread pool, a ``distributed.LocalCluster`` or a dask-jobqueue ``SLURMCluster``; every backend writes the
same bytes.

Atomicity: a new store is built under a temporary name and renamed into place. Appending to an existing
store (``overwrite=False``) extends the time axis and writes only the new time steps; readers see the
consolidated metadata, which is rewritten last, so until an append has finished they see the store as it
was, and an interrupted append is discarded and redone by the next run.

``StackConfig(store="icechunk")`` keeps the same datacube in an icechunk repository instead, one commit
per run (:mod:`edown.stack_icechunk`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edown import stac
from edown.config import StackConfig
from edown.crs import crs_wkt
from edown.errors import (
    DiskFullError,
    EdownError,
    ManifestError,
    StackError,
    UnsafePathError,
    is_disk_full,
    user_folder,
)
from edown.geotiff import GTIFF_ONLY
from edown.grid import Transform, offset_in
from edown.manifest import Manifest, config_to_dict, load_manifest
from edown.outputs import stack_path, store_temporary
from edown.progress import Counters, Reporter
from edown.records import AlignmentGroup, DownloadResult, ImageRecord, StackResult, utc_iso
from edown.rootstate import check_no_links, journalled, locked_root
from edown.search import alignment_groups
from edown.stores import StoreURL, is_store_url, on_disk

log = logging.getLogger("edown.stack")

LAYOUT_VERSION = 1
TIME_ENCODING = {"units": "milliseconds since 1970-01-01", "dtype": "int64"}
RESERVED = {"time", "band", "y", "x", "data", "spatial_ref", "image_id", "cloud_fraction"}


@dataclass(frozen=True)
class SliceTask:
    """Everything a worker needs to write one time step (picklable, no open handles)."""

    store: str  # the Zarr store's path (an icechunk stack's repository, for messages only)
    time_index: int
    sources: tuple[tuple[str, int, int], ...]  # (GeoTIFF path, column offset, row offset) in mosaic order
    height: int
    width: int
    bands: int
    dtype: str
    nodata: float
    chunk: int


def write_time_slice(task: SliceTask) -> dict[str, float]:
    """Write one time step into ``data`` of the Zarr store at ``task.store``."""
    import zarr

    return write_slice(zarr.open_array(task.store, path="data", mode="r+"), task)


#: GDAL's block cache while a time step is read, in bytes (rasterio hands the value to GDAL in bytes):
#: next to nothing. Each chunk's window is read once, so a cache only holds memory: 128 MiB of it took
#: the threads backend from 260 to 347 MiB peak for 12% more throughput (bench/stack.py, 25 images).
READ_CACHE_BYTES = 64


def write_slice(array: Any, task: SliceTask) -> dict[str, float]:
    """Write one time step into ``array`` (``data`` of any Zarr store): whole chunks, each composed from
    the sources it overlaps."""
    import rasterio
    from rasterio.windows import Window as RioWindow

    started = time.monotonic()
    written = 0
    fill = np.array(task.nodata, dtype=task.dtype)
    with rasterio.Env(GDAL_CACHEMAX=READ_CACHE_BYTES), contextlib.ExitStack() as stack:
        sources = [
            (stack.enter_context(rasterio.open(path, driver=GTIFF_ONLY)), dc, dr)
            for path, dc, dr in task.sources
        ]
        for cy in range(0, task.height, task.chunk):
            for cx in range(0, task.width, task.chunk):
                h = min(task.chunk, task.height - cy)
                w = min(task.chunk, task.width - cx)
                block: np.ndarray | None = None
                for src, dc, dr in sources:
                    # The part of this chunk the source covers, in source pixel coordinates.
                    c0, r0 = max(cx, dc), max(cy, dr)
                    c1, r1 = min(cx + w, dc + src.width), min(cy + h, dr + src.height)
                    if c0 >= c1 or r0 >= r1:
                        continue
                    piece = src.read(window=RioWindow(c0 - dc, r0 - dr, c1 - c0, r1 - r0))
                    if block is None:
                        block = np.full((task.bands, h, w), fill, dtype=task.dtype)
                    target = block[:, r0 - cy : r1 - cy, c0 - cx : c1 - cx]
                    empty = np.isnan(target) if np.isnan(task.nodata) else target == fill
                    np.copyto(target, piece, where=empty)
                if block is not None:
                    array[task.time_index, :, cy : cy + h, cx : cx + w] = block
                    written += block.nbytes
    return {"bytes": float(written), "seconds": time.monotonic() - started}


# ---- planning -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeStep:
    millis: int
    records: tuple[ImageRecord, ...]
    tiffs: tuple[Path, ...]

    @property
    def image_id(self) -> str:
        return "|".join(r.image_id for r in self.records)


def _time_steps(records: list[tuple[ImageRecord, Path]]) -> list[TimeStep]:
    by_time: OrderedDict[int, list[tuple[ImageRecord, Path]]] = OrderedDict()
    for record, tiff in sorted(records, key=lambda rt: (rt[0].acquisition_time_utc, rt[0].image_id)):
        by_time.setdefault(round(record.acquisition_time_utc.timestamp() * 1000), []).append((record, tiff))
    return [
        TimeStep(ms, tuple(r for r, _ in items), tuple(t for _, t in items)) for ms, items in by_time.items()
    ]


def _properties(steps: list[TimeStep]) -> dict[str, np.ndarray]:
    """Scalar properties shared by the images as per-time coordinates (numbers as float64, text as str),
    and the cloud fraction inside the AOI when it was computed."""
    names: list[str] = []
    for step in steps:
        for record in step.records:
            for key, value in record.properties.items():
                if key not in names and key not in RESERVED and isinstance(value, int | float | str | bool):
                    names.append(key)
    out: dict[str, np.ndarray] = {}
    for name in names:
        values = [step.records[0].properties.get(name) for step in steps]
        present = [v for v in values if v is not None]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
            out[name] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        else:
            out[name] = np.array(["" if v is None else str(v) for v in values], dtype=object)
    fractions = [step.records[0].cloud_fraction for step in steps]
    if any(f is not None for f in fractions):
        out["cloud_fraction"] = np.array([np.nan if f is None else f for f in fractions], dtype=np.float64)
    out["cloud_mask"] = np.array([_cloud_mask_of(step.tiffs[0]) for step in steps], dtype=object)
    return out


def _cloud_mask_of(tiff: Path) -> str:
    """The cloud settings a GeoTIFF was made with (:func:`edown.clouds.mask_identity`, from its own tag):
    each time step of a cube says which mask its pixels and ``cloud_fraction`` follow."""
    from edown.clouds import IDENTITY_TAG
    from edown.geotiff import describe

    return str(describe(tiff)["tags"].get(IDENTITY_TAG, "none"))


#: Per-time values a cube gains on an append when it lacks them (NaN or empty for the earlier times);
#: any other property the store does not have is dropped.
ADDED_ON_APPEND = ("cloud_fraction", "cloud_mask")


def _add_time_array(root: Any, name: str, values: np.ndarray, t_committed: int) -> Any:
    """A new per-time coordinate ``name`` of ``t_committed`` steps (NaN or ""), listed as a coordinate of
    ``data`` so xarray reads it as one."""
    text = values.dtype == object
    arr = root.create_array(
        name,
        shape=(t_committed,),
        dtype=str if text else np.float64,
        chunks=(512,),
        dimension_names=("time",),
        fill_value="" if text else np.nan,
    )
    if t_committed:
        arr[:] = np.array([""] * t_committed, dtype=object) if text else np.full(t_committed, np.nan)
    data = root["data"]
    listed = str(data.attrs.get("coordinates", "")).split()
    data.attrs["coordinates"] = " ".join([*listed, name])
    return arr


def _template(
    group: AlignmentGroup, steps: list[TimeStep], nodata: float, chunk: int, attrs: dict[str, Any]
) -> Any:
    import dask.array as da
    import pandas as pd
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    sx, _, tx, _, sy, ty = group.transform
    x = tx + sx * (np.arange(group.width) + 0.5)
    y = ty + sy * (np.arange(group.height) + 0.5)
    shape = (len(steps), len(group.band_names), group.height, group.width)
    chunks = (1, len(group.band_names), min(chunk, group.height), min(chunk, group.width))
    data = da.full(shape, nodata, dtype=group.dtype, chunks=chunks)
    coords: dict[str, Any] = {
        "time": pd.to_datetime([s.millis for s in steps], unit="ms"),
        "band": ("band", np.array(group.band_names, dtype=object)),  # vlen strings: a spec'd Zarr v3 dtype
        "y": y,
        "x": x,
        "image_id": ("time", np.array([s.image_id for s in steps], dtype=object)),
    }
    for name, values in _properties(steps).items():
        coords[name] = ("time", values)
    ds = xr.Dataset({"data": (("time", "band", "y", "x"), data)}, coords=coords, attrs=attrs)
    ds = ds.rio.write_crs(crs_wkt(group.crs)).rio.write_transform(_affine(group.transform))
    ds["data"].attrs["_FillValue"] = nodata
    # Spelled out so a plain xr.open_zarr() keeps spatial_ref (and the per-time values) as coordinates;
    # xarray would otherwise leave the grid mapping out of "coordinates" and rioxarray could not see the CRS.
    ds["data"].attrs["grid_mapping"] = "spatial_ref"
    ds["data"].encoding["coordinates"] = " ".join(
        ["spatial_ref", *(n for n in ds.coords if n not in ds.dims and n != "spatial_ref")]
    )
    ds["data"].attrs["long_name"] = "reflectance or value as downloaded from Earth Engine"
    ds["time"].attrs["standard_name"] = "time"
    return ds


def _affine(transform: Transform) -> Any:
    from affine import Affine

    return Affine(*transform)


def data_compressors(dtype: Any) -> list[Any]:
    """The codec of ``data``: Blosc lz4 with byte shuffle, measured fastest among the append-safe
    layouts (``bench/zarr_layout.py`` writes its edown row with this)."""
    from zarr.codecs import BloscCodec

    shuffle: Literal["shuffle", "noshuffle"] = "shuffle" if np.dtype(dtype).itemsize > 1 else "noshuffle"
    return [BloscCodec(cname="lz4", clevel=5, shuffle=shuffle)]


def _encoding(ds: Any, chunk: int) -> dict[str, Any]:
    return {
        "data": {
            "chunks": ds["data"].data.chunksize,
            # Zarr's own fill value is what every other reader (GDAL, zarr-python alone) takes as
            # nodata and what an unwritten chunk reads as: it must be the nodata, never 0.
            "fill_value": ds["data"].attrs["_FillValue"],
            "compressors": data_compressors(ds["data"].dtype),
        },
        "time": dict(TIME_ENCODING),
    }


# ---- backends -----------------------------------------------------------------------------------------


#: What a backend runs per task: :func:`write_time_slice`, or a store's own writer taking its own task type
#: (picklable for the dask backends) and returning at least the ``bytes`` it wrote.
Work = Callable[[Any], dict[str, Any]]
Done = Callable[[Any, dict[str, Any]], None]


@contextlib.contextmanager
def _executor(
    config: StackConfig, log_dir: Path, work: Work = write_time_slice
) -> Iterator[Callable[[list[Any], Done], None]]:
    """A function running tasks on the configured backend and reporting each finished task."""
    if config.backend == "threads":
        from concurrent.futures import ThreadPoolExecutor, as_completed

        workers = config.threads or os.cpu_count() or 2

        def run_threads(tasks: list[Any], done: Done) -> None:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edown-stack") as pool:
                futures = {pool.submit(work, t): t for t in tasks}
                for future in as_completed(futures):
                    done(futures[future], future.result())

        yield run_threads
        return

    from distributed import Client
    from distributed import as_completed as dask_completed

    cluster: Any
    if config.backend == "dask-local":
        from distributed import LocalCluster

        cluster = LocalCluster(
            n_workers=config.n_workers,
            threads_per_worker=config.cores_per_worker,
            memory_limit=config.memory_per_worker,
            processes=True,
            dashboard_address=None,
        )
    else:
        try:
            from dask_jobqueue import SLURMCluster  # type: ignore[attr-defined]
        except ImportError:
            raise StackError(
                "backend='dask-slurm' needs dask-jobqueue", hint="pip install 'edown[slurm]'"
            ) from None
        log_dir.mkdir(parents=True, exist_ok=True)
        scheduler: dict[str, Any] = {"dashboard_address": None}
        if config.scheduler_host:
            scheduler["host"] = config.scheduler_host
        cluster = SLURMCluster(
            queue=config.slurm_queue,
            account=config.slurm_account,
            cores=config.cores_per_worker,
            processes=1,
            memory=config.memory_per_worker,
            walltime=config.walltime,
            scheduler_options=scheduler,
            log_directory=str(log_dir),
            job_name="edown-stack",
        )
        cluster.scale(config.n_workers)
    try:
        with Client(cluster) as client:
            if config.backend == "dask-slurm":
                client.wait_for_workers(1, timeout=config.worker_timeout_seconds)

            def run_dask(tasks: list[Any], done: Done) -> None:
                futures = client.map(work, tasks, pure=False)
                by_key = {f.key: t for f, t in zip(futures, tasks, strict=True)}
                for future in dask_completed(futures):
                    done(by_key[future.key], future.result())

            yield run_dask
    finally:
        cluster.close()


# ---- orchestration ------------------------------------------------------------------------------------


def stack_images(config: StackConfig) -> list[StackResult]:
    """Build (or extend) one Zarr datacube per alignment group of one or several download manifests.

    A manifest on an object store (``s3://…/manifests/run-….json``) is stacked into datacubes on that
    store (:mod:`edown.storestack`)."""
    _require_zarr3()
    if any(
        isinstance(p, StoreURL) for p in (config.manifest_path, *config.manifest_paths, config.output_root)
    ):
        from edown.storestack import stack_on_store

        return stack_on_store(config)
    if config.store == "icechunk":
        from edown.stack_icechunk import require_icechunk

        require_icechunk()
    sources = _merge(config)
    manifest = sources.newest
    output_root = on_disk(config.output_root or sources.output_root)
    records = {r.record_key: r for r in sources.records}
    available = {
        r.record_key: r
        for r in sources.downloads
        if r.status in ("downloaded", "skipped_existing")
        and isinstance(r.tiff_path, Path)
        and r.tiff_path.is_file()
    }
    results: list[StackResult] = []
    purpose = f"stack of {manifest.path.name}" + (
        f" and {len(sources.paths) - 1} more manifest(s)" if len(sources.paths) > 1 else ""
    )
    with locked_root(output_root, purpose, ("stacks", "stac")):
        catalog_before = stac.read_catalog(output_root)  # a damaged catalog is refused before work
        for group in sources.groups:
            _check_group(group, [records[k] for k in group.record_keys if k in records], manifest.path)
            members = [
                (records[k], available[k]) for k in group.record_keys if k in available and k in records
            ]
            target = stack_path(output_root, sources.collection_id, group.group_id)
            check_no_links(output_root.absolute(), target.absolute())
            if not members:
                results.append(StackResult(group.group_id, 0, None, "no downloaded images in this group"))
                continue
            try:
                results.append(
                    _stack_group(config, sources.collection_id, group, members, target, output_root, manifest)
                )
            except (StackError, OSError, RuntimeError, ValueError) as exc:
                log.error(
                    "stacking group %s failed: %s",
                    group.group_id,
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                failure: BaseException = DiskFullError(str(output_root)) if is_disk_full(exc) else exc
                message = (
                    failure.message if isinstance(failure, EdownError) else f"{type(exc).__name__}: {exc}"
                )
                results.append(StackResult(group.group_id, 0, None, None, error=message))
        _record(manifest, config, results, output_root, sources.paths)
        _catalog(output_root, sources, results, catalog_before)
    return results


def _catalog(
    output_root: Path,
    sources: _Sources,
    results: list[StackResult],
    existing: dict[str, stac.CollectionState],
) -> None:
    """Describe each datacube now committed in the root's STAC catalog (the lock is held throughout, so
    ``existing``, read when stacking started, is still what is on disk)."""
    groups = {g.group_id: g for g in sources.groups}
    entries = [
        stac.stack_entry(sources.collection_id, groups[r.group_id], r)
        for r in results
        if r.output_path is not None and r.error is None and r.group_id in groups
    ]
    if entries:
        try:
            stac.write_documents(output_root, stac.catalog_documents(output_root, existing, stacks=entries))
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFullError(str(output_root)) from None
            raise


# ---- which manifests ------------------------------------------------------------------------------------


def manifest_files(paths: Iterable[Path]) -> list[Path]:
    """The manifest files named by ``paths``: files as they are, a folder as all its ``run-*.json``.

    Each file appears once, in the order given (a folder's files by name, i.e. by start time).
    """
    found: OrderedDict[Path, None] = OrderedDict()
    for path in paths:
        path = Path(path).expanduser()
        if path.is_dir():
            runs = sorted(path.glob("run-*.json"))
            if not runs:
                raise StackError(
                    f"manifest_path: {path} is a folder without run-*.json manifests",
                    hint="give the manifests folder of an output root (OUTPUT_ROOT/manifests) or a manifest file",
                )
            found.update((run.absolute(), None) for run in runs)
        else:
            found[path.absolute()] = None  # never resolved: a link is not followed out of the root
    return list(found)


def latest_manifest(output_root: Path) -> Path:
    """The manifest of the newest download into ``output_root`` (by the time it started)."""
    folder = Path(output_root).expanduser() / "manifests"
    runs = sorted(folder.glob("run-*.json")) if folder.is_dir() else []
    if not runs:
        raise StackError(
            f"manifest_path: latest: no run-*.json manifest in {folder}",
            hint="download into that output root first, or give --output-root where you downloaded",
        )
    return max((load_manifest(p) for p in runs), key=_recency).path


def _recency(manifest: Manifest) -> tuple[str, str]:
    started = (manifest.doc.get("download") or {}).get("started_utc") or manifest.doc.get("created_utc")
    return (str(started or ""), manifest.path.name)


@dataclass(frozen=True)
class _Sources:
    """What several manifests say together: an image in several is taken from the newest."""

    paths: tuple[Path, ...]
    newest: Manifest
    collection_id: str
    output_root: Path
    records: tuple[ImageRecord, ...]
    downloads: tuple[DownloadResult, ...]
    groups: tuple[AlignmentGroup, ...]


def _merge(config: StackConfig) -> _Sources:
    manifests = sorted(
        (
            _download_manifest(p)
            for p in manifest_files(on_disk(p) for p in (config.manifest_path, *config.manifest_paths))
        ),
        key=_recency,
    )
    newest = manifests[-1]
    searches = [m.search for m in manifests]
    collections = sorted({s.collection_id for s in searches if s is not None})
    if len(collections) > 1:
        raise StackError(
            f"manifest_path: the manifests are of different collections ({', '.join(collections)})",
            hint="stack each collection's manifests separately",
        )
    # A manifest's root is used only where edown made it (rootstate.trusted_root); the GeoTIFFs are read
    # from there, and the datacubes go to the root the user names, else to that same root.
    named = on_disk(config.output_root) if config.output_root is not None else None
    sources = [_source_root(m, named) for m in manifests]
    roots = sorted({str(r) for r in sources})
    if len(roots) > 1 and config.output_root is None:
        raise StackError(
            f"manifest_path: the manifests come from different output roots ({', '.join(roots)})",
            hint="give --output-root / output_root for the datacubes, or stack each root separately",
        )
    records: OrderedDict[str, ImageRecord] = OrderedDict()
    downloads: dict[str, DownloadResult] = {}
    for manifest, search, root in zip(manifests, searches, sources, strict=True):
        assert search is not None
        records.update((r.record_key, r) for r in search.images)
        downloads.update((r.record_key, r) for r in manifest.downloads_in(root))
    if len(manifests) == 1:
        assert searches[0] is not None
        groups = searches[0].alignment_groups
    else:
        ordered = sorted(records.values(), key=lambda r: (r.acquisition_time_utc, r.image_id))
        groups = tuple(alignment_groups(ordered))
    return _Sources(
        paths=tuple(m.path for m in manifests),
        newest=newest,
        collection_id=collections[0],
        output_root=sources[-1],
        records=tuple(records.values()),
        downloads=tuple(downloads.values()),
        groups=groups,
    )


def _check_group(group: AlignmentGroup, records: list[ImageRecord], source: Path) -> None:
    """A group must be exactly its images' common grid: a manifest edited to say otherwise would make the
    datacube (and its memory) whatever size the file chooses."""
    if not records:
        return
    extents = []
    for record in records:
        dc, dr = offset_in(group.transform, record.window_transform)
        extents.append((dc, dr, dc + record.window[2], dr + record.window[3]))
    union = (
        min(e[0] for e in extents),
        min(e[1] for e in extents),
        max(e[2] for e in extents),
        max(e[3] for e in extents),
    )
    names = {tuple(r.output_band_names) for r in records}
    if union != (0, 0, group.width, group.height) or names != {tuple(group.band_names)}:
        raise ManifestError(
            f"manifest {source}: group {group.group_id} does not match its images' grid or bands",
            hint="use the manifest as edown wrote it, or download again to write a new one",
        )


def _source_root(manifest: Manifest, named: Path | None) -> Path:
    """Where ``manifest``'s GeoTIFFs are: its own root if edown can trust it, else the root the user named."""
    if named is None:
        return manifest.trusted_root()
    try:
        return manifest.trusted_root()
    except (UnsafePathError, ManifestError):
        return named


def _download_manifest(path: Path) -> Manifest:
    manifest = load_manifest(path)
    if manifest.search is None:
        raise StackError(f"manifest_path: {path} has no search section", hint="give a download manifest")
    if not (manifest.doc.get("download") or {}).get("results"):
        raise StackError(
            f"manifest_path: {path} records no downloads",
            hint="run `edown download` first and stack the manifest it writes",
        )
    return manifest


def _require_zarr3() -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("zarr").split(".")[0])
    except PackageNotFoundError:
        major = 0
    if major < 3:
        raise StackError(
            "Zarr datacubes need zarr-python >= 3, which needs Python >= 3.11",
            hint="install edown on Python 3.11 or newer (3.12 gets the newest zarr)",
        )


def _stack_group(
    config: StackConfig,
    collection_id: str,
    group: AlignmentGroup,
    members: list[tuple[ImageRecord, DownloadResult]],
    target: Path,
    output_root: Path,
    manifest: Manifest,
) -> StackResult:
    started = time.monotonic()
    nodata = _common_nodata(members)
    pairs = [(record, result.tiff_path) for record, result in members if isinstance(result.tiff_path, Path)]
    log_dir = output_root / "stacks" / ".slurm-logs"
    check_no_links(output_root, log_dir)
    if config.store == "icechunk":
        from edown import stack_icechunk

        return stack_icechunk.stack_group(
            config, collection_id, group, pairs, target, output_root, manifest, nodata, log_dir, started
        )
    if target.exists() and not config.overwrite:
        return _append(config, group, pairs, target, nodata, log_dir, started)
    steps = _time_steps(pairs)
    ds = _template(group, steps, nodata, config.chunk_size, _attrs(collection_id, group, manifest, nodata))
    tmp = store_temporary(target, "tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    with journalled(tmp, "dir"):
        try:
            _to_zarr(ds, tmp, config.chunk_size)
            tasks = _tasks(str(tmp), group, steps, 0, nodata, config.chunk_size)
            _run(config, tasks, log_dir)
            _replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return StackResult(
        group.group_id,
        len(steps),
        target,
        None,
        appended=len(steps),
        times=tuple(utc_iso(r.acquisition_time_utc) for s in steps for r in s.records[:1]),
        shape=(len(steps), len(group.band_names), group.height, group.width),
        seconds=time.monotonic() - started,
    )


def _attrs(collection_id: str, group: AlignmentGroup, manifest: Manifest, nodata: float) -> dict[str, Any]:
    """The datacube's global attributes, written when it is created."""
    return {
        "edown_layout_version": LAYOUT_VERSION,
        "collection_id": collection_id,
        "group_id": group.group_id,
        "created_utc": utc_iso(_now()),
        "source_manifest": str(manifest.path),
        "nodata": "nan" if math.isnan(nodata) else nodata,
    }


def _now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc)


def _common_nodata(members: list[tuple[ImageRecord, DownloadResult]]) -> float:
    values = {("nan" if r.nodata is None or math.isnan(r.nodata) else r.nodata) for _, r in members}
    if len(values) > 1:
        raise StackError(
            f"images of one group were downloaded with different nodata values {sorted(map(str, values))}"
        )
    value = values.pop()
    return float("nan") if value == "nan" else float(value)


def _tasks(
    store: str, group: AlignmentGroup, steps: list[TimeStep], first_index: int, nodata: float, chunk: int
) -> list[SliceTask]:
    tasks = []
    for i, step in enumerate(steps):
        sources = []
        for record, tiff in zip(step.records, step.tiffs, strict=True):
            dc, dr = offset_in(group.transform, record.window_transform)
            if (
                dc < 0
                or dr < 0
                or dc + record.window[2] > group.width
                or dr + record.window[3] > group.height
            ):
                raise StackError(
                    f"{record.image_id} does not fit the stack's grid (offset {dc},{dr})",
                    hint="rebuild with overwrite=True (--overwrite)",
                )
            sources.append((str(tiff), dc, dr))
        tasks.append(
            SliceTask(
                store,
                first_index + i,
                tuple(sources),
                group.height,
                group.width,
                len(group.band_names),
                group.dtype,
                nodata,
                chunk,
            )
        )
    return tasks


def _run(
    config: StackConfig, tasks: list[Any], log_dir: Path, work: Work = write_time_slice
) -> list[dict[str, Any]]:
    """Run ``work`` over ``tasks`` on the configured backend; return what each task returned."""
    counters = Counters(images_total=len(tasks), chunks_total=len(tasks))
    outcomes: list[dict[str, Any]] = []
    with Reporter(counters, "stack", enabled=config.progress), _executor(config, log_dir, work) as execute:

        def done(task: Any, stats: dict[str, Any]) -> None:
            counters.add(images_done=1, chunks_done=1, bytes=int(stats["bytes"]))
            outcomes.append(stats)

        execute(tasks, done)
    return outcomes


def _to_zarr(ds: Any, path: Path, chunk: int) -> None:
    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not (yet) in the v3 spec; xarray reads it by default
        # and edown relies on it as the readers' commit point.
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        ds.to_zarr(path, compute=False, zarr_format=3, consolidated=True, encoding=_encoding(ds, chunk))


def _consolidate(path: Path) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        zarr.consolidate_metadata(str(path))


def _replace(tmp: Path, target: Path) -> None:
    """Swap ``tmp`` into ``target``: an existing store is moved aside first and deleted after."""
    if not target.exists():
        tmp.rename(target)
        return
    old = store_temporary(target, "old")
    with journalled(old, "dir"):
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)


def _append(
    config: StackConfig,
    group: AlignmentGroup,
    pairs: list[tuple[ImageRecord, Path]],
    target: Path,
    nodata: float,
    log_dir: Path,
    started: float,
) -> StackResult:
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr
    import zarr

    committed = xr.open_zarr(target, mask_and_scale=False)
    existing_ids = committed_image_ids(committed, group, target)
    t_committed = committed.sizes["time"]
    check_appends_later(committed, [r for r, _ in pairs if r.image_id not in existing_ids], target)
    committed.close()
    root = zarr.open_group(str(target), mode="r+", use_consolidated=False)
    arrays = time_arrays(root)
    # Time steps beyond the committed ones come from an interrupted append: drop them and redo.
    for arr in arrays.values():
        if arr.shape[0] != t_committed:
            arr.resize((t_committed, *arr.shape[1:]))
    new_pairs = [(r, p) for r, p in pairs if r.image_id not in existing_ids]
    if not new_pairs:
        _consolidate(target)
        return StackResult(
            group.group_id,
            t_committed,
            target,
            None,
            appended=0,
            shape=(t_committed, len(group.band_names), group.height, group.width),
            seconds=time.monotonic() - started,
        )
    steps = _time_steps(new_pairs)
    n = len(steps)
    extend_time(arrays, t_committed, steps, root)
    # An append keeps the store's own chunking, whatever chunk_size says today.
    tasks = _tasks(str(target), group, steps, t_committed, nodata, max(arrays["data"].chunks[-2:]))
    _run(config, tasks, log_dir)
    # No attribute update here: writing the group's metadata would drop the consolidated metadata and
    # expose the half-written append before its commit.
    _consolidate(target)  # the commit point: readers see the new times only now
    total = t_committed + n
    return StackResult(
        group.group_id,
        total,
        target,
        None,
        appended=n,
        times=tuple(utc_iso(s.records[0].acquisition_time_utc) for s in steps),
        shape=(total, len(group.band_names), group.height, group.width),
        seconds=time.monotonic() - started,
    )


def committed_image_ids(committed: Any, group: AlignmentGroup, target: Path) -> set[str]:
    """The image ids in a datacube opened with xarray, after checking that ``group`` may be appended to
    it (same group, bands, dtype and grid)."""
    if committed.attrs.get("group_id") != group.group_id or tuple(committed.band.values) != group.band_names:
        raise StackError(
            f"{target} holds a different group or bands", hint="use overwrite=True (--overwrite)"
        )
    if str(committed["data"].dtype) != group.dtype:
        raise StackError(
            f"{target} has dtype {committed['data'].dtype}, not {group.dtype}", hint="use overwrite=True"
        )
    stored_transform = tuple(committed.rio.transform())[:6]
    if (committed.sizes["y"], committed.sizes["x"]) != (
        group.height,
        group.width,
    ) or stored_transform != tuple(group.transform):
        raise StackError(
            f"{target} is on a different grid than group {group.group_id}", hint="use overwrite=True"
        )
    existing_ids: set[str] = set()
    for joined in committed["image_id"].values.tolist():
        existing_ids.update(str(joined).split("|"))
    return existing_ids


def check_appends_later(committed: Any, new: list[ImageRecord], target: Path) -> None:
    """Refuse an append of times earlier than the cube's last one: appending only grows the time axis at
    its end, and a cube whose time axis is out of order breaks ``sel(time=slice(...))`` and resampling."""
    if not new or committed.sizes["time"] == 0:
        return
    import pandas as pd

    last = pd.Timestamp(committed["time"].values.max()).tz_localize("UTC")
    first_new = min(r.acquisition_time_utc for r in new)
    if pd.Timestamp(first_new) <= last:
        raise StackError(
            f"{target} holds times up to {utc_iso(last.to_pydatetime())}; this run adds"
            f" {utc_iso(first_new)}, which an append would put out of order",
            hint="rebuild the cube from all the manifests with --overwrite (overwrite=True)",
        )


def time_arrays(root: Any) -> dict[str, Any]:
    """The arrays of a Zarr group whose first dimension is ``time`` (``data`` and the per-time values)."""
    return {
        name: arr
        for name, arr in root.arrays()
        if (getattr(arr.metadata, "dimension_names", None) or ("",))[0] == "time"
    }


def extend_time(arrays: dict[str, Any], t_committed: int, steps: list[TimeStep], root: Any = None) -> None:
    """Grow the time arrays by ``steps`` and write their time, image ids and properties (a property the
    store does not have is dropped, except :data:`ADDED_ON_APPEND`, added when ``root`` is given; one the
    new images lack is NaN or empty)."""
    n = len(steps)
    props = _properties(steps)
    if root is not None:
        for name in ADDED_ON_APPEND:
            if name in props and name not in arrays:
                arrays[name] = _add_time_array(root, name, props[name], t_committed)
                # Reopened: resizing the stale handle would write back its metadata without the new name.
                arrays["data"] = root["data"]
    for arr in arrays.values():
        arr.resize((t_committed + n, *arr.shape[1:]))
    arrays["time"][t_committed:] = np.array([s.millis for s in steps], dtype=np.int64)
    arrays["image_id"][t_committed:] = np.array([s.image_id for s in steps], dtype=object)
    for name, arr in arrays.items():
        if name in ("data", "time", "image_id"):
            continue
        if name in props:
            arr[t_committed:] = props[name]
        elif np.dtype(arr.dtype).kind == "f":
            arr[t_committed:] = np.full(n, np.nan)
        else:
            arr[t_committed:] = np.array([""] * n, dtype=object)


def _record(
    manifest: Manifest,
    config: StackConfig,
    results: list[StackResult],
    output_root: Path,
    sources: tuple[Path, ...],
) -> None:
    manifest.doc["stack"] = {
        "config": config_to_dict(config),
        "manifests": [str(p) for p in sources],
        "finished_utc": utc_iso(_now()),
        "results": [r.to_dict(output_root) for r in results],
    }
    # The datacubes are committed by now; a manifest that cannot be updated is still the user's to fix.
    with user_folder(manifest.path.parent, "manifest folder", "-m / manifest_path"):
        manifest.write()


def open_stack(path: str | Path, masked: bool = False, snapshot: str | None = None, as_of: Any = None) -> Any:
    """Open a datacube written by :func:`stack_images` as an xarray Dataset with its CRS attached.

    ``masked=False`` keeps the stored dtype (nodata in ``data.attrs['_FillValue']``); ``masked=True`` gives
    floats with NaN where there is no data, as ``xr.open_zarr`` does by default. An icechunk stack
    (``store="icechunk"``) opens at its newest commit, or at the commit ``snapshot`` (an id, as in
    ``StackResult.snapshot_id``), or as it was at the time ``as_of`` (a timezone-aware datetime).
    """
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    from edown import stack_icechunk

    if is_store_url(path):
        if snapshot is not None or as_of is not None:
            raise StackError(
                f"{path} is a Zarr store on an object store: it has no snapshots",
                hint="snapshot= and as_of= are for stacks built with store='icechunk'",
            )
        from edown.storestack import open_store_zarr

        ds = xr.open_zarr(open_store_zarr(StoreURL(str(path))), mask_and_scale=masked)
    else:
        path = Path(path)
        if stack_icechunk.is_repository(path):
            ds = stack_icechunk.open_repository(path, masked, snapshot, as_of)
        elif snapshot is not None or as_of is not None:
            raise StackError(
                f"{path} is not an icechunk stack: it has no snapshots",
                hint="snapshot= and as_of= are for stacks built with store='icechunk'",
            )
        elif not (path / "zarr.json").exists():
            raise StackError(
                f"{path} is not a Zarr store written by edown",
                hint="give a path like data/stacks/<collection>/<group>.zarr (or <group>.icechunk), "
                "or its s3:// / gs:// URL",
            )
        else:
            ds = xr.open_zarr(path, mask_and_scale=masked)
    if ds.rio.crs is None and "spatial_ref" in ds.coords:
        ds = ds.rio.write_crs(ds["spatial_ref"].attrs.get("crs_wkt"))
    return ds
