"""A chaiNNer-style upscaler: what a user who loads the model with spandrel and writes the loop gets.

The loop chaiNNer's PyTorch "Upscale Image" node runs, reduced to a script: spandrel's
`ModelLoader` builds the model from the file, images go through it in RGB float32 [0, 1] NCHW
under `torch.inference_mode()`, split into tiles of at most `--tile` pixels (16 px overlap,
chaiNNer's `exact_split` margin) when larger, clamped and rounded to uint8. Videos are read and
written through FFmpeg pipes like chaiNNer's video nodes (libx264, CRF 23, preset medium, audio
copied). Used by `benchmarks/head_to_head.py`; it is a peer to compare with, not part of sr-deploy.

    python benchmarks/peers/chainner_style.py MODEL INPUT_DIR_OR_VIDEO OUTPUT_DIR_OR_FILE [--half]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import torch
from spandrel import ModelLoader

OVERLAP = 16


def upscale_rgb(model: torch.nn.Module, scale: int, rgb: np.ndarray, tile: int, dtype: torch.dtype) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (sH, sW, 3) uint8 RGB, through tiles of at most `tile` px (0: whole)."""
    h, w = rgb.shape[:2]
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(dtype) / 255
    out = torch.zeros((1, 3, h * scale, w * scale), dtype=torch.float32)
    step = tile or max(h, w)
    with torch.inference_mode():
        for top in range(0, h, step):
            for left in range(0, w, step):
                t0, l0 = max(top - OVERLAP, 0), max(left - OVERLAP, 0)
                t1, l1 = min(top + step + OVERLAP, h), min(left + step + OVERLAP, w)
                y = model(x[:, :, t0:t1, l0:l1]).float()
                bottom, right = min(top + step, h), min(left + step, w)
                out[:, :, top * scale : bottom * scale, left * scale : right * scale] = y[
                    :, :, (top - t0) * scale : (bottom - t0) * scale, (left - l0) * scale : (right - l0) * scale
                ]
    return (out[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def upscale_images(model, scale: int, src: Path, dst: Path, tile: int, dtype: torch.dtype) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in src.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"}):
        rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        out = upscale_rgb(model, scale, rgb, tile, dtype)
        cv2.imwrite(str(dst / f"{path.stem}.png"), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))


def _probe(src: Path) -> tuple[int, int, str]:
    """(width, height, average frame rate as FFmpeg writes it) of the first video stream: ffprobe
    when it is on PATH, else PyAV (a fresh machine has no ffprobe)."""
    if shutil.which("ffprobe"):
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height,avg_frame_rate"]
            + ["-of", "csv=p=0", str(src)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        width, height, rate = probe.split(",")
        return int(width), int(height), rate
    import av

    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height, str(stream.average_rate)


def upscale_video(model, scale: int, src: Path, dst: Path, tile: int, dtype: torch.dtype) -> None:
    w, h, rate = _probe(src)
    ffmpeg = shutil.which("ffmpeg") or imageio_ffmpeg.get_ffmpeg_exe()
    reader = subprocess.Popen(
        [ffmpeg, "-v", "error", "-i", str(src), "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"],
        stdout=subprocess.PIPE,
    )
    writer = subprocess.Popen(
        [ffmpeg, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w * scale}x{h * scale}"]
        + ["-r", rate, "-i", "pipe:", "-i", str(src), "-map", "0:v", "-map", "1:a?", "-c:a", "copy"]
        + ["-c:v", "libx264", "-crf", "23", "-preset", "medium", "-pix_fmt", "yuv420p", str(dst)],
        stdin=subprocess.PIPE,
    )
    frame_bytes = w * h * 3
    while len(raw := reader.stdout.read(frame_bytes)) == frame_bytes:
        rgb = np.frombuffer(raw, np.uint8).reshape(h, w, 3).copy()
        writer.stdin.write(upscale_rgb(model, scale, rgb, tile, dtype).tobytes())
    writer.stdin.close()
    if reader.wait() or writer.wait():
        raise SystemExit(f"{src}: ffmpeg failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--tile", type=int, default=512, help="largest tile edge in input pixels (0: whole image)")
    parser.add_argument("--half", action="store_true", help="fp16 (CUDA only, as in chaiNNer)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if args.half and device == "cuda" else torch.float32
    descriptor = ModelLoader().load_from_file(str(args.model))
    model = descriptor.model.eval().to(device=device, dtype=dtype)
    run = upscale_video if args.input.is_file() else upscale_images
    run(lambda x: model(x.to(device)).cpu(), descriptor.scale, args.input, args.output, args.tile, dtype)


if __name__ == "__main__":
    main()
