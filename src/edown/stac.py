"""A static STAC catalog of an output root: what other tools (odc-stac, stackstac, pystac) read.

Layout of ``<output_root>/stac/`` (every href inside is relative, so the root can move as a whole)::

    catalog.json                                        the root catalog
    <collection>/collection.json                        one collection per Earth Engine collection
    <collection>/<image>/<image>.json                   one item per downloaded image (per grid)
    <collection>/<image>/<band>.vrt                     one-band views of the image's GeoTIFF
    <collection>/datacubes/collection.json              child collection of the Zarr stacks
    <collection>/datacubes/<group>/<group>.json         one item per datacube

An image item has one asset ``image``: the GeoTIFF with every band (``eo:bands``, ``raster:bands``,
``proj:*``), which odc-stac loads by band name. stackstac reads only one-band files, so each band is also an
asset of its own (keyed by the band name, roles ``data``), a GDAL VRT that points into the same GeoTIFF:
no pixels are copied. The projection extension is v1.2.0, the last to carry both ``proj:code`` (read by
pystac and odc-stac) and ``proj:epsg`` (read by stackstac); pystac migrates it to v2.0.0 when it reads.
Earth Engine properties are kept on the item as ``ee:<name>`` (plus ``ee:id``, ``ee:collection``,
``ee:system_index``, ``ee:version``), next to the STAC fields derived from them (``eo:cloud_cover``).

Only images whose GeoTIFF is complete (``downloaded`` or ``skipped_existing``) get items. Runs merge:
items already in the catalog stay, an image downloaded again replaces its own item. What to write is
computed from edown's records by :func:`catalog_documents` (no I/O); :func:`update_catalog` reads the
existing catalog and writes the documents with edown's atomic writer, never through a symbolic link,
by callers holding the root's lock.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import pystac
from pyproj import CRS, Transformer

from edown.crs import resolve_crs
from edown.errors import OutputPathError
from edown.grid import Transform
from edown.manifest import dumps
from edown.outputs import collection_dir, safe_name
from edown.records import AlignmentGroup, DownloadResult, ImageRecord, StackResult, utc_iso
from edown.rootstate import atomic_write_text, check_no_links

STAC_DIR = "stac"
CATALOG_ID = "edown"

EXTENSIONS = {
    "proj": "https://stac-extensions.github.io/projection/v1.2.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "cube": "https://stac-extensions.github.io/datacube/v2.2.0/schema.json",
}
#: The bundled schema files for :data:`EXTENSIONS` (``src/edown/stac_schemas/README.md``).
SCHEMA_FILES = {
    EXTENSIONS["proj"]: "projection-v1.2.0.json",
    EXTENSIONS["raster"]: "raster-v1.1.0.json",
    EXTENSIONS["eo"]: "eo-v1.1.0.json",
    EXTENSIONS["cube"]: "datacube-v2.2.0.json",
}

GEOTIFF = "image/tiff; application=geotiff"
ZARR = "application/vnd+zarr"
DONE = ("downloaded", "skipped_existing")

#: Names of the STAC raster extension for numpy dtypes (the same words).
_DATA_TYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64"}
_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}

#: eo common names of the bands of collections whose bands are well known (by source band id).
_S2_COMMON = {
    "B1": "coastal",
    "B2": "blue",
    "B3": "green",
    "B4": "red",
    "B5": "rededge",
    "B6": "rededge",
    "B7": "rededge",
    "B8": "nir",
    "B8A": "nir08",
    "B9": "nir09",
    "B10": "cirrus",
    "B11": "swir16",
    "B12": "swir22",
}
_LANDSAT89_COMMON = {
    "SR_B1": "coastal",
    "SR_B2": "blue",
    "SR_B3": "green",
    "SR_B4": "red",
    "SR_B5": "nir08",
    "SR_B6": "swir16",
    "SR_B7": "swir22",
    "ST_B10": "lwir11",
}
_LANDSAT457_COMMON = {
    "SR_B1": "blue",
    "SR_B2": "green",
    "SR_B3": "red",
    "SR_B4": "nir08",
    "SR_B5": "swir16",
    "SR_B7": "swir22",
    "ST_B6": "lwir",
}
_COMMON_NAMES: tuple[tuple[re.Pattern[str], dict[str, str]], ...] = (
    (re.compile(r"^COPERNICUS/S2"), _S2_COMMON),
    (re.compile(r"^LANDSAT/LC0[89]/"), _LANDSAT89_COMMON),
    (re.compile(r"^LANDSAT/L[ET]0[457]/"), _LANDSAT457_COMMON),
)
#: Earth Engine properties that are a STAC field too (values in percent, 0-100).
_CLOUD_COVER = ("CLOUDY_PIXEL_PERCENTAGE", "CLOUD_COVER")


@dataclass(frozen=True)
class ImageEntry:
    """A downloaded image as the catalog describes it: its search record and its download outcome."""

    record: ImageRecord
    result: DownloadResult
    cog: bool = False


@dataclass(frozen=True)
class StackEntry:
    """A datacube as the catalog describes it, with the facts read back from the store itself."""

    collection_id: str
    group: AlignmentGroup
    result: StackResult
    times: tuple[dt.datetime, ...]
    nodata: float | None = None
    store: str = "zarr"  # or "icechunk" (StackConfig.store)

    @property
    def item_id(self) -> str:
        """The group id; an icechunk stack of the same group (beside its Zarr twin) gets its own item."""
        return self.group.group_id if self.store != "icechunk" else f"{self.group.group_id}.icechunk"


@dataclass
class CollectionState:
    """One Earth Engine collection's items, as JSON documents keyed by item id."""

    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    datacubes: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---- what to write ------------------------------------------------------------------------------------


def catalog_documents(
    root: Path,
    existing: Mapping[str, CollectionState],
    images: Sequence[ImageEntry] = (),
    stacks: Sequence[StackEntry] = (),
) -> dict[str, str]:
    """Every file of the merged catalog, as ``{path relative to root/stac: text}``; no I/O.

    ``existing`` is the catalog on disk (:func:`read_catalog`); new items replace those with their id.
    Items are listed before the collections and the catalog that link them, so writing in this order
    never publishes a link to a missing file.
    """
    state = {key: CollectionState(dict(v.images), dict(v.datacubes)) for key, v in existing.items()}
    files: dict[str, str] = {}
    for entry in images:
        if entry.result.status not in DONE or entry.result.tiff_path is None:
            continue
        collection_id = entry.record.collection_id
        item_id = entry.record.record_key
        folder = f"{collection_dir(collection_id)}/{safe_name(item_id)}"
        doc, vrts = _image_item(root, folder, entry)
        state.setdefault(collection_id, CollectionState()).images[item_id] = doc
        files.update({f"{folder}/{name}": text for name, text in vrts.items()})
    for stack in stacks:
        if stack.result.output_path is None:
            continue
        folder = f"{collection_dir(stack.collection_id)}/datacubes/{safe_name(stack.item_id)}"
        doc = _stack_item(root, folder, stack)
        state.setdefault(stack.collection_id, CollectionState()).datacubes[stack.item_id] = doc

    catalog = pystac.Catalog(
        CATALOG_ID,
        "Earth Engine images downloaded by edown on their native grids, and their datacubes.",
        title="edown downloads",
        catalog_type=pystac.CatalogType.SELF_CONTAINED,
    )
    for collection_id in sorted(state):
        collections = _collections(collection_id, state[collection_id])
        catalog.add_child(collections[0])
    catalog.normalize_hrefs(str(root.absolute() / STAC_DIR), strategy=_Layout())
    base = root.absolute() / STAC_DIR
    documents: dict[str, str] = {}
    for obj in (*catalog.get_items(recursive=True), *_containers(catalog)):
        href = obj.get_self_href()
        assert href is not None
        relative = Path(href).relative_to(base).as_posix()
        documents[relative] = dumps(obj.to_dict(include_self_link=False, transform_hrefs=True))
    return {**files, **documents}


def _containers(catalog: pystac.Catalog) -> list[pystac.Catalog]:
    """Collections deepest first, then the catalog: the order in which links may be published."""
    out: list[pystac.Catalog] = []
    for child in catalog.get_children():
        out.extend(_containers(child))
    return [*out, catalog]


class _Layout(pystac.layout.HrefLayoutStrategy):
    """edown's paths: collection folders named as ``images/`` names them, one folder per item."""

    def get_catalog_href(self, cat: pystac.Catalog, parent_dir: str, is_root: bool) -> str:
        if is_root:
            return posixpath.join(parent_dir, "catalog.json")
        return posixpath.join(
            parent_dir, str(cat.extra_fields.get("edown:folder", cat.id)), "collection.json"
        )

    def get_collection_href(self, col: pystac.Collection, parent_dir: str, is_root: bool) -> str:
        return self.get_catalog_href(col, parent_dir, is_root)

    def get_item_href(self, item: pystac.Item, parent_dir: str) -> str:
        folder = str(item.extra_fields.get("edown:folder"))
        return posixpath.join(parent_dir, folder, f"{folder}.json")


def _collections(collection_id: str, state: CollectionState) -> list[pystac.Collection]:
    images = [_item_from(doc) for _, doc in sorted(state.images.items())]
    main = _collection(
        collection_id,
        collection_dir(collection_id),
        f"Earth Engine collection {collection_id}",
        f"Images of the Earth Engine collection {collection_id}, downloaded by edown as GeoTIFFs on "
        "each image's native grid.",
        images,
    )
    out = [main]
    if state.datacubes:
        cubes = [_item_from(doc) for _, doc in sorted(state.datacubes.items())]
        child = _collection(
            f"{collection_id}/datacubes",
            "datacubes",
            f"Datacubes of {collection_id}",
            "Zarr datacubes built by edown stack from the downloaded images, one per alignment group.",
            cubes,
        )
        main.add_child(child)
        out.append(child)
    return out


def _collection(
    collection_id: str, folder: str, title: str, description: str, items: list[pystac.Item]
) -> pystac.Collection:
    bboxes = [i.bbox for i in items if i.bbox] or [[-180.0, -90.0, 180.0, 90.0]]
    starts = [i.common_metadata.start_datetime or i.datetime for i in items]
    ends = [i.common_metadata.end_datetime or i.datetime for i in items]
    known_starts = [t for t in starts if t is not None]
    known_ends = [t for t in ends if t is not None]
    extent = pystac.Extent(
        pystac.SpatialExtent(
            [
                [
                    min(b[0] for b in bboxes),
                    min(b[1] for b in bboxes),
                    max(b[2] for b in bboxes),
                    max(b[3] for b in bboxes),
                ]
            ]
        ),
        pystac.TemporalExtent(
            [[min(known_starts) if known_starts else None, max(known_ends) if known_ends else None]]
        ),
    )
    collection = pystac.Collection(
        collection_id,
        description,
        extent,
        title=title,
        license="other",
        catalog_type=pystac.CatalogType.SELF_CONTAINED,
        extra_fields={"edown:folder": folder},
    )
    for item in items:
        collection.add_item(item)
    return collection


def preload() -> None:
    """Read one empty item, so pystac discovers its extension hooks now.

    pystac does that on the first item it reads (an entry-point scan and a score of imports, ~60 ms): a
    download calls this on a spare thread while it waits for Earth Engine, not after its last image.
    """
    empty: dict[str, Any] = {
        "type": "Feature",
        "stac_version": pystac.get_stac_version(),
        "id": "preload",
        "geometry": None,
        "properties": {"datetime": "2000-01-01T00:00:00Z"},
        "links": [],
        "assets": {},
    }
    _item_from(empty)


def _item_from(doc: dict[str, Any]) -> pystac.Item:
    """A pystac item from one of our documents, as written: no migration of its extensions, and with no
    self link, so its relative asset hrefs stay relative to the item's folder."""
    item = pystac.Item.from_dict(doc, migrate=False, preserve_dict=True)
    item.clear_links()
    return item


def _image_item(root: Path, folder: str, entry: ImageEntry) -> tuple[dict[str, Any], dict[str, str]]:
    record, result = entry.record, entry.result
    assert isinstance(result.tiff_path, Path), "the catalog is written in the (staged) local root"
    item_dir = root.absolute() / STAC_DIR / folder
    tiff = os.path.relpath(result.tiff_path.absolute(), item_dir)
    names = list(record.output_band_names)
    dtype = record.output_dtype
    nodata = result.nodata
    _, _, width, height = record.window
    transform = record.window_transform
    projection = _projection_fields(record.native_crs, transform, width, height)
    common = _common_names(record.collection_id)
    sources = list(record.selected_band_ids)
    eo_bands = []
    raster_bands = []
    for index, name in enumerate(names):
        source = sources[index] if index < len(sources) else name
        band: dict[str, Any] = {"name": name}
        if source in common:
            band["common_name"] = common[source]
        if source != name:
            band["description"] = f"Earth Engine band {source}"
        eo_bands.append(band)
        raster_bands.append(_raster_band(dtype, nodata))
    assets: dict[str, Any] = {
        "image": {
            "href": tiff,
            "type": f"{GEOTIFF}; profile=cloud-optimized" if entry.cog else GEOTIFF,
            "title": f"{record.image_id} ({len(names)} bands)",
            "roles": ["data"],
            "eo:bands": eo_bands,
            "raster:bands": raster_bands,
            **projection,
        }
    }
    vrts: dict[str, str] = {}
    for index, name in enumerate(names):
        vrt_name = f"{safe_name(name)}.vrt"
        vrts[vrt_name] = _band_vrt(
            tiff, index + 1, record.native_crs, transform, width, height, dtype, nodata, name
        )
        if name == "image":
            continue  # the whole image's asset keeps its key; the band is still band ``image`` of it
        assets[name] = {
            "href": f"./{vrt_name}",
            "title": f"band {name} of {record.image_id} (a GDAL VRT view of the GeoTIFF)",
            "roles": ["data"],
            "eo:bands": [eo_bands[index]],
            "raster:bands": [raster_bands[index]],
            **projection,
        }
    properties: dict[str, Any] = {"datetime": utc_iso(record.acquisition_time_utc)}
    properties.update(_ee_fields(record))
    if record.cloud_fraction is not None:
        properties["edown:cloud_fraction"] = record.cloud_fraction
    doc = {
        "type": "Feature",
        "stac_version": pystac.get_stac_version(),
        "stac_extensions": [EXTENSIONS["proj"], EXTENSIONS["raster"], EXTENSIONS["eo"]],
        "id": record.record_key,
        "geometry": _footprint(record.native_crs, transform, width, height),
        "bbox": _bbox(record.native_crs, transform, width, height),
        "properties": properties,
        "links": [],
        "assets": assets,
        "collection": record.collection_id,
        "edown:folder": folder.rsplit("/", 1)[-1],
    }
    return doc, vrts


def _stack_item(root: Path, folder: str, stack: StackEntry) -> dict[str, Any]:
    group, result = stack.group, stack.result
    assert isinstance(result.output_path, Path), "the catalog is written in the (staged) local root"
    item_dir = root.absolute() / STAC_DIR / folder
    href = os.path.relpath(result.output_path.absolute(), item_dir)
    a, _, c, _, e, f = group.transform[:6]
    reference = _reference_system(group.crs)
    times = sorted(stack.times)
    x_centres = (c + a / 2, c + a * (group.width - 0.5))
    y_centres = (f + e / 2, f + e * (group.height - 0.5))
    dimensions = {
        "time": {
            "type": "temporal",
            "extent": [utc_iso(times[0]), utc_iso(times[-1])] if times else [None, None],
            "values": [utc_iso(t) for t in times],
        },
        "band": {"type": "bands", "values": list(group.band_names)},
        "y": {
            "type": "spatial",
            "axis": "y",
            "extent": [min(y_centres), max(y_centres)],
            "step": e,
            "reference_system": reference,
        },
        "x": {
            "type": "spatial",
            "axis": "x",
            "extent": [min(x_centres), max(x_centres)],
            "step": a,
            "reference_system": reference,
        },
    }
    variables: dict[str, Any] = {
        "data": {
            "type": "data",
            "dimensions": ["time", "band", "y", "x"],
            "description": "pixel values of each time step's image(s), in the downloads' dtype",
        },
        "image_id": {
            "type": "auxiliary",
            "dimensions": ["time"],
            "description": "Earth Engine id(s) of each time step's image(s), joined by |",
        },
    }
    if stack.nodata is not None:
        variables["data"]["nodata"] = "nan" if stack.nodata != stack.nodata else stack.nodata
    properties: dict[str, Any] = {
        "datetime": None,
        "start_datetime": utc_iso(times[0]) if times else None,
        "end_datetime": utc_iso(times[-1]) if times else None,
        "cube:dimensions": dimensions,
        "cube:variables": variables,
        "ee:collection": stack.collection_id,
        "edown:group_id": group.group_id,
    }
    projection = _projection_fields(group.crs, group.transform, group.width, group.height)
    return {
        "type": "Feature",
        "stac_version": pystac.get_stac_version(),
        "stac_extensions": [EXTENSIONS["cube"], EXTENSIONS["proj"]],
        "id": stack.item_id,
        "geometry": _footprint(group.crs, group.transform, group.width, group.height),
        "bbox": _bbox(group.crs, group.transform, group.width, group.height),
        "properties": properties,
        "links": [],
        "assets": {"zarr": _stack_asset(href, stack, projection)},
        "collection": f"{stack.collection_id}/datacubes",
        "edown:folder": folder.rsplit("/", 1)[-1],
    }


def _stack_asset(href: str, stack: StackEntry, projection: dict[str, Any]) -> dict[str, Any]:
    """The datacube's asset: a Zarr store, or an icechunk repository (which plain Zarr readers cannot
    open: no media type is claimed for it, and the commit it was described at is given)."""
    group_id = stack.group.group_id
    asset: dict[str, Any]
    if stack.store != "icechunk":
        asset = {"href": href, "type": ZARR, "title": f"Zarr datacube {group_id} (time, band, y, x)"}
    else:
        asset = {
            "href": href,
            "title": f"icechunk repository of datacube {group_id} (time, band, y, x): open it with "
            "edown.open_stack or icechunk",
            "edown:store": "icechunk",
            "edown:snapshot_id": stack.result.snapshot_id,
        }
    return {**asset, "roles": ["data"], **projection}


def _projection_fields(crs: str, transform: Transform, width: int, height: int) -> dict[str, Any]:
    """``proj:*`` of a grid: the code (and EPSG number, for stackstac) or WKT2, shape and transform."""
    epsg = _epsg(crs)
    out: dict[str, Any] = (
        {"proj:code": f"EPSG:{epsg}", "proj:epsg": epsg}
        if epsg is not None
        else {"proj:code": None, "proj:wkt2": resolve_crs(crs).to_wkt()}
    )
    out["proj:shape"] = [height, width]
    out["proj:transform"] = [float(v) for v in transform[:6]]
    return out


def _epsg(crs: str) -> int | None:
    match = re.fullmatch(r"EPSG:(\d+)", crs.strip(), flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def _reference_system(crs: str) -> int | str:
    epsg = _epsg(crs)
    return epsg if epsg is not None else str(resolve_crs(crs).to_wkt())


def _raster_band(dtype: str, nodata: float | None) -> dict[str, Any]:
    band: dict[str, Any] = {"data_type": dtype if dtype in _DATA_TYPES else "other"}
    if nodata is not None:
        band["nodata"] = "nan" if nodata != nodata else _number(nodata, dtype)
    return band


def _number(value: float, dtype: str) -> float | int:
    return int(value) if np.dtype(dtype).kind in "iu" else float(value)


def _common_names(collection_id: str) -> dict[str, str]:
    for pattern, names in _COMMON_NAMES:
        if pattern.search(collection_id):
            return names
    return {}


def _ee_fields(record: ImageRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ee:id": record.image_id,
        "ee:collection": record.collection_id,
        "ee:system_index": record.system_index,
    }
    if record.version is not None:
        out["ee:version"] = record.version
    if record.grid_label:
        out["edown:grid_label"] = record.grid_label
    for key, value in sorted(record.properties.items()):
        out[f"ee:{key}"] = value
    for key in _CLOUD_COVER:
        value = record.properties.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 100:
            out["eo:cloud_cover"] = float(value)
            break
    return out


@lru_cache(maxsize=64)
def _to_wgs84(crs: str) -> Transformer:
    return Transformer.from_crs(resolve_crs(crs), CRS.from_epsg(4326), always_xy=True)


def _outline(crs: str, transform: Transform, width: int, height: int, steps: int = 16) -> list[list[float]]:
    """The grid's edge in WGS84 longitude/latitude, densified so a projected edge stays close."""
    a, b, c, d, e, f = transform[:6]
    cols = [width * i / steps for i in range(steps)]
    rows = [height * i / steps for i in range(steps)]
    pixels = (
        [(x, 0.0) for x in cols]
        + [(float(width), y) for y in rows]
        + [(width - x, float(height)) for x in cols]
        + [(0.0, height - y) for y in rows]
    )
    xs = [c + a * col + b * row for col, row in pixels]
    ys = [f + d * col + e * row for col, row in pixels]
    lons, lats = _to_wgs84(crs).transform(xs, ys)
    ring = [[round(float(x), 9), round(float(y), 9)] for x, y in zip(lons, lats, strict=True)]
    return [*ring, ring[0]]


def _footprint(crs: str, transform: Transform, width: int, height: int) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [_outline(crs, transform, width, height)]}


def _bbox(crs: str, transform: Transform, width: int, height: int) -> list[float]:
    ring = _outline(crs, transform, width, height)
    lons = [p[0] for p in ring]
    lats = [p[1] for p in ring]
    return [min(lons), min(lats), max(lons), max(lats)]


def _band_vrt(
    tiff: str,
    band: int,
    crs: str,
    transform: Transform,
    width: int,
    height: int,
    dtype: str,
    nodata: float | None,
    name: str,
) -> str:
    """A one-band GDAL VRT of band ``band`` of ``tiff`` (relative to the VRT), on the same grid."""
    a, b, c, d, e, f = transform[:6]
    resolved = resolve_crs(crs)
    north_first = resolved.axis_info and resolved.axis_info[0].direction.lower() in ("north", "south")
    mapping = "2,1" if north_first else "1,2"
    gdal_type = _GDAL_TYPES[dtype]
    lines = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f'  <SRS dataAxisToSRSAxisMapping="{mapping}">{escape(resolved.to_wkt())}</SRS>',
        f"  <GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>",
        f'  <VRTRasterBand dataType="{gdal_type}" band="1">',
        f"    <Description>{escape(name)}</Description>",
    ]
    if nodata is not None:
        lines.append(
            f"    <NoDataValue>{'nan' if nodata != nodata else repr(_number(nodata, dtype))}</NoDataValue>"
        )
    lines += [
        "    <SimpleSource>",
        f'      <SourceFilename relativeToVRT="1">{escape(tiff)}</SourceFilename>',
        f"      <SourceBand>{band}</SourceBand>",
        f'      <SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>',
        f'      <DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>',
        "    </SimpleSource>",
        "  </VRTRasterBand>",
        "</VRTDataset>",
    ]
    return "\n".join(lines) + "\n"


# ---- where it is --------------------------------------------------------------------------------------


def catalog_path(root: Path) -> Path:
    return Path(root) / STAC_DIR / "catalog.json"


def read_catalog(root: Path) -> dict[str, CollectionState]:
    """The items of the catalog under ``root`` (none when there is no catalog yet).

    Links are followed only to files inside ``root/stac`` and never through a symbolic link; a document
    that cannot be read is an error rather than a reason to start afresh, since rewriting the catalog
    without it would lose items.
    """
    root = Path(root).absolute()
    catalog = root / STAC_DIR / "catalog.json"
    check_no_links(root, catalog)
    if not catalog.exists():
        return {}
    state: dict[str, CollectionState] = {}
    for collection_file in _linked(root, catalog, "child"):
        collection = _read_json(root, collection_file)
        key = str(collection.get("id", ""))
        entry = state.setdefault(key, CollectionState())
        for item_file in _linked(root, collection_file, "item", collection):
            item = _read_json(root, item_file)
            entry.images[str(item["id"])] = _portable(item, item_file)
        for child_file in _linked(root, collection_file, "child", collection):
            for item_file in _linked(root, child_file, "item"):
                item = _read_json(root, item_file)
                entry.datacubes[str(item["id"])] = _portable(item, item_file)
    return state


def _portable(item: dict[str, Any], path: Path) -> dict[str, Any]:
    """An item document as :func:`catalog_documents` takes it: its folder name recorded, links dropped."""
    out = dict(item)
    out["links"] = []
    out.setdefault("edown:folder", path.parent.name)
    return out


def _linked(root: Path, source: Path, rel: str, doc: dict[str, Any] | None = None) -> list[Path]:
    doc = doc if doc is not None else _read_json(root, source)
    out = []
    for link in doc.get("links", []):
        if not isinstance(link, dict) or link.get("rel") != rel or not isinstance(link.get("href"), str):
            continue
        href = link["href"]
        if "://" in href or href.startswith("/"):
            raise _damaged(source, f"links to {href}, outside the catalog")
        target = Path(os.path.normpath(source.parent / href))
        try:
            target.relative_to(root / STAC_DIR)
        except ValueError:
            raise _damaged(source, f"links to {href}, outside the catalog") from None
        out.append(target)
    return out


def _read_json(root: Path, path: Path) -> dict[str, Any]:
    check_no_links(root, path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "r", encoding="utf-8") as handle:
            doc = json.load(handle)
    except FileNotFoundError:
        raise _damaged(path, "is missing") from None
    except (OSError, ValueError) as exc:
        raise _damaged(path, f"cannot be read ({exc})") from None
    if not isinstance(doc, dict):
        raise _damaged(path, "is not a STAC document")
    return doc


def _damaged(path: Path, what: str) -> OutputPathError:
    return OutputPathError(
        f"the STAC catalog file {path} {what}",
        hint="edown merges new items into its catalog and will not drop the old ones: move the stac "
        "folder away (edown then starts a new catalog) or restore the file",
    )


def write_documents(
    root: Path, documents: Mapping[str, str], on_written: Callable[[Path], object] | None = None
) -> Path:
    """Write ``documents`` (from :func:`catalog_documents`) under ``root/stac``, each atomically, in
    order; return the catalog's path. Files that already hold their text are left alone, so a run that
    adds one image rewrites one item, its collection and the catalog. The caller holds the root's lock."""
    root = Path(root)
    base = root / STAC_DIR
    for relative, text in documents.items():
        path = base / relative
        check_no_links(root.absolute(), path.absolute())
        if _holds(path, text):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        check_no_links(root.absolute(), path.absolute())
        atomic_write_text(path, text)
        if on_written is not None:  # e.g. uploaded to the store a staged root stands for
            on_written(path)
    return catalog_path(root)


def _holds(path: Path, text: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as handle:
        return handle.read() == text


def update_catalog(root: Path, images: Sequence[ImageEntry] = (), stacks: Sequence[StackEntry] = ()) -> Path:
    """Merge ``images`` and ``stacks`` into the catalog under ``root``; return the catalog's path."""
    existing = read_catalog(root)
    return write_documents(root, catalog_documents(root, existing, images, stacks))


def stack_entry(collection_id: str, group: AlignmentGroup, result: StackResult) -> StackEntry:
    """A datacube's entry, with its time steps and nodata read from the committed store (an append keeps
    the earlier steps, which this run's records do not list); a Zarr store or an icechunk repository."""
    from edown.stack import open_stack  # edown.stack writes the catalog through this module
    from edown.stack_icechunk import is_repository

    assert isinstance(result.output_path, Path), "datacubes on a store are not in the catalog yet"
    with open_stack(result.output_path) as ds:
        milliseconds = ds["time"].values.astype("datetime64[ms]").astype(np.int64)
        fill = ds["data"].attrs.get("_FillValue", ds["data"].encoding.get("_FillValue"))
    nodata = None if fill is None else float(fill)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    times = tuple(epoch + dt.timedelta(milliseconds=int(ms)) for ms in milliseconds)
    store = "icechunk" if is_repository(result.output_path) else "zarr"
    return StackEntry(collection_id, group, result, times, nodata, store)


def image_entries(
    records: Iterable[ImageRecord], results: Iterable[DownloadResult], cog: bool = False
) -> list[ImageEntry]:
    """Pair search records with their download outcomes by record key."""
    by_key = {r.record_key: r for r in records}
    return [
        ImageEntry(by_key[res.record_key], res, cog)
        for res in results
        if res.record_key in by_key and res.status in DONE
    ]


# ---- validation ---------------------------------------------------------------------------------------


def offline_validator() -> Any:
    """A pystac JSON-schema validator that never goes to the network.

    Core STAC and GeoJSON schemas ship with pystac, PROJJSON with pyproj, the extension schemas edown
    uses with edown (``stac_schemas/``). A schema not among them is an error, not a download. The
    datacube extension refers to PROJJSON v0.4, which is answered with PROJ's v0.7 (a superset): edown
    writes reference systems as EPSG numbers or WKT strings, which neither version matches.
    """
    from pyproj.datadir import get_data_dir
    from pystac.validation.stac_validator import GetSchemaError, JsonSchemaSTACValidator

    class _Offline(JsonSchemaSTACValidator):
        def _get_schema(self, schema_uri: str) -> dict[str, Any]:
            if schema_uri not in self.schema_cache:
                raise GetSchemaError(schema_uri, LookupError("not among the schemas bundled for offline use"))
            return self.schema_cache[schema_uri]

    validator = _Offline()
    here = Path(__file__).with_name("stac_schemas")
    for uri, name in SCHEMA_FILES.items():
        validator.schema_cache[uri] = json.loads((here / name).read_text(encoding="utf-8"))
    projjson = json.loads((Path(get_data_dir()) / "projjson.schema.json").read_text(encoding="utf-8"))
    for version in ("v0.4", "v0.7"):
        validator.schema_cache[f"https://proj.org/schemas/{version}/projjson.schema.json"] = projjson
    return validator


def validate_catalog(path: Path) -> int:
    """Validate ``catalog.json`` and everything it links, offline; return how many documents were checked.

    Raises :class:`pystac.errors.STACValidationError` naming the first invalid document.
    """
    from pystac.validation import validate_dict

    validator = offline_validator()
    todo = [Path(path).absolute()]
    seen: set[Path] = set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        doc = json.loads(current.read_text(encoding="utf-8"))
        validate_dict(doc, href=str(current), validator=validator)
        for link in doc.get("links", []):
            if link.get("rel") in ("child", "item"):
                todo.append(Path(os.path.normpath(current.parent / link["href"])))
    return len(seen)
