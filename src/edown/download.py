"""download_images: native-grid GeoTIFFs at Earth Engine's quota ceiling, exact, atomic and resumable.

The run has three stages:

1. **Plan** (``prepare_workers`` threads): for every search record decide its output path and status
   (missing bands, outside the AOI, existing output), and find chunks already stored by an interrupted
   run. ``auto`` chunks are cut for the whole run at once by the cost model of :mod:`edown.plan` (the
   fewest, largest requests that still keep the quota busy, within Earth Engine's limits); ``fixed``
   chunks by :func:`edown.grid.plan_chunks`.
2. **Fetch** (:mod:`edown.scheduler`; ``max_concurrent_requests`` threads, paced by the connection's
   :class:`~edown.earthengine.RequestPacer` to the project's quotas): one queue holds the chunks of *all*
   images, oldest image first, so the quota stays busy and images finish in order. Each response streams
   straight into its chunk file; ``max_inflight_chunks`` bounds the bytes in flight or waiting for the
   writer (that many requests of the largest size), not the requests. The measured latency and bandwidth
   re-cut the chunks not yet sent. A request Earth Engine refuses as too large is split in two and
   requeued; transient failures are retried with backoff; any other error fails that image at once.
3. **Write** (:mod:`edown.writer`, ``download_workers`` threads): when an image's last chunk is stored
   its GeoTIFF is assembled, verified and renamed into place, with a JSON sidecar (two at a time while
   responses still arrive). Chunks of an interrupted image stay on disk, so the next run fetches only
   what is missing.

Nodata: Earth Engine serves masked pixels as zeros, which are valid values, so each request asks for
``unmask(fill, sameFootprint=False)``: pixels without data arrive as ``nodata`` (default: NaN for floats,
the dtype's maximum for integers). A ``cloud_mask`` is applied just before (:mod:`edown.clouds`), so cloud
pixels arrive as nodata too; images above ``max_cloud_fraction`` get status ``cloudy`` and no request.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from edown import earthengine, geotiff, stac
from edown.bands import build_image, check_nodata_fits, default_nodata, fill_value
from edown.clouds import DEFAULT_THRESHOLD, IDENTITY_TAG, MASKS, clear_mask, mask_identity
from edown.config import DownloadConfig, SearchConfig
from edown.errors import (
    ConfigError,
    DiskFullError,
    EdownError,
    OutputExistsError,
    is_disk_full,
    user_folder,
)
from edown.geotiff import OutputSpec, describe, tags_for
from edown.grid import Window, plan_chunks, request_bytes
from edown.manifest import (
    Manifest,
    config_to_dict,
    load_manifest,
    new_manifest,
    now_utc,
    set_search,
)
from edown.outputs import (
    ChunkStore,
    StoredChunk,
    covered_by,
    image_tiff_path,
    partial_dir,
)
from edown.plan import Area, CostModel, plan_requests, resume_plan, reusable, uncovered
from edown.plugins import bind, load_plugin
from edown.progress import Counters, Reporter
from edown.records import DownloadResult, DownloadSummary, ImageRecord, SearchResult, utc_iso
from edown.rootstate import HeldRoot, check_no_links, locked_root
from edown.scheduler import Fetcher, FetchQueue
from edown.search import (
    alignment_groups,
    connection_for,
    is_cloudy,
    search_images,
    with_cloud_fractions,
)
from edown.storeroot import (
    chunk_store,
    fetched,
    locked_store_root,
    mirrored,
    pull_tree,
    staging,
    upload,
    uploads_of,
)
from edown.storeroot import exists as staged_exists
from edown.stores import Location, ObjectStore, StoreURL, on_disk
from edown.writer import ByteBudget, ChunkWriter

log = logging.getLogger("edown.download")

MANIFEST_EVERY_S = 5.0


# ---- plan ---------------------------------------------------------------------------------------------


@dataclass
class ImageJob:
    """One record's download: its plan, its progress and its outcome."""

    index: int
    record: ImageRecord
    tiff: Path
    spec: OutputSpec
    store: ChunkStore
    chunks: list[Window]
    stored: list[StoredChunk]
    nodata: float
    expression: Any = None
    #: The chunks this run queued for fetching when it took the image (None until then).
    queued: list[Window] | None = None
    outstanding: int = 0
    requests: int = 0
    retries: int = 0
    bytes: int = 0
    fetched: int = 0
    started: float | None = None
    finished: float | None = None
    status: str | None = None
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def chunk_count(self) -> int:
        return len(self.chunks)

    def result(self, status: str | None = None, error: str | None = None) -> DownloadResult:
        elapsed = (self.finished or time.monotonic()) - self.started if self.started else 0.0
        final_status = status or self.status or "failed"
        return DownloadResult(
            image_id=self.record.image_id,
            status=final_status,
            tiff_path=self.tiff if final_status in ("downloaded", "skipped_existing") else None,
            chunk_count=self.chunk_count,
            error=error or self.error,
            record_key=self.record.record_key,
            alignment_signature=self.record.alignment_signature,
            chunks_fetched=self.fetched,
            bytes_downloaded=self.bytes,
            requests=self.requests,
            retries=self.retries,
            seconds=elapsed,
            nodata=self.nodata,
            cloud_fraction=self.record.cloud_fraction,
        )


def _skipped(
    record: ImageRecord, status: str, tiff: Path | None, error: str | None = None, nodata: float | None = None
) -> DownloadResult:
    return DownloadResult(
        image_id=record.image_id,
        status=status,
        tiff_path=tiff,
        chunk_count=0,
        error=error,
        record_key=record.record_key,
        alignment_signature=record.alignment_signature,
        nodata=nodata,
        cloud_fraction=record.cloud_fraction,
    )


@dataclass
class Plan:
    jobs: list[ImageJob]
    skipped: list[DownloadResult]
    order: list[str]  # record keys in search order, for the results
    model: CostModel = field(default_factory=CostModel)

    def totals(self) -> dict[str, Any]:
        """The plan in numbers. ``requests`` and ``request_bytes`` are what was to be fetched: when a run
        took each image (chunks stored by an earlier run not counted), or, before any run (a dry run),
        what a run would fetch now."""
        chunks = [w for j in self.jobs for w in j.chunks]
        todo = [(j, w) for j in self.jobs for w in (j.queued if j.queued is not None else _missing(j))]
        req_bytes = sum(
            request_bytes(w.pixels, len(j.spec.band_names), np.dtype(j.spec.dtype).itemsize) for j, w in todo
        )
        return {
            "images": len(self.jobs),
            "skipped": len(self.skipped),
            "chunks": len(chunks),
            "requests": len(todo),
            "request_bytes": req_bytes,
            "output_pixels": sum(j.spec.width * j.spec.height for j in self.jobs),
        }


def _missing(job: ImageJob) -> list[Window]:
    stored = set()
    for window in job.chunks:
        if covered_by(window, job.stored) is not None:
            stored.add(window)
    return [w for w in job.chunks if w not in stored]


def plan_download(config: DownloadConfig, search: SearchResult) -> Plan:
    """Decide every record's fate and chunking without fetching anything."""
    model = run_cost_model(config)
    prepared = prepare_jobs(config, list(enumerate(search.images)), model)
    jobs = [p for p in prepared if isinstance(p, ImageJob)]
    skipped = [p for p in prepared if isinstance(p, DownloadResult)]
    return Plan(jobs, skipped, [r.record_key for r in search.images], model)


def prepare_jobs(
    config: DownloadConfig,
    records: list[tuple[int, ImageRecord]],
    model: CostModel,
    on_job: Callable[[ImageJob], None] | None = None,
) -> list[ImageJob | DownloadResult]:
    """Decide the fate and chunking of ``(index, record)`` pairs (``prepare_workers`` threads), in order.

    ``on_job`` receives each downloadable job as soon as it and those before it are ready, so a run can
    fetch the first images while later ones are still being prepared. Raises
    :class:`~edown.errors.OutputExistsError` before calling it when outputs exist and neither
    ``resume`` nor ``overwrite`` is set.
    """
    plugin = load_plugin(config.transform_plugin) if config.transform_plugin else None
    planned = _planned_chunks(config, records, model)
    output_root = on_disk(config.output_root)
    root = output_root.absolute()
    if not config.resume and not config.overwrite:
        existing = [
            tiff
            for _, r in records
            if (tiff := image_tiff_path(output_root, r.collection_id, r.system_index, r.grid_label))
            and staged_exists(tiff)
            and not r.missing_bands
            and not r.outside_aoi
            and not is_cloudy(r, config.max_cloud_fraction)
        ]
        if existing:
            raise OutputExistsError(
                f"{len(existing)} output(s) already exist, e.g. {existing[0]}",
                hint="pass resume=True (--resume) to keep them, or overwrite=True (--overwrite) to replace them",
            )

    def prepare(item: tuple[int, ImageRecord]) -> ImageJob | DownloadResult:
        index, record = item
        tiff = image_tiff_path(output_root, record.collection_id, record.system_index, record.grid_label)
        if record.missing_bands:
            return _skipped(
                record,
                "skipped_missing_bands",
                None,
                f"image lacks band(s) {', '.join(record.missing_bands)}",
            )
        if record.outside_aoi:
            return _skipped(record, "skipped_outside_aoi", None)
        if is_cloudy(record, config.max_cloud_fraction):
            return _skipped(
                record,
                "cloudy",
                None,
                f"cloud fraction {record.cloud_fraction:.4f} > max_cloud_fraction {config.max_cloud_fraction:g}",
            )
        names = record.output_band_names
        dtype = record.output_dtype
        nodata = default_nodata(dtype) if config.nodata is None else float(config.nodata)
        check_nodata_fits(nodata, dtype)
        window = record.aoi_window
        identity = mask_identity(config.cloud_mask, config.cloud_score_threshold)
        tags = tags_for(
            record.image_id, record.version, record.properties, utc_iso(record.acquisition_time_utc)
        )
        if identity != "none":
            tags[IDENTITY_TAG] = identity
        spec = OutputSpec(
            width=window.width,
            height=window.height,
            band_names=names,
            dtype=dtype,
            crs=record.native_crs,
            transform=record.window_transform,
            nodata=nodata,
            compression=config.compression,
            cog=config.cog,
            tags=tags,
        )
        check_no_links(root, tiff.absolute())
        store = chunk_store(partial_dir(tiff), root, identity)
        store.check()
        if staged_exists(tiff) and not config.overwrite:
            problem = _existing_mismatch(tiff, spec)
            if problem:
                raise OutputExistsError(
                    f"{tiff} exists but {problem}",
                    hint="replace it with --overwrite (overwrite=True), or keep both with another --output-root"
                    + (" (or rerun with its cloud mask)" if "cloud mask" in problem.split(";")[0] else ""),
                )
            return _skipped(record, "skipped_existing", tiff, nodata=nodata)
        chunks = planned.get(index)
        if chunks is None:
            chunks = plan_chunks(
                window,
                len(names),
                np.dtype(dtype).itemsize,
                config.request_byte_limit,
                chunk_size=config.chunk_size,
                mode=config.chunk_size_mode,
            )
        reuse = config.resume and not config.overwrite
        stored = store.existing(len(names), dtype, cleanup=not config.dry_run) if reuse else []
        job = ImageJob(index, record, tiff, spec, store, chunks, stored, nodata)
        _plan_around_stored(config, job, model)
        if not config.dry_run:
            fill = fill_value(dtype, nodata)
            bound = None
            if plugin is not None:
                assert config.transform_plugin is not None
                bound = bind(plugin, config.transform_plugin, metadata_from_record(record), config)
            selected = [b for b in record.selected_band_ids if b not in record.missing_bands]
            clear = None
            if config.cloud_mask is not None:
                clear = clear_mask(
                    record.image_id, record.system_index, config.cloud_mask, config.cloud_score_threshold
                )
            job.expression = build_image(
                record.image_id, selected, names, dtype, fill, config.scale_map, bound, clear
            )
        return job

    out: list[ImageJob | DownloadResult] = []
    with ThreadPoolExecutor(max_workers=config.prepare_workers, thread_name_prefix="edown-prepare") as pool:
        for item in pool.map(prepare, records):
            if on_job is not None and isinstance(item, ImageJob):
                on_job(item)
            out.append(item)
    return out


def _plan_around_stored(config: DownloadConfig, job: ImageJob, model: CostModel) -> None:
    """Keep every stored chunk of an interrupted run, even one an earlier plan cut differently (another
    cost model, chunk size or split), and cut only the rest: arrived pixels are never fetched again."""
    if not job.stored or all(covered_by(w, job.stored) is not None for w in job.chunks):
        return
    area = _area(job.record)
    stored = [c.window for c in job.stored]
    if config.chunk_size_mode == "auto" and config.chunk_size is None:
        job.chunks = resume_plan({0: area}, {0: stored}, model, config.request_byte_limit)[0]
        return
    kept = reusable(area.window, stored)
    job.chunks = kept + [
        w
        for region in uncovered(area.window, kept)
        for w in plan_chunks(
            region,
            area.band_count,
            area.itemsize,
            config.request_byte_limit,
            chunk_size=config.chunk_size,
            mode=config.chunk_size_mode,
        )
    ]


def run_cost_model(config: DownloadConfig) -> CostModel:
    """The cost model a run starts from: documented defaults under the run's own quotas."""
    return CostModel(
        requests_per_second=config.max_requests_per_second, concurrency=config.max_concurrent_requests
    )


def _area(record: ImageRecord) -> Area:
    return Area(record.aoi_window, len(record.output_band_names), np.dtype(record.output_dtype).itemsize)


def _planned_chunks(
    config: DownloadConfig, records: list[tuple[int, ImageRecord]], model: CostModel
) -> dict[int, list[Window]]:
    """The ``auto`` cut of every downloadable record by the cost model, for the whole run at once
    (``fixed`` chunks, or ``auto`` with a ``chunk_size`` cap, are cut per image by :func:`plan_chunks`)."""
    if config.chunk_size_mode != "auto" or config.chunk_size is not None:
        return {}
    areas = {
        i: _area(r)
        for i, r in records
        if not r.missing_bands
        and not r.outside_aoi
        and not r.aoi_window.is_empty
        and not is_cloudy(r, config.max_cloud_fraction)
    }
    return plan_requests(areas, model, config.request_byte_limit)


def metadata_from_record(record: ImageRecord) -> dict[str, Any]:
    """The plugin's ``metadata`` argument, rebuilt from a search record (same keys as at search time)."""
    return {
        "id": record.image_id,
        "collection_id": record.collection_id,
        "time_start": round(record.acquisition_time_utc.timestamp() * 1000),
        "properties": dict(record.properties),
    }


def _existing_mismatch(tiff: Path, spec: OutputSpec) -> str | None:
    """What differs between an existing output and this run's (None when it is the same output).

    Names depend only on the collection and the image (and its grid label), so another selection of
    bands, another AOI or another nodata in the same output root meets the earlier file.
    """
    try:
        with fetched(tiff) as local:
            found = describe(local)
    except Exception as exc:
        return f"cannot be read ({type(exc).__name__})"
    there: list[str] = []
    here: list[str] = []

    def differ(what: str, old: str, new: str) -> None:
        there.append(f"{what} {old}")
        here.append(f"{what} {new}")

    if tuple(found["band_names"]) != spec.band_names:
        differ("bands", ", ".join(map(str, found["band_names"])), ", ".join(spec.band_names))
    if (found["width"], found["height"]) != (spec.width, spec.height):
        differ("size", f"{found['width']}x{found['height']} px", f"{spec.width}x{spec.height} px")
    if found["dtype"] != spec.dtype:
        differ("dtype", found["dtype"], spec.dtype)
    nodata = found["nodata"]
    same_nodata = nodata == spec.nodata or (
        nodata is not None and math.isnan(nodata) and math.isnan(spec.nodata)
    )
    if not same_nodata:
        differ("nodata", "none" if nodata is None else f"{nodata:g}", f"{spec.nodata:g}")
    old, new = found["transform"], spec.transform
    if not all(math.isclose(a, b, abs_tol=1e-6 * abs(new[0])) for a, b in zip(old, new, strict=True)):
        differ(
            "grid",
            f"origin {old[2]:.10g},{old[5]:.10g} step {abs(old[0]):g}",
            f"origin {new[2]:.10g},{new[5]:.10g} step {abs(new[0]):g}",
        )
    made_with, makes = found["tags"].get(IDENTITY_TAG, "none"), (spec.tags or {}).get(IDENTITY_TAG, "none")
    if made_with != makes:
        differ("cloud mask", made_with, makes)
    if not there:
        return None
    return (
        f"with {', '.join(there)}; this run makes {', '.join(here)} (a file's name comes from its image only,"
        " not from the bands, AOI, nodata or cloud mask)"
    )


# ---- fetch + write ------------------------------------------------------------------------------------


class _Run:
    """One download run's threads: fetchers (:class:`~edown.scheduler.Fetcher`) feed the writer
    (:class:`~edown.writer.ChunkWriter`); this class only reconciles stored chunks, starts and stops them,
    takes images while they run (:meth:`add`, as a streamed search finds them) and waits until every
    image has an outcome."""

    def __init__(
        self,
        config: DownloadConfig,
        conn: earthengine.Connection,
        counters: Counters,
        on_image_done: Callable[[], None],
        model: CostModel | None = None,
    ) -> None:
        self.config = config
        self.conn = conn
        self.jobs: list[ImageJob] = []
        self.counters = counters
        self.on_image_done = on_image_done
        self.model = model or run_cost_model(config)
        self.policy = earthengine.RetryPolicy(
            max_retries=config.max_retries, base_delay=config.retry_delay_seconds
        )
        self.stop = threading.Event()
        self.remaining = 0
        self.done_cond = threading.Condition()
        self.jobs_by_index: dict[int, ImageJob] = {}
        #: Bytes of responses in flight or waiting to be stored (``max_inflight_chunks`` of the largest size).
        self.budget = ByteBudget(config.max_inflight_chunks * config.request_byte_limit)
        self.queue: FetchQueue | None = None
        self.writer: ChunkWriter | None = None
        self.fetcher: Fetcher | None = None
        #: True while jobs may still be added (a streamed search is still listing images).
        self.adding = True
        #: Set when writing can no longer succeed (a full disk): the run stops and this is raised.
        self.fatal: EdownError | None = None

    # -- lifecycle --
    def start(self) -> None:
        """Start the fetch and writer threads; jobs come with :meth:`add`, while they run."""
        self.queue = FetchQueue(
            {},
            {},
            self.model,
            self.config.request_byte_limit,
            learn=self.config.chunk_size_mode == "auto" and self.config.chunk_size is None,
            on_replan=self._replanned,
        )
        self.writer = ChunkWriter(
            self.config.download_workers,
            self.counters,
            self.budget,
            self._finish,
            self._disk_full,
            on_stored=self._stored,
        )
        self.fetcher = Fetcher(
            self.config.max_concurrent_requests,
            self.conn,
            self.policy,
            self.queue,
            self.budget,
            self.writer,
            self.jobs_by_index,
            self.counters,
            self._finish,
            self.stop,
        )
        self.writer.start()
        self.fetcher.start()

    def add(self, jobs: list[ImageJob]) -> None:
        """Queue ``jobs`` (prepared images) for fetching; reconciles their stored chunks first."""
        assert self.queue is not None and self.writer is not None
        reuse = self.config.resume and not self.config.overwrite
        for job in jobs:
            if not reuse:
                job.store.remove()
                job.stored = []
            todo = [w for w in job.chunks if covered_by(w, job.stored) is None]
            # Stored pieces that do not tile a planned chunk (overlapping ones) cannot be reused.
            keep = {c.path for w in job.chunks if (cov := covered_by(w, job.stored)) for c in cov}
            for chunk in job.stored:
                if chunk.path not in keep:
                    job.store.discard(chunk)
            job.stored = [c for c in job.stored if c.path in keep]
            job.outstanding = len(todo)
            job.queued = todo
            self.jobs_by_index[job.index] = job
            with self.done_cond:
                self.remaining += 1
            self.jobs.append(job)
            self.counters.add(
                images_total=1,
                chunks_total=len(job.chunks),
                chunks_done=len(job.chunks) - len(todo),
            )
            if not todo:
                # Decided before its chunks are queued: it cannot reach zero outstanding chunks on its own.
                self.writer.assemble_later(job)
            else:
                self.queue.add(job.index, _area(job.record), todo)

    def close_adding(self) -> None:
        """No more jobs will come: once the queue drains, every response has arrived."""
        with self.done_cond:
            self.adding = False
            self.done_cond.notify_all()

    def wait(self) -> None:
        assert self.queue is not None and self.writer is not None
        try:
            with self.done_cond:
                while (self.adding or self.remaining > 0) and self.fatal is None:
                    self.done_cond.wait(timeout=0.1)
                    if not self.adding and self.queue.empty and self.budget.used == 0:
                        self.writer.fetching_done()
        except KeyboardInterrupt:
            self.stop.set()
            raise

    def shutdown(self) -> None:
        self.stop.set()
        if self.queue is not None:
            self.queue.close()
        if self.fetcher is not None:
            self.fetcher.join(timeout=2)
        if self.writer is not None:
            self.writer.stop(timeout=60)

    def planner_stats(self) -> dict[str, Any]:
        """What the planner learned: the cost model the responses imply and how often it re-cut unsent
        chunks."""
        model = self.queue.learned() if self.queue is not None else self.model
        return {
            "latency_seconds": round(model.latency_seconds, 3),
            "bandwidth_mb_per_s": round(model.bandwidth_bytes_per_second / 1e6, 2),
            "responses_measured": self.queue.learner.count if self.queue is not None else 0,
            "replans": self.queue.replans if self.queue is not None else 0,
            "peak_queued_mb": round(self.budget.peak / 1e6, 1),
        }

    def _replanned(self, index: int, removed: list[Window], added: list[Window]) -> None:
        job = self.jobs_by_index[index]
        gone = set(removed)
        with job.lock:
            job.chunks = [c for c in job.chunks if c not in gone] + added
            job.outstanding += len(added) - len(removed)
        self.counters.add(chunks_total=len(added) - len(removed))

    def _stored(self) -> None:
        """A chunk was stored: :meth:`wait` looks at once whether that was the last response."""
        with self.done_cond:
            self.done_cond.notify_all()

    def _disk_full(self) -> None:
        self.fatal = DiskFullError(str(self.config.output_root))
        self.stop.set()
        with self.done_cond:
            self.done_cond.notify_all()

    def _finish(self, job: ImageJob, status: str, error: str | None = None) -> None:
        with job.lock:
            if job.status is not None:
                return
            job.status = status
            job.error = error
            job.finished = time.monotonic()
        if status == "downloaded":
            self.counters.add(images_done=1)
        else:
            self.counters.add(images_failed=1)
        with self.done_cond:
            self.remaining -= 1
            self.done_cond.notify_all()
        self.on_image_done()


# ---- orchestration ------------------------------------------------------------------------------------


def _manifest_path(config: DownloadConfig, started: dt.datetime) -> Location:
    if config.manifest_path is not None:
        return config.manifest_path
    return config.manifests_dir / f"run-{started.strftime('%Y%m%dT%H%M%S')}Z.json"


@dataclass(frozen=True)
class _StoreTarget:
    """Where a staged run's outputs really go: the store root (None when only the manifest is on a
    store), its id, and the staging folder that stands for it."""

    root: StoreURL | None
    root_id: str | None
    staged_root: Path
    manifest: StoreURL | None = None

    def url_of(self, path: Path | StoreURL | None) -> Path | StoreURL | None:
        if path is None or self.root is None or isinstance(path, StoreURL):
            return path
        try:
            return self.root / path.absolute().relative_to(self.staged_root.absolute()).as_posix()
        except ValueError:
            return path


def _unused_run_name(path: Path) -> Path:
    """``run-<UTC second>Z.json``, or the next second not yet taken (called under the root's lock).

    Two runs into one root that start within the same second run one after the other; the later one must
    not replace the earlier one's record, and names must still sort by start (``stack -m latest``).
    """
    stamp = dt.datetime.strptime(path.name, "run-%Y%m%dT%H%M%SZ.json")
    while staged_exists(path):
        stamp += dt.timedelta(seconds=1)
        path = path.with_name(f"run-{stamp.strftime('%Y%m%dT%H%M%S')}Z.json")
    return path


def _download_section(
    config: DownloadConfig,
    started: dt.datetime,
    results: list[DownloadResult],
    stats: dict[str, Any],
    finished: dt.datetime | None,
    base: Path,
    interrupted: bool = False,
) -> dict[str, Any]:
    search_fields = {f.name for f in fields(SearchConfig)}
    downloaded, skipped, failed = DownloadSummary.tally(tuple(results))
    return {
        "config": {
            k: v for k, v in config_to_dict(config).items() if k not in search_fields or k == "server_url"
        },
        "started_utc": utc_iso(started),
        "finished_utc": utc_iso(finished) if finished else None,
        "state": "interrupted" if interrupted else "finished" if finished else "running",
        "counts": {"downloaded": downloaded, "skipped": skipped, "failed": failed, "total": len(results)},
        "results": [r.to_dict(base) for r in results],
        "stats": stats,
    }


def resolve_search(config: DownloadConfig) -> SearchResult:
    """The search to download: a saved search manifest when given, else a fresh search."""
    if config.search_manifest is not None:
        manifest = load_manifest(config.search_manifest, "search_manifest")
        result = manifest.search
        if result is None:
            raise ConfigError("search_manifest", f"{config.search_manifest} has no search section")
        saved = manifest.search_config or {}
        if _saved_mask(saved) != mask_identity(config.cloud_mask, config.cloud_score_threshold):
            # Fractions counted under another mask say nothing about this one: forget them (and the
            # groups they shaped), and count again below when this run filters on them.
            records = [replace(r, cloud_fraction=None) for r in result.images]
            result = replace(
                result, images=tuple(records), alignment_groups=tuple(alignment_groups(records, None))
            )
        if config.max_cloud_fraction is not None and any(
            r.cloud_fraction is None and not r.outside_aoi for r in result.images
        ):
            result = _add_cloud_fractions(config, result)
        return result
    return search_images(config)


def _saved_mask(saved: dict[str, Any]) -> str:
    """:func:`~edown.clouds.mask_identity` of a saved search's config (an unknown mask stays as written)."""
    mask, threshold = saved.get("cloud_mask"), saved.get("cloud_score_threshold", DEFAULT_THRESHOLD)
    if mask is not None and mask not in MASKS:
        return str(mask)
    if not isinstance(threshold, int | float):
        return f"{mask}@{threshold}"
    return mask_identity(mask, threshold)


def _add_cloud_fractions(config: DownloadConfig, result: SearchResult) -> SearchResult:
    """A saved search read with ``max_cloud_fraction``: count its images' clouds now (batched)."""
    conn = connection_for(config)
    policy = earthengine.RetryPolicy(max_retries=config.max_retries, base_delay=config.retry_delay_seconds)
    records = with_cloud_fractions(conn, config, list(result.images), policy)
    return replace(
        result,
        images=tuple(records),
        alignment_groups=tuple(alignment_groups(records, config.max_cloud_fraction)),
    )


def download_images(config: DownloadConfig) -> DownloadSummary:
    """Search (or read a saved search) and download native-grid GeoTIFFs plus a JSON run manifest.

    Returns a :class:`~edown.records.DownloadSummary`; images that fail are reported there (status
    ``failed`` with Earth Engine's message) rather than raised. Bad input raises
    :class:`~edown.errors.ConfigError`; outputs that exist with ``resume=False`` and ``overwrite=False``
    raise :class:`~edown.errors.OutputExistsError` before anything is fetched.

    ``output_root`` and ``manifest_path`` may be ``s3://`` / ``gs://`` URLs: the run is then staged
    locally and every output uploaded whole (:mod:`edown.storeroot`).
    """
    started_wall = now_utc()
    if not isinstance(config.output_root, StoreURL) and not isinstance(config.manifest_path, StoreURL):
        return _download(config, started_wall, None)
    manifest_target = _manifest_path(config, started_wall)
    with staging() as stage, contextlib.ExitStack() as stack:
        local_root = stage / "root" if isinstance(config.output_root, StoreURL) else config.output_root
        local_manifest: Path | None = None
        if isinstance(config.manifest_path, StoreURL):
            named = config.manifest_path
            local_manifest = stage / "manifest" / named.name
            (stage / "manifest").mkdir()
            stack.enter_context(mirrored(local_manifest, ObjectStore(named.parent), named.name))
        elif config.manifest_path is not None:
            local_manifest = config.manifest_path
        root_id = None
        if isinstance(config.output_root, StoreURL):
            if config.dry_run:  # read-only: no lock, no marker
                store = ObjectStore(config.output_root)
            else:
                store, root_id = stack.enter_context(
                    locked_store_root(config.output_root, f"download to {config.output_root}")
                )
            stack.enter_context(mirrored(local_root, store))
        local = replace(
            config,
            output_root=local_root,
            manifest_path=local_manifest,
            cog=config.cog or isinstance(config.output_root, StoreURL),
        )
        target = _StoreTarget(
            config.output_root if isinstance(config.output_root, StoreURL) else None,
            root_id,
            local_root,
            config.manifest_path if isinstance(config.manifest_path, StoreURL) else None,
        )
        summary = _download(local, started_wall, target)
    return replace(
        summary,
        # A default name is chosen under the lock (the staged root's manifests/ stands for the store's).
        manifest_path=(target.url_of(summary.manifest_path) if local_manifest is None else None)
        or manifest_target,
        results=tuple(replace(r, tiff_path=target.url_of(r.tiff_path)) for r in summary.results),
        stac_catalog=target.url_of(summary.stac_catalog),
    )


def _download(
    config: DownloadConfig, started_wall: dt.datetime, target: _StoreTarget | None
) -> DownloadSummary:
    started = time.monotonic()
    manifest_path = on_disk(_manifest_path(config, started_wall))
    # A fresh search streams into the download (each page's images are fetched while the next page is
    # listed); without resume or overwrite every existing output must be refused before anything is
    # fetched, so the whole search comes first.
    streaming = config.search_manifest is None and not config.dry_run and (config.resume or config.overwrite)
    search: SearchResult | None = None
    if not streaming:
        search = resolve_search(config)
    if config.dry_run:
        # Read-only: no lock, nothing cleaned, nothing sent to Earth Engine.
        assert search is not None
        plan = plan_download(config, search)
        return _dry_run_summary(config, search, plan, manifest_path, time.monotonic() - started)

    # Connect before planning: the plan builds Earth Engine expressions, which need an initialised client
    # (a saved search means no search ran in this process).
    conn = connection_for(config)
    before = conn.pacer.snapshot()
    model = run_cost_model(config)
    plan = Plan([], [], [], model)
    counters = Counters()
    output_root = on_disk(config.output_root)
    uploads = uploads_of(output_root)
    if uploads is not None:  # an object-store root: progress shows the bytes stored there too
        uploads.listeners.append(lambda nbytes: counters.add(stored=nbytes))
    base = output_root
    last_write = [0.0]
    write_lock = threading.Lock()
    manifest: Manifest | None = None
    taken: set[str] = set()
    deferred: list[ImageRecord] = []
    runs: list[_Run] = []

    def results_now() -> list[DownloadResult]:
        by_key = {r.record_key: r for r in plan.skipped}
        for job in list(plan.jobs):
            by_key[job.record.record_key] = job.result(
                job.status or "failed", job.error or ("in progress" if job.status is None else None)
            )
        return [by_key[k] for k in plan.order if k in by_key]

    def write_manifest(final: bool = False, interrupted: bool = False, first: Manifest | None = None) -> None:
        """Write the run manifest (at most every few seconds unless ``final``); ``first`` is the manifest's
        first write, after which the others go to it (none before: nothing is written when it fails)."""
        nonlocal manifest
        with write_lock:
            now = time.monotonic()
            into = first or manifest
            if into is None or (not (final or first) and now - last_write[0] < MANIFEST_EVERY_S):
                return
            last_write[0] = now
            stats = _stats(conn, before, counters, plan, time.monotonic() - started, runs)
            into.doc["download"] = _download_section(
                config,
                started_wall,
                results_now(),
                stats,
                now_utc() if final else None,
                base,
                interrupted,
            )
            if target is not None:  # the places the user named, not the staging folder that stood in
                named = into.doc["download"]["config"]
                named["output_root"] = str(target.root) if target.root is not None else named["output_root"]
                named["manifest_path"] = str(target.manifest) if target.manifest is not None else None
            into.write()
            manifest = into

    def progress_manifest() -> None:
        # Called from worker threads as images finish; a full disk is reported by the final write.
        try:
            write_manifest(False)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            log.warning("could not update the manifest: %s", exc)
        except EdownError as exc:  # a store that stopped answering: the final write reports it
            log.warning("could not update the manifest: %s", exc)

    run = _Run(config, conn, counters, progress_manifest, model)
    runs.append(run)
    preloading = threading.Thread(target=_preload, name="edown-preload", daemon=True)
    writes = ("images", "stac") if config.manifest_path is not None else ("images", "manifests", "stac")
    catalog_before: list[dict[str, stac.CollectionState]] = []
    interrupted = False
    with contextlib.ExitStack() as stack:
        held: list[HeldRoot] = []
        reporting: list[Reporter] = []

        def take(records: list[ImageRecord], last: bool = False) -> None:
            """Prepare ``records`` and queue their chunks; the first downloadable one (or the end of the
            search) takes the lock."""
            fresh = [r for r in [*deferred, *records] if r.record_key not in taken]
            if not held and not last and not any(not r.missing_bands and not r.outside_aoi for r in fresh):
                deferred[:] = fresh  # nothing to fetch yet: the root is not touched
                return
            deferred.clear()
            if not held:
                # The lock comes before anything on disk is looked at or cleaned: a second run that is
                # refused must not have touched the first one's chunks.
                held.append(stack.enter_context(locked_root(output_root, f"download to {base}", writes)))
                pull_tree(output_root / stac.STAC_DIR)  # a store root: merge with the catalog it holds
                catalog_before.append(stac.read_catalog(output_root))  # a damaged one is refused now
                run.start()
                preloading.start()
            taken.update(r.record_key for r in fresh)
            first = len(taken) - len(fresh)
            prepared = prepare_jobs(
                config, list(enumerate(fresh, start=first)), model, on_job=lambda job: run.add([job])
            )
            plan.jobs.extend(p for p in prepared if isinstance(p, ImageJob))
            plan.skipped.extend(p for p in prepared if isinstance(p, DownloadResult))
            if not reporting:
                # Only once the first images are planned: bad input is reported as one line, no progress.
                reporting.append(stack.enter_context(Reporter(counters, "download", enabled=config.progress)))

        try:
            if search is None:
                search = search_images(config, on_records=take)
            take(list(search.images), last=True)
            plan.order = [r.record_key for r in search.images]
            if config.manifest_path is None:
                manifest_path = _unused_run_name(manifest_path)
            started_manifest = new_manifest(manifest_path, output_root, held[0].root_id)
            if target is not None and target.root is not None:
                started_manifest.doc["output_root"] = str(target.root)
                started_manifest.doc["root_id"] = target.root_id
            set_search(started_manifest, config, search)
            try:
                with user_folder(manifest_path.parent, "manifest folder", "--manifest-path / manifest_path"):
                    write_manifest(first=started_manifest)
            except OSError as exc:
                if is_disk_full(exc):
                    raise DiskFullError(str(config.output_root)) from None
                raise
            run.close_adding()
            run.wait()
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            run.shutdown()
            for job in plan.jobs:
                if job.status is None:
                    job.status, job.error = "failed", "interrupted before completion (run again to resume)"
            try:
                write_manifest(final=True, interrupted=interrupted)
            except OSError as exc:
                if not (is_disk_full(exc) and run.fatal is not None):
                    raise
                log.warning("could not update the manifest: %s", exc)
        if run.fatal is not None:
            raise run.fatal
        if preloading.is_alive():  # never started when no image needed fetching
            preloading.join()
        catalog = _write_catalog(config, search, results_now(), catalog_before[0])
    return DownloadSummary.build(
        manifest_path,
        tuple(results_now()),
        search=search,
        plan=plan.totals(),
        elapsed_seconds=time.monotonic() - started,
        stats=_stats(conn, before, counters, plan, time.monotonic() - started, runs),
        stac_catalog=catalog,
    )


def _preload() -> None:
    """Load what the first GeoTIFF and the catalog need (rasterio and GDAL's drivers, pystac's extension
    hooks: ~0.3 s on the first use) while the run waits for Earth Engine, not after its last response."""
    geotiff.preload()
    stac.preload()


def _write_catalog(
    config: DownloadConfig,
    search: SearchResult,
    results: list[DownloadResult],
    existing: dict[str, stac.CollectionState],
) -> Path:
    """Merge this run's finished images into the root's STAC catalog (the lock is held throughout, so
    ``existing``, read when the run started, is still what is on disk)."""
    entries = stac.image_entries(search.images, results, config.cog)
    root = on_disk(config.output_root)
    try:
        # On a store root each changed document is uploaded as written: items first, catalog last.
        return stac.write_documents(root, stac.catalog_documents(root, existing, entries), upload)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(str(config.output_root)) from None
        raise


def _stats(
    conn: earthengine.Connection,
    before: dict[str, Any],
    counters: Counters,
    plan: Plan,
    elapsed: float,
    runs: list[_Run],
) -> dict[str, Any]:
    pacer = conn.pacer.snapshot()
    snap = counters.snapshot()
    pixels = sum(j.spec.width * j.spec.height for j in plan.jobs if j.status == "downloaded")
    return {
        "elapsed_seconds": round(elapsed, 3),
        # Pixel requests, counted per image: a streamed search's listing runs while pixels are fetched.
        "requests": sum(j.requests for j in plan.jobs),
        "retries": snap["retries"],
        "throttled": pacer["throttled"] - before["throttled"],
        "bytes_downloaded": round(snap["mb"] * 1e6),
        "bytes_to_store": round(snap["stored_mb"] * 1e6),
        "output_megapixels": round(pixels / 1e6, 3),
        "megapixels_per_second": round(pixels / 1e6 / elapsed, 3) if elapsed else None,
        "peak_inflight": pacer["peak_inflight"],
        "concurrency_window": pacer["window"],
        "planner": runs[0].planner_stats() if runs else None,
    }


def _dry_run_summary(
    config: DownloadConfig, search: SearchResult, plan: Plan, manifest_path: Path, elapsed: float
) -> DownloadSummary:
    totals = plan.totals()
    model = plan.model
    sizes = [
        w.pixels * len(j.spec.band_names) * np.dtype(j.spec.dtype).itemsize
        for j in plan.jobs
        for w in _missing(j)
    ]
    if uploads_of(on_disk(config.output_root)) is not None:
        # Each missing chunk is stored as it arrives, then each image as a COG (compressed, so at most
        # about its raw size plus overviews): an upper bound of what goes to the store.
        raw = sum(
            j.spec.width * j.spec.height * len(j.spec.band_names) * np.dtype(j.spec.dtype).itemsize
            for j in plan.jobs
        )
        totals["store_upload_bytes_max"] = sum(sizes) + raw * 4 // 3
    totals.update(
        {
            "concurrency": model.concurrency,
            "estimated_seconds": round(model.makespan(sizes), 1),
            "assumptions": f"{model.latency_seconds:g} s + bytes at {model.bandwidth_bytes_per_second / 1e6:g} MB/s "
            f"per request, {model.concurrency} concurrent, <= {model.requests_per_second:g} requests/s",
        }
    )
    results = [*plan.skipped, *(j.result("planned", None) for j in plan.jobs)]
    order = {k: i for i, k in enumerate(plan.order)}
    results.sort(key=lambda r: order.get(r.record_key, 0))
    return DownloadSummary.build(
        manifest_path,
        tuple(results),
        search=search,
        dry_run=True,
        plan=totals,
        elapsed_seconds=elapsed,
    )
