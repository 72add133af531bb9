"""edown: native-grid Earth Engine downloads, Zarr datacubes, and a local Earth Engine emulator.

The public API: :func:`search_images`, :func:`download_images`, :func:`stack_images` and
:func:`open_stack`, their configuration types (:class:`AOI`, :class:`SearchConfig`,
:class:`DownloadConfig`, :class:`StackConfig`) and result types.
"""

from edown._version import __version__
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
