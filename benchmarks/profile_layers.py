"""Per-layer CPU profile of a model: where the time goes and which layers bound it, and why.

Runs the model exactly as the torch backend does (`TorchBackend`: BN folded, fp32 unless told,
channels_last) on one real-image input (a Set14 photo resized). Every module is timed by forward
hooks in *thread CPU time*, not wall time: with one thread the work runs on the calling thread,
and CPU time is what other processes on a shared, loaded machine disturb least (they still share
caches and memory bandwidth). Each convolution / activation / pixel shuffle is one row; the
residual additions of the blocks are rows of their own; the top-level image residual (bicubic)
and its addition are timed apart on the same tensors. Each row gets:

  ms          the least CPU time over the repeats
  share       of the whole forward pass (its least CPU time)
  GFLOP       convolutions: 2 x MACs; element-wise ops: their arithmetic (estimates: ELEMENTWISE_FLOPS)
  MB          the least memory traffic: inputs + outputs + weights, each moved once (fp32)
  FLOP/B      arithmetic intensity = GFLOP / MB
  GFLOP/s, % peak, GB/s  achieved; the peak is the GEMM peak `sr-deploy benchmark` uses, here in CPU time
  bound       roofline verdict: `memory` when FLOP/B is below the machine balance (peak GFLOP/s /
              copy bandwidth, both measured here, same thread count), else `compute`

Rows of repeated blocks (body.0 ... body.7) are summed into one `body.N` row by default.

    python benchmarks/profile_layers.py                    # default model, 270x480, fp32, 1 thread
    python benchmarks/profile_layers.py --markdown benchmarks/results/profile_layers_cpu.md --json ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from sr_deploy.backends.torch_backend import TorchBackend  # noqa: E402
from sr_deploy.models import load_checkpoint  # noqa: E402
from sr_deploy.parity import find_shared_data  # noqa: E402

# Element-wise arithmetic per output element (estimates): PReLU = compare + multiply; bicubic =
# 5 one-dimensional 4-tap cubic interpolations (4 multiplies + 3 adds each) = 35.
ELEMENTWISE_FLOPS = {
    "PReLU": 2.0,
    "ReLU": 1.0,
    "LeakyReLU": 2.0,
    "PixelShuffle": 0.0,
    "aten::add": 1.0,
    "aten::upsample_bicubic2d": 35.0,
    "aten::upsample_bilinear2d": 11.0,
    "aten::upsample_nearest2d": 0.0,
}


@dataclass
class Row:
    name: str
    kind: str
    out_shape: str
    ms: float
    flops: float
    bytes: float
    calls: int = 1


def real_input(height: int, width: int) -> torch.Tensor:
    """(1, 3, height, width) float32 RGB [0, 1]: a Set14 photo resized (synthetic without the data)."""
    data = find_shared_data()
    paths = sorted((data / "benchmark" / "Set14").glob("*.png")) if data else []
    if paths:
        bgr = cv2.imread(str(paths[min(2, len(paths) - 1)]), cv2.IMREAD_COLOR)
        rgb = cv2.resize(bgr[:, :, ::-1], (width, height), interpolation=cv2.INTER_AREA)
    else:
        rng = np.random.default_rng(0)
        rgb = cv2.GaussianBlur(rng.random((height, width, 3), dtype=np.float32), (0, 0), 3) * 255
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def measure_bandwidth_gbs(mb: int = 256) -> float:
    """Memory bandwidth in GB/s (read + write) of a large tensor copy, in thread CPU time, best of 5."""
    src = torch.rand(mb * 2**18)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _cpu_ms(lambda: dst.copy_(src), 5) / 1e6


def measure_peak_gflops_cpu_time() -> float:
    """The GEMM peak `sr-deploy benchmark` divides by (the better of an n x n `torch.matmul` and the
    same work as a channels_last 1x1 convolution, oneDNN), timed in thread CPU time, best of 5."""
    gen = torch.Generator().manual_seed(0)
    n, channels, side = 1536, 512, 64
    a, b = torch.rand(n, n, generator=gen), torch.rand(n, n, generator=gen)
    x = torch.rand(1, channels, side, side, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.rand(channels, channels, 1, 1, generator=gen).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        matmul = 2.0 * n**3 / _cpu_ms(lambda: torch.matmul(a, b), 5) / 1e6
        conv = 2.0 * side * side * channels**2 / _cpu_ms(lambda: torch.nn.functional.conv2d(x, w), 5) / 1e6
    return max(matmul, conv)


def measure_conv3x3_gflops() -> float:
    """The best a 3x3 64 -> 64 convolution does here (channels_last, 96x96, in cache): the model's
    own dominant kernel, as a second ceiling beside the GEMM peak."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 64, 96, 96, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.rand(64, 64, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return 2.0 * 96 * 96 * 64 * 64 * 9 / _cpu_ms(lambda: torch.nn.functional.conv2d(x, w, padding=1), 5) / 1e6


def tail_what_if(model: nn.Module, x: torch.Tensor) -> dict | None:
    """Why the 9x9 tail convolution is slow: its input (64 channels at output resolution) timed
    through the real tail (3 output channels) and through the same conv with 16 and 64 output
    channels. Near-equal times mean the 3 outputs waste most of each vector (16 fp32 lanes of
    AVX-512): the work is priced per 16 output channels, not per FLOP."""
    tail = getattr(model, "tail", None)
    upsample = getattr(model, "upsample", None)
    if not isinstance(tail, nn.Conv2d) or upsample is None:
        return None
    with torch.inference_mode():
        feat = upsample(model.head(x))  # the tail's input shape and layout (values do not matter for time)
        result = {"input": list(feat.shape)}
        for cout in (tail.out_channels, 16, 64):
            conv = nn.Conv2d(tail.in_channels, cout, tail.kernel_size, padding=tail.padding)
            conv = conv.to(memory_format=torch.channels_last)
            result[f"cout{cout}_ms"] = _cpu_ms(lambda conv=conv: conv(feat), 2)
    return result


def _numel(shape) -> int:
    return int(np.prod(shape)) if shape else 0


def _module_row(module: nn.Module, name: str, kind: str, ms: float, in_shape, out_shape) -> Row:
    n_in, n_out = _numel(in_shape), _numel(out_shape)
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        flops = 2.0 * (module.in_channels // module.groups) * kh * kw * n_out
        weights = sum(p.numel() for p in module.parameters())
        return Row(
            name,
            f"Conv2d {kh}x{kw} {module.in_channels}->{module.out_channels}",
            str(list(out_shape)),
            ms,
            flops,
            4.0 * (n_in + n_out + weights),
        )
    return Row(name, kind, str(list(out_shape)), ms, ELEMENTWISE_FLOPS.get(kind, 1.0) * n_out, 4.0 * (n_in + n_out))


def _cpu_ms(fn, repeats: int = 3) -> float:
    """The least thread CPU time of `fn()` over `repeats` calls, in ms."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time_ns()
        fn()
        best = min(best, (time.thread_time_ns() - t0) / 1e6)
    return best


def profile_once(model: nn.Module, x: torch.Tensor) -> tuple[list[Row], float]:
    """One forward pass, every module timed in thread CPU time (1 thread: the work runs on the
    calling thread, and CPU time is what other processes on a shared machine disturb least).

    Rows: one per leaf module, and one per composite module whose forward does work of its own
    between its children (`own ops`: the residual additions; at the top the image residual and
    the long skip), timed as its CPU time less its children's."""
    starts: dict[str, int] = {}
    spent: dict[str, float] = {}
    shapes: dict[str, tuple] = {}
    modules = {name or "model": m for name, m in model.named_modules()}
    children_of = {
        name: [f"{name}.{c}" if name != "model" else c for c, _ in m.named_children()] for name, m in modules.items()
    }

    def pre(name: str):
        def hook(_module, _inputs):
            starts[name] = time.thread_time_ns()

        return hook

    def post(name: str):
        def hook(_module, inputs, output):
            spent[name] = spent.get(name, 0.0) + (time.thread_time_ns() - starts[name]) / 1e6
            shapes[name] = (tuple(inputs[0].shape), tuple(output.shape))

        return hook

    handles = []
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name)))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    rows: list[Row] = []
    for name, module in modules.items():
        kind = type(module).__name__
        if not children_of[name]:
            rows.append(_module_row(module, name, kind, spent[name], *shapes[name]))
            continue
        own = spent[name] - sum(spent.get(c, 0.0) for c in children_of[name])
        out_numel = _numel(shapes[name][1])
        if name != "model" and kind.endswith("ResidualBlock"):  # x + conv2(act(conv1(x)))
            rows.append(
                Row(f"{name} add (residual)", "aten::add", str(list(shapes[name][1])), own, out_numel, 12.0 * out_numel)
            )
    return rows, spent["model"]


def top_level_rows(model: nn.Module, x: torch.Tensor, total_ms: float, rows: list[Row]) -> list[Row]:
    """The top-level forward's own work, timed apart: the bicubic image residual (when the model
    has one: SRResNet's `image_residual`) and the additions (long skip, residual image)."""
    from sr_deploy.models.common import image_upsample

    out: list[Row] = []
    own = total_ms - sum(r.ms for r in rows)
    mode = getattr(model, "image_residual", "none")
    scale = int(getattr(model, "scale", 4))
    if mode != "none":
        with torch.inference_mode():
            up = image_upsample(x, scale, mode)
            bicubic_ms = _cpu_ms(lambda: image_upsample(x, scale, mode))
        n_out, n_in = up.numel(), x.numel()
        out.append(
            Row(
                "model image residual",
                f"{mode} x{scale}",
                str(list(up.shape)),
                bicubic_ms,
                ELEMENTWISE_FLOPS.get(f"aten::upsample_{mode}2d", 1.0) * n_out,
                4.0 * (n_in + n_out),
            )
        )
        out.append(Row("model add (image residual)", "aten::add", str(list(up.shape)), 0.0, n_out, 12.0 * n_out))
        with torch.inference_mode():
            y = up.clone()
            out[-1].ms = _cpu_ms(lambda: y + up)
        own -= sum(r.ms for r in out)
    out.append(Row("model own ops (long skip add, Python)", "", "", max(own, 0.0), 0.0, 0.0))
    return out


def merge_blocks(rows: list[Row]) -> list[Row]:
    """body.0.conv1.0 ... body.7.conv1.0 -> one `body.N.conv1.0` row (times, FLOPs, bytes summed)."""
    merged: dict[str, Row] = {}
    for r in rows:
        key = re.sub(r"^body\.\d+", "body.N", r.name)
        if key in merged:
            m = merged[key]
            m.ms, m.flops, m.bytes, m.calls = m.ms + r.ms, m.flops + r.flops, m.bytes + r.bytes, m.calls + 1
        else:
            merged[key] = Row(key, r.kind, r.out_shape, r.ms, r.flops, r.bytes)
    return list(merged.values())


def markdown(rows: list[Row], total_ms: float, facts: dict) -> str:
    balance = facts["peak_gflops"] / facts["bandwidth_gbs"]
    out = [
        f"Model `{facts['model']}` ({facts['arch']}), input 1x3x{facts['height']}x{facts['width']}, "
        f"{facts['precision']}, channels_last, {facts['threads']} thread(s), fastest of {facts['repeats']} "
        f"profiled passes: **{total_ms:.0f} ms** per forward = {facts['model_gflops'] / total_ms * 1e3:.1f} GFLOP/s "
        f"= {facts['model_gflops'] / total_ms * 1e3 / facts['peak_gflops']:.0%} of the measured GEMM peak "
        f"({facts['peak_gflops']:.1f} GFLOP/s, {facts['threads']} thread(s)); copy bandwidth "
        f"{facts['bandwidth_gbs']:.1f} GB/s, so the machine balance is {balance:.1f} FLOP/B. "
        f"The model's own 3x3 64->64 convolution reaches {facts['conv3x3_gflops']:.1f} GFLOP/s in cache, so the "
        f"whole model runs at {facts['model_gflops'] / total_ms * 1e3 / facts['conv3x3_gflops']:.0%} of that ceiling. "
        f"CPU: {facts['cpu']}; load average {facts['load_before']} before, {facts['load_after']} after; "
        f"torch {facts['torch']}, THP_MEM_ALLOC_ENABLE={facts['thp_mem_alloc'] or 'unset'}. Times are thread CPU "
        "times (see the script's docstring).",
        "",
        "| layer | kind | calls | ms | share | GFLOP | MB | FLOP/B | GFLOP/s | % peak | GB/s | bound |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: -r.ms):
        if not r.bytes:
            out.append(f"| {r.name} | | | {r.ms:.1f} | {r.ms / total_ms:.1%} | | | | | | | |")
            continue
        ai = r.flops / r.bytes
        gflops = r.flops / r.ms / 1e6 if r.ms else 0.0
        gbs = r.bytes / r.ms / 1e6 if r.ms else 0.0
        bound = "memory" if ai < balance else "compute"
        out.append(
            f"| {r.name} | {r.kind} | {r.calls} | {r.ms:.1f} | {r.ms / total_ms:.1%} | {r.flops / 1e9:.2f} | "
            f"{r.bytes / 1e6:.0f} | {ai:.1f} | {gflops:.1f} | {gflops / facts['peak_gflops']:.0%} | "
            f"{gbs:.1f} | {bound} |"
        )
    what_if = facts.get("tail_what_if")
    if what_if:
        cout = [k for k in what_if if k.startswith("cout")]
        out += [
            "",
            f"Tail what-if (same input {what_if['input']}, a 9x9 conv with other output-channel counts): "
            + ", ".join(f"{k[4:-3]} outputs {what_if[k]:.0f} ms" for k in cout)
            + ".",
        ]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--size", default="270x480", help="input HxW")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-block", action="store_true", help="one row per residual block (no body.N merge)")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    ckpt = load_checkpoint(args.model)
    backend = TorchBackend(ckpt.model, ckpt.scale, "cpu", args.precision)
    model = backend.model
    x = real_input(height, width).to(backend.dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)  # warm-up: oneDNN primitive creation, allocator growth
    best_rows: list[Row] | None = None
    best_total = float("inf")
    per_row_best: dict[str, float] = defaultdict(lambda: float("inf"))
    for _ in range(args.repeats):
        rows, total = profile_once(model, x)
        for r in rows:
            per_row_best[r.name] = min(per_row_best[r.name], r.ms)
        if total < best_total:
            best_rows, best_total = rows, total
    assert best_rows is not None
    for r in best_rows:  # each layer's least disturbed time (shared machine)
        r.ms = per_row_best[r.name]
    best_rows += top_level_rows(model, x, best_total, best_rows)
    rows = best_rows if args.per_block else merge_blocks(best_rows)
    what_if = tail_what_if(model, x)
    peak = measure_peak_gflops_cpu_time()
    conv3x3 = measure_conv3x3_gflops()
    bandwidth = measure_bandwidth_gbs()
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    facts = {
        "model": args.model,
        "arch": ckpt.arch,
        "height": height,
        "width": width,
        "precision": args.precision,
        "threads": args.threads,
        "repeats": args.repeats,
        "peak_gflops": peak,
        "bandwidth_gbs": bandwidth,
        "model_gflops": sum(r.flops for r in best_rows if r.kind.startswith("Conv2d")) / 1e9,
        "cpu": f"{cpu}, {os.cpu_count()} logical CPUs visible",
        "load_before": load_before,
        "load_after": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "torch": torch.__version__,
        "conv3x3_gflops": conv3x3,
        "tail_what_if": what_if,
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
    }
    text = markdown(rows, best_total, facts)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(
            json.dumps({"facts": facts, "total_ms": best_total, "rows": [asdict(r) for r in best_rows]}, indent=1)
            + "\n"
        )


if __name__ == "__main__":
    main()
