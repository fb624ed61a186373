"""One precision per job, whatever the load (issue 24): `sr-deploy upscale` run once with nothing
else started by this script (the reference), then N times on the same image, each with a FRESH
precision cache (so `--precision auto` decides afresh every time) while `--busy` processes keep
the CPU's cores busy, and every run's verdict and output bytes compared with the reference.

With `--cpuinfo stand-in` (the default) the runs see a CPU with AVX-512 bf16 (`$SR_DEPLOY_CPUINFO`
points at a stand-in file), so `auto` goes through its bf16 parity check on every run, as on the
CPUs where the old timing rule flipped (issue 24: 0.93x under load, 4.1x idle); on a CPU without
those units bf16 is emulated, which changes the speed, not the verdict. `--cpuinfo real` uses
/proc/cpuinfo. Exit status 1 when two runs chose differently or wrote different bytes.

    python benchmarks/precision_stability.py --runs 10 --busy 2 \
        --markdown benchmarks/results/precision_stability_cpu.md
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUSY = "while True: pass"
STAND_IN = "model name\t: {name}\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def one_run(image: Path, model: str, out: Path, env: dict[str, str]) -> tuple[str, str, float]:
    """(the `precision:` line, sha256 of the output, seconds) of one upscale in a new process."""
    command = [sys.executable, "-m", "sr_deploy", "upscale", str(image), "-o", str(out), "--model", model]
    started = time.perf_counter()
    done = subprocess.run(command + ["--no-progress", "--device", "cpu"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"upscale failed ({done.returncode}): {done.stderr.strip()}")
    line = next((x for x in done.stderr.splitlines() if x.startswith("precision:")), "precision: (not said)")
    return line, hashlib.sha256(out.read_bytes()).hexdigest(), seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--busy", type=int, default=2, help="processes spinning on the CPU during every run")
    ap.add_argument("--model", default="default")
    ap.add_argument("--image", type=Path, default=ROOT.parent / "shared/data/benchmark/Set5/bird.png")
    ap.add_argument("--cpuinfo", choices=["stand-in", "real"], default="stand-in")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--note", default="", help="a paragraph for the end of the markdown (the machine, its load)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="precision-stability-") as tmp:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        if args.cpuinfo == "stand-in":
            (Path(tmp) / "cpuinfo").write_text(STAND_IN.format(name=_cpu_name()))
            env["SR_DEPLOY_CPUINFO"] = str(Path(tmp) / "cpuinfo")
        env["SR_DEPLOY_CACHE"] = str(Path(tmp) / "cache-idle")  # the reference: no busy processes
        line, digest, seconds = one_run(args.image, args.model, Path(tmp) / "out-idle.png", env)
        rows.append(("idle", line, digest, seconds))
        print(f"idle run: {line} | {digest[:16]} | {seconds:.1f} s", flush=True)
        busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
        try:
            for run in range(args.runs):
                env["SR_DEPLOY_CACHE"] = str(Path(tmp) / f"cache-{run}")  # a fresh cache: decided afresh
                line, digest, seconds = one_run(args.image, args.model, Path(tmp) / f"out-{run}.png", env)
                rows.append((run + 1, line, digest, seconds))
                print(f"run {run + 1}/{args.runs}: {line} | {digest[:16]} | {seconds:.1f} s", flush=True)
        finally:
            for process in busy:
                process.kill()
    verdicts, outputs = {r[1].split(" (cached)")[0] for r in rows}, {r[2] for r in rows}
    same = len(verdicts) == 1 and len(outputs) == 1
    lines = [
        f"# `--precision auto` under load: a reference run, then {args.runs} runs beside {args.busy} busy "
        "processes, fresh cache each",
        "",
        f"CPU: {_cpu_name()} ({os.cpu_count()} cores); cpuinfo: {args.cpuinfo}; model: {args.model}; "
        f"image: {args.image.name}; `python benchmarks/precision_stability.py --runs {args.runs} --busy {args.busy}`",
        "",
        "| run | what `auto` chose, and why | output sha256 | seconds |",
        "|---|---|---|---|",
        *(f"| {n} | {line.removeprefix('precision: ')} | `{digest[:16]}` | {s:.1f} |" for n, line, digest, s in rows),
        "",
        f"**{len(verdicts)} verdict(s), {len(outputs)} distinct output(s)**: "
        + ("the same precision and the same bytes on every run." if same else "NOT stable."),
    ]
    text = "\n".join(lines) + "\n" + (f"\n{args.note}\n" if args.note else "")
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
