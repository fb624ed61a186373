"""What the video pipeline costs on top of the model.

Times, on the same decoded frames of a short clip:
  model only   the backend called on the pre-decoded batches (what the model alone can do),
  end to end   `sr_deploy.video.upscale_video` (decode thread + backend + encode thread + audio mux),
  pipeline     `upscale_video` with a free nearest-neighbour "model" of the same scale: the cost of
               decoding, conversions and encoding alone (the floor on a fast GPU).
Overhead = end-to-end time / model-only time - 1 (the issue asks for < 10%).

The measurement is `sr_deploy.bench.measure_video_overhead`, the same one as the video row of
`sr-deploy benchmark --video`.

    python benchmarks/upscale_video_overhead.py --model ../shared/data/weights/realesr-animevideov3.pth \
        --video ../shared/data/video/mov_bbb.mp4 --seconds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sr_deploy.backends import load  # noqa: E402
from sr_deploy.bench import measure_video_overhead, trim_clip  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--video", required=True)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of the clip cut from --video")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each measurement; the best is kept")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="srd-bench-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    clip = trim_clip(
        args.video, work / f"clip{Path(args.video).suffix}", seconds=args.seconds, preset="ultrafast", crf=None
    )
    backend = load(args.model, args.device, args.precision)
    m = measure_video_overhead(
        backend, clip, work, batch_size=args.batch_size, repeat=args.repeat, preset=args.preset, free_model=True
    )
    result, pipeline = m.end_to_end, m.pipeline_only
    # On the CPU the model and the encoder share the cores: the floor is model + pipeline CPU / cores.
    floor = m.cpu_floor_s(os.cpu_count() or 1) if backend.device == "cpu" else None
    figures = {
        "model": str(args.model),
        "backend": repr(backend),
        "clip": f"{args.video} first {args.seconds:g} s",
        "frames": m.frames,
        "input": f"{m.width}x{m.height}",
        "output": f"{result.size[0]}x{result.size[1]}",
        "batch_size": args.batch_size,
        "preset": args.preset,
        "repeat": args.repeat,
        "machine": platform.node(),
        "model_only_s": round(m.model_only_s, 3),
        "end_to_end_s": round(result.seconds, 3),
        "model_inside_pipeline_s": round(result.model_seconds, 3),
        "pipeline_only_s": round(pipeline.seconds, 3),
        "model_only_fps": round(m.frames / m.model_only_s, 3),
        "end_to_end_fps": round(result.frames / result.seconds, 3),
        "pipeline_only_fps": round(pipeline.frames / pipeline.seconds, 3),
        "overhead_percent": round(100 * (result.seconds / m.model_only_s - 1), 1),
        "pipeline_only_cpu_s": round(m.pipeline_cpu_s, 3),
        "cores": os.cpu_count(),
        "cpu_floor_s": round(floor, 3) if floor else None,
        "cpu_floor_overhead_percent": round(100 * (floor / m.model_only_s - 1), 1) if floor else None,
        "audio": result.audio,
    }
    backend.close()
    print(f"{'clip':<26}{figures['clip']} ({figures['frames']} frames, {figures['input']} -> {figures['output']})")
    print(f"{'backend':<26}{figures['backend']}, batch {args.batch_size}")
    print(f"{'model only':<26}{figures['model_only_s']:>8.2f} s  {figures['model_only_fps']:>8.2f} frames/s")
    print(f"{'end to end (upscale)':<26}{figures['end_to_end_s']:>8.2f} s  {figures['end_to_end_fps']:>8.2f} frames/s")
    print(
        f"{'pipeline, free model':<26}{figures['pipeline_only_s']:>8.2f} s  "
        f"{figures['pipeline_only_fps']:>8.2f} frames/s"
    )
    print(f"{'overhead on the model':<26}{figures['overhead_percent']:>8.1f} %   (audio {figures['audio']})")
    if floor:
        print(
            f"{'floor on this CPU':<26}{floor:>8.2f} s  {figures['cpu_floor_overhead_percent']:>8.1f} %   "
            f"(model + {m.pipeline_cpu_s:.2f} CPU s of decode/encode over {figures['cores']} cores)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
