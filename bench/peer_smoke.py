"""Evidence that the emulator speaks real Earth Engine: the public edown 0.2.1 (another program, using the
real ``ee`` client, in its own virtualenv) completes a search + download against it.

    python bench/peer_smoke.py

Prints what edown 0.2.1 asked of the emulator and what it wrote. It is expected to write Sentinel-2
B4/B8 as int16 on the 60 m grid: those are edown 0.2.1's known bugs (dtype from ``precision`` alone;
grid from band 0, which is B1 at 60 m), reproduced here because the emulator is faithful.
"""

from __future__ import annotations

import json
import sys
import tempfile
import textwrap
from pathlib import Path

from harness import EmulatorProcess, offline_service_account_env, peer_python, print_table, run_measured

DRIVER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import rasterio
    from edown import AOI, DownloadConfig, download_images
    url, out = sys.argv[1], Path(sys.argv[2])
    config = DownloadConfig(
        collection_id="COPERNICUS/S2_SR_HARMONIZED", start_date="2024-06-01", end_date="2024-06-12",
        aoi=AOI.from_bbox((-0.15, 51.48, 0.02, 51.56)), bands=("B4", "B8"), server_url=url, output_root=out)
    summary = download_images(config)
    files = []
    for result in summary.results:
        entry = {"image_id": result.image_id, "status": result.status, "error": result.error}
        if result.tiff_path:
            with rasterio.open(result.tiff_path) as src:
                entry.update(width=src.width, height=src.height, count=src.count, dtype=src.dtypes[0],
                             crs=str(src.crs), pixel=src.transform.a)
        files.append(entry)
    print(json.dumps({"downloaded": summary.downloaded, "failed": summary.failed, "files": files}))
    """
)


def main() -> int:
    python = peer_python()
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess() as emu:
        tmpdir = Path(tmp)
        (tmpdir / "driver.py").write_text(DRIVER)
        env = offline_service_account_env(tmpdir, emu.url + "/token")
        run = run_measured(
            [str(python), "driver.py", emu.url, str(tmpdir / "out")], env=env, cwd=tmpdir, timeout=600
        )
        stats = emu.stats()
    if run["code"] != 0:
        print(run["stderr"][-3000:], file=sys.stderr)
        print(f"edown 0.2.1 exited with {run['code']}", file=sys.stderr)
        return 1
    report = json.loads(run["stdout"].strip().splitlines()[-1])
    requests = stats["requests"]
    print(
        f"edown 0.2.1 against the edown emulator: {report['downloaded']} downloaded, {report['failed']} failed, "
        f"{run['wall']:.1f} s"
    )
    print()
    print_table(
        ["request kind", "count"],
        [
            [kind, requests.get(kind, 0)]
            for kind in ("token", "algorithms", "compute", "listAssets", "getPixels", "computePixels")
        ]
        + [
            ["statuses", ", ".join(f"{k}={v}" for k, v in sorted(stats["statuses"].items()))],
            ["bytes served", stats["bytes_out"]],
        ],
    )
    print()
    print_table(
        ["image", "status", "size", "dtype", "CRS", "pixel (m)"],
        [
            [
                f["image_id"].rsplit("/", 1)[-1],
                f["status"],
                f"{f.get('width')}x{f.get('height')}x{f.get('count')}",
                f.get("dtype"),
                f.get("crs"),
                f.get("pixel"),
            ]
            for f in report["files"]
        ],
    )
    ok = (
        report["downloaded"] > 0
        and report["failed"] == 0
        and all(f["status"] != "failed" for f in report["files"])
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
