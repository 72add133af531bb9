"""edown: native-grid Earth Engine downloads, Zarr datacubes, and a local Earth Engine emulator.

The public API: :func:`search_images`, :func:`download_images`, :func:`stack_images` and
:func:`open_stack`, their configuration types (:class:`AOI`, :class:`SearchConfig`,
:class:`DownloadConfig`, :class:`StackConfig`) and result types.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edown._version import __version__

if TYPE_CHECKING:
    from edown.config import AOI, DownloadConfig, SearchConfig, StackConfig
    from edown.download import download_images
    from edown.errors import (
        AuthenticationError,
        CollectionNotFoundError,
        ConfigError,
        EarthEngineError,
        EdownError,
        ManifestError,
        NoImagesFoundError,
        OutputExistsError,
        OutputLockedError,
        OutputPathError,
        StackError,
    )
    from edown.records import (
        AlignmentGroup,
        DownloadResult,
        DownloadSummary,
        ImageRecord,
        SearchResult,
        StackResult,
    )
    from edown.search import search_images
    from edown.stack import open_stack, stack_images

#: Where each public name lives. Imported on first use (PEP 562), so ``import edown`` and ``edown --help``
#: do not pay for numpy, shapely, pyproj, rasterio and the Earth Engine client before they are needed.
_HOMES = {
    "AOI": "edown.config",
    "DownloadConfig": "edown.config",
    "SearchConfig": "edown.config",
    "StackConfig": "edown.config",
    "download_images": "edown.download",
    "search_images": "edown.search",
    "open_stack": "edown.stack",
    "stack_images": "edown.stack",
    **dict.fromkeys(
        (
            "AuthenticationError",
            "CollectionNotFoundError",
            "ConfigError",
            "EarthEngineError",
            "EdownError",
            "ManifestError",
            "NoImagesFoundError",
            "OutputExistsError",
            "OutputLockedError",
            "OutputPathError",
            "StackError",
        ),
        "edown.errors",
    ),
    **dict.fromkeys(
        ("AlignmentGroup", "DownloadResult", "DownloadSummary", "ImageRecord", "SearchResult", "StackResult"),
        "edown.records",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'edown' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AOI",
    "AlignmentGroup",
    "AuthenticationError",
    "CollectionNotFoundError",
    "ConfigError",
    "DownloadConfig",
    "DownloadResult",
    "DownloadSummary",
    "EarthEngineError",
    "EdownError",
    "ImageRecord",
    "ManifestError",
    "NoImagesFoundError",
    "OutputExistsError",
    "OutputLockedError",
    "OutputPathError",
    "SearchConfig",
    "SearchResult",
    "StackConfig",
    "StackError",
    "StackResult",
    "__version__",
    "download_images",
    "open_stack",
    "search_images",
    "stack_images",
]
