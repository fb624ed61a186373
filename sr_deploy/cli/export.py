"""`sr-deploy export` (ONNX, Triton repositories) and `sr-deploy build-engine` (TensorRT)."""

from __future__ import annotations

import click

from ..errors import InputError
from .options import BACKEND_CHOICE, realism_options, with_realism


# long: the Triton-repository branch and the realism blend come before the hand-over to export_onnx; its options are one decorator each
@click.command()
@click.argument("model")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="The .onnx file to write (required unless --triton-repo)."
)
@click.option(
    "--static", "static", metavar="NxHxW", default=None, help="Fix batch, height and width (default: dynamic)."
)
@click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset.")
@click.option(
    "--exporter",
    type=click.Choice(["dynamo", "legacy"]),
    default="dynamo",
    show_default=True,
    help="torch.export based (falls back to legacy when it fails) or TorchScript based.",
)
@click.option("--fp16", is_flag=True, help="An fp16 graph with float32 inputs/outputs (for GPU runtimes).")
@click.option("--simplify", is_flag=True, help="Simplify the graph with onnxslim (keeps the dynamic dims).")
@click.option("--no-verify", is_flag=True, help="Skip the parity check against the torch float32 model.")
@click.option(
    "--triton-repo",
    type=click.Path(file_okay=False),
    default=None,
    help="Write a Triton Inference Server model repository here (config.pbtxt, model, README).",
)
@click.option("--name", "triton_name", default="sr_deploy", show_default=True, help="Triton model name.")
@click.option(
    "--triton-flavour",
    type=click.Choice(["onnx", "python"]),
    default="onnx",
    show_default=True,
    help="onnx: onnxruntime_onnx (+ tensorrt_plan with --engine); python: a Python-backend model "
    "running MODEL (.pt, .onnx or .engine) through sr-deploy.",
)
@click.option(
    "--engine",
    type=click.Path(dir_okay=False),
    default=None,
    help="A TensorRT engine of MODEL (with its sidecar JSON) to add as NAME_trt.",
)
@click.option(
    "--triton-kind",
    type=click.Choice(["gpu", "cpu", "auto"]),
    default="gpu",
    show_default=True,
    help="Instance group kind.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Triton max_batch_size (a plan's comes from its profile).",
)
@realism_options
@click.option(
    "--backend",
    "triton_backend",
    type=BACKEND_CHOICE,
    default="auto",
    show_default=True,
    help="Python flavour: the sr-deploy backend the server runs.",
)
def export(
    model: str,
    output: str | None,
    static: str | None,
    opset: int,
    exporter: str,
    fp16: bool,
    simplify: bool,
    no_verify: bool,
    triton_repo: str | None,
    triton_name: str,
    triton_flavour: str,
    engine: str | None,
    triton_kind: str,
    max_batch: int,
    realism: float | None,
    gan_model: str | None,
    triton_backend: str,
) -> None:
    """Export MODEL (a .pt/.pth/.ckpt/.safetensors checkpoint or `default`) to one self-contained ONNX file.

    Dynamic batch/height/width where the architecture allows (else a static graph, said why),
    metadata, onnx.checker, then a parity check on Set5 crops
    against the torch float32 model (fp32: max abs <= 1e-4, fp16: PSNR >= 50 dB; exit 1 if not).
    With --triton-repo DIR, also (or only) a Triton model repository in DIR.
    """
    from ..errors import SRDeployError as _Failure
    from ..export import export_onnx

    def log(message: str) -> None:
        click.echo(message, err=True)

    model = with_realism(model, gan_model, realism)
    if output is None and triton_repo is None:
        raise InputError("give -o MODEL.onnx, --triton-repo DIR, or both")
    # the repository's arguments, checked before an export (below) or used to write it
    triton_args = dict(name=triton_name, flavour=triton_flavour, engine=engine, kind=triton_kind, max_batch=max_batch)
    if triton_repo is not None and (output is None or triton_flavour == "python"):
        from ..triton import write_triton_repository

        if static or fp16 or simplify or exporter != "dynamo":
            raise InputError(
                "--static/--fp16/--simplify/--exporter apply to -o: export with -o first, then "
                "pass that .onnx as MODEL with --triton-repo"
            )
        repo = write_triton_repository(
            model, triton_repo, **triton_args, backend=triton_backend, opset=opset, verify=not no_verify, log=log
        )
        click.echo(
            f"wrote Triton repository {repo.path} ({', '.join(m.name for m in repo.models)}; {repo.readme.name})"
        )
        if output is None:
            return
    elif triton_repo is not None:  # the repository is written after the export: check its arguments first
        from ..triton import check_triton_arguments

        check_triton_arguments(model, triton_repo, **triton_args)

    try:
        result = export_onnx(
            model,
            output,
            opset=opset,
            static_shape=static,
            exporter=exporter,
            fp16=fp16,
            simplify=simplify,
            verify=not no_verify,
            log=log,
        )
    except _Failure as exc:
        report = getattr(exc, "parity", None)
        if report is not None:
            click.echo(report.table())
        raise
    shape = "x".join(map(str, result.static_shape)) if result.static_shape else "dynamic batch/height/width"
    click.echo(
        f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB): {result.arch} x{result.scale}, "
        f"{result.precision}, opset {result.opset}, {shape}, {result.exporter} exporter, "
        f"{result.seconds:.1f} s"
    )
    if result.fp16_block_list:
        click.echo(f"kept in fp32: {', '.join(result.fp16_block_list)}")
    if result.parity is not None:
        click.echo(result.parity.table())
    if triton_repo is not None and triton_flavour == "onnx":
        from ..triton import write_triton_repository

        repo = write_triton_repository(model, triton_repo, **triton_args, onnx_file=result.path, log=log)
        click.echo(
            f"wrote Triton repository {repo.path} ({', '.join(m.name for m in repo.models)}; {repo.readme.name})"
        )


@click.command(name="build-engine")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Engine file [default: MODEL with .engine].")
@click.option(
    "--fp16",
    "precision",
    flag_value="fp16",
    default=True,
    help="fp16 engine [default]: BuilderFlag.FP16 on TensorRT 10, an fp16 ONNX on TensorRT 11.",
)
@click.option("--bf16", "precision", flag_value="bf16", help="bf16 engine (TensorRT 10 only).")
@click.option("--fp32", "precision", flag_value="fp32", help="float32 reference engine (TF32 off).")
@click.option("--min", "min_shape", metavar="NxCxHxW", help="Smallest input [default: 1x3x64x64].")
@click.option("--opt", "opt_shape", metavar="NxCxHxW", help="Input shape tuned for [default: 1x3x270x480].")
@click.option(
    "--max", "max_shape", metavar="NxCxHxW", help="Largest input; larger ones are tiled [default: 4x3x540x960]."
)
@click.option("--static", "static_shape", metavar="NxHxW", help="One fixed input shape instead of min/opt/max.")
@click.option("--workspace", type=float, default=4.0, show_default=True, help="Builder workspace limit, GiB.")
@click.option(
    "--opt-level",
    type=click.IntRange(0, 5),
    default=None,
    help="Builder optimization level 0-5 [default: TensorRT's, 3].",
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    help="Timing cache file [default: timing-<TensorRT version>-<GPU>-sm<cc>.cache beside the engine].",
)
@click.option(
    "--fallback-static/--no-fallback-static",
    default=True,
    show_default=True,
    help="Retry a failed dynamic build once with the opt shape static.",
)
@click.option(
    "--strongly-typed",
    is_flag=True,
    help="TensorRT 10.12+: build from an fp16 ONNX on a strongly "
    "typed network instead of BuilderFlag.FP16 (always so on TensorRT 11).",
)
@click.option("--no-parity", is_flag=True, help="Skip the parity check against ONNX Runtime after the build.")
@click.option("--verbose", is_flag=True, help="Show TensorRT's build log (always written to ENGINE.build.log).")
def build_engine(
    model: str,
    output: str | None,
    precision: str,
    min_shape: str | None,
    opt_shape: str | None,
    max_shape: str | None,
    static_shape: str | None,
    workspace: float,
    opt_level: int | None,
    timing_cache: str | None,
    fallback_static: bool,
    strongly_typed: bool,
    no_parity: bool,
    verbose: bool,
) -> None:
    """Build a TensorRT engine from MODEL.onnx (fp16, profiles, timing cache), checked for parity."""
    from ..backends.trt_build import build_engine as build
    from ..engine import resolve_profile

    profile = resolve_profile(min_shape, opt_shape, max_shape, static_shape)
    result = build(
        model,
        output,
        precision=precision,
        profile=profile,
        workspace_gib=workspace,
        opt_level=opt_level,
        timing_cache=timing_cache,
        fallback_static=fallback_static,
        strongly_typed=strongly_typed,
        verbose=verbose,
        check_parity=not no_parity,
    )
    click.echo(f"{result.engine_path}  (sidecar {result.engine_path}.json)")
