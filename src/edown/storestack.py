"""Stacking a download that lives on an object store into Zarr datacubes on the same store.

``edown stack -m s3://bucket/prefix/manifests/run-….json`` runs the local stacker on a staging copy and
uploads the result:

1. The manifest's root must be edown's: the manifest lies in ``<root>/manifests/`` and the store's
   marker (``.edown/root.json``) has the manifest's root id — a file never chooses where edown writes.
2. Under the store's run lock, the GeoTIFFs the manifest lists and the existing datacubes of the
   collection are downloaded into a staging folder, and the datacubes are built or appended there with
   any backend (threads, Dask, SLURM workers on this machine).
3. The datacube's objects are uploaded in commit order: chunks first, then each array's ``zarr.json``,
   then the group's ``zarr.json``, which holds the consolidated metadata xarray reads. Until that last
   PUT a reader sees the previous datacube (or none): the new time steps are in chunks that lie beyond
   the time length the old metadata gives. Objects unchanged since the download are not uploaded again;
   with ``overwrite`` the old datacube's objects that the new one lacks are deleted after the commit.
4. The manifest on the store gets its ``stack`` section (store URLs, not staging paths).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from edown.config import StackConfig
from edown.errors import StackError, UnsafePathError
from edown.manifest import dumps, load_manifest
from edown.records import StackResult
from edown.rootstate import MARKER_SCHEMA, STATE_DIR, atomic_write_text
from edown.stac import STAC_DIR
from edown.storeroot import download_tree, locked_store_root, staging, store_marker
from edown.stores import Store, StoreURL

log = logging.getLogger("edown.storestack")


def stack_on_store(config: StackConfig) -> list[StackResult]:
    """:func:`edown.stack_images` for a manifest on a store (see the module's description)."""
    from edown.stack import stack_images

    manifest_url = config.manifest_path
    if not isinstance(manifest_url, StoreURL) or config.manifest_paths:
        raise StackError(
            "manifest_path: stacking from a store takes exactly one manifest on the store",
            hint="stack each run's manifest in turn; each appends to the datacube",
        )
    if config.store != "zarr":
        raise StackError(
            f"store: {config.store!r} datacubes on an object store are not supported yet",
            hint="stack to Zarr on the store (the default), or stack a local download with store='icechunk'",
        )
    manifest = load_manifest(manifest_url)
    root = _trusted_store_root(manifest_url, manifest.root_id)
    if config.output_root is not None and str(config.output_root) != str(root):
        raise StackError(
            f"output_root: datacubes of {manifest_url} go to its own root {root}",
            hint="leave --output-root out when stacking from a store",
        )
    collection = manifest.search.collection_id if manifest.search else ""
    with locked_store_root(root, f"stack of {manifest_url.name}") as (store, root_id), staging() as stage:
        local_root = stage / "root"
        _write_local_marker(local_root, root_id)
        local_manifest = local_root / "manifests" / manifest_url.name
        local_manifest.parent.mkdir(parents=True, exist_ok=True)
        local_manifest.write_bytes(store.read_bytes(f"manifests/{manifest_url.name}"))
        for result in manifest.downloads_in(local_root):
            if isinstance(result.tiff_path, Path) and result.status in ("downloaded", "skipped_existing"):
                key = result.tiff_path.relative_to(local_root).as_posix()
                if store.exists(key):
                    result.tiff_path.parent.mkdir(parents=True, exist_ok=True)
                    store.download(key, result.tiff_path)
        fetched = _fetch_stacks(store, local_root, collection)
        catalog_before = download_tree(store, STAC_DIR, local_root / STAC_DIR)
        results = stack_images(replace(config, manifest_path=local_manifest, output_root=None))
        out = []
        for stacked in results:
            if isinstance(stacked.output_path, Path):
                key = stacked.output_path.relative_to(local_root).as_posix()
                _name_the_store(stacked.output_path, local_manifest, manifest_url)
                upload_zarr(store, stacked.output_path, key, fetched)
                out.append(replace(stacked, output_path=root / key))
            else:
                out.append(stacked)
        _upload_catalog(store, local_root, catalog_before)
        _publish_manifest(store, local_manifest, manifest_url, root)
    return out


def latest_on_store(root: StoreURL) -> StoreURL:
    """The newest run's manifest under ``root/manifests`` on a store (names sort by start time)."""
    from edown.stores import ObjectStore

    runs = [
        info.key
        for info in ObjectStore(root).list("manifests/")
        if fnmatch.fnmatchcase(info.key, "manifests/run-*.json") and info.key.count("/") == 1
    ]
    if not runs:
        raise StackError(
            f"manifest_path: latest: no run-*.json manifest in {root / 'manifests'}",
            hint="download into that output root first, or give --output-root where you downloaded",
        )
    return root / max(runs)


def _trusted_store_root(manifest_url: StoreURL, root_id: str | None) -> StoreURL:
    folder = manifest_url.parent
    if folder.name != "manifests":
        raise UnsafePathError(
            f"{manifest_url} is not in an output root's manifests/ folder",
            hint="stack the manifest where edown wrote it: <root>/manifests/run-….json",
        )
    root = folder.parent
    marker = store_marker(root)
    if marker is None or (root_id is not None and marker["root_id"] != root_id):
        raise UnsafePathError(
            f"manifest {manifest_url} names an output root that edown did not create",
            hint="stack a manifest written by edown into its own root",
        )
    return root


def _write_local_marker(local_root: Path, root_id: str) -> None:
    """The staging root carries the store root's id, so the staged manifest is trusted there."""
    text = json.dumps({"schema": MARKER_SCHEMA, "root_id": root_id}) + "\n"
    (local_root / STATE_DIR).mkdir(parents=True)
    atomic_write_text(local_root / STATE_DIR / "root.json", text)


def _fetch_stacks(store: Store, local_root: Path, collection: str) -> dict[str, int]:
    """Download the collection's datacubes (to append to them); returns key -> mtime of each file."""
    from edown.outputs import collection_dir

    prefix = f"stacks/{collection_dir(collection)}"
    fetched = {}
    for info in store.list(prefix):
        if ".zarr/" not in info.key:
            continue
        target = local_root / info.key
        target.parent.mkdir(parents=True, exist_ok=True)
        store.download(info.key, target)
        fetched[info.key] = target.stat().st_mtime_ns
    return fetched


def _name_the_store(zarr: Path, local_manifest: Path, url: StoreURL) -> None:
    """The datacube's attributes name the manifest it came from: its URL, not the staging copy."""
    old, new = json.dumps(str(local_manifest))[1:-1], json.dumps(str(url))[1:-1]
    for meta in zarr.rglob("zarr.json"):
        text = meta.read_text(encoding="utf-8")
        if old in text:
            atomic_write_text(meta, text.replace(old, new))


def _commit_order(key: str, zarr_key: str) -> int:
    """Chunks first, then arrays' metadata, then the group's metadata (the commit point)."""
    if key == f"{zarr_key}/zarr.json":
        return 2
    return 1 if key.endswith("/zarr.json") else 0


def upload_zarr(store: Store, local: Path, zarr_key: str, fetched: dict[str, int]) -> int:
    """Upload the datacube at ``local`` to ``zarr_key`` in commit order; returns the objects uploaded."""
    files = {f"{zarr_key}/{p.relative_to(local).as_posix()}": p for p in local.rglob("*") if p.is_file()}
    uploaded = 0
    for key in sorted(files, key=lambda k: (_commit_order(k, zarr_key), k)):
        if fetched.get(key) == files[key].stat().st_mtime_ns:
            continue  # unchanged since it was downloaded
        store.upload(key, files[key])
        uploaded += 1
    for key in fetched:  # an overwritten datacube's objects that the new one lacks
        if key.startswith(f"{zarr_key}/") and key not in files:
            store.delete(key)
    return uploaded


def _upload_catalog(store: Store, local_root: Path, before: dict[str, str]) -> None:
    """Upload the STAC documents the stacker changed (its datacube items), items before the collections
    and the catalog that link them, so the store never holds a link to a missing document."""
    folder = local_root / STAC_DIR
    if not folder.is_dir():
        return
    files = {p.relative_to(local_root).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    order = {"collection.json": 1, "catalog.json": 2}
    for key in sorted(files, key=lambda k: (order.get(k.rsplit("/", 1)[-1], 0), k)):
        if before.get(key) != hashlib.sha256(files[key].read_bytes()).hexdigest():
            store.upload(key, files[key])


def _publish_manifest(store: Store, local: Path, url: StoreURL, root: StoreURL) -> None:
    doc: dict[str, Any] = json.loads(local.read_text(encoding="utf-8"))
    doc["output_root"] = str(root)
    section = doc.get("stack")
    if isinstance(section, dict):
        section["manifests"] = [str(url)]
        if isinstance(section.get("config"), dict):
            section["config"]["manifest_path"] = str(url)
            section["config"]["output_root"] = None
    store.write_bytes(f"manifests/{url.name}", dumps(doc).encode())


def open_store_zarr(url: StoreURL) -> Any:
    """A zarr store for ``url`` configured from the environment, as edown wrote it."""
    from zarr.storage import FsspecStore

    from edown.stores import async_filesystem

    return FsspecStore(async_filesystem(url.scheme), path=f"{url.bucket}/{url.key}", read_only=True)
