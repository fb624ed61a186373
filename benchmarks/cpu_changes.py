#!/usr/bin/env python
"""The two CPU changes of issue 18 measured on/off on this machine, for docs/benchmark.md.

- ``tail``: the bundled model with its 3-channel output convolution before the last pixel shuffle
  (`sr_deploy.models.subpixel`) against the model as trained, fp32 and bf16, one 270x480 input,
  channels_last; both forms in the same process, calls alternating (this VM's speed drifts by a third
  from minute to minute, so only alternated calls compare), fastest and median of `--calls` each.
- ``malloc``: `sr-deploy upscale` (fp32, realesr-animevideov3) on the first 2 s of a clip under
  ``/usr/bin/time -v``, with the CPU backend's glibc setting (`sr_deploy.util.malloc`) and with
  ``SR_DEPLOY_MALLOC=system``: wall, user, system seconds, minor page faults, peak RSS.

    python benchmarks/cpu_changes.py [tail] [malloc] [--clip ../shared/data/video/mov_bbb.mp4]

Writes benchmarks/results/cpu_changes_cpu.json (the parts run) and prints a table. The malloc part
runs first: run after the tail part, whose models leave this parent process with a heap of several GB,
the glibc-default child faulted 10x less (759 k against 6.6 M faults, 12.8 s against 17.6 s) for a
reason not found; run alone or first, it matches the same command typed in a shell.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sr_deploy.bench import trim_clip  # noqa: E402
from sr_deploy.parity import find_shared_data  # noqa: E402
from sr_deploy.util import atomic_write_text  # noqa: E402

TIME_FIELDS = {
    "wall_s": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (.+)",
    "user_s": r"User time \(seconds\): ([\d.]+)",
    "sys_s": r"System time \(seconds\): ([\d.]+)",
    "minor_faults": r"Minor \(reclaiming a frame\) page faults: (\d+)",
    "max_rss_mb": r"Maximum resident set size \(kbytes\): (\d+)",
}


def measure_tail(calls: int) -> list[dict]:
    """Original and rewritten bundled model, fp32 and bf16, alternating calls on one 270x480 input."""
    import torch

    from sr_deploy.models import load_model
    from sr_deploy.models.subpixel import move_tail_before_shuffle
    from sr_deploy.util.malloc import keep_freed_memory

    keep_freed_memory()  # as the backend runs it: page faults would blur the comparison
    rows = []
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        original = load_model("default").eval()
        forms = {"as trained": original, "tail before shuffle": move_tail_before_shuffle(original)}
        forms = {k: v.to(dtype=dtype, memory_format=torch.channels_last) for k, v in forms.items()}
        x = torch.rand(1, 3, 270, 480, generator=torch.Generator().manual_seed(0)).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        times: dict[str, list[float]] = {k: [] for k in forms}
        with torch.inference_mode():
            for net in forms.values():
                net(x)
            for _ in range(calls):
                for name, net in forms.items():
                    start = time.perf_counter()
                    net(x)
                    times[name].append((time.perf_counter() - start) * 1e3)
        for name, samples in times.items():
            samples.sort()
            rows.append(
                {
                    "precision": precision,
                    "form": name,
                    "fastest_ms": round(samples[0], 1),
                    "median_ms": round(samples[len(samples) // 2], 1),
                }
            )
    return rows


def measure_malloc(clip: Path, work: Path) -> list[dict]:
    """`sr-deploy upscale` fp32 on `clip` under /usr/bin/time -v, glibc setting on and off."""
    model = find_shared_data() / "weights" / "realesr-animevideov3.pth"
    rows = []
    for setting, env in (("kept (default)", {}), ("system (SR_DEPLOY_MALLOC=system)", {"SR_DEPLOY_MALLOC": "system"})):
        out = work / "out.mp4"
        shutil.rmtree(work / "out.mp4.segments", ignore_errors=True)
        out.unlink(missing_ok=True)
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "sr_deploy", "upscale", str(clip), "-o", str(out)]
        cmd += ["--model", str(model), "--precision", "fp32", "--no-progress"]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        if done.returncode:
            raise SystemExit(f"upscale failed: {done.stderr.strip().splitlines()[-1:]}")
        row = {"glibc": setting}
        for key, pattern in TIME_FIELDS.items():
            value = re.search(pattern, done.stderr).group(1)
            if key == "wall_s":
                minutes, _, seconds = value.rpartition(":")
                row[key] = round(float(minutes or 0) * 60 + float(seconds), 2)
            elif key == "max_rss_mb":
                row[key] = round(int(value) / 1024)
            else:
                row[key] = float(value) if "." in value else int(value)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", help="tail and/or malloc (default: both)")
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--clip", type=Path, help="default: ../shared/data/video/mov_bbb.mp4")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_changes_cpu.json")
    args = parser.parse_args()
    args.parts = args.parts or ["tail", "malloc"]
    if unknown := set(args.parts) - {"tail", "malloc"}:
        parser.error(f"unknown part(s) {sorted(unknown)}: choose tail and/or malloc")
    result: dict = {"command": " ".join(["python", "benchmarks/cpu_changes.py", *sys.argv[1:]])}
    if "malloc" in args.parts:  # first: a clean parent process (see the docstring)
        clip = args.clip or find_shared_data() / "video" / "mov_bbb.mp4"
        with tempfile.TemporaryDirectory(prefix="srd-malloc-") as tmp:
            cut = trim_clip(clip, Path(tmp) / "clip.mp4", seconds=args.seconds, preset="medium", crf=18)
            result["malloc"] = measure_malloc(cut, Path(tmp))
            result["malloc_clip"] = f"{clip.name}, first {args.seconds:g} s"
        for row in result["malloc"]:
            print(f"malloc {row['glibc']:<34} " + "  ".join(f"{k} {v}" for k, v in row.items() if k != "glibc"))
    if "tail" in args.parts:
        result["tail"] = measure_tail(args.calls)
        for row in result["tail"]:
            print(
                f"tail   {row['precision']}  {row['form']:<20} fastest {row['fastest_ms']:8.1f} ms  median {row['median_ms']:8.1f} ms"
            )
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
