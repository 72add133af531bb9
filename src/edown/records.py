"""What edown found and did: plain, frozen, typed records that round-trip through JSON.

``to_dict`` gives JSON-ready values (ISO 8601 UTC times, lists, relative paths where a base is given);
``from_dict`` reads them back, so a manifest written today can drive a download or a stack tomorrow.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edown.grid import GridSpec, Transform, Window
from edown.stores import StoreURL

STATUSES = (
    "downloaded",
    "skipped_existing",
    "skipped_outside_aoi",
    "skipped_missing_bands",
    "failed",
    "planned",
    "cloudy",
)


def utc_iso(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def parse_utc(text: str) -> dt.datetime:
    stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)


def _path_out(path: Path | StoreURL | None, base: Path | None) -> str | None:
    if path is None:
        return None
    if isinstance(path, StoreURL):
        return str(path)
    if base is not None:
        try:
            return path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def _path_in(text: str | None, base: Path | None) -> Path | None:
    if text is None:
        return None
    path = Path(text)
    return path if path.is_absolute() or base is None else base / path


@dataclass(frozen=True)
class ImageRecord:
    """One image (or, with mixed resolutions, one native grid of an image) found by a search.

    ``native_transform``/``native_width``/``native_height`` describe the image's full native grid as
    Earth Engine reports it; ``window`` is the AOI's part of that grid (whole pixels) and
    ``window_transform`` its transform, which is the transform of the GeoTIFF edown writes.
    """

    image_id: str
    acquisition_time_utc: dt.datetime
    native_crs: str
    native_transform: Transform
    native_width: int
    native_height: int
    alignment_signature: str
    selected_band_ids: tuple[str, ...]
    output_dtype: str
    # extensions
    collection_id: str = ""
    output_band_names: tuple[str, ...] = ()
    window: tuple[int, int, int, int] = (0, 0, 0, 0)
    grid_label: str = ""
    missing_bands: tuple[str, ...] = ()
    properties: dict[str, Any] = field(default_factory=dict, compare=False)
    footprint: dict[str, Any] | None = field(default=None, compare=False)
    version: int | None = None
    #: Share of the mask band's valid pixels inside the AOI that the cloud mask removes (when computed).
    cloud_fraction: float | None = None

    @property
    def grid(self) -> GridSpec:
        return GridSpec(self.native_crs, self.native_transform, self.native_width, self.native_height)

    @property
    def aoi_window(self) -> Window:
        return Window(*self.window)

    @property
    def window_transform(self) -> Transform:
        return self.grid.window_transform(self.aoi_window)

    @property
    def outside_aoi(self) -> bool:
        return self.aoi_window.is_empty

    @property
    def system_index(self) -> str:
        prefix = self.collection_id + "/"
        return (
            self.image_id[len(prefix) :]
            if self.collection_id and self.image_id.startswith(prefix)
            else self.image_id
        )

    @property
    def record_key(self) -> str:
        """Unique among a search's records: the image's index plus the grid label when an image was split."""
        return f"{self.system_index}@{self.grid_label}" if self.grid_label else self.system_index

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "acquisition_time_utc": utc_iso(self.acquisition_time_utc),
            "native_crs": self.native_crs,
            "native_transform": list(self.native_transform),
            "native_width": self.native_width,
            "native_height": self.native_height,
            "alignment_signature": self.alignment_signature,
            "selected_band_ids": list(self.selected_band_ids),
            "output_dtype": self.output_dtype,
            "collection_id": self.collection_id,
            "output_band_names": list(self.output_band_names),
            "window": list(self.window),
            "window_transform": list(self.window_transform),
            "grid_label": self.grid_label,
            "missing_bands": list(self.missing_bands),
            "properties": self.properties,
            "footprint": self.footprint,
            "version": self.version,
            "cloud_fraction": self.cloud_fraction,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ImageRecord:
        return ImageRecord(
            image_id=d["image_id"],
            acquisition_time_utc=parse_utc(d["acquisition_time_utc"]),
            native_crs=d["native_crs"],
            native_transform=tuple(float(v) for v in d["native_transform"]),  # type: ignore[arg-type]
            native_width=int(d["native_width"]),
            native_height=int(d["native_height"]),
            alignment_signature=d["alignment_signature"],
            selected_band_ids=tuple(d["selected_band_ids"]),
            output_dtype=d["output_dtype"],
            collection_id=d.get("collection_id", ""),
            output_band_names=tuple(d.get("output_band_names", ())),
            window=tuple(int(v) for v in d.get("window", (0, 0, 0, 0))),  # type: ignore[arg-type]
            grid_label=d.get("grid_label", ""),
            missing_bands=tuple(d.get("missing_bands", ())),
            properties=dict(d.get("properties") or {}),
            footprint=d.get("footprint"),
            version=d.get("version"),
            cloud_fraction=read_fraction(d, d["image_id"]),
        )


def read_fraction(d: dict[str, Any], image: str) -> float | None:
    """A saved ``cloud_fraction``: a number in [0, 1] or null; anything else is damage (ValueError) that the
    manifest reader reports naming the file and, here, the image."""
    value = d.get("cloud_fraction")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"cloud_fraction of {image} is {value!r}, not a number in [0, 1] or null")
    return float(value)


@dataclass(frozen=True)
class AlignmentGroup:
    """Images that share CRS, pixel size and grid phase (and bands and dtype): one datacube.

    ``transform``/``width``/``height`` describe the group's common grid: the union of its images' AOI
    windows on their shared pixel lattice.
    """

    group_id: str
    image_ids: tuple[str, ...]
    crs: str
    band_names: tuple[str, ...]
    dtype: str
    # extensions
    transform: Transform = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    width: int = 0
    height: int = 0
    record_keys: tuple[str, ...] = ()
    grid_label: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "image_ids": list(self.image_ids),
            "crs": self.crs,
            "band_names": list(self.band_names),
            "dtype": self.dtype,
            "transform": list(self.transform),
            "width": self.width,
            "height": self.height,
            "record_keys": list(self.record_keys),
            "grid_label": self.grid_label,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> AlignmentGroup:
        return AlignmentGroup(
            group_id=d["group_id"],
            image_ids=tuple(d["image_ids"]),
            crs=d["crs"],
            band_names=tuple(d["band_names"]),
            dtype=d["dtype"],
            transform=tuple(float(v) for v in d.get("transform", (1, 0, 0, 0, -1, 0))),  # type: ignore[arg-type]
            width=int(d.get("width", 0)),
            height=int(d.get("height", 0)),
            record_keys=tuple(d.get("record_keys", ())),
            grid_label=d.get("grid_label", ""),
        )


@dataclass(frozen=True)
class SearchResult:
    """Returned by :func:`edown.search_images`."""

    collection_id: str
    images: tuple[ImageRecord, ...]
    alignment_groups: tuple[AlignmentGroup, ...]
    selected_band_ids: tuple[str, ...]
    output_band_names: tuple[str, ...]
    # extensions
    requests: int = 0
    elapsed_seconds: float = 0.0
    warnings: tuple[str, ...] = ()

    def group_of(self, record: ImageRecord) -> AlignmentGroup | None:
        for group in self.alignment_groups:
            if record.record_key in group.record_keys:
                return group
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "collection_id": self.collection_id,
            "selected_band_ids": list(self.selected_band_ids),
            "output_band_names": list(self.output_band_names),
            "images": [r.to_dict() for r in self.images],
            "alignment_groups": [g.to_dict() for g in self.alignment_groups],
            "requests": self.requests,
            "elapsed_seconds": self.elapsed_seconds,
            "warnings": list(self.warnings),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> SearchResult:
        return SearchResult(
            collection_id=d["collection_id"],
            images=tuple(ImageRecord.from_dict(r) for r in d.get("images", [])),
            alignment_groups=tuple(AlignmentGroup.from_dict(g) for g in d.get("alignment_groups", [])),
            selected_band_ids=tuple(d.get("selected_band_ids", ())),
            output_band_names=tuple(d.get("output_band_names", ())),
            requests=int(d.get("requests", 0)),
            elapsed_seconds=float(d.get("elapsed_seconds", 0.0)),
            warnings=tuple(d.get("warnings", ())),
        )


@dataclass(frozen=True)
class DownloadResult:
    """Per-image download outcome (``status``: downloaded, skipped_*, or failed)."""

    image_id: str
    status: str
    #: A local path, or the object's URL when the output root is an object store.
    tiff_path: Path | StoreURL | None
    chunk_count: int
    error: str | None = None
    # extensions
    record_key: str = ""
    alignment_signature: str = ""
    chunks_fetched: int = 0
    bytes_downloaded: int = 0
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    nodata: float | None = None
    cloud_fraction: float | None = None

    def to_dict(self, base: Path | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "tiff_path":
                value = _path_out(value, base)
            elif f.name == "nodata" and isinstance(value, float) and value != value:
                value = "nan"
            out[f.name] = value
        return out

    @staticmethod
    def from_dict(d: dict[str, Any], base: Path | None = None) -> DownloadResult:
        nodata = d.get("nodata")
        return DownloadResult(
            image_id=d["image_id"],
            status=d["status"],
            tiff_path=_path_in(d.get("tiff_path"), base),
            chunk_count=int(d.get("chunk_count", 0)),
            error=d.get("error"),
            record_key=d.get("record_key", ""),
            alignment_signature=d.get("alignment_signature", ""),
            chunks_fetched=int(d.get("chunks_fetched", 0)),
            bytes_downloaded=int(d.get("bytes_downloaded", 0)),
            requests=int(d.get("requests", 0)),
            retries=int(d.get("retries", 0)),
            seconds=float(d.get("seconds", 0.0)),
            nodata=float("nan") if nodata == "nan" else nodata,
            cloud_fraction=read_fraction(d, d.get("image_id", "?")),
        )


@dataclass(frozen=True)
class DownloadSummary:
    """Returned by :func:`edown.download_images`."""

    manifest_path: Path | StoreURL
    results: tuple[DownloadResult, ...]
    downloaded: int
    skipped: int
    failed: int
    # extensions
    search: SearchResult | None = field(default=None, repr=False)
    dry_run: bool = False
    plan: dict[str, Any] = field(default_factory=dict, repr=False)
    elapsed_seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict, repr=False)
    stac_catalog: Path | StoreURL | None = None

    @staticmethod
    def tally(results: tuple[DownloadResult, ...]) -> tuple[int, int, int]:
        downloaded = sum(r.status == "downloaded" for r in results)
        skipped = sum(r.status.startswith("skipped") or r.status == "cloudy" for r in results)
        failed = sum(r.status == "failed" for r in results)
        return downloaded, skipped, failed

    @classmethod
    def build(
        cls, manifest_path: Path | StoreURL, results: tuple[DownloadResult, ...], **extensions: Any
    ) -> DownloadSummary:
        """A summary whose counts are tallied from ``results``."""
        downloaded, skipped, failed = cls.tally(results)
        return cls(manifest_path, results, downloaded, skipped, failed, **extensions)


@dataclass(frozen=True)
class StackResult:
    """Per-group stacking outcome."""

    group_id: str
    image_count: int
    #: A local path, or the datacube's URL when it is on an object store.
    output_path: Path | StoreURL | None
    skipped_reason: str | None = None
    # extensions
    appended: int = 0
    times: tuple[str, ...] = ()
    shape: tuple[int, ...] = ()
    seconds: float = 0.0
    error: str | None = None
    snapshot_id: str | None = None  # the commit of an icechunk stack (store="icechunk")

    def to_dict(self, base: Path | None = None) -> dict[str, Any]:
        return {
            "error": self.error,
            "group_id": self.group_id,
            "image_count": self.image_count,
            "output_path": _path_out(self.output_path, base),
            "skipped_reason": self.skipped_reason,
            "appended": self.appended,
            "times": list(self.times),
            "shape": list(self.shape),
            "seconds": self.seconds,
            "snapshot_id": self.snapshot_id,
        }

    @staticmethod
    def from_dict(d: dict[str, Any], base: Path | None = None) -> StackResult:
        return StackResult(
            group_id=d["group_id"],
            image_count=int(d["image_count"]),
            output_path=_path_in(d.get("output_path"), base),
            skipped_reason=d.get("skipped_reason"),
            appended=int(d.get("appended", 0)),
            times=tuple(d.get("times", ())),
            shape=tuple(d.get("shape", ())),
            seconds=float(d.get("seconds", 0.0)),
            error=d.get("error"),
            snapshot_id=d.get("snapshot_id"),
        )
