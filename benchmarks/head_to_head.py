#!/usr/bin/env python
"""Head to head: `sr-deploy upscale` against what users would run instead, on the same model and inputs.

    python benchmarks/head_to_head.py                         # the committed run (about 10 min on 2 cores)
    python benchmarks/head_to_head.py --realesrgan-repo PATH  # a Real-ESRGAN clone (else: git clone)
    python benchmarks/head_to_head.py --quick                 # Set5 and 0.5 s of video, 1 run: a smoke test

The tools, each a whole process timed from start to exit (wall, user and system CPU time):
- **Real-ESRGAN**: its own ``inference_realesrgan.py`` (images) and ``inference_realesrgan_video.py``
  (video) in an environment of their own (`peers/realesrgan_env.py`: what is installed from where,
  and the fixes applied and why). On the CPU ``--fp32``, its only CPU mode; on CUDA its fp16 default.
- **sr-deploy** with its defaults (``--precision auto``: what this machine chose is recorded), and
  with ``--precision fp32``, the like-for-like row against Real-ESRGAN's fp32.
- **chaiNNer-style**: the loop a spandrel user writes (`peers/chainner_style.py`): fp32 on the CPU,
  fp16 on CUDA.

Same model (``../shared/data/weights/realesr-animevideov3.pth``), same inputs (the 14 Set14 photos;
the first 2 s of ``mov_bbb.mp4``, 320x176, 50 frames, with its audio), same thread count for every
tool (``OMP_NUM_THREADS``, default: all cores). Runs alternate between the tools (the order rotates
each round, so none always runs first) and the median is reported. Parity: every
tool's output against Real-ESRGAN's (PSNR, peak 255, and largest difference; video frames decoded,
so both sides carry their encoder's loss: sr-deploy encodes at CRF 18, Real-ESRGAN and the
chaiNNer-style loop at libx264's CRF 23).

Writes ``benchmarks/results/head_to_head_<device>[-quick].{json,md,png}``: the table, the command,
the machine (CPU model and bf16 flags, threads, torch), and the load average before and after.
Needs spandrel. Real-ESRGAN's video script runs the ``ffmpeg`` and ``ffprobe`` programs: without
them on PATH (a fresh machine) its row is reported as not run and everything else still runs (the
chaiNNer-style loop then pipes through imageio-ffmpeg's ffmpeg).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from peers import realesrgan_env  # noqa: E402
from peers.report import PEER, format_markdown, plot  # noqa: E402

from sr_deploy.bench import trim_clip  # noqa: E402
from sr_deploy.errors import NotInstalledError  # noqa: E402
from sr_deploy.metrics import psnr  # noqa: E402
from sr_deploy.parity import find_shared_data  # noqa: E402
from sr_deploy.util import atomic_write_text  # noqa: E402
from sr_deploy.util.plot import pyplot  # noqa: E402

MODEL_NAME = "realesr-animevideov3"


@dataclass
class Tool:
    """One row: how to run it on `task` (``images`` / ``video``) into `out`, and where its outputs land."""

    label: str
    task: str
    precision: str
    argv: list[str]
    cwd: Path | None = None
    output_suffix: str = ""  # Real-ESRGAN names outputs NAME_out.png
    out: Path | None = None  # the folder it writes into (images, or the one video)
    samples: list[dict] = field(default_factory=list)
    parity: dict = field(default_factory=dict)
    note: str = ""


@dataclass
class Inputs:
    model: Path
    images: Path
    clip: Path
    work: Path


def run_timed(argv: list[str], cwd: Path | None, env: dict, log: Path) -> dict:
    """Run `argv` to completion; wall seconds and the child's user / system CPU seconds (wait4)."""
    with open(log, "w") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if proc.returncode else []
    return {
        "wall_s": round(wall, 3),
        "user_s": round(usage.ru_utime, 3),
        "sys_s": round(usage.ru_stime, 3),
        "rc": proc.returncode,
        "error": tail[0][:300] if tail else "",
    }


def without_programs(peer: realesrgan_env.PeerEnv, which) -> realesrgan_env.PeerEnv:
    """`peer`, its video script left out (a row reported, not run) when ``ffmpeg`` or ``ffprobe`` is
    not on PATH (`which`: shutil.which): that script runs both. A fresh machine has neither, and the
    rest of the head-to-head (images, sr-deploy, the chaiNNer-style loop) needs neither."""
    missing = [program for program in ("ffmpeg", "ffprobe") if which(program) is None]
    if not missing or peer.video_script is None:
        return peer
    reason = f"{' and '.join(missing)} not on PATH (apt install ffmpeg): Real-ESRGAN's video script runs them"
    return dataclasses.replace(peer, video_script=None, video_missing=reason)


def make_tools(peer: realesrgan_env.PeerEnv, inputs: Inputs, device: str) -> list[Tool]:
    """The rows for `device`; each tool's outputs go to inputs.work / <row number> / ..."""
    cuda = device == "cuda"
    srd = [sys.executable, "-m", "sr_deploy", "upscale", "--model", str(inputs.model), "--no-progress"]
    srd += ["--device", device]
    chainner = [sys.executable, str(HERE / "peers" / "chainner_style.py"), str(inputs.model)]
    chainner += ["--half"] if cuda else []
    weights = inputs.work / "peer-cwd"  # the video script looks for weights/<name>.pth in its cwd
    (weights / "weights").mkdir(parents=True, exist_ok=True)
    link = weights / "weights" / f"{MODEL_NAME}.pth"
    if not link.exists():
        link.symlink_to(inputs.model)
    peer_precision = [] if cuda else ["--fp32"]
    tools = []
    for task, src in (("images", inputs.images), ("video", inputs.clip)):
        peer_argv = [str(peer.python)]
        if task == "images":
            peer_argv += [str(peer.image_script), "-i", str(src), "-n", MODEL_NAME, "--model_path", str(inputs.model)]
        elif peer.video_script is not None:
            peer_argv += [str(peer.video_script), "-i", str(src), "-n", MODEL_NAME]
        else:
            peer_argv = []
        row = Tool(
            PEER,
            task,
            "fp16" if cuda else "fp32",
            peer_argv + peer_precision if peer_argv else [],  # no script: the row is reported, not run
            cwd=weights,
            output_suffix="_out",
        )
        row.note = "" if peer_argv else f"not run: {peer.video_missing}"
        tools.append(row)
        tools.append(Tool("sr-deploy (defaults)", task, "auto", srd + [str(src)]))
        if not cuda:
            tools.append(Tool("sr-deploy --precision fp32", task, "fp32", srd + ["--precision", "fp32", str(src)]))
        tools.append(Tool("chaiNNer-style loop", task, "fp16" if cuda else "fp32", chainner + [str(src)]))
    for number, tool in enumerate(tools):
        tool.out = inputs.work / f"out-{number}"
        tool.argv = tool.argv and with_output(tool, tool.out)
    return tools


def with_output(tool: Tool, out: Path) -> list[str]:
    """`tool.argv` with its output argument: a folder for images; for video a folder (Real-ESRGAN
    names the file itself) or the file."""
    if tool.label == PEER:
        return tool.argv + ["-o", str(out)]
    target = out if tool.task == "images" else out / "clip.mp4"
    if tool.label.startswith("sr-deploy"):
        return tool.argv + ["-o", str(target)]
    return tool.argv + [str(target)]


def run_rounds(tools: list[Tool], rounds: int, env: dict, work: Path) -> None:
    """`rounds` rounds over the runnable tools, the order rotated every round; outputs of the last
    round are kept for the parity check."""
    runnable = [t for t in tools if t.argv]
    for r in range(rounds):
        order = runnable[r % len(runnable) :] + runnable[: r % len(runnable)]
        for tool in order:
            shutil.rmtree(tool.out, ignore_errors=True)
            tool.out.mkdir(parents=True, exist_ok=True)
            sample = run_timed(tool.argv, tool.cwd, env, work / "last.log")
            tool.samples.append(sample)
            status = "ok" if sample["rc"] == 0 else f"FAILED rc={sample['rc']}: {sample['error']}"
            if tool.label.startswith("sr-deploy (defaults)") and sample["rc"] == 0:
                line = precision_line(work / "last.log")
                tool.precision = line.split()[1].rstrip(":") if line else tool.precision
                tool.note = line.removeprefix("precision: ")
            print(f"  round {r + 1}/{rounds}  {tool.task:<6} {tool.label:<28} {sample['wall_s']:8.2f} s  {status}")


def precision_line(log: Path) -> str:
    """sr-deploy's ``precision: bf16: <why>`` line from a run's log, or ""."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("precision: "):
            return line
    return ""


def image_parity(tool: Tool, reference: Tool) -> dict:
    """PSNR over all pixels of all images, and the largest difference, against the reference tool."""
    import cv2
    import numpy as np

    worst, sq, count = 0, 0.0, 0
    for ref_path in sorted(reference.out.glob(f"*{reference.output_suffix}.png")):
        stem = ref_path.stem.removesuffix(reference.output_suffix) if reference.output_suffix else ref_path.stem
        ours = cv2.imread(str(tool.out / f"{stem}{tool.output_suffix}.png"))
        ref = cv2.imread(str(ref_path))
        if ours is None or ours.shape != ref.shape:
            return {"error": f"{stem}: missing or another size"}
        diff = ours.astype(np.int16) - ref.astype(np.int16)
        worst = max(worst, int(np.abs(diff).max()))
        sq += float(np.sum(diff.astype(np.float64) ** 2))
        count += diff.size
    if not count:
        return {"error": "no reference images"}
    mse = sq / count
    return {"psnr_db": round(10 * np.log10(255.0**2 / mse), 2) if mse else "inf", "max_abs": worst}


def video_frames(path: Path) -> list:
    """Every decoded frame of `path`: (H, W, 3) uint8 BGR arrays, OpenCV's order."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return frames
        frames.append(frame)


def media_facts(path: Path) -> dict:
    """Duration (s) and the stream kinds of a media file, from ffprobe."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_type", "-of", "json", str(path)],
        capture_output=True,
        text=True,
    )
    data = json.loads(out.stdout or "{}")
    return {
        "duration_s": round(float(data.get("format", {}).get("duration", "nan")), 3),
        "streams": sorted(s["codec_type"] for s in data.get("streams", [])),
    }


def video_parity(tool: Tool, reference: Tool) -> dict:
    """Frames, duration and streams of the tool's video; mean PSNR of its frames against the reference's."""
    import numpy as np

    (ours,) = list(tool.out.glob("*.mp4")) or [None]
    (ref,) = list(reference.out.glob("*.mp4")) or [None]
    if ours is None or ref is None:
        return {"error": "no output video"}
    a, b = video_frames(ours), video_frames(ref)
    result = {"frames": len(a), **media_facts(ours)}
    if len(a) != len(b) or not a or a[0].shape != b[0].shape:
        return {**result, "error": f"{len(a)} frames against {len(b)}"}
    scores = [psnr(x, y, crop_border=0, y_channel=False) for x, y in zip(a, b, strict=True)]
    result["psnr_db"] = round(float(np.mean(scores)), 2)
    return result


def summarise(tools: list[Tool]) -> None:
    """Medians, ratios against Real-ESRGAN on the same task, and parity against its outputs."""
    for task in ("images", "video"):
        rows = [t for t in tools if t.task == task]
        reference = next((t for t in rows if t.label == PEER), None)
        if reference is None:
            continue
        for tool in rows:
            ok = [s for s in tool.samples if s["rc"] == 0]
            if not ok or len(ok) != len(tool.samples):
                failed = [s for s in tool.samples if s["rc"] != 0]
                tool.note = f"failed: {failed[-1]['error']}" if failed else tool.note or "not run"
                continue
            if reference.samples and all(s["rc"] == 0 for s in reference.samples):
                check = image_parity if task == "images" else video_parity
                tool.parity = check(tool, reference) if tool is not reference else {"reference": True}
                if task == "video" and tool is reference:
                    tool.parity = {**media_facts(next(tool.out.glob("*.mp4"))), "reference": True}


def median_of(tool: Tool, key: str) -> float | None:
    """The median of `key` over the tool's runs; None when any run failed (no figure from a partial set)."""
    values = [s[key] for s in tool.samples if s["rc"] == 0]
    return round(statistics.median(values), 3) if values and len(values) == len(tool.samples) else None


def readable_command(argv: list[str]) -> str:
    """`argv` as a shell line without this machine's paths: the interpreter as ``python``, the
    temporary folder as ``$WORK``, the peer cache as ``$PEERS``, the data folder as ``../shared/data``."""
    if not argv:
        return ""
    line = shlex.join(["python" if argv[0] == sys.executable else argv[0], *argv[1:]])
    data = find_shared_data()
    swaps = [(str(realesrgan_env.cache_root()), "$PEERS"), (str(ROOT) + "/", ""), (tempfile.gettempdir(), "/tmp")]
    swaps += [(str(data), "../shared/data")] if data else []
    for old, new in swaps:
        line = line.replace(old, new)
    return line


def row_dict(tool: Tool, reference: Tool) -> dict:
    wall, ref_wall = median_of(tool, "wall_s"), median_of(reference, "wall_s")
    return {
        "task": tool.task,
        "tool": tool.label,
        "precision": tool.precision,
        "median_wall_s": wall,
        "median_user_s": median_of(tool, "user_s"),
        "median_sys_s": median_of(tool, "sys_s"),
        "speedup_vs_realesrgan": round(ref_wall / wall, 2) if wall and ref_wall else None,
        "samples": tool.samples,
        "parity_vs_realesrgan": tool.parity,
        "command": readable_command(tool.argv),
        "note": tool.note,
    }


def machine(threads: int) -> dict:
    import torch

    from sr_deploy.backends.cpu_precision import cpu_bf16_instructions, cpu_model_name

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {
        "cpu": cpu_model_name(),
        "bf16_hardware": cpu_bf16_instructions() or "none",
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "commit": commit.stdout.strip(),
    }


def prepare_inputs(args: argparse.Namespace, work: Path) -> Inputs:
    data = find_shared_data()
    if data is None:
        raise SystemExit("../shared/data not found: the head-to-head needs its model, Set14 and mov_bbb.mp4")
    model = data / "weights" / f"{MODEL_NAME}.pth"
    images = data / "benchmark" / ("Set5" if args.quick else "Set14")
    clip = trim_clip(data / "video" / "mov_bbb.mp4", work / "clip.mp4", seconds=args.seconds, preset="medium", crf=18)
    return Inputs(model, images, clip, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3; --quick: 1)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of the clip cut from mov_bbb.mp4")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP_NUM_THREADS for every tool")
    parser.add_argument("--realesrgan-repo", type=Path, help="a clone of xinntao/Real-ESRGAN (bare or not)")
    parser.add_argument("--quick", action="store_true", help="Set5, 0.5 s of video, 1 round; files end in -quick")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    try:
        pyplot("the head-to-head plot")  # it is drawn last: a missing extra is said now, not after the run
    except NotInstalledError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if args.quick:
        args.rounds, args.seconds = 1, 0.5
    print("preparing Real-ESRGAN's environment (cached after the first run) ...")
    peer = without_programs(realesrgan_env.prepare(args.realesrgan_repo), shutil.which)
    with tempfile.TemporaryDirectory(prefix="srd-h2h-") as tmp:
        report = measure(args, peer, Path(tmp))
    stem = args.out / f"head_to_head_{args.device}{'-quick' if args.quick else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    atomic_write_text(stem.with_suffix(".md"), format_markdown(report))
    plot(report, stem.with_suffix(".png"))
    print(format_markdown(report))
    print(f"written: {stem}.json, .md, .png")


def measure(args: argparse.Namespace, peer: realesrgan_env.PeerEnv, work: Path) -> dict:
    inputs = prepare_inputs(args, work)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    tools = make_tools(peer, inputs, args.device)
    # sr-deploy measures its bf16 verdict once per machine and model; do it before the clock runs,
    # as any user's second run finds it cached.
    subprocess.run([sys.executable, "-m", "sr_deploy", "info", str(inputs.model)], env=env, capture_output=True)
    load_before = os.getloadavg()
    run_rounds(tools, args.rounds, env, work)
    load_after = os.getloadavg()
    summarise(tools)
    references = {t.task: t for t in tools if t.label == PEER}
    n_images = len([p for p in inputs.images.iterdir() if p.suffix == ".png"])
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "benchmarks/head_to_head.py", *sys.argv[1:]]),
        "machine": machine(args.threads),
        "rounds": args.rounds,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "model": f"../shared/data/weights/{MODEL_NAME}.pth",
        "images": f"{inputs.images.name}: {n_images} PNG photos",
        "video": f"mov_bbb.mp4, first {args.seconds:g} s (320x176, audio)",
        "fixes": list(peer.fixes),
        "rows": [row_dict(t, references[t.task]) for t in tools],
    }


if __name__ == "__main__":
    main()
