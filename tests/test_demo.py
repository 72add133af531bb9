"""The demo a newcomer runs first: it ends with a datacube on disk and pictures that show imagery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from edown.cli import cli
from edown.demo import run_demo


def test_demo_writes_everything_and_the_pictures_show_imagery(tmp_path: Path) -> None:
    lines: list[str] = []
    outcome = run_demo(tmp_path / "demo", say=lines.append, latency="none")
    assert [line[:3] for line in lines if line[:1].isdigit()] == ["1/4", "2/4", "3/4", "4/4"]
    # Clouds are masked by default, and the demo says so.
    assert any("masking clouds and shadows (cloud-score-plus" in line for line in lines)
    assert outcome.summary.failed == 0 and outcome.summary.downloaded == 12
    [stack] = outcome.stacks
    assert stack.output_path is not None and (stack.output_path / "zarr.json").exists()
    assert stack.shape == (12, 4, 938, 1216)
    first, strip = outcome.pictures
    with Image.open(first) as image:
        # 1216 x 938 pixels, decimated by two to fit the 1024 px quicklook limit.
        assert image.size == (608, 469) and image.mode == "RGBA"
        rgba = np.asarray(image)
    # Not blank: real variation in every colour channel; the pixels with data are opaque and the masked
    # clouds (nodata) transparent: this first image is partly cloudy.
    assert all(rgba[..., c].std() > 10 for c in range(3))
    assert set(np.unique(rgba[..., 3]).tolist()) == {0, 255}
    assert 0.5 < (rgba[..., 3] == 255).mean() < 0.95
    with Image.open(strip) as image:
        assert image.width > 12 * 200 and image.height > 150
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10


def test_quicklook_command(tmp_path: Path) -> None:
    outcome = run_demo(tmp_path / "demo", say=lambda _line: None, latency="none")
    tif = next(r.tiff_path for r in outcome.summary.results if r.tiff_path)
    result = CliRunner().invoke(
        cli, ["quicklook", str(tif), "-o", str(tmp_path / "q.png"), "-b", "B8", "-b", "B4", "-b", "B3"]
    )
    assert result.exit_code == 0 and Path(result.stdout.strip()) == tmp_path / "q.png"
    with Image.open(tmp_path / "q.png") as image:
        assert image.size == (608, 469)
