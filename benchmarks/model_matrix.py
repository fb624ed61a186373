#!/usr/bin/env python
"""The architecture compatibility matrix: every spandrel super-resolution architecture, randomly
initialised at a small size (`benchmarks/spandrel_zoo.py`), through sr-deploy's own code paths:

    load (a .safetensors file -> the model registry) -> torch run (an odd size, 30x26)
    -> ONNX export (dynamic N/H/W, else static, as `sr-deploy export` decides)
    -> ONNX Runtime parity fp32 (max abs vs torch fp32 on Set5 crops; pass: <= 1e-4 x max(1, the
       largest torch output): random weights put some outputs far outside [0, 1])
    -> fp16 export, ONNX Runtime with real fp16 rounding (`emulate_fp16`): PSNR vs torch fp32
    -> tiled upscale through ONNX Runtime (32-pixel tiles, 8 overlap) vs the untiled torch run

    python benchmarks/model_matrix.py                       # every entry; writes docs/models.md's table
    python benchmarks/model_matrix.py --only SwinIR,SPAN    # some rows, printed only

Each architecture runs in its own process (an exporter crash stays one row's failure) with a
time limit. The table goes between the `<!-- matrix:begin -->` / `<!-- matrix:end -->` markers of
docs/models.md, with the command, versions and date; the raw rows go to
benchmarks/results/model_matrix.json. Run it niced: `nice -n 10 python benchmarks/model_matrix.py`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

DOC = ROOT / "docs" / "models.md"
RESULTS = ROOT / "benchmarks" / "results" / "model_matrix.json"
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"
TORCH_SHAPE = (1, 3, 30, 26)
TILE, OVERLAP = 32, 8
TILED_IMAGE = (72, 60)
FP16_MIN_DB = 50.0


def _first_line(exc: BaseException) -> str:
    while exc.__cause__ is not None and not str(exc).strip():
        exc = exc.__cause__
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# long: one matrix row walks every step (load, run, export, parity, tile) in order, each recording its own failure reason
def run_one(name: str) -> dict[str, Any]:
    """Every step for the zoo entry `name`; a failed step records its reason and stops the row."""
    warnings.simplefilter("ignore")
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from benchmarks.spandrel_zoo import RESTORATION_ENTRIES, SR_ENTRIES, state_dict_of
    from sr_deploy.backends.ort_backend import OnnxRuntimeBackend
    from sr_deploy.backends.torch_backend import TorchBackend
    from sr_deploy.export import export_onnx, verify_onnx
    from sr_deploy.models import load_checkpoint
    from sr_deploy.parity import parity_inputs
    from sr_deploy.tiling import upscale_tiled

    torch.set_num_threads(1)
    entry = next(e for e in SR_ENTRIES + RESTORATION_ENTRIES if e.name == name)
    row: dict[str, Any] = {"name": entry.name, "spandrel_arch": entry.arch, "purpose": entry.purpose}
    tmp = Path(tempfile.mkdtemp(prefix="sr-matrix-"))
    step = "load"
    try:
        state = state_dict_of(entry)
        row["parameters"] = int(sum(v.numel() for v in state.values() if v.is_floating_point()))
        path = tmp / "model.safetensors"
        save_file(state, str(path))
        ckpt = load_checkpoint(path)
        row.update(detected=ckpt.arch, scale=ckpt.scale, source=ckpt.source_format, size_multiple=ckpt.size_multiple)
        if ckpt.scale != entry.scale:
            raise RuntimeError(f"detected x{ckpt.scale}, built as x{entry.scale}")

        step = "torch"
        x = torch.rand(TORCH_SHAPE, generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        with torch.inference_mode():
            y = ckpt.model(x)
        row["torch_ms"] = round((time.perf_counter() - start) * 1e3, 1)
        expected = (1, 3, TORCH_SHAPE[2] * ckpt.scale, TORCH_SHAPE[3] * ckpt.scale)
        if tuple(y.shape) != expected or not torch.isfinite(y).all():
            raise RuntimeError(
                f"output {tuple(y.shape)} (finite: {bool(torch.isfinite(y).all())}), expected {expected}"
            )

        step = "export"
        onnx_path = tmp / "model.onnx"
        result = export_onnx(path, onnx_path, verify=False, log=None)
        row.update(
            exporter=result.exporter,
            static=list(result.static_shape) if result.static_shape else None,
            export_note=result.fallback_reason,
        )

        step = "parity fp32"
        report = verify_onnx(ckpt.model, onnx_path, "fp32", result.static_shape)
        # Random weights can put outputs far outside [0, 1] (RCAN's x255 range): the bar scales with them.
        magnitude = max(1.0, float(y.abs().max()))
        row.update(fp32_max_abs=report.max_abs, output_magnitude=magnitude)
        if not (report.nonfinite == 0 and report.max_abs <= 1e-4 * magnitude):
            raise RuntimeError(f"max abs {report.max_abs:.2e} > 1e-4 x {magnitude:.3g} (largest torch output)")

        step = "tiled"
        ort = OnnxRuntimeBackend(onnx_path, device="cpu")
        image = parity_inputs((TILED_IMAGE,), 1)[0][0]
        tiled = upscale_tiled(ort, image, TILE, OVERLAP)
        whole = TorchBackend(ckpt.model, ckpt.scale, "cpu", "fp32", channels_last=False)(image[None])[0]
        if tiled.shape != whole.shape or not np.isfinite(tiled).all():
            raise RuntimeError(f"tiled output {tiled.shape}, expected {whole.shape}")
        row["tiled_max_abs"] = float(np.abs(tiled - whole).max())
        ort.close()

        step = "fp16"
        fp16_path = tmp / "model-fp16.onnx"
        fp16 = export_onnx(path, fp16_path, fp16=True, verify=False, log=None, static_shape=result.static_shape)
        report16 = verify_onnx(ckpt.model, fp16_path, "fp16", fp16.static_shape)
        row["fp16_db"] = report16.psnr_db if math.isfinite(report16.psnr_db) else 999.0
        row["fp16_nonfinite"] = int(report16.nonfinite)
        step = "done"
    except BaseException as exc:  # one row's failure, whatever it is
        row["failed_step"] = step
        row["reason"] = _first_line(exc)
        row["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
    row["status"] = "pass" if step == "done" or step == "fp16" else "fail"
    return row


def run_isolated(name: str, timeout: float) -> dict[str, Any]:
    """`run_one(name)` in a child process: a crash or a hang is that row's failure."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", name, "--json", str(out)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=os.environ.copy(),
        )
        if out.stat().st_size:
            row = json.loads(out.read_text())
        else:
            tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
            row = {
                "name": name,
                "status": "fail",
                "failed_step": "process",
                "reason": f"the process died (exit {proc.returncode}): {tail[0][:160]}",
            }
    except subprocess.TimeoutExpired:
        row = {"name": name, "status": "fail", "failed_step": "process", "reason": f"over the {timeout:.0f} s limit"}
    finally:
        out.unlink(missing_ok=True)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _cell(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| architecture | detected as | x | params | size multiple | export | fp32 max abs | fp16 dB "
        "| tiled max abs | result |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        export = ""
        if r.get("exporter"):
            export = f"{r['exporter']}, " + (
                "static " + "x".join(map(str, r["static"])) if r.get("static") else "dynamic"
            )
        fp16 = _cell(r.get("fp16_db"), ".1f")
        if r.get("fp16_db") is not None and r["fp16_db"] < FP16_MIN_DB:
            fp16 += " (< 50)"
        result = "pass" if r["status"] == "pass" else f"fail at {r.get('failed_step')}: {r.get('reason', '')}"
        if r["status"] == "pass" and r.get("failed_step") == "fp16":
            result = f"pass (fp16 step: {r.get('reason', '')})"
        result = result.replace("|", "\\|")
        lines.append(
            f"| {r['name']} | {r.get('detected', '')} | {r.get('scale', '')} | {_cell(r.get('parameters'), ',')} "
            f"| {r.get('size_multiple', '')} | {export} | {_cell(r.get('fp32_max_abs'), '.1e')} | {fp16} "
            f"| {_cell(r.get('tiled_max_abs'), '.1e')} | {result} |"
        )
    return "\n".join(lines)


def _versions() -> str:
    import onnxruntime
    import spandrel
    import torch

    return (
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, spandrel {spandrel.__version__}, "
        f"Python {platform.python_version()}"
    )


def write_doc(rows: list[dict[str, Any]], command: str) -> None:
    sr = [r for r in rows if r.get("purpose", "SR") == "SR"]
    passed = sum(1 for r in sr if r["status"] == "pass")
    arches = {r.get("spandrel_arch") for r in sr}
    passed_arches = {r.get("spandrel_arch") for r in sr if r["status"] == "pass"}
    summary = (
        f"{len(sr)} super-resolution rows ({len(arches)} architectures): {passed} rows pass export + fp32 "
        f"parity ({len(passed_arches)} architectures). Generated {dt.date.today().isoformat()} by "
        f"`{command}` ({_versions()})."
    )
    block = f"{BEGIN}\n{summary}\n\n{markdown_table(rows)}\n{END}"
    text = DOC.read_text() if DOC.is_file() else f"# Models\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    tmp = DOC.with_name(f".{DOC.name}.tmp")
    tmp.write_text(head + block + tail)
    tmp.replace(DOC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated row names (printed, nothing written)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per architecture")
    parser.add_argument("--jsonl", help="also append each row to this file as it finishes")
    parser.add_argument(
        "--from-jsonl",
        nargs="+",
        metavar="FILE",
        help="write docs/models.md and the JSON from rows collected earlier (no run)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        Path(args.json).write_text(json.dumps(run_one(args.one), default=float))
        return 0

    from benchmarks.spandrel_zoo import RESTORATION_ENTRIES, SR_ENTRIES

    names = [e.name for e in SR_ENTRIES + RESTORATION_ENTRIES]
    if args.from_jsonl:
        collected = {}
        for file in args.from_jsonl:
            for line in Path(file).read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    collected[row["name"]] = row
        rows = [collected[n] for n in names if n in collected]
        _write_results(rows, f"nice -n 10 python benchmarks/model_matrix.py (rows in {len(args.from_jsonl)} runs)")
        return 0
    if args.only:  # in the order given
        wanted = [n.strip() for n in args.only.split(",")]
        names = [n for w in wanted for n in names if n == w or (n.split(" ")[0] == w and w not in names)]
    rows = []
    for name in names:
        row = run_isolated(name, args.timeout)
        rows.append(row)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(row, default=float) + "\n")
        print(
            f"{name:48s} {row['status']:4s} {row.get('seconds', 0):6.1f}s "
            f"{row.get('exporter', '')} {row.get('reason', '')}"[:220],
            flush=True,
        )
    if not args.only:
        _write_results(rows, "nice -n 10 python benchmarks/model_matrix.py")
    return 0


def _write_results(rows: list[dict[str, Any]], command: str) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1, default=float) + "\n")
    write_doc(rows, command)
    print(f"wrote {DOC} and {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
