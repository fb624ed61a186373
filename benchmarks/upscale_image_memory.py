"""Peak memory of `sr-deploy upscale` on a huge image: 6000x4000 -> 24000x16000 with --tile 512.

Issue 16's acceptance: peak RSS <= 3 GB (before the streaming writer it was 23.3 GB, about five
float32 copies of the output). Memory must follow the tile and the 8-bit output (24000 x 16000 x 3
= 1.15 GB), not the output as float32 (4.6 GB).

The input is a real photo (Sun_Hays80) enlarged to 6000x4000; the model is a tiny random
SRVGGNetCompact x4 (the model's size is not what is measured). The command runs under
`/usr/bin/time -v` in its own process; the figure is its "Maximum resident set size". Results go
to benchmarks/results/upscale_image_memory.json.

    nice -n 10 python benchmarks/upscale_image_memory.py [--width 6000 --height 4000 --tile 512]

Heavy: about 1.2 GB of PNG is written and minutes of CPU are spent. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _upscale_support import save_tiny_srvgg  # noqa: E402 - after the sys.path lines above


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR, without decoding it."""
    with open(path, "rb") as f:
        head = f.read(24)
    return struct.unpack(">II", head[16:24])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--photo", type=Path, default=ROOT.parent / "shared" / "data" / "train" / "Sun_Hays80")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "upscale_image_memory.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="srd-mem-", dir=os.environ.get("TMPDIR")))
    try:
        photo = min(args.photo.glob("*.jpg"))
        image = cv2.resize(cv2.imread(str(photo)), (args.width, args.height), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(work / "in.png"), image)
        del image
        model = save_tiny_srvgg(work / "tiny.pt")
        command = [
            sys.executable,
            "-m",
            "sr_deploy",
            "upscale",
            str(work / "in.png"),
            "-o",
            str(work / "out.png"),
            "--model",
            str(model),
            "--tile",
            str(args.tile),
            "--device",
            "cpu",
            "--no-progress",
        ]
        started = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-v", *command],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"upscale failed ({proc.returncode}): {proc.stderr[-2000:]}")
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
        width, height = png_size(work / "out.png")
        result = {
            "input": f"{args.width}x{args.height} ({photo.name} enlarged)",
            "output": f"{width}x{height}",
            "tile": args.tile,
            "model": "SRVGGNetCompact x4, num_feat 8, num_conv 2 (random weights)",
            "peak_rss_gb": round(peak_kb / 1e6, 3),
            "output_8bit_gb": round(width * height * 3 / 1e9, 3),
            "output_png_mb": round((work / "out.png").stat().st_size / 1e6, 1),
            "wall_seconds": round(seconds, 1),
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "note": "wall time is indicative only (it depends on the machine's load); the peak RSS is the figure",
            "command": " ".join(
                [
                    "/usr/bin/time -v sr-deploy upscale in.png -o out.png --model tiny.pt",
                    f"--tile {args.tile} --device cpu",
                ]
            ),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        if peak_kb > 3e6:
            sys.exit(f"peak RSS {peak_kb / 1e6:.2f} GB is over the 3 GB acceptance")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
