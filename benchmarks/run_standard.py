#!/usr/bin/env python
"""The standard benchmark matrix: the bundled model and an ESRGAN RRDBNet on every backend.

    python benchmarks/run_standard.py            # the full matrix for this machine (minutes)
    python benchmarks/run_standard.py --quick    # a smoke run: tiny sizes, few calls (about a minute)

Writes benchmarks/results/<host>-<date>.json and .md (``-quick`` added for --quick, which git
ignores: quick numbers are not results). Each file holds the exact command that produced it.
Run it on a quiet machine: the load average at start and end is recorded, and a busy machine
is called out in the notes.

Matrix (per device found; CUDA when PyTorch sees a GPU):
- bundled model (`default`; while the package has none, a freshly initialised SRResNet x4,
  8 blocks x 64 features, no BN, said so in the output): torch (channels_last), torch-nchw,
  onnxruntime on the CPU, and tensorrt; fp32 on the CPU; fp32 + fp16 on CUDA;
  sizes 128x128 and 270x480 on the CPU, 270x480 and 540x960 on CUDA (batch 1 and 4).
- RRDBNet x4 (ESRGAN's 23 blocks x 64 features, growth 32; fresh weights: only speed and
  parity are measured): same backends, smaller sizes on the CPU (32x32, 64x64) so it finishes.
- the end-to-end video row for the bundled model on ../shared/data/video/mov_bbb.mp4 (trimmed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402

from sr_deploy.bench import BenchReport, format_markdown, format_table, run_benchmark  # noqa: E402
from sr_deploy.errors import InputError  # noqa: E402
from sr_deploy.models import RRDBNet, SRResNet, resolve_model_path, save_checkpoint  # noqa: E402
from sr_deploy.parity import find_shared_data  # noqa: E402
from sr_deploy.util import atomic_write_text, check_output_path  # noqa: E402

FALLBACK_CONFIG = {"scale": 4, "num_blocks": 8, "num_features": 64, "batch_norm": False}
RRDB_CONFIG = {"scale": 4, "num_blocks": 23, "num_features": 64, "growth_channels": 32}
QUICK_RRDB_CONFIG = {"scale": 4, "num_blocks": 4, "num_features": 64, "growth_channels": 32}


def bundled_model(folder: Path, say) -> tuple[str, str | None]:
    """(`default`, None) when the package ships it, else a fresh SRResNet checkpoint in `folder`
    and a note saying so."""
    try:
        resolve_model_path("default")
        return "default", None
    except InputError:
        torch.manual_seed(0)
        path = folder / "srresnet-x4-8x64-fresh.pt"
        save_checkpoint(
            path,
            SRResNet(**FALLBACK_CONFIG),
            FALLBACK_CONFIG,
            metadata={"note": "freshly initialised, untrained: for timing only"},
        )
        note = (
            "the bundled model `default` is not in this installation: the 'bundled' rows use a freshly "
            "initialised SRResNet x4 (8 blocks x 64 features, no BN) instead"
        )
        say(f"NOTE: {note}")
        return str(path), note


def matrix(device: str, quick: bool) -> dict[str, dict]:
    """The run_benchmark arguments per model for `device` ("cpu" or "cuda")."""
    cuda = device == "cuda"
    common = {
        "backends": ["torch", "torch-nchw", "onnxruntime@cpu", "tensorrt@cuda"]
        if cuda
        else ["torch", "torch-nchw", "onnxruntime", "tensorrt"],
        "precisions": ["fp32", "fp16"] if cuda else ["fp32"],
        "device": device,
    }
    if quick:
        timing = {"warmup": 1, "iters": 3, "seconds": None}
        return {
            "bundled": {**common, **timing, "sizes": [(32, 32), (48, 64)], "batch_sizes": [1]},
            "rrdbnet": {**common, **timing, "sizes": [(24, 24)], "batch_sizes": [1]},
        }
    timing = {"warmup": 3, "iters": None, "seconds": 3.0 if cuda else 5.0}
    return {
        "bundled": {
            **common,
            **timing,
            "sizes": [(270, 480), (540, 960)] if cuda else [(128, 128), (270, 480)],
            "batch_sizes": [1, 4] if cuda else [1],
        },
        "rrdbnet": {
            **common,
            **timing,
            "sizes": [(270, 480), (540, 960)] if cuda else [(32, 32), (64, 64)],
            "batch_sizes": [1],
        },
    }


def equivalent_command(model: str, args: dict) -> str:
    """The `sr-deploy benchmark` line that runs the same rows."""
    parts = [
        "sr-deploy",
        "benchmark",
        shlex.quote(model),
        "--backends",
        ",".join(args["backends"]),
        "--precisions",
        ",".join(args["precisions"]),
        "--sizes",
        ",".join(f"{h}x{w}" for h, w in args["sizes"]),
        "--batch-sizes",
        ",".join(map(str, args["batch_sizes"])),
        "--device",
        args["device"],
        "--warmup",
        str(args["warmup"]),
    ]
    parts += ["--iters", str(args["iters"])] if args.get("iters") else ["--seconds", str(args["seconds"])]
    return " ".join(parts)


# long: the standard benchmark matrix as one readable sequence of steps
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few calls: checks the script works")
    parser.add_argument("--device", default="auto", help="auto (cuda when present, else cpu), cpu or cuda")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--no-video", action="store_true", help="leave out the end-to-end video row")
    parser.add_argument("--no-rrdbnet", action="store_true", help="leave out the RRDBNet rows")
    args = parser.parse_args(argv)
    command = " ".join(["python", "benchmarks/run_standard.py"] + [shlex.quote(a) for a in (argv or sys.argv[1:])])

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        say("error: --device cuda: PyTorch sees no CUDA GPU here")
        return 2
    if not args.output_dir.is_dir():
        say(f"error: {args.output_dir}: no such folder")
        return 2
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M")
    stem = f"{socket.gethostname()}-{device}-{stamp}" + ("-quick" if args.quick else "")
    plan = matrix(device, args.quick)
    reports: list[tuple[str, BenchReport]] = []
    with tempfile.TemporaryDirectory(prefix="sr-deploy-standard-") as tmp:
        bundled, note = bundled_model(Path(tmp), say)
        models = [("bundled", bundled, note)]
        if not args.no_rrdbnet:
            config = QUICK_RRDB_CONFIG if args.quick else RRDB_CONFIG
            torch.manual_seed(0)
            path = Path(tmp) / "rrdbnet-x4-fresh.pt"
            save_checkpoint(path, RRDBNet(**config), config, metadata={"note": "fresh weights: timing only"})
            models.append(
                (
                    "rrdbnet",
                    str(path),
                    f"RRDBNet x4 {config['num_blocks']} blocks x {config['num_features']} features, growth "
                    f"{config['growth_channels']}, fresh weights (speed and parity only)",
                )
            )
        data = find_shared_data()
        clip = data / "video" / "mov_bbb.mp4" if data is not None else None
        for key, model, model_note in models:
            run_args = plan[key]
            video = {}
            if key == "bundled" and not args.no_video and clip is not None and clip.is_file():
                # x4 of 320x176 is heavy on a CPU: fewer, smaller frames there.
                video = {
                    "video": clip,
                    "video_frames": 4 if args.quick else (100 if device == "cuda" else 8),
                    "video_width": 160 if args.quick or device == "cpu" else None,
                }
            say(f"== {key}: {model}")
            report = run_benchmark(
                model,
                **run_args,
                **video,
                command=equivalent_command(model if key == "bundled" and note is None else f"<{key}>", run_args),
            )
            if model_note:
                report.notes.insert(0, model_note)
            report.model = (
                "default"
                if model == "default"
                else ("fresh SRResNet x4 8x64 (bundled model absent)" if key == "bundled" else "fresh RRDBNet x4")
            )
            print(format_table(report), flush=True)
            print(flush=True)
            reports.append((key, report))
    payload = {
        "command": command,
        "date": reports[0][1].date,
        "quick": args.quick,
        "reports": {key: r.to_dict() for key, r in reports},
    }
    json_path = atomic_write_text(
        check_output_path(args.output_dir / f"{stem}.json"), json.dumps(payload, indent=2, allow_nan=False) + "\n"
    )
    md = [
        f"# Standard benchmark: {socket.gethostname()} ({device}), {reports[0][1].date}",
        "",
        f"Command: `{command}`" + (" (quick: smoke-test settings, not results)" if args.quick else ""),
        "",
    ]
    for _key, r in reports:
        md.append(format_markdown(r).replace("# sr-deploy benchmark:", "## Model:", 1))
    md_path = atomic_write_text(check_output_path(args.output_dir / f"{stem}.md"), "\n".join(md))
    say(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
