"""Transform plugins: ``module:function`` called as ``function(image, metadata, config) -> ee.Image``.

The function receives the full ``ee.Image`` of one catalogue image (all bands, so a cloud mask can use
QA bands you do not download), a plain ``metadata`` dict (``id``, ``collection_id``, ``time_start``
in ms, ``properties``, ``bands``) and the :class:`~edown.config.SearchConfig`. It returns an ``ee.Image``
whose bands are then selected, scaled, renamed and cast as for any image. It runs on your machine but
only builds an expression: the computation happens in Earth Engine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import partial
from typing import Any

from edown.config import SearchConfig
from edown.errors import ConfigError

Plugin = Callable[[Any, dict[str, Any], SearchConfig], Any]


def load_plugin(spec: str) -> Plugin:
    """Import ``module:function``; every failure is one line naming ``transform_plugin``."""
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            "transform_plugin",
            f"cannot import module {module_name!r} ({type(exc).__name__}: {exc})",
            "make it importable (installed, or on PYTHONPATH)",
        ) from None
    func = getattr(module, func_name, None)
    if func is None or not callable(func):
        raise ConfigError("transform_plugin", f"{module_name!r} has no callable {func_name!r}")
    return func  # type: ignore[no-any-return]


def bind(plugin: Plugin, spec: str, metadata: dict[str, Any], config: SearchConfig) -> Callable[[Any], Any]:
    """The plugin applied to one image: ``image -> ee.Image``, with failures reported as config errors."""
    return partial(_apply, plugin, spec, metadata, config)


def _apply(plugin: Plugin, spec: str, metadata: dict[str, Any], config: SearchConfig, image: Any) -> Any:
    import ee

    try:
        out = plugin(image, metadata, config)
    except Exception as exc:
        raise ConfigError(
            "transform_plugin", f"{spec} raised {type(exc).__name__}: {exc} (image {metadata.get('id')})"
        ) from None
    if not isinstance(out, ee.Image):
        raise ConfigError("transform_plugin", f"{spec} returned {type(out).__name__}, not an ee.Image")
    return out


def metadata_from_asset(asset: dict[str, Any], collection_id: str) -> dict[str, Any]:
    """The plugin's ``metadata`` argument for a ``listAssets`` image."""
    from edown.records import parse_utc

    start = asset.get("startTime")
    return {
        "id": asset["id"],
        "collection_id": collection_id,
        "time_start": round(parse_utc(start).timestamp() * 1000) if start else None,
        "properties": dict(asset.get("properties") or {}),
        "bands": [b["id"] for b in asset.get("bands", [])],
    }
