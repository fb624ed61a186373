"""The head-to-head's report: the markdown table, the headline lines and the plot, from the
report dict that `benchmarks/head_to_head.py` writes as JSON (so a committed JSON can be redrawn)."""

from __future__ import annotations

from pathlib import Path

PEER = "Real-ESRGAN"  # the tool every row's speed-up is measured against


def _format_parity(parity: dict) -> str:
    if parity.get("reference"):
        return "reference"
    if "error" in parity:
        return f"! {parity['error']}"
    if "max_abs" in parity:
        return f"{parity['psnr_db']} dB, max {parity['max_abs']}"
    if "psnr_db" in parity:
        return f"{parity['psnr_db']} dB ({parity['frames']} frames, {parity['duration_s']} s)"
    return ""


def format_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# Head to head on {m['cpu']} ({m['threads']} threads, bf16 hardware: {m['bf16_hardware']})",
        "",
        f"{report['date']}, commit {m['commit']}, torch {m['torch']}; `{report['command']}`; "
        f"{report['rounds']} alternating rounds, medians; load average {report['load_before']} before, "
        f"{report['load_after']} after.",
        f"Model: `{report['model']}`. Images: {report['images']}. Video: {report['video']}.",
        "",
        *headline(report),
        "",
        "| task | tool | precision | median wall s | user s | sys s | vs Real-ESRGAN | parity vs Real-ESRGAN |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        if row["median_wall_s"] is None:
            lines.append(f"| {row['task']} | {row['tool']} | {row['precision']} | - | - | - | - | {row['note']} |")
            continue
        speedup = f"{row['speedup_vs_realesrgan']:.2f}x" if row["speedup_vs_realesrgan"] else "-"
        lines.append(
            f"| {row['task']} | {row['tool']} | {row['precision']} | {row['median_wall_s']:.2f} | "
            f"{row['median_user_s']:.1f} | {row['median_sys_s']:.1f} | {speedup} | "
            f"{_format_parity(row['parity_vs_realesrgan'])} |"
        )
    lines += [
        "",
        "Parity: images, all pixels of all outputs against Real-ESRGAN's PNGs (PSNR, peak 255; largest "
        "difference in 8-bit levels). Video: the mean PSNR of decoded frames against Real-ESRGAN's decoded "
        "frames, so it measures two lossy encodes (sr-deploy CRF 18, the others libx264's CRF 23) more than "
        "the models; the image rows show the models' agreement.",
    ]
    lines += ["", "Fixes applied to Real-ESRGAN's installed copies (none changes what is computed):", ""]
    lines += [f"- {fix}" for fix in report["fixes"]]
    lines += ["", "Commands (outputs under a temporary folder):", ""]
    lines += [f"- {row['task']} / {row['tool']}: `{row['command']}`" for row in report["rows"] if row["command"]]
    return "\n".join(lines) + "\n"


def headline(report: dict) -> list[str]:
    """The issue's acceptance line: sr-deploy's defaults against Real-ESRGAN's video script."""
    rows = {(r["task"], r["tool"]): r for r in report["rows"]}
    video = rows.get(("video", "sr-deploy (defaults)"), {})
    if not video.get("speedup_vs_realesrgan"):
        return ["Acceptance: not measured (see the notes in the table)."]
    amx = "amx_bf16" in report["machine"]["bf16_hardware"]
    target = 2.0 if amx else 1.2
    verdict = "met" if video["speedup_vs_realesrgan"] >= target else "NOT met"
    return [
        f"**Acceptance (issue 18): `sr-deploy upscale` with defaults is {video['speedup_vs_realesrgan']:.2f}x "
        f"as fast as Real-ESRGAN's video script on this CPU {'with' if amx else 'without'} AMX "
        f"(target >= {target:g}x): {verdict}.** It chose {video['precision']}"
        + (f" ({video['note']})" if video.get("note") else "")
        + "; the fp32 row is the like-for-like one."
    ]


def plot(report: dict, path: Path) -> None:
    """The bar chart of wall times; needs matplotlib (the plot extra: `head_to_head.py` checks it
    before it measures anything)."""
    from sr_deploy.util.plot import pyplot

    plt = pyplot("the head-to-head plot")

    tasks = ("images", "video")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, task in zip(axes, tasks, strict=True):
        rows = [r for r in report["rows"] if r["task"] == task and r["median_wall_s"] is not None]
        labels = [f"{r['tool']}\n({r['precision']})" for r in rows]
        walls = [r["median_wall_s"] for r in rows]
        lows = [r["median_wall_s"] - min(s["wall_s"] for s in r["samples"]) for r in rows]
        highs = [max(s["wall_s"] for s in r["samples"]) - r["median_wall_s"] for r in rows]
        colors = [
            "#999999" if r["tool"] == PEER else "#1f77b4" if "sr-deploy" in r["tool"] else "#ff7f0e" for r in rows
        ]
        ax.barh(labels, walls, xerr=[lows, highs], color=colors)
        for y, r in enumerate(rows):
            if r["speedup_vs_realesrgan"] and r["tool"] != PEER:
                right = max([r["median_wall_s"], *(s["wall_s"] for s in r["samples"])])  # past the error bar
                ax.text(right, y, f"  {r['speedup_vs_realesrgan']:.2f}x", va="center")
        ax.invert_yaxis()
        ax.set_xlabel("whole-process wall time, s (median, min-max)")
        ax.set_title(report["images"] if task == "images" else report["video"], fontsize=9)
        ax.set_xlim(0, max(walls, default=1) * 1.25)
    m = report["machine"]
    fig.suptitle(f"realesr-animevideov3 x4 on {m['cpu']}, {m['threads']} threads", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
