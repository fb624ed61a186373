"""`sr-deploy info` and `sr-deploy sample`: what a model file is, and a test picture."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import InputError


@click.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(model: str, as_json: bool) -> None:
    """Describe MODEL: a checkpoint (.pt/.pth/.ckpt: ours; those or .safetensors: BasicSR, ESRGAN,
    leftthomas/SRGAN, or any architecture spandrel knows), a bundled name (default-real, default,
    ...), an .onnx file or an engine."""
    from ..model_file import kind_of_file
    from ..util import check_local_path

    kind = kind_of_file(model)
    if kind is not None and kind.name != "checkpoint":  # an .onnx file or an engine: what it says of itself
        return _describe_deployed(check_local_path(model), kind.name, as_json)
    from ..backends.cpu_precision import auto_precision
    from ..backends.torch_backend import resolve_device
    from ..models import count_flops_per_lr_pixel, count_parameters, load_checkpoint
    from ..models.checkpoint import BUNDLED_PURPOSE
    from ..realism import BUNDLED_PAIR

    ckpt = load_checkpoint(model)
    desc = {
        "file": str(ckpt.path),
        "format": ckpt.source_format,
        "arch": ckpt.arch,
        "scale": ckpt.scale,
        "config": ckpt.config,
        "parameters": count_parameters(ckpt.model),
        "mflops_per_lr_pixel": round(count_flops_per_lr_pixel(ckpt.model) / 1e6, 3),
        "sha256": ckpt.sha256,
        "size_multiple": ckpt.size_multiple,
        "notes": ckpt.notes,
        "metadata": ckpt.metadata,
    }
    choice = auto_precision(ckpt.model, ckpt.sha256, ckpt.scale, resolve_device("auto"))
    desc["auto_precision"] = {"precision": choice.precision, "reason": choice.reason}
    if as_json:
        click.echo(json.dumps(desc, indent=2, default=str))
        return
    click.echo(f"file:        {desc['file']}")
    click.echo(f"format:      {desc['format']}")
    click.echo(f"arch:        {desc['arch']} x{desc['scale']}")
    click.echo(f"config:      {', '.join(f'{k}={v}' for k, v in desc['config'].items())}")
    click.echo(f"parameters:  {desc['parameters']:,}")
    lr_pixels = 1920 * 1080 / max(1, desc["scale"]) ** 2
    click.echo(
        f"FLOPs:       {desc['mflops_per_lr_pixel']:.2f} MFLOP per low-resolution pixel "
        f"({desc['mflops_per_lr_pixel'] * lr_pixels / 1e3:.1f} GFLOP for a 1080p output at x{desc['scale']})"
    )
    click.echo(f"sha256:      {desc['sha256']}")
    click.echo(f"precision:   auto here = {desc['auto_precision']['reason']}")
    if ckpt.size_multiple > 1:
        click.echo(f"input size:  padded inside to a multiple of {ckpt.size_multiple} (any size works)")
    for note in ckpt.notes:
        click.echo(f"note:        {note}")
    if model in BUNDLED_PURPOSE:
        click.echo(f"bundled:     {model}: {BUNDLED_PURPOSE[model]}")
        pair = next(((psnr, gan) for psnr, gan in BUNDLED_PAIR.items() if model in (psnr, gan)), None)
        if pair:
            click.echo(f"realism:     --model {pair[0]} --realism A blends {pair[0]} (0) with {pair[1]} (1)")
    for key, value in desc["metadata"].items():
        click.echo(f"{key + ':':<12} {plain(value)}")


def _describe_deployed(path: Path, kind: str, as_json: bool) -> None:
    """`info` for an sr-deploy ONNX export (its metadata, input dims, precision, convolution FLOPs)
    or a TensorRT engine (its sidecar JSON): what they say of themselves, no runtime needed."""
    from ..engine import read_sidecar
    from ..util.files import file_sha256
    from ..util.onnx_facts import graph_precision, load_onnx_file, metadata, static_input_dims

    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    desc: dict[str, object] = {"file": str(path), "sha256": file_sha256(path)}
    if kind == "onnx":
        from ..bench.subject import onnx_conv_flops_per_lr_pixel

        proto = load_onnx_file(path, load_weights=False)
        dims = ["N" if d is None else d for d in static_input_dims(proto)]
        desc |= {"format": f"ONNX (opset {max(o.version for o in proto.opset_import)})"}
        desc |= {"input": "x".join(str(d) for d in dims), "precision": graph_precision(proto)}
        desc |= {"mflops_per_lr_pixel": round(onnx_conv_flops_per_lr_pixel(path) / 1e6, 3), "metadata": metadata(proto)}
    else:
        from ..engine import check_engine_file

        check_engine_file(path)  # an empty or text file is no engine, as an empty .onnx is no ONNX
        sidecar = read_sidecar(path)
        desc |= {"format": "TensorRT engine", "sidecar": vars(sidecar) if sidecar else "none (no .json beside it)"}
    if as_json:
        click.echo(json.dumps(desc, indent=2, default=str))
        return
    for key, value in desc.items():
        click.echo(f"{key + ':':<12} {plain(value)}")


def plain(value: object, nested: bool = False) -> str:
    """A metadata value as `info` prints it: a mapping as ``key=value, ...`` (one nested in
    another in parentheses; one whose values are all mappings as ``name: key=value, ...; name:
    ...``), a weights file as its release (its file name when the release is unknown) and short
    sha256, lists in brackets, None as ``none``."""
    if value is None:
        return "none"
    if isinstance(value, dict):
        if {"release", "sha256"} <= value.keys():
            name = value["release"] if value["release"] != "unknown" else value.get("file", "unknown")
            return f"{name} (sha256 {str(value['sha256'])[:12]})"
        if not nested and value and all(isinstance(v, dict) for v in value.values()):
            return "; ".join(f"{k}: {plain(v)}" for k, v in value.items())
        text = ", ".join(f"{k}={plain(v, nested=True)}" for k, v in value.items())
        return f"({text})" if nested else text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(plain(v, nested=True) for v in value) + "]"
    return str(value)


@click.command()
@click.argument("output", type=click.Path(dir_okay=False), default="sample.png")
def sample(output: str) -> None:
    """Write a small test picture of sr-deploy's own making (text, lines, fine rings) to OUTPUT."""
    from ..sample import write_sample_image

    target = Path(output)
    if not target.parent.is_dir():
        raise InputError(f"{target}: folder {target.parent} does not exist")
    click.echo(f"wrote {write_sample_image(target)}")


@click.command()
@click.option("--clear", is_flag=True, help="Remove the cached verdicts and --realism blends (made again when needed).")
def cache(clear: bool) -> None:
    """List (or --clear) what `--precision auto` decided on this CPU and why, per model file."""
    from ..backends.cpu_precision import cache_path, cached_verdicts, clear_cache, precision_of
    from ..realism import cache_dir
    from ..realism import clear_cache as clear_blends

    path = cache_path()
    if clear:
        click.echo(f"removed {clear_cache()} verdicts from {path}")
        click.echo(f"removed {clear_blends()} --realism blends from {cache_dir()}")
        return
    verdicts = cached_verdicts()
    click.echo(f"{path}: {len(verdicts)} CPU precision verdicts")
    for key, entry in sorted(verdicts.items()):
        cpu, hardware, sha256, torch_version = (key.split("|") + ["", "", "", ""])[:4]
        psnr = entry.get("psnr_db")
        verdict = precision_of(entry)
        psnr_text = f"{psnr:.1f} dB" if isinstance(psnr, (int, float)) else "?"
        click.echo(
            f"  {verdict}  model {sha256[:12]}  {cpu} ({hardware}), {torch_version}: parity {psnr_text} "
            f"on {entry.get('images', '?')}, measured {entry.get('measured', '?')}"
        )
