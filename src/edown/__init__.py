"""edown: native-grid Earth Engine downloads, Zarr datacubes, and a local Earth Engine emulator."""

__version__ = "0.3.0.dev0"
