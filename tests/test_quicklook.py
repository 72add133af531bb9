"""``edown quicklook``: one band grey, three RGB, a note whenever bands are left out, nodata transparent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from edown import StackConfig, download_images, stack_images
from edown.emulator.server import Emulator
from tests.helpers import config, read_only, run_edown

NODATA = 65535
UP = np.arange(1, 401, dtype=np.uint16).reshape(20, 20) * 10  # rises along each row, then down the rows
DOWN = UP[::-1, ::-1].copy()
FLAT = np.full((20, 20), 500, dtype=np.uint16)
CHOOSE = "choose with -b BAND (grey) or three -b (R, G, B)"


def geotiff(path: Path, bands: dict[str, np.ndarray]) -> Path:
    """A small UTM GeoTIFF with named bands and one nodata pixel (top left) in every band."""
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=20,
        height=20,
        count=len(bands),
        dtype="uint16",
        crs="EPSG:32630",
        transform=from_origin(600000, 5700000, 10, 10),
        nodata=NODATA,
    ) as dst:
        for i, (name, values) in enumerate(bands.items(), start=1):
            data = values.copy()
            data[0, 0] = NODATA
            dst.write(data, i)
            dst.set_band_description(i, name)
    return path


def pixels(png: Path) -> tuple[str, np.ndarray]:
    with Image.open(png) as image:
        return image.mode, np.asarray(image)


def follows(channel: np.ndarray, values: np.ndarray) -> bool:
    """``channel`` rises (not strictly: the stretch clips) wherever ``values`` rises, over valid pixels."""
    order = np.argsort(values.ravel()[1:], kind="stable")
    return bool(np.all(np.diff(channel.ravel()[1:][order].astype(int)) >= 0)) and channel.std() > 20


def quicklook(tmp_path: Path, tif: Path, *args: str) -> tuple[int, str, Path]:
    out = tmp_path / "q.png"
    done = run_edown("quicklook", str(tif), "-o", str(out), *args, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stderr.strip(), out


def test_one_band_is_grey_with_nodata_transparent(tmp_path: Path) -> None:
    code, err, png = quicklook(tmp_path, geotiff(tmp_path / "one.tif", {"B8": UP}))
    assert (code, err) == (0, "")
    mode, la = pixels(png)
    assert mode == "LA" and la.shape == (20, 20, 2)
    assert la[0, 0, 1] == 0 and (la[..., 1] == 255).sum() == 399
    assert follows(la[..., 0], UP)


def test_two_bands_draw_the_first_in_grey_and_say_so(tmp_path: Path) -> None:
    code, err, png = quicklook(tmp_path, geotiff(tmp_path / "two.tif", {"B4": UP, "B8": DOWN}))
    assert code == 0
    assert err == f"note: B4 drawn in grey (of B4, B8); {CHOOSE}"
    mode, la = pixels(png)
    assert mode == "LA" and la[0, 0, 1] == 0
    assert follows(la[..., 0], UP), "the grey is B4, not B8"
    code, err, png = quicklook(tmp_path, tmp_path / "two.tif", "-b", "B8")
    assert (code, err) == (0, "")
    assert follows(pixels(png)[1][..., 0], DOWN)


def test_three_bands_are_rgb_in_true_colour_order(tmp_path: Path) -> None:
    code, err, png = quicklook(tmp_path, geotiff(tmp_path / "rgb.tif", {"B2": DOWN, "B3": FLAT, "B4": UP}))
    assert (code, err) == (0, "")
    mode, rgba = pixels(png)
    assert mode == "RGBA" and rgba[0, 0, 3] == 0 and (rgba[..., 3] == 255).sum() == 399
    assert follows(rgba[..., 0], UP) and follows(rgba[..., 2], DOWN), "red is B4, blue is B2"


def test_four_bands_draw_three_as_rgb_and_say_which(tmp_path: Path) -> None:
    tif = geotiff(tmp_path / "four.tif", {"B2": DOWN, "B3": FLAT, "B4": UP, "B8": DOWN})
    code, err, png = quicklook(tmp_path, tif)
    assert code == 0
    assert err == f"note: B4, B3, B2 drawn as red, green, blue (true colour of B2, B3, B4, B8); {CHOOSE}"
    mode, rgba = pixels(png)
    assert mode == "RGBA" and follows(rgba[..., 0], UP)
    unnamed = geotiff(tmp_path / "bands.tif", {"a": UP, "b": FLAT, "c": DOWN, "d": UP, "e": UP})
    code, err, png = quicklook(tmp_path, unnamed)
    assert code == 0
    assert err == f"note: a, b, c drawn as red, green, blue (the first three of a, b, c, d, e); {CHOOSE}"
    assert follows(pixels(png)[1][..., 2], DOWN)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["-b", "B4", "-b", "B8"],
            "error: bands: 2 bands given (B4, B8); a picture takes one (grey) or three (R, G, B)",
        ),
        (["-b", "B5"], "error: bands: B5 not in B4, B8"),
    ],
)
def test_a_wrong_choice_of_bands_is_bad_input(tmp_path: Path, args: list[str], line: str) -> None:
    code, err, png = quicklook(tmp_path, geotiff(tmp_path / "two.tif", {"B4": UP, "B8": DOWN}), *args)
    assert code == 2 and err.splitlines()[0] == line and not png.exists()


def test_an_output_in_a_missing_folder_is_refused_not_created(tmp_path: Path) -> None:
    tif = geotiff(tmp_path / "one.tif", {"B4": UP})
    done = run_edown("quicklook", str(tif), "-o", "pictures/q.png", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == "error: output: folder pictures does not exist"
    assert not (tmp_path / "pictures").exists()


def test_a_b4_b8_datacube_strip_is_grey_b4_and_says_so(ee_emulator: Emulator, tmp_path: Path) -> None:
    summary = download_images(config(ee_emulator, tmp_path, bands=("B4", "B8")))
    [stack] = stack_images(StackConfig(manifest_path=summary.manifest_path, chunk_size=256))
    assert stack.output_path is not None
    done = run_edown("quicklook", str(stack.output_path), "-o", "strip.png", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"note: B4 drawn in grey (of B4, B8); {CHOOSE}"
    mode, la = pixels(tmp_path / "strip.png")
    assert mode == "LA" and la[..., 0].std() > 10


def test_an_output_in_a_read_only_folder_is_bad_input(tmp_path: Path) -> None:
    tif = geotiff(tmp_path / "one.tif", {"B4": UP})
    (tmp_path / "shared").mkdir()
    with read_only(tmp_path / "shared"):
        done = run_edown("quicklook", str(tif), "-o", "shared/q.png", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0].startswith("error: quicklook folder shared is not writable (")
