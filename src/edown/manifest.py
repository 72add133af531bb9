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
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edown._version import __version__
from edown.config import AOI, DownloadConfig, SearchConfig, StackConfig
from edown.errors import ManifestError
from edown.records import DownloadResult, SearchResult, StackResult, utc_iso
from edown.redaction import redact
from edown.rootstate import (
    atomic_write_text,
    check_no_links,
    read_marker,
    special_file_kind,
    trusted_root,
)
from edown.storeroot import publish
from edown.stores import Location, ObjectStore, StoreURL

SCHEMA = "edown.manifest"
SCHEMA_VERSION = 1


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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
            value = [str(v) if isinstance(v, Path) else v for v in value]
        out[f.name] = value
    return out


#: What a saved search may not decide: where requests (and with them the user's token) go, which project
#: pays, and which code runs. These come from the user's own flags, environment or config.
USER_ONLY_FIELDS = frozenset({"server_url", "project", "transform_plugin", "credentials"})


def search_config_from_dict(d: dict[str, Any], **overrides: Any) -> SearchConfig:
    """A search config rebuilt from a manifest, minus :data:`USER_ONLY_FIELDS` (give those as overrides)."""
    names = {f.name for f in fields(SearchConfig)} - USER_ONLY_FIELDS
    values = {k: v for k, v in d.items() if k in names}
    values["aoi"] = AOI.from_geojson(values["aoi"], "aoi")
    values.update(overrides)
    return SearchConfig(**values)


@dataclass
class Manifest:
    """A manifest document plus where it lives."""

    path: Path
    doc: dict[str, Any]
    #: Where the manifest was read from when it lives on an object store (``path`` is then only its name).
    url: StoreURL | None = None

    @property
    def output_root(self) -> Path:
        """The root this manifest *says* it belongs to; use :meth:`trusted_root` before writing there."""
        root = self.doc.get("output_root")
        return Path(root) if isinstance(root, str) and root else self.path.parent.parent

    @property
    def root_id(self) -> str | None:
        value = self.doc.get("root_id")
        return value if isinstance(value, str) else None

    def trusted_root(self) -> Path:
        """The output root to read and write for this manifest, when nobody named one.

        A manifest is only a file: the root it names is used only where edown's own marker says edown
        made that root (and, for manifests that record it, the same root). A manifest kept in its root's
        ``manifests/`` folder belongs to that root even if the root was moved; a root written before
        markers existed is accepted only that way, from a manifest inside it.
        """
        source = f"manifest {self.path}"
        folder = self.path.absolute().parent
        home = folder.parent if folder.name == "manifests" else None
        recorded = self.doc.get("output_root")
        named = Path(recorded) if isinstance(recorded, str) and recorded else None
        if home is not None and read_marker(home) is not None:
            return trusted_root(home, self.root_id, source)
        if home is not None and (named is None or named == home):
            return home
        if named is not None:
            return trusted_root(named, self.root_id, source)
        raise ManifestError(
            f"{source} does not say which output root it belongs to",
            hint="pass the root with --output-root (output_root=)",
        )

    def downloads_in(self, root: Path) -> tuple[DownloadResult, ...]:
        """The download results, each output path checked to lie in ``root/images`` without links."""
        root = root.absolute()
        section = self.doc.get("download") or {}
        results = []
        for entry in section.get("results", []):
            tiff = entry.get("tiff_path") if isinstance(entry, dict) else None
            if tiff is not None:
                if not isinstance(tiff, str) or "\x00" in tiff:
                    raise ManifestError(
                        f"manifest {self.path} lists a tiff_path that is not a path: {tiff!r}"
                    )
                relative = Path(tiff)
                if relative.is_absolute():
                    try:
                        relative = relative.relative_to(root)
                    except ValueError:
                        relative = Path("..")
                if ".." in relative.parts or not relative.parts or relative.parts[0] != "images":
                    raise ManifestError(
                        f"manifest {self.path} lists {tiff}, which is not under {root / 'images'}",
                        hint="edown reads only the outputs under the manifest's own root",
                    )
                check_no_links(root, root / relative)
            results.append(DownloadResult.from_dict(entry, root))
        return tuple(results)

    @property
    def search(self) -> SearchResult | None:
        section = self.doc.get("search")
        return SearchResult.from_dict(section["result"]) if section else None

    @property
    def search_config(self) -> dict[str, Any] | None:
        section = self.doc.get("search")
        return dict(section["config"]) if section else None

    @property
    def stack_results(self) -> tuple[StackResult, ...]:
        section = self.doc.get("stack") or {}
        return tuple(StackResult.from_dict(r, self.output_root) for r in section.get("results", []))

    def write(self) -> None:
        self.doc["updated_utc"] = utc_iso(now_utc())
        atomic_write_text(self.path, dumps(self.doc))
        publish(self.path)  # a manifest on a store: one PUT of the whole document


def new_manifest(path: Path, output_root: Path | None, root_id: str | None = None) -> Manifest:
    stamp = utc_iso(now_utc())
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "edown_version": __version__,
        "created_utc": stamp,
        "updated_utc": stamp,
        "output_root": str(output_root.resolve()) if output_root is not None else None,
    }
    if root_id is not None:
        doc["root_id"] = root_id
    return Manifest(path, doc)


def set_search(manifest: Manifest, config: SearchConfig, result: SearchResult) -> None:
    search_config = config_to_dict(config)
    for name in [f.name for f in fields(DownloadConfig)] if isinstance(config, DownloadConfig) else []:
        if name not in {f.name for f in fields(SearchConfig)}:
            search_config.pop(name, None)
    manifest.doc["search"] = {"config": search_config, "result": result.to_dict()}


def load_manifest(path: Location, field: str = "manifest_path") -> Manifest:
    """Read and check a manifest (a local file or an object on a store); every problem is one
    :class:`ManifestError` line naming ``field`` (the option or config field the path came from)."""
    if isinstance(path, StoreURL):
        try:
            raw = ObjectStore(path.parent).read_bytes(path.name)
        except FileNotFoundError:
            raise ManifestError(
                f"{field}: {path} does not exist", hint="give the JSON file written by edown"
            ) from None
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{field}: {path} is not valid JSON ({exc})") from None
        except RecursionError:
            raise ManifestError(f"{field}: {path} is nested too deeply to be an edown manifest") from None
        return _checked(doc, Path(path.name), field, path)
    path = Path(path).expanduser()
    if not path.is_file():
        raise ManifestError(
            f"{field}: {path} {_not_a_file(path)}", hint="give the JSON file written by edown"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{field}: {path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise ManifestError(f"{field}: {path} is nested too deeply to be an edown manifest") from None
    except OSError as exc:
        raise ManifestError(f"{field}: {path} cannot be read ({exc.strerror or exc})") from None
    return _checked(doc, path, field)


def _checked(doc: Any, path: Path, field: str, url: StoreURL | None = None) -> Manifest:
    shown = url or path
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ManifestError(
            f'{field}: {shown} is not an edown manifest (no "schema": "{SCHEMA}")',
            hint="was it written by another tool? edown reads only its own manifests",
        )
    version = doc.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ManifestError(f"{field}: {shown} has schema_version {version!r}, which is not a whole number")
    if version > SCHEMA_VERSION or version < 1:
        raise ManifestError(
            f"{field}: {shown} has schema_version {version!r}; this edown reads version {SCHEMA_VERSION}",
            hint="upgrade edown to read manifests from newer versions",
        )
    manifest = Manifest(path, doc, url)
    try:
        # Parse every section now so damage is reported at load; download paths are checked against a
        # root only when one is trusted (``downloads_in``), which is the only way to read them.
        _ = manifest.search, manifest.stack_results
        for entry in (doc.get("download") or {}).get("results", []):
            DownloadResult.from_dict(entry, path.parent)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ManifestError(
            f"{field}: {shown} is damaged ({type(exc).__name__}: {what})",
            hint="use the manifest as edown wrote it, or download again to write a new one",
        ) from None
    return manifest


def _not_a_file(path: Path) -> str:
    """What ``path`` is, when it is not a regular file (``/dev/null`` exists, but is no manifest)."""
    try:
        path.stat()
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    kind = special_file_kind(path, follow=True)
    return f"is {kind}, not a manifest file" if kind else "is not a regular file"
