"""The run manifest: one versioned JSON document per run, written atomically, readable back into results.

Layout (``schema_version`` 1; documented in ``docs/manifest.md``)::

    {"schema": "edown.manifest", "schema_version": 1, "edown_version": "...",
     "created_utc": "...", "updated_utc": "...", "output_root": "/abs/path/data",
     "search":   {"config": {...}, "result": {SearchResult}},
     "download": {"config": {...}, "started_utc": ..., "finished_utc": ..., "results": [DownloadResult],
                  "counts": {...}, "stats": {...}},
     "stack":    {"config": {...}, "results": [StackResult]}}

Paths inside are relative to ``output_root`` so a data folder can be moved as a whole. Writes go to a
temporary file in the same directory, are fsynced, then renamed over the target: a reader (or a crash)
never sees half a manifest.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edown._version import __version__
from edown.config import AOI, DownloadConfig, SearchConfig, StackConfig
from edown.errors import ManifestError
from edown.records import DownloadResult, SearchResult, StackResult, utc_iso
from edown.redaction import redact

SCHEMA = "edown.manifest"
SCHEMA_VERSION = 1


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")


def dumps(doc: dict[str, Any]) -> str:
    """Indented JSON with lists of numbers kept on one line (coordinates, transforms)."""
    text = json.dumps(doc, indent=1, allow_nan=False)
    return (
        _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
        + "\n"
    )


def config_to_dict(config: SearchConfig | StackConfig) -> dict[str, Any]:
    """JSON-friendly config values (never credentials, nor those in a ``server_url``)."""
    out: dict[str, Any] = {}
    for f in fields(config):
        if f.name == "credentials":
            continue
        value = getattr(config, f.name)
        if f.name == "server_url":
            value = redact(value)
        elif isinstance(value, AOI):
            value = value.geometry
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def search_config_from_dict(d: dict[str, Any], **overrides: Any) -> SearchConfig:
    names = {f.name for f in fields(SearchConfig)} - {"credentials"}
    values = {k: v for k, v in d.items() if k in names}
    values["aoi"] = AOI.from_geojson(values["aoi"], "aoi")
    values.update(overrides)
    return SearchConfig(**values)


@dataclass
class Manifest:
    """A manifest document plus where it lives."""

    path: Path
    doc: dict[str, Any]

    @property
    def output_root(self) -> Path:
        root = self.doc.get("output_root")
        return Path(root) if root else self.path.parent.parent

    @property
    def search(self) -> SearchResult | None:
        section = self.doc.get("search")
        return SearchResult.from_dict(section["result"]) if section else None

    @property
    def search_config(self) -> dict[str, Any] | None:
        section = self.doc.get("search")
        return dict(section["config"]) if section else None

    @property
    def download_results(self) -> tuple[DownloadResult, ...]:
        section = self.doc.get("download") or {}
        return tuple(DownloadResult.from_dict(r, self.output_root) for r in section.get("results", []))

    @property
    def stack_results(self) -> tuple[StackResult, ...]:
        section = self.doc.get("stack") or {}
        return tuple(StackResult.from_dict(r, self.output_root) for r in section.get("results", []))

    def write(self) -> None:
        self.doc["updated_utc"] = utc_iso(now_utc())
        atomic_write_text(self.path, dumps(self.doc))


def new_manifest(path: Path, output_root: Path | None) -> Manifest:
    stamp = utc_iso(now_utc())
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "edown_version": __version__,
        "created_utc": stamp,
        "updated_utc": stamp,
        "output_root": str(output_root.resolve()) if output_root is not None else None,
    }
    return Manifest(path, doc)


def set_search(manifest: Manifest, config: SearchConfig, result: SearchResult) -> None:
    search_config = config_to_dict(config)
    for name in [f.name for f in fields(DownloadConfig)] if isinstance(config, DownloadConfig) else []:
        if name not in {f.name for f in fields(SearchConfig)}:
            search_config.pop(name, None)
    manifest.doc["search"] = {"config": search_config, "result": result.to_dict()}


def load_manifest(path: Path) -> Manifest:
    """Read and check a manifest; every problem is one :class:`ManifestError` line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ManifestError(
            f"manifest_path: {path} does not exist", hint="give the JSON file written by edown"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest_path: {path} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ManifestError(
            f'manifest_path: {path} is not an edown manifest (no "schema": "{SCHEMA}")',
            hint="was it written by another tool? edown reads only its own manifests",
        )
    version = doc.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise ManifestError(
            f"manifest_path: {path} has schema_version {version!r}; this edown reads version {SCHEMA_VERSION}",
            hint="upgrade edown to read manifests from newer versions",
        )
    return Manifest(path, doc)
