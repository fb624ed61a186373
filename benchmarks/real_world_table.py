"""The real-world table (issue 23): every bundled model (and bicubic) scored by `sr-deploy eval` on
Set5 and Set14 with clean LR and with the named degradations of `eval --degrade`, torch fp32 on the
CPU, PSNR (Y) and LPIPS-Alex. Results are kept per (model, spec) in the JSON, so a re-run scores
only what is missing (`--redo MODEL` scores a model again, e.g. after new weights).

    python benchmarks/real_world_table.py --json benchmarks/results/real_world.json \
        --markdown benchmarks/results/real_world.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sr_deploy.evaluation import run_eval  # noqa: E402
from sr_deploy.realism import BUNDLED_PAIR, resolve_realism  # noqa: E402

# Rows: bundled models by name, and the real-world pair's midpoint (`eval default-real-psnr
# --realism 0.5`, what `upscale --realism 0.5` runs): default-real-psnr half-way to default-real.
MODELS = ("bicubic", "default", "default-gan", "default-real-psnr", "default-real", "default-real-psnr --realism 0.5")
BLENDS = {"default-real-psnr --realism 0.5": ("default-real-psnr", 0.5)}
SPECS = ("clean", "jpeg=40", "noise=10,jpeg=60")


def score(model: str, spec: str, datasets: list[Path], weights: Path | None) -> dict[str, list[float]]:
    """{dataset name: [PSNR, LPIPS]} of `model` with LR degraded by `spec` ("clean": bicubic only)."""
    if model in BLENDS:
        psnr_end, alpha = BLENDS[model]
        model = resolve_realism(psnr_end, None, alpha)
    _, results = run_eval(
        model,
        datasets,
        device="cpu",
        precision="fp32",
        progress=False,
        metrics=("psnr", "lpips"),
        perceptual_weights=weights,
        degrade=None if spec == "clean" else spec,
    )
    return {r.name: [round(r.mean_psnr, 3), round(next(iter(r.mean_lpips.values())), 4)] for r in results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/real_world.json")
    ap.add_argument("--markdown", type=Path, default=ROOT / "benchmarks/results/real_world.md")
    ap.add_argument("--redo", action="append", default=[], help="score this model again")
    args = ap.parse_args()
    datasets = [args.data / "benchmark/Set5", args.data / "benchmark/Set14"]
    weights = args.data / "weights/perceptual"
    table = json.loads(args.json.read_text()) if args.json.exists() else {}
    for model in MODELS:
        for spec in SPECS:
            key = f"{model} | {spec}"
            # A blend is scored again when either of its ends is.
            ends = {model, *((BLENDS[model][0], BUNDLED_PAIR[BLENDS[model][0]]) if model in BLENDS else ())}
            if key not in table or ends & set(args.redo):
                table[key] = score(model, spec, datasets, weights)
                print(f"{key}: {table[key]}", flush=True)
                args.json.write_text(json.dumps(table, indent=1) + "\n")
    head = " | ".join(f"{name} {spec}" for spec in SPECS for name in ("Set5", "Set14"))
    lines = [
        "# Real-world table: x4, PSNR (Y) / LPIPS-Alex, torch fp32, CPU",
        "",
        "`python benchmarks/real_world_table.py` (`sr-deploy eval MODEL --dataset Set5 --dataset Set14 "
        "--metrics psnr,lpips [--degrade SPEC]`); lower LPIPS is better.",
        "",
        f"| model | {head} |",
        "|---|" + "---|" * (2 * len(SPECS)),
    ]
    for model in MODELS:
        cells = [
            f"{table[f'{model} | {spec}'][name][0]:.2f} / {table[f'{model} | {spec}'][name][1]:.4f}"
            for spec in SPECS
            for name in ("Set5", "Set14")
        ]
        lines.append(f"| `{model}` | " + " | ".join(cells) + " |")
    args.markdown.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
