#!/usr/bin/env bash
# GPU check for a lent machine: one H100/H200, PyTorch with CUDA, NO TensorRT and NO
# onnxruntime-gpu (issue 15 section 3). Runs in under 8 minutes:
#   1. pytest -m gpu                                    (the GPU-marked tests)
#   2. sr-deploy benchmark default on CUDA: torch (channels_last) and torch-nchw, fp32/fp16/bf16,
#      270x480 and 540x960, with the parity columns (vs PyTorch fp32)
#   3. sr-deploy upscale of a short clip on CUDA (a real clip from ../shared/data when present,
#      else a 2-second test pattern made with the bundled ffmpeg), timed, output probed
# Everything it writes goes under one folder (default benchmarks/results/gpu-check-<UTC time>,
# or $1); summary.md there says what ran, each step's exit code and seconds.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Each step has its own time limit and a failed step does not stop the others; the script's exit
# code is 1 when any step failed. Run it from anywhere; it uses the checkout it lives in.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUT="${1:-benchmarks/results/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
SHARED="${SR_DEPLOY_SHARED_DATA:-$ROOT/../shared/data}"
failed=0

# step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record the result.
step() {
    local name="$1" limit="$2"
    shift 2
    local start end rc
    start=$(date +%s)
    echo "== $name: $*" | tee -a "$OUT/commands.txt"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    end=$(date +%s)
    [ "$rc" -eq 0 ] || failed=1
    printf '| %s | %s | %s s | `%s` |\n' "$name" "$rc" "$((end - start))" "$*" >>"$SUMMARY"
    tail -n 3 "$OUT/$name.log"
    return 0
}

{
    echo "# GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi: not available"
    python3 - <<'PY'
import importlib.util
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device 0:", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
for name in ("tensorrt", "onnxruntime"):
    print(name, "importable" if importlib.util.find_spec(name) else "absent")
PY
    echo "git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo '```'
    echo
    echo "| step | exit | time | command |"
    echo "|---|---|---|---|"
} >"$SUMMARY" 2>&1

if ! python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA GPU visible to PyTorch: nothing to check" | tee -a "$SUMMARY"
    exit 1
fi

# 1. The GPU-marked tests (TensorRT ones skip with their reason: it is not installed).
step pytest_gpu 240 python3 -m pytest -q -m gpu -p no:cacheprovider -rs

# 2. Throughput and parity of the PyTorch backends on CUDA (12 rows, ~1.5 s each).
step benchmark 180 python3 -m sr_deploy benchmark default --device cuda --backends torch,torch-nchw \
    --precisions fp32,fp16,bf16 --sizes 270x480,540x960 --batch-sizes 1 --seconds 1.5 \
    --json "$OUT/benchmark.json" --markdown "$OUT/benchmark.md"

# 3. Upscale a short clip on CUDA (audio kept when the clip has some): the first 3 s of a real
#    clip (stream copy, no re-encode), else a generated 2 s test pattern.
FFMPEG=$(python3 -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')
CLIP="$OUT/clip_3s.mp4"
if [ -f "$SHARED/video/car_traffic_small.mp4" ]; then
    "$FFMPEG" -loglevel error -y -i "$SHARED/video/car_traffic_small.mp4" -t 3 -c copy "$CLIP"
else
    "$FFMPEG" -loglevel error -y -f lavfi -i testsrc2=size=320x180:rate=24 -t 2 -pix_fmt yuv420p "$CLIP"
    echo "no real clip at $SHARED/video: using a generated test pattern" >>"$SUMMARY"
fi
step upscale_clip 120 python3 -m sr_deploy upscale "$CLIP" -o "$OUT/clip_x4.mp4" --device cuda --no-progress
if [ -f "$OUT/clip_x4.mp4" ]; then
    python3 - "$CLIP" "$OUT/clip_x4.mp4" >>"$SUMMARY" 2>&1 <<'PY'
import sys
import imageio_ffmpeg
for path in sys.argv[1:]:
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(path)
    meta = next(imageio_ffmpeg.read_frames(path))
    print(f"\n{path}: {meta['size'][0]}x{meta['size'][1]}, {frames} frames, {seconds:.2f} s")
PY
    rm -f "$OUT/clip_x4.mp4"  # large; the log and the line above say what it was
fi

{
    echo
    echo "benchmark table: benchmark.md; logs: *.log"
    [ -f "$OUT/benchmark.md" ] && { echo; cat "$OUT/benchmark.md"; }
} >>"$SUMMARY"
echo "results: $OUT (summary.md)"
exit "$failed"
