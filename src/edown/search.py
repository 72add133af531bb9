"""search_images: discover images with ``listImages``, pick bands, describe each native grid, group grids.

Discovery is one paged ``listImages`` query with the dates, the AOI and any property filters applied by
Earth Engine, so a year over many tiles costs a handful of requests (a page holds 1000 images), never a
full-collection ``getInfo``. Band metadata (types and grids) comes with the listing; only a transform
plugin needs extra requests, batched to describe many images per request.

Mixed resolutions are never silently resampled: with ``resample="none"`` (the default) every distinct
native grid among an image's selected bands becomes its own record and its own output (S2 B4 at 10 m and
B11 at 20 m give two records, labelled ``10m`` and ``20m``). ``resample="finest"`` keeps one record per
image on the finest selected grid and lets Earth Engine resample the coarser bands (nearest neighbour).

With ``max_cloud_fraction`` every candidate's cloud fraction inside the AOI is counted on Earth Engine
(:mod:`edown.clouds`; one request per 100 images) and written to its record; images above it stay out of
the alignment groups.
"""

from __future__ import annotations

import datetime as dt
import difflib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from edown import earthengine
from edown.bands import BandMeta, band_meta_from_ee, check_maps, output_dtype, output_names, select_bands
from edown.clouds import count_clouds
from edown.config import SearchConfig
from edown.errors import ConfigError, NoImagesFoundError
from edown.grid import GridSpec, alignment_signature, aoi_window, common_window, crs_key
from edown.plugins import Plugin, bind, load_plugin, metadata_from_asset
from edown.records import AlignmentGroup, ImageRecord, SearchResult, parse_utc

log = logging.getLogger("edown.search")

PLUGIN_BATCH = 25
#: Images per ``listImages`` page (Earth Engine's maximum).
PAGE_SIZE = 1000
#: Images looked at to list a collection's property names when a filtered search finds nothing.
PROPERTY_PROBE = 50


def connection_for(config: SearchConfig) -> earthengine.Connection:
    """The Earth Engine connection ``config`` runs on.

    A download's quotas and deadline apply to its search too (a plain search keeps the defaults): the
    listing, the cloud fractions and the pixels then share one pacer, which counts every request
    against the one rate quota Earth Engine keeps per project.
    """
    return earthengine.connect(
        config.server_url,
        config.project,
        config.credentials,
        max_concurrent=getattr(config, "max_concurrent_requests", 40),
        requests_per_second=getattr(config, "max_requests_per_second", 100.0),
        timeout=getattr(config, "request_timeout_seconds", 300.0),
    )


def search_images(
    config: SearchConfig, on_records: Callable[[list[ImageRecord]], None] | None = None
) -> SearchResult:
    """Discover images in an Earth Engine ImageCollection without downloading.

    ``on_records`` (for a download that streams) receives each listed page's records as soon as the page
    arrives, before the whole search ends; only when a page's records are already final (no transform
    plugin, band maps or ``max_images``, which need every page first). The result has them all again.

    Raises :class:`~edown.errors.ConfigError` for bad input (naming the field),
    :class:`~edown.errors.CollectionNotFoundError` for an unknown collection and
    :class:`~edown.errors.NoImagesFoundError` when nothing matches.
    """
    started = time.monotonic()
    plugin = load_plugin(config.transform_plugin) if config.transform_plugin else None
    conn = connection_for(config)
    first_request = conn.pacer.started
    policy = earthengine.RetryPolicy(
        max_retries=getattr(config, "max_retries", 4), base_delay=getattr(config, "retry_delay_seconds", 1.0)
    )
    streams = on_records is not None and plugin is None and config.max_images is None
    streams = streams and not config.scale_map and not config.rename_map
    streams = streams and config.max_cloud_fraction is None  # fractions are counted after the listing
    on_page = None
    if streams:
        assert on_records is not None

        def on_page(page: list[dict[str, Any]]) -> None:
            page = sorted(page, key=lambda a: (a.get("startTime", ""), a["id"]))
            records, _ = _build_records(config, page, _describe_plain(page), transformed=False, check=False)
            on_records([r for r in records if r.output_band_names])  # a page may hold none of the bands

    pages = [0]
    if on_page is not None:
        stream = on_page

        def on_page(page: list[dict[str, Any]]) -> None:
            pages[0] += 1
            stream(page)

    assets = _discover(conn, config, policy, on_page)
    describe = _describe_plain if plugin is None else _plugin_describer(conn, config, plugin, policy)
    band_lists = describe(assets)
    records, warnings = _build_records(
        config, assets, band_lists, transformed=plugin is not None or bool(config.scale_map)
    )
    if config.max_cloud_fraction is not None:
        records = with_cloud_fractions(conn, config, records, policy)
    groups = alignment_groups(records, config.max_cloud_fraction)
    selected = list(OrderedDict.fromkeys(b for r in records for b in r.selected_band_ids))
    names = list(OrderedDict.fromkeys(n for r in records for n in r.output_band_names))
    return SearchResult(
        collection_id=config.collection_id,
        images=tuple(records),
        alignment_groups=tuple(groups),
        selected_band_ids=tuple(selected),
        output_band_names=tuple(names),
        # Streamed, the connection also carries the download's pixel requests: count listing pages.
        requests=pages[0] if streams else conn.pacer.started - first_request,
        elapsed_seconds=time.monotonic() - started,
        warnings=tuple(warnings),
    )


def date_filter(config: SearchConfig) -> str:
    """The AIP-160 time filter: start times from ``start_date`` 00:00 UTC to the end of ``end_date``.

    It filters on ``startTime`` on both sides: ``listImages``' own ``endTime`` parameter filters on the
    images' *end* times, which drops a daily product's last day (it ends at midnight after).
    """
    start = f"{config.start_date}T00:00:00Z"
    return f'startTime >= "{start}" AND startTime < "{date_filter_end(config)}T00:00:00Z"'


def date_filter_end(config: SearchConfig) -> str:
    """The day after ``end_date`` (ISO): the exclusive end of the search's time range."""
    return (dt.date.fromisoformat(config.end_date) + dt.timedelta(days=1)).isoformat()


def _discover(
    conn: earthengine.Connection,
    config: SearchConfig,
    policy: earthengine.RetryPolicy,
    on_page: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    filters = config.parsed_property_filters
    listing = earthengine.list_images(
        conn,
        config.collection_id,
        date_filter(config),
        config.aoi.geometry,
        [f.to_aip160() for f in filters],
        policy,
        page_size=PAGE_SIZE,
    )
    assets: list[dict[str, Any]] = []
    # A full batch is a full page (or the listing ended): hand it on before asking for the next one.
    for page in itertools.batched(listing, PAGE_SIZE):
        assets.extend(page)
        if on_page is not None:
            on_page(list(page))
    if not assets and filters:
        _check_filtered_properties(conn, config, policy)
    if not assets:
        parts = [
            f"no images in {config.collection_id} from {config.start_date} to {config.end_date} (inclusive)",
            "intersecting the AOI with bounds " + ", ".join(f"{v:g}" for v in config.aoi.bounds),
        ]
        if filters:
            parts.append("with " + " and ".join(str(f) for f in filters))
        raise NoImagesFoundError(
            " ".join(parts), hint="widen the dates or the AOI, or relax the property filters"
        )
    assets.sort(key=lambda a: (a.get("startTime", ""), a["id"]))
    if config.max_images is not None:
        assets = assets[: config.max_images]
    return assets


def _check_filtered_properties(
    conn: earthengine.Connection, config: SearchConfig, policy: earthengine.RetryPolicy
) -> None:
    """After a filtered search found nothing, look at one unfiltered page (one request, only then): a
    filter on a property that none of those images has is a typo, not an empty result."""
    images = list(
        itertools.islice(
            earthengine.list_images(
                conn,
                config.collection_id,
                date_filter(config),
                config.aoi.geometry,
                [],
                policy,
                page_size=PROPERTY_PROBE,
            ),
            PROPERTY_PROBE,
        )
    )
    if not images:
        return
    known = sorted({name for image in images for name in (image.get("properties") or {})})
    unknown = [f.name for f in config.parsed_property_filters if f.name not in known]
    if unknown:
        guesses = [g for name in unknown for g in difflib.get_close_matches(name, known, n=1)]
        raise ConfigError(
            "property_filters",
            f"no image of {config.collection_id} in these dates and AOI has {', '.join(repr(n) for n in unknown)}"
            + (f" (did you mean {', '.join(repr(g) for g in guesses)}?)" if guesses else "")
            + f"; they have: {', '.join(known) or 'no properties'}",
            "property names are case-sensitive",
        )


def _describe_plain(assets: list[dict[str, Any]]) -> list[list[BandMeta]]:
    return [[band_meta_from_ee(b) for b in asset.get("bands", [])] for asset in assets]


def _plugin_describer(
    conn: earthengine.Connection, config: SearchConfig, plugin: Plugin, policy: earthengine.RetryPolicy
) -> Callable[[list[dict[str, Any]]], list[list[BandMeta]]]:
    def describe(assets: list[dict[str, Any]]) -> list[list[BandMeta]]:
        import ee

        assert config.transform_plugin is not None
        out: list[list[BandMeta]] = []
        for i in range(0, len(assets), PLUGIN_BATCH):
            batch = assets[i : i + PLUGIN_BATCH]
            images = [
                bind(plugin, config.transform_plugin, metadata_from_asset(a, config.collection_id), config)(
                    ee.Image(a["id"])
                )
                for a in batch
            ]
            try:
                infos = earthengine.compute_value(conn, ee.List(images), policy)
            except Exception as exc:
                err = earthengine.translate_error(exc)
                raise ConfigError(
                    "transform_plugin",
                    f"Earth Engine could not evaluate {config.transform_plugin}: {err.message}",
                ) from None
            for asset, info in zip(batch, infos, strict=True):
                native = {b["id"]: band_meta_from_ee(b) for b in asset.get("bands", [])}
                out.append([_plugin_band(b, native) for b in info.get("bands", [])])
        return out

    return describe


def _plugin_band(band: dict[str, Any], native: dict[str, BandMeta]) -> BandMeta:
    """A plugin output band; a computed band's grid may lack a size, so borrow it from a source band."""
    meta = band_meta_from_ee(band)
    if meta.grid.width:
        return meta
    for src in native.values():
        if src.grid.crs == meta.grid.crs and src.grid.transform == meta.grid.transform:
            return BandMeta(meta.id, meta.dtype, src.grid)
    return meta


def _grid_label(grid: GridSpec) -> str:
    res = abs(grid.transform[0])
    unit = "deg" if crs_key(grid.crs) == "EPSG:4326" else "m"
    return f"{res:g}{unit}"


def _build_records(
    config: SearchConfig,
    assets: list[dict[str, Any]],
    band_lists: list[list[BandMeta]],
    transformed: bool,
    check: bool = True,
) -> tuple[list[ImageRecord], list[str]]:
    """One record per image and native grid; ``check=False`` (one page of a streamed search) leaves the
    checks that need every image (bands found nowhere, band maps) to the whole search."""
    selections = []
    selected_anywhere: set[str] = set()
    missing_everywhere: set[str] | None = None
    all_available: list[str] = []
    for bands in band_lists:
        ids = [b.id for b in bands]
        all_available.extend(b for b in ids if b not in all_available)
        chosen, missing = select_bands(config, ids)
        selections.append((chosen, missing))
        selected_anywhere.update(chosen)
        missing_everywhere = set(missing) if missing_everywhere is None else missing_everywhere & set(missing)
    if check and missing_everywhere:
        raise ConfigError(
            "bands",
            f"{', '.join(sorted(missing_everywhere))} is not a band of any image found; available: {', '.join(all_available)}",
            "band names are case-sensitive Earth Engine ids (B04 is accepted for B4)",
        )
    if check and not selected_anywhere:
        wanted = [*config.bands, *(f"/{p}/" for p in config.band_include)]
        excluded = f" after excluding {', '.join(config.band_exclude)}" if config.band_exclude else ""
        raise ConfigError(
            "bands" if config.bands else "band_include" if config.band_include else "band_exclude",
            f"no band matched {', '.join(wanted) or 'anything'}{excluded}; available: {', '.join(all_available)}",
        )
    if check:
        check_maps(config, selected_anywhere)

    records: list[ImageRecord] = []
    warnings: list[str] = []
    aoi = config.aoi.shape
    for asset, bands, (chosen, missing) in zip(assets, band_lists, selections, strict=True):
        by_id = {b.id: b for b in bands}
        chosen_meta = [by_id[b] for b in chosen]
        grids: OrderedDict[GridSpec, list[BandMeta]] = OrderedDict()
        if config.resample == "finest" and chosen_meta:
            finest = min(chosen_meta, key=lambda b: abs(b.grid.transform[0]) * abs(b.grid.transform[4])).grid
            grids[finest] = chosen_meta
        else:
            for meta in chosen_meta:
                grids.setdefault(meta.grid, []).append(meta)
        if not grids:
            first = bands[0].grid if bands else GridSpec("EPSG:4326", (1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
            grids[first] = []
        labels = [_grid_label(g) for g in grids] if len(grids) > 1 else [""]
        if len(set(labels)) != len(labels):
            labels = [f"{label}-{i}" for i, label in enumerate(labels)]
        for (grid, metas), label in zip(grids.items(), labels, strict=True):
            sel = tuple(m.id for m in metas)
            names = tuple(output_names(config, sel))
            dtype = output_dtype(config, [m.dtype for m in metas], transformed)
            window = aoi_window(aoi, grid)
            records.append(
                ImageRecord(
                    image_id=asset["id"],
                    acquisition_time_utc=parse_utc(asset["startTime"]),
                    native_crs=grid.crs,
                    native_transform=grid.transform,
                    native_width=grid.width,
                    native_height=grid.height,
                    alignment_signature=alignment_signature(grid.crs, grid.transform, names, dtype),
                    selected_band_ids=(*sel, *missing),
                    output_dtype=dtype,
                    collection_id=config.collection_id,
                    output_band_names=names,
                    window=window.as_tuple(),
                    grid_label=label,
                    missing_bands=tuple(missing),
                    properties=dict(asset.get("properties") or {}),
                    footprint=asset.get("geometry"),
                    version=_version(asset),
                )
            )
        if missing:
            warnings.append(f"{asset['id']} lacks {', '.join(missing)}; it will be skipped at download")
    return records, warnings


def _version(asset: dict[str, Any]) -> int | None:
    stamp = asset.get("updateTime")
    return round(parse_utc(stamp).timestamp() * 1_000_000) if stamp else None


def with_cloud_fractions(
    conn: earthengine.Connection,
    config: SearchConfig,
    records: list[ImageRecord],
    policy: earthengine.RetryPolicy,
) -> list[ImageRecord]:
    """The records with their images' cloud fractions inside the AOI (a few batched requests for all)."""
    assert config.cloud_mask is not None
    wanted = list(OrderedDict.fromkeys(r.system_index for r in records if not r.outside_aoi))
    counts = count_clouds(
        config.collection_id,
        wanted,
        (config.start_date, date_filter_end(config)),
        config.aoi.geometry,
        config.cloud_mask,
        config.cloud_score_threshold,
        lambda obj: earthengine.compute_value(conn, obj, policy),
    )
    return [
        replace(r, cloud_fraction=counts[r.system_index].fraction) if r.system_index in counts else r
        for r in records
    ]


def is_cloudy(record: ImageRecord, max_cloud_fraction: float | None) -> bool:
    """Whether ``max_cloud_fraction`` drops this record (an image without a fraction is kept)."""
    return (
        max_cloud_fraction is not None
        and record.cloud_fraction is not None
        and record.cloud_fraction > max_cloud_fraction
    )


def alignment_groups(
    records: list[ImageRecord], max_cloud_fraction: float | None = None
) -> list[AlignmentGroup]:
    """Records on one grid with the same bands and dtype, each group on the common grid of its members'
    AOI windows; also used to regroup the records of several manifests stacked together. Records too
    cloudy for ``max_cloud_fraction`` stay out, as do those outside the AOI or missing bands."""
    by_sig: OrderedDict[str, list[ImageRecord]] = OrderedDict()
    for record in records:
        if record.outside_aoi or record.missing_bands or is_cloudy(record, max_cloud_fraction):
            continue
        by_sig.setdefault(record.alignment_signature, []).append(record)
    groups = []
    for signature, members in by_sig.items():
        anchor = members[0].grid
        transform, width, height = common_window(
            anchor, [(m.native_transform, m.aoi_window) for m in members]
        )
        groups.append(
            AlignmentGroup(
                group_id=signature,
                image_ids=tuple(OrderedDict.fromkeys(m.image_id for m in members)),
                crs=anchor.crs,
                band_names=members[0].output_band_names,
                dtype=members[0].output_dtype,
                transform=transform,
                width=width,
                height=height,
                record_keys=tuple(m.record_key for m in members),
                grid_label=members[0].grid_label,
            )
        )
    return groups
