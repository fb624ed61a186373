"""Held frames for free (issue 26, part 3): `upscale_video` with and without reusing the output of held
frames, end to end (decode, model, encode, mux), on two clips cut from a real video:

  doubled   the first N frames, each shown twice (animation drawn on twos), 25 fps;
  plain     the first N frames as they are (no held frames): reuse must cost nothing there.

Both clips are lossless FFV1 (exact duplicates stay exact after decoding). Each round runs every
(clip, mode) once, the order of the two modes alternating from round to round, one backend loaded once
for all; the figures are medians over the rounds. The two outputs of the doubled clip are decoded and
compared frame by frame (the same encoder settings on the same pictures give the same video).

    python benchmarks/held_frames.py --frames 24 --rounds 3 --json benchmarks/results/held_frames_cpu.json \
        --markdown benchmarks/results/held_frames_cpu.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sr_deploy.backends import load  # noqa: E402
from sr_deploy.video import EXACT, find_ffmpeg, upscale_video  # noqa: E402

MODES = {"reuse": EXACT, "no reuse": None}


def make_clip(source: Path, target: Path, frames: int, twice: bool, width: int | None) -> Path:
    chain = f"trim=end_frame={frames}" + (f",scale={width}:-2" if width else "")
    chain += ",setpts=2*PTS,fps=25" if twice else ""
    command = [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(source), "-an"]
    subprocess.run(command + ["-vf", chain, "-c:v", "ffv1", str(target)], check=True)
    return target


def decoded(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]


def measure(args: argparse.Namespace, work: Path) -> dict:
    clips = {
        "doubled": make_clip(args.video, work / "doubled.mkv", args.frames, True, args.width),
        "plain": make_clip(args.video, work / "plain.mkv", args.frames, False, args.width),
    }
    backend = load(args.model, args.device, args.precision)
    runs: dict[str, dict[str, list[dict]]] = {clip: {mode: [] for mode in MODES} for clip in clips}
    for round_ in range(args.rounds):
        order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
        for clip, path in clips.items():
            for mode in order:
                target = work / f"{clip}-{mode.replace(' ', '_')}.mp4"
                cpu = time.process_time()
                result = upscale_video(
                    backend,
                    path,
                    target,
                    batch_size=args.batch_size,
                    preset=args.preset,
                    resume=False,
                    progress=False,
                    dedup_threshold=MODES[mode],
                )
                runs[clip][mode].append(
                    {
                        "wall_s": round(result.seconds, 3),
                        "cpu_s": round(time.process_time() - cpu, 3),
                        "model_s": round(result.model_seconds, 3),
                        "frames": result.frames,
                        "inferred": result.frames_inferred,
                        "reused": result.frames_reused,
                    }
                )
                print(f"round {round_ + 1} {clip:<8} {mode:<9} {result.seconds:7.2f} s  {runs[clip][mode][-1]}")
    a, b = decoded(work / "doubled-reuse.mp4"), decoded(work / "doubled-no_reuse.mp4")
    equal = sum(np.array_equal(x, y) for x, y in zip(a, b))
    max_abs = max(int(np.abs(x.astype(np.int16) - y).max()) for x, y in zip(a, b))
    figures = {}
    for clip in clips:
        median = {mode: statistics.median(r["wall_s"] for r in runs[clip][mode]) for mode in MODES}
        cpu = {mode: statistics.median(r["cpu_s"] for r in runs[clip][mode]) for mode in MODES}
        # Per round: the two modes ran back to back, so their ratio sees the same minutes of load.
        ratios = [b["wall_s"] / a["wall_s"] for a, b in zip(runs[clip]["reuse"], runs[clip]["no reuse"])]
        figures[clip] = {
            "frames": runs[clip]["reuse"][0]["frames"],
            "reused": runs[clip]["reuse"][0]["reused"],
            "median_wall_s": median,
            "median_cpu_s": cpu,
            "speedup": round(median["no reuse"] / median["reuse"], 3),
            "speedup_cpu": round(cpu["no reuse"] / cpu["reuse"], 3),
            "speedup_per_round": [round(r, 3) for r in ratios],
            "runs": runs[clip],
        }
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python benchmarks/held_frames.py " + " ".join(sys.argv[1:]),
        "model": str(args.model),
        "backend": repr(backend),
        "video": f"{args.video.name} first {args.frames} frames"
        + (f", scaled to {args.width} wide" if args.width else ""),
        "batch_size": args.batch_size,
        "preset": args.preset,
        "rounds": args.rounds,
        "machine": {"host": platform.node(), "cpu": _cpu(), "cpus": os.cpu_count(), "load": os.getloadavg()},
        "clips": figures,
        "doubled_outputs_equal_frames": f"{equal} of {len(a)} (frames in the two outputs: {len(a)}, {len(b)})",
        "doubled_outputs_max_abs_difference": max_abs,
    }


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown(report: dict) -> str:
    lines = [
        "# Held frames: `upscale_video` with and without reuse",
        "",
        f"- date: {report['date']}; command: `{report['command']}`",
        f"- machine: {report['machine']['host']} ({report['machine']['cpu']}, {report['machine']['cpus']} CPUs), "
        f"load average at the end {[round(v, 2) for v in report['machine']['load']]}",
        f"- model: {report['model']} as {report['backend']}, batch {report['batch_size']}, "
        f"x264 preset {report['preset']}",
        f"- clips: {report['video']}, each shown twice (doubled) or once (plain), FFV1",
        f"- {report['rounds']} rounds, the order of the two modes alternating; medians of the wall time "
        "of the whole `upscale_video` call (decode, model, encode, mux), and of its process CPU time "
        "(all threads: less sensitive than wall time to other jobs on a shared machine)",
        "",
        "| clip | frames | reused | median wall s, reuse | no reuse | speed-up | per round | median CPU s, reuse "
        "| no reuse | speed-up (CPU s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for clip, f in report["clips"].items():
        m, c = f["median_wall_s"], f["median_cpu_s"]
        rounds = ", ".join(f"{r:.2f}x" for r in f["speedup_per_round"])
        lines.append(
            f"| {clip} | {f['frames']} | {f['reused']} | {m['reuse']:.2f} | {m['no reuse']:.2f} | "
            f"{f['speedup']:.2f}x | {rounds} | {c['reuse']:.2f} | {c['no reuse']:.2f} | {f['speedup_cpu']:.2f}x |"
        )
    lines += [
        "",
        f"Doubled clip, the two outputs decoded: equal frames {report['doubled_outputs_equal_frames']}, "
        f"largest difference {report['doubled_outputs_max_abs_difference']} (of 255).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--video", type=Path, default=ROOT.parent / "shared" / "data" / "video" / "mov_bbb.mp4")
    parser.add_argument("--frames", type=int, default=24, help="distinct frames in each clip")
    parser.add_argument("--width", type=int, help="scale the clips to this width (default: as they are)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="srd-held-"))
    try:
        report = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
