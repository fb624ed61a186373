#!/usr/bin/env python
"""Issue 27: the `upscale --ray` driver's peak memory does not grow with the video.

Two synthetic 640x360 25 fps videos with audio (ffmpeg's testsrc2 + a sine), 2 s and 60 s, go
through `sr-deploy upscale IN -o OUT --ray` (a local cluster started by the driver, a tiny random
x4 SRVGG model on the CPU, x264 ultrafast) with their input and output in S3 (moto's server on
127.0.0.1, the same s3fs code as a real bucket) and, with `--local`, as local files. The driver's
peak RSS (VmHWM of the `sr-deploy` process, polled every 0.1 s until it exits) is printed for each,
with the difference 60 s - 2 s, and written to benchmarks/results/ray_driver_memory.json.
Also printed: actor-seconds per second of video (wall time x actors), the figure docs/scale-out.md uses.

    python benchmarks/ray_driver_memory.py [--local] [--seconds 2 60]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def make_video(path: Path, seconds: int) -> Path:
    from sr_deploy.video import find_ffmpeg

    lavfi = ["-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=25:duration={seconds}"]
    lavfi += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    codec = ["-c:v", "libx264", "-preset", "veryfast", "-g", "50", "-pix_fmt", "yuv420p", "-c:a", "aac"]
    subprocess.run([find_ffmpeg(), "-v", "error", "-y", *lavfi, *codec, "-shortest", str(path)], check=True)
    return path


def peak_rss(command: list[str], env: dict) -> tuple[int, float, str]:
    """(peak RSS in bytes of the process, wall seconds, stderr tail)."""
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        peak = 0
        while proc.poll() is None:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
            except OSError:
                pass
            time.sleep(0.1)
        err.seek(0)
        tail = err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{command}: exit {proc.returncode}: {tail[-1500:]}")
    return peak, time.monotonic() - start, tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", action="store_true", help="also local files in and out (rows carry the pieces)")
    parser.add_argument("--seconds", type=int, nargs="+", default=[2, 60])
    args = parser.parse_args()
    from _s3_server import moto_s3_server, s3_env
    from _upscale_support import save_tiny_srvgg

    work = Path(tempfile.mkdtemp(prefix="sr-ray-mem-"))
    model = save_tiny_srvgg(work / "tiny.pt")
    results = []
    with moto_s3_server() as endpoint:
        env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", **s3_env(endpoint))
        env.pop("RAY_ADDRESS", None)
        import fsspec

        fs = fsspec.filesystem(
            "s3", endpoint_url=endpoint, key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"]
        )
        fs.mkdir("bench")
        for seconds in args.seconds:
            video = make_video(work / f"v{seconds}.mp4", seconds)
            fs.put_file(str(video), f"bench/in/v{seconds}.mp4")
            runs = [("s3", f"s3://bench/in/v{seconds}.mp4", "s3://bench/out/")]
            if args.local:
                runs.append(("local", str(video), str(work / "out")))
            for where, source, out in runs:
                command = [sys.executable, "-m", "sr_deploy", "upscale", source, "-o", out, "--model", str(model)]
                command += ["--device", "cpu", "--precision", "fp32", "--preset", "ultrafast", "--no-progress", "--ray"]
                peak, wall, tail = peak_rss(command, env)
                found = re.search(r"video piece\(s\)\) on (\d+) actor", tail)
                actors = int(found.group(1)) if found else 0
                row = {"where": where, "seconds": seconds, "frames": seconds * 25, "input_bytes": video.stat().st_size}
                row |= {"driver_peak_rss_mb": round(peak / 2**20, 1), "wall_s": round(wall, 1), "actors": actors}
                results.append(row)
                print(json.dumps(row), flush=True)
    for where in sorted({r["where"] for r in results}):
        rows = sorted((r for r in results if r["where"] == where), key=lambda r: r["seconds"])
        if len(rows) >= 2:
            growth = rows[-1]["driver_peak_rss_mb"] - rows[0]["driver_peak_rss_mb"]
            print(
                f"{where}: driver peak RSS {rows[0]['seconds']} s: {rows[0]['driver_peak_rss_mb']} MB, "
                f"{rows[-1]['seconds']} s: {rows[-1]['driver_peak_rss_mb']} MB, growth {growth:+.1f} MB "
                f"({'within' if growth <= 200 else 'OVER'} the 200 MB bound)"
            )
    out = ROOT / "benchmarks" / "results" / "ray_driver_memory.json"
    machine = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    out.write_text(json.dumps({"machine": machine, "runs": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
