"""`sr-deploy export MODEL --triton-repo DIR`: a Triton Inference Server model repository.

    DIR/
      README.md                 how to start Triton on DIR and call it
      NAME/config.pbtxt         platform onnxruntime_onnx, dynamic N/H/W, dynamic batching, warm-up
      NAME/1/model.onnx         (sr-deploy export: float32 RGB [0, 1] NCHW in, x scale out)
      NAME_trt/config.pbtxt     with --engine: platform tensorrt_plan, bounds from the engine profile
      NAME_trt/1/model.plan

or, with `flavour="python"`, a Python-backend model that runs any sr-deploy backend (.pt, .onnx,
.engine) through the same tiling as `sr-deploy upscale`, so its output equals a local run's:

      NAME/config.pbtxt         backend python, parameters naming the model file and backend
      NAME/1/model.py           a copy of `sr_deploy/triton_model.py`
      NAME/1/<model file>

Every model takes `input` (N, 3, H, W) TYPE_FP32 RGB in [0, 1] and returns `output`
(N, 3, sH, sW) TYPE_FP32, unclamped: the ONNX file's own contract, so one client
(`sr_deploy.serving`) talks to every flavour. In the config, `max_batch_size` is N's bound and
the dims leave N out ([3, -1, -1]); H and W are -1 (any size). The height/width bounds of a
TensorRT engine are its optimization profile's, which Triton reads from the plan itself; they are
recorded in a comment in config.pbtxt and in the README, and for the ONNX model they are given to
ONNX Runtime's TensorRT execution provider (`trt_profile_min/opt/max_shapes`) when Triton runs
it with that accelerator.

The configs are written as text (no Triton package is needed to export); the tests parse them
with Triton's own protobuf schema. Each model folder is written beside its final place and renamed
into it when complete, replacing an older export of the same name.
"""

from __future__ import annotations

import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError
from .serving import MAX_REQUEST_PIXELS
from .util.log import Progress as Log
from .util.log import to_stderr

FLAVOURS = ("onnx", "python")
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU", "auto": "KIND_AUTO"}
DEFAULT_NAME = "sr_deploy"
DEFAULT_MAX_BATCH = 4
# The ONNX model's TensorRT-accelerator profile when no engine gives one (the build-engine defaults).
DEFAULT_PROFILE = {"min": [1, 3, 64, 64], "opt": [1, 3, 270, 480], "max": [4, 3, 540, 960]}
MAX_QUEUE_DELAY_US = 2000
VERSION = "1"


@dataclass
class TritonModel:
    """One model folder written into the repository."""

    name: str
    platform: str  # onnxruntime_onnx, tensorrt_plan, or python (backend)
    folder: Path
    files: list[Path] = field(default_factory=list)
    profile: dict[str, list[int]] | None = None


@dataclass
class TritonRepository:
    """What `write_triton_repository` wrote."""

    path: Path
    models: list[TritonModel]
    readme: Path
    scale: int


def _shape(dims: list[int]) -> str:
    return "x".join(str(d) for d in dims)


def _io_block(max_batch: int) -> str:
    return (
        f"max_batch_size: {max_batch}\n"
        "input [\n"
        '  {\n    name: "input"\n    data_type: TYPE_FP32\n    dims: [ 3, -1, -1 ]\n  }\n'
        "]\n"
        "output [\n"
        '  {\n    name: "output"\n    data_type: TYPE_FP32\n    dims: [ 3, -1, -1 ]\n  }\n'
        "]\n"
    )


def _batching_block() -> str:
    # Requests of the same height and width are batched; others run on their own.
    return f"dynamic_batching {{\n  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}\n}}\n"


def _instance_block(kind: str, count: int = 1) -> str:
    return f"instance_group [\n  {{\n    count: {count}\n    kind: {kind}\n  }}\n]\n"


def _warmup_block(height: int, width: int) -> str:
    return (
        "model_warmup [\n"
        "  {\n"
        f'    name: "warmup_{height}x{width}"\n'
        "    batch_size: 1\n"
        "    inputs {\n"
        '      key: "input"\n'
        "      value {\n"
        "        data_type: TYPE_FP32\n"
        f"        dims: [ 3, {height}, {width} ]\n"
        "        random_data: true\n"
        "      }\n"
        "    }\n"
        "  }\n"
        "]\n"
    )


def _parameters_block(values: dict[str, str]) -> str:
    return "".join(
        f'parameters {{\n  key: "{key}"\n  value {{ string_value: "{value}" }}\n}}\n' for key, value in values.items()
    )


def _profile_comment(profile: dict[str, list[int]]) -> str:
    return (
        f"# input profile (N x 3 x H x W): min {_shape(profile['min'])}, opt {_shape(profile['opt'])}, "
        f"max {_shape(profile['max'])}\n"
    )


def onnx_config(
    name: str, max_batch: int, profile: dict[str, list[int]], kind: str, scale: int, fp16_accelerator: bool = True
) -> str:
    """config.pbtxt of the ONNX model: platform onnxruntime_onnx, the profile as ONNX Runtime
    TensorRT-accelerator bounds (used when Triton runs on a GPU), warm-up at the opt size."""
    spec = lambda key: f"input:{_shape(profile[key])}"  # noqa: E731
    accelerator = ""
    if kind != "KIND_CPU":
        accelerator = (
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n"
            '      {\n        name: "tensorrt"\n'
            + ('        parameters { key: "precision_mode" value: "FP16" }\n' if fp16_accelerator else "")
            + f'        parameters {{ key: "trt_profile_min_shapes" value: "{spec("min")}" }}\n'
            f'        parameters {{ key: "trt_profile_opt_shapes" value: "{spec("opt")}" }}\n'
            f'        parameters {{ key: "trt_profile_max_shapes" value: "{spec("max")}" }}\n'
            "      }\n    ]\n  }\n}\n"
        )
    return (
        f"# written by sr-deploy: x{scale} super-resolution, float32 RGB [0, 1] NCHW in and out\n"
        + _profile_comment(profile)
        + f'name: "{name}"\nplatform: "onnxruntime_onnx"\n'
        + _io_block(max_batch)
        + _batching_block()
        + _instance_block(kind)
        + _warmup_block(profile["opt"][2], profile["opt"][3])
        + accelerator
        + _parameters_block({"sr_deploy.scale": str(scale), "sr_deploy.max_request_pixels": str(MAX_REQUEST_PIXELS)})
    )


def plan_config(name: str, profile: dict[str, list[int]], scale: int) -> str:
    """config.pbtxt of a TensorRT plan: max_batch_size and the warm-up from the engine's profile."""
    return (
        f"# written by sr-deploy: x{scale} super-resolution TensorRT engine, float32 RGB [0, 1] NCHW\n"
        + _profile_comment(profile)
        + "# inputs outside the profile's H/W bounds are refused by TensorRT: tile them on the client\n"
        + f'name: "{name}"\nplatform: "tensorrt_plan"\n'
        + _io_block(profile["max"][0])
        + _batching_block()
        + _instance_block("KIND_GPU")
        + _warmup_block(profile["opt"][2], profile["opt"][3])
        + _parameters_block({"sr_deploy.scale": str(scale), "sr_deploy.max_request_pixels": str(MAX_REQUEST_PIXELS)})
    )


def python_config(
    name: str, max_batch: int, kind: str, scale: int, model_file: str, backend: str, precision: str
) -> str:
    """config.pbtxt of the Python-backend model running `model_file` through sr-deploy."""
    return (
        f"# written by sr-deploy: x{scale} super-resolution through sr-deploy's {backend} backend\n"
        f'name: "{name}"\nbackend: "python"\n'
        + _io_block(max_batch)
        + _batching_block()
        + _instance_block(kind)
        + _warmup_block(64, 64)
        + _parameters_block(
            {
                "sr_deploy.model": model_file,
                "sr_deploy.backend": backend,
                "sr_deploy.precision": precision,
                "sr_deploy.scale": str(scale),
                "sr_deploy.max_request_pixels": str(MAX_REQUEST_PIXELS),
            }
        )
    )


def _check_name(name: str) -> str:
    if not name or name.startswith(".") or any(c in name for c in '/\\ "') or name in (".", ".."):
        raise InputError(f"--name {name!r}: a Triton model name must be a plain folder name (no /, spaces, quotes)")
    return name


def _place(staging: Path, final: Path) -> None:
    """Swap the finished `staging` folder into `final` (replacing an older export)."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _staged_model(repo: Path, name: str) -> Iterator[Path]:
    """A fresh `.NAME.partial` folder (with its version folder) to fill; on success it replaces
    `repo/NAME` (`_place`), on any error (Ctrl-C included) it is removed, so the repository never
    holds a half-written model."""
    staging = repo / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / VERSION).mkdir(parents=True)
    try:
        yield staging
        _place(staging, repo / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_triton_repository(
    model: str,
    repo: str | Path,
    *,
    name: str = DEFAULT_NAME,
    flavour: str = "onnx",
    engine: str | Path | None = None,
    onnx_file: str | Path | None = None,
    kind: str = "gpu",
    max_batch: int = DEFAULT_MAX_BATCH,
    backend: str = "auto",
    precision: str = "fp32",
    opset: int = 18,
    verify: bool = True,
    log: Log | None = to_stderr,
) -> TritonRepository:
    """Write (or add to) the Triton model repository `repo`.

    Args:
        model: a checkpoint / bundled name (exported to ONNX here), or an .onnx file (copied).
            For the python flavour any model file sr-deploy loads (.pt, .onnx, .engine).
        name: the Triton model name (folder); the TensorRT plan is `NAME_trt`.
        flavour: ``onnx`` (onnxruntime_onnx, + tensorrt_plan with `engine`) or ``python``.
        engine: a TensorRT engine built from this model (with its sidecar JSON) to add as a plan.
        onnx_file: an ONNX export already made from `model` (copied instead of exporting again).
        kind: instance group kind: ``gpu``, ``cpu`` or ``auto``.
        max_batch: `max_batch_size` (for a plan: the engine profile's max N).
        backend, precision: the sr-deploy backend the python flavour runs.
        opset, verify: passed to `sr_deploy.export.export_onnx` when exporting.
    Raises InputError for bad arguments or files (nothing written).
    """
    say = log or (lambda _m: None)
    repo = Path(repo)
    engine_path, sidecar = check_triton_arguments(
        model, repo, name=name, flavour=flavour, engine=engine, kind=kind, max_batch=max_batch, backend=backend
    )
    created = not repo.exists()
    repo.mkdir(parents=True, exist_ok=True)
    kind_text = INSTANCE_KINDS[kind]
    try:
        if flavour == "python":
            models, scale = _write_python(repo, model, name, max_batch, kind_text, backend, precision)
        else:
            profile = sidecar.profile if sidecar is not None else DEFAULT_PROFILE
            onnx, scale = _write_onnx(repo, model, name, onnx_file, max_batch, profile, kind_text, opset, verify, log)
            models = [onnx]
            if engine_path is not None and sidecar is not None:
                models.append(_write_plan(repo, engine_path, f"{name}_trt", sidecar.profile, scale))
        readme = write_readme(repo, models, scale)
    except BaseException:
        if created:  # a repository this call began is not left behind, empty or half-filled
            shutil.rmtree(repo, ignore_errors=True)
        raise
    for item in models:
        say(f"wrote {item.folder}/ ({item.platform})")
    return TritonRepository(repo, models, readme, scale)


def check_triton_arguments(
    model: str,
    repo: str | Path,
    *,
    name: str = DEFAULT_NAME,
    flavour: str = "onnx",
    engine: str | Path | None = None,
    kind: str = "gpu",
    max_batch: int = DEFAULT_MAX_BATCH,
    backend: str = "auto",
) -> tuple[Path | None, Any]:
    """Everything `write_triton_repository` checks before it writes (and `sr-deploy export` before
    it exports): the options, the --engine file and its sidecar, and for the python flavour the
    model file and that `backend` runs it (the rule `sr_deploy.backends.load` applies, so a pair
    that upscale refuses is not written as a model Triton cannot load). Returns (engine path, its
    sidecar) when an engine is given; InputError naming the file or option otherwise."""
    engine_path, sidecar = _check_arguments(Path(repo), name, flavour, kind, max_batch, engine)
    if flavour == "python":
        from .backends.table import runner_for
        from .model_file import model_file_scale

        path, _ = model_file_scale(model)  # exists, and its scale can be read (an engine's sidecar)
        runner_for(path, backend)
    return engine_path, sidecar


def _check_arguments(
    repo: Path, name: str, flavour: str, kind: str, max_batch: int, engine: str | Path | None
) -> tuple[Path | None, Any]:
    """The options and the --engine file: (engine path, its sidecar) when given."""
    if flavour not in FLAVOURS:
        raise InputError(f"--triton-flavour {flavour!r}: expected one of {', '.join(FLAVOURS)}")
    if kind not in INSTANCE_KINDS:
        raise InputError(f"--triton-kind {kind!r}: expected one of {', '.join(INSTANCE_KINDS)}")
    if max_batch < 1:
        raise InputError(f"--max-batch must be >= 1, got {max_batch}")
    _check_name(name)
    if repo.exists() and not repo.is_dir():
        raise InputError(f"{repo}: exists and is not a folder (the Triton repository must be a folder)")
    if engine is None:
        return None, None
    engine_path = Path(engine)
    if flavour != "onnx":
        raise InputError("--engine goes with the onnx flavour (the python flavour takes the engine as MODEL)")
    from .engine import read_sidecar

    if not engine_path.is_file():
        raise InputError(f"{engine_path}: no such engine file")
    sidecar = read_sidecar(engine_path)
    if sidecar is None or not sidecar.profile:
        raise InputError(
            f"{engine_path}: no sidecar JSON with the engine's profile ({engine_path.name}.json); "
            "build it with sr-deploy build-engine"
        )
    return engine_path, sidecar


def _write_python(
    repo: Path, model: str, name: str, max_batch: int, kind_text: str, backend: str, precision: str
) -> tuple[list[TritonModel], int]:
    """The python flavour: the model file (and its kind's sidecar) run by `triton_model.py`."""
    from .model_file import companion_files, model_file_scale

    source, scale = model_file_scale(model)
    with _staged_model(repo, name) as staging:
        for file in companion_files(source):  # the file and its kind's sidecar (an engine's JSON)
            shutil.copyfile(file, staging / VERSION / file.name)
        shutil.copyfile(Path(__file__).with_name("triton_model.py"), staging / VERSION / "model.py")
        (staging / "config.pbtxt").write_text(
            python_config(name, max_batch, kind_text, scale, source.name, backend, precision)
        )
    folder = repo / name
    files = [folder / "config.pbtxt", folder / VERSION / "model.py", folder / VERSION / source.name]
    return [TritonModel(name, "python", folder, files)], scale


def _write_onnx(
    repo: Path,
    model: str,
    name: str,
    onnx_file: str | Path | None,
    max_batch: int,
    profile: Any,
    kind_text: str,
    opset: int,
    verify: bool,
    log: Log | None,
) -> tuple[TritonModel, int]:
    """The onnx flavour: an ONNX file (given, or exported here) for onnxruntime_onnx."""
    from .model_file import file_kind, onnx_file_scale
    from .models import resolve_model_path

    source = resolve_model_path(model)
    with _staged_model(repo, name) as staging:
        onnx_target = staging / VERSION / "model.onnx"
        is_onnx = source.suffix.lower() in file_kind("onnx").suffixes
        given = Path(onnx_file) if onnx_file is not None else (source if is_onnx else None)
        if given is not None:
            if not given.is_file():
                raise InputError(f"{given}: no such ONNX file")
            _copy_onnx(given, onnx_target)
        else:
            from .export import export_onnx

            export_onnx(model, onnx_target, opset=opset, verify=verify, log=log)
        scale = onnx_file_scale(onnx_target)
        (staging / "config.pbtxt").write_text(onnx_config(name, max_batch, profile, kind_text, scale))
    folder = repo / name
    files = [folder / "config.pbtxt", folder / VERSION / "model.onnx"]
    return TritonModel(name, "onnxruntime_onnx", folder, files, profile), scale


def _copy_onnx(source: Path, target: Path) -> None:
    """`source` as one self-contained `target`: byte for byte when it holds its weights, else loaded
    with its external data (which `onnx.load` checks stay beside it) and saved as one file, so the
    repository does not lose the weights (issue 24: they were dropped, and the model failed in
    ONNX Runtime on the server)."""
    from onnx.external_data_helper import uses_external_data

    from .onnx_graph import save_onnx
    from .util.onnx_facts import load_onnx_file

    graph = load_onnx_file(source, load_weights=False)
    if not any(uses_external_data(tensor) for tensor in graph.graph.initializer):
        shutil.copyfile(source, target)
        return
    save_onnx(load_onnx_file(source), target)


def _write_plan(repo: Path, engine_path: Path, plan_name: str, profile: Any, scale: int) -> TritonModel:
    """A TensorRT engine as a tensorrt_plan model beside the ONNX one."""
    with _staged_model(repo, plan_name) as staging:
        shutil.copyfile(engine_path, staging / VERSION / "model.plan")
        (staging / "config.pbtxt").write_text(plan_config(plan_name, profile, scale))
    folder = repo / plan_name
    return TritonModel(
        plan_name, "tensorrt_plan", folder, [folder / "config.pbtxt", folder / VERSION / "model.plan"], profile
    )


def write_readme(repo: Path, models: list[TritonModel], scale: int) -> Path:
    """README.md of the repository: what is in it, how to start Triton and how to call it."""
    from .imaging import atomic_write_bytes

    present = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    lines = [
        "# Triton model repository (written by sr-deploy)",
        "",
        f"Models here: {', '.join(f'`{n}`' for n in present)}. Each takes `input`, (N, 3, H, W) TYPE_FP32 RGB in "
        f"[0, 1], and returns `output`, (N, 3, {scale}H, {scale}W) TYPE_FP32, unclamped (clamp and round to "
        "8 bits yourself, or use `sr_deploy.serving`). N is at most `max_batch_size`; requests of the same "
        "size are batched by Triton's dynamic batcher.",
        "",
    ]
    for item in models:
        lines.append(
            f"- `{item.name}`: {item.platform}"
            + (
                f", input profile min {_shape(item.profile['min'])}, opt {_shape(item.profile['opt'])}, "
                f"max {_shape(item.profile['max'])} (N x 3 x H x W)"
                if item.profile
                else ""
            )
        )
    for name in sorted(set(present) - {item.name for item in models}):  # exported into it earlier
        config = (repo / name / "config.pbtxt").read_text(errors="replace")
        kind = re.search(r'^(?:platform|backend):\s*"([^"]+)"', config, re.MULTILINE)
        lines.append(f"- `{name}`: {kind[1] if kind else 'see its config.pbtxt'} (exported earlier)")
    lines += [
        "",
        "## Start Triton on it",
        "",
        "```bash",
        f"docker run --gpus all --rm -p 127.0.0.1:8000:8000 -p 127.0.0.1:8001:8001 -v $PWD/{repo.name}:/models \\",
        "    nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models",
        "```",
        "",
        "The ports are published on this machine's loopback only: Triton itself asks for no credentials,",
        "and anyone who reaches port 8000 can run the model and unload it. To serve other machines, put",
        "an authenticating reverse proxy (TLS and a password or token, e.g. nginx or Envoy) in front of",
        "127.0.0.1:8000, or at least restrict Triton's APIs to a header key",
        "(`--http-restricted-api=model-repository,shared-memory:sr-key=<secret>`).",
        f"A request may carry at most {MAX_REQUEST_PIXELS} input pixels (N x H x W,",
        "`sr_deploy.max_request_pixels` in config.pbtxt; the python flavour enforces it, `sr_deploy.serving`",
        "checks it before sending): send larger images in tiles.",
        "",
        "A TensorRT plan only runs on the GPU model and TensorRT version it was built with: use the Triton",
        "container whose TensorRT matches the engine's sidecar JSON. The ONNX model runs anywhere ONNX Runtime",
        "does; for CPU serving set `kind: KIND_CPU` in its `instance_group`.",
        "The python-backend flavour needs `pip install sr-deploy` in the server's Python environment (the",
        "`nvcr.io/nvidia/tritonserver:<yy.mm>-py3` image has one); `nvidia-pytriton`'s bundled",
        "`tritonserver` serves it too (see docs/scale-out.md).",
        "",
        "## Call it",
        "",
        "```python",
        "from sr_deploy.serving import upscale_file",
        f'upscale_file("http://127.0.0.1:8000", "{models[0].name}", "photo.png", "photo_x{scale}.png")',
        "```",
        "",
        "or with `tritonclient` directly: send `input` as FP32 (1, 3, H, W) RGB in [0, 1] and read `output`.",
        "",
    ]
    readme = repo / "README.md"
    atomic_write_bytes(readme, "\n".join(lines).encode())
    return readme
