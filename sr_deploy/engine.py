"""ONNX -> TensorRT engine: shape profiles, precision per TensorRT version, timing cache, sidecar
JSON, an engine cache, and a parity check after the build.

The TensorRT calls themselves live in `sr_deploy._tensorrt` (imported lazily); everything here
is plain Python that runs and is tested without a GPU:

    profile = resolve_profile(min="1x3x64x64", opt="1x3x270x480", max="4x3x540x960")
    result = build_engine("model.onnx", "model.engine", precision="fp16", profile=profile)

Shapes are (N, C, H, W) of the *input* (low-resolution) image, C = 3 (RGB float [0, 1]).

Precision, decided by `_tensorrt.plan_precision` (see docs/tensorrt.md):
- TensorRT 11: strongly typed only. fp16 = an fp16 ONNX graph (float32 I/O kept) made by
  `prepare_fp16_onnx`, with the nodes whose activations overflow fp16 on real images kept in
  fp32; no precision flags, no EXPLICIT_BATCH.
- TensorRT 10: BuilderFlag.FP16 on the float32 graph (weakly typed), or with
  `strongly_typed=True` on 10.12+ the same fp16-ONNX route as 11. Never both on one network.
- fp32: TF32 cleared, so the engine is a float32 reference.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from .errors import InputError, SRDeployError

MAX_TENSOR_ELEMENTS = 2**31 - 1
"""TensorRT tensors must stay under 2^31 elements (int32 volumes)."""

DEFAULT_MIN = (1, 3, 64, 64)
DEFAULT_OPT = (1, 3, 270, 480)
DEFAULT_MAX = (4, 3, 540, 960)
SIDECAR_FORMAT = "sr-deploy-engine"
SIDECAR_VERSION = 1

Shape = tuple[int, int, int, int]


def _echo_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- shapes


def parse_shape(text: str, what: str = "shape") -> Shape:
    """'1x3x64x64' -> (1, 3, 64, 64); 'NxHxW' -> (N, 3, H, W) (RGB implied).

    Raises InputError naming `what` (e.g. '--min') when the text is not 3 or 4 positive
    integers separated by 'x', or when a 4-part shape has C != 3."""
    parts = str(text).strip().lower().replace("*", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"{what} {text!r}: expected NxCxHxW (e.g. 1x3x270x480) or NxHxW") from None
    if len(dims) == 3:
        dims = [dims[0], 3, dims[1], dims[2]]
    if len(dims) != 4:
        raise InputError(f"{what} {text!r}: expected 4 dimensions NxCxHxW (or NxHxW), got {len(dims)}")
    if min(dims) < 1:
        raise InputError(f"{what} {text!r}: every dimension must be >= 1")
    if dims[1] != 3:
        raise InputError(f"{what} {text!r}: the channel dimension must be 3 (RGB), got {dims[1]}")
    return (dims[0], dims[1], dims[2], dims[3])


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimization profile for the image input: min <= opt <= max per dimension."""

    min: Shape
    opt: Shape
    max: Shape

    @property
    def is_static(self) -> bool:
        return self.min == self.opt == self.max

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def static(cls, shape: Shape) -> ShapeProfile:
        return cls(shape, shape, shape)

    def __str__(self) -> str:
        if self.is_static:
            return f"static {format_shape(self.opt)}"
        return f"min {format_shape(self.min)}, opt {format_shape(self.opt)}, max {format_shape(self.max)}"


def resolve_profile(
    min: str | Shape | None = None,  # noqa: A002 - mirrors the CLI option names
    opt: str | Shape | None = None,
    max: str | Shape | None = None,  # noqa: A002
    static: str | Shape | None = None,
) -> ShapeProfile:
    """The profile from CLI-style arguments. `static` excludes min/opt/max; missing ones take
    the defaults (1x3x64x64 / 1x3x270x480 / 4x3x540x960). Checks min <= opt <= max."""

    def shape(value: str | Shape | None, what: str) -> Shape | None:
        if value is None:
            return None
        return parse_shape(value, what) if isinstance(value, str) else parse_shape(format_shape(value), what)

    if static is not None:
        if any(v is not None for v in (min, opt, max)):
            raise InputError("use either --static or --min/--opt/--max, not both")
        return ShapeProfile.static(shape(static, "--static"))  # type: ignore[arg-type]
    lo = shape(min, "--min") or DEFAULT_MIN
    mid = shape(opt, "--opt") or DEFAULT_OPT
    hi = shape(max, "--max") or DEFAULT_MAX
    for name, a, b in (("--min", lo, mid), ("--opt", mid, hi)):
        if any(x > y for x, y in zip(a, b)):
            nxt = "--opt" if name == "--min" else "--max"
            raise InputError(f"{name} {format_shape(a)} must not exceed {nxt} {format_shape(b)} in any dimension "
                             "(min <= opt <= max)")
    return ShapeProfile(lo, mid, hi)


def output_shape(shape: Shape, scale: int) -> Shape:
    return (shape[0], shape[1], shape[2] * scale, shape[3] * scale)


def largest_tensor(onnx_path: str | Path, shape: Shape) -> tuple[int, str]:
    """(elements, tensor name) of the largest tensor in the graph for input `shape`, from ONNX
    shape inference with the input fixed to `shape`. Returns (0, '') when inference cannot
    give concrete shapes (the caller then checks the output alone)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        return 0, ""
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        return 0, ""
    for d, v in zip(dims, shape):
        d.ClearField("dim_param")
        d.dim_value = int(v)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return 0, ""
    best, best_name = 0, ""
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        tdims = info.type.tensor_type.shape.dim
        if not tdims or any(not d.HasField("dim_value") for d in tdims):
            continue
        n = int(np.prod([d.dim_value for d in tdims], dtype=np.int64))
        if n > best:
            best, best_name = n, info.name
    return best, best_name


def check_tensor_limits(profile: ShapeProfile, scale: int, onnx_path: str | Path | None = None) -> None:
    """Reject a profile whose max shape makes any tensor reach 2^31 elements: the output
    (N x 3 x sH x sW) and, when `onnx_path` is given, every intermediate tensor found by shape
    inference. The message names the tensor and a max shape that fits."""
    hi = profile.max
    out = output_shape(hi, scale)
    worst, name = int(np.prod(out, dtype=np.int64)), "output"
    if onnx_path is not None:
        inner, inner_name = largest_tensor(onnx_path, hi)
        if inner > worst:
            worst, name = inner, inner_name or "an intermediate tensor"
    if worst <= MAX_TENSOR_ELEMENTS:
        return
    # Elements grow linearly in N and in H*W: suggest batch 1 first, then shrink H and W.
    ratio = MAX_TENSOR_ELEMENTS / worst
    n = hi[0]
    if n > 1:
        n_fit = int(n * ratio)
        if n_fit >= 1:
            suggestion = (n_fit, 3, hi[2], hi[3])
            ratio = 1.0
        else:
            ratio *= n
            suggestion = (1, 3, hi[2], hi[3])
    else:
        suggestion = hi
    if ratio < 1.0:
        f = (ratio ** 0.5) * 0.999
        suggestion = (suggestion[0], 3, max(1, int(hi[2] * f)), max(1, int(hi[3] * f)))
    raise InputError(
        f"--max {format_shape(hi)} at x{scale}: tensor {name!r} would have {worst:,} elements, over TensorRT's "
        f"limit of 2^31; use a smaller max such as {format_shape(suggestion)} (larger images are tiled)"
    )


# --------------------------------------------------------------------------- hashing, sidecar, cache


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class EngineSidecar:
    """What `model.engine.json` records about how and where an engine was built."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    profile: dict[str, list[int]]
    precision: str
    route: str = ""
    scale: int = 0
    onnx_path: str = ""
    built_onnx_sha256: str = ""  # the graph actually parsed (the fp16 ONNX on the strongly typed route)
    fp16_tensors: int = 0
    fp32_block_list: list[str] = field(default_factory=list)
    build_seconds: float = 0.0
    built_at: str = ""
    build_log: str = ""
    timing_cache: str = ""
    static_fallback: bool = False
    sr_deploy_version: str = __version__
    format: str = SIDECAR_FORMAT
    format_version: int = SIDECAR_VERSION

    def cache_key(self) -> str:
        return engine_cache_key(self.onnx_sha256, self.tensorrt_version, self.gpu_name, self.compute_capability,
                                self.profile, self.precision, self.route)


def sidecar_path(engine_path: str | Path) -> Path:
    """model.engine -> model.engine.json"""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def write_sidecar(engine_path: str | Path, sidecar: EngineSidecar) -> Path:
    """Write `<engine>.json` atomically (temporary file beside it, then rename)."""
    path = sidecar_path(engine_path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(sidecar), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_sidecar(engine_path: str | Path) -> EngineSidecar | None:
    """The sidecar of `engine_path`, or None when there is none. InputError when it exists but
    is not an sr-deploy engine sidecar."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable engine sidecar ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise InputError(f"{path}: not an sr-deploy engine sidecar (no \"format\": \"{SIDECAR_FORMAT}\")")
    known = set(EngineSidecar.__dataclass_fields__)
    try:
        return EngineSidecar(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise InputError(f"{path}: incomplete engine sidecar ({exc})") from None


def check_sidecar_matches(sidecar: EngineSidecar, engine_path: str | Path, tensorrt_version: str, gpu_name: str,
                          compute_capability: str) -> None:
    """Refuse (InputError) an engine built by another TensorRT version or for another GPU:
    TensorRT engines are tied to both, and a mismatch fails late or silently runs slow."""
    problems = []
    if sidecar.tensorrt_version != tensorrt_version:
        problems.append(f"built with TensorRT {sidecar.tensorrt_version}, this is TensorRT {tensorrt_version}")
    if sidecar.compute_capability != compute_capability or sidecar.gpu_name != gpu_name:
        problems.append(f"built for {sidecar.gpu_name} (compute capability {sidecar.compute_capability}), "
                        f"this GPU is {gpu_name} ({compute_capability})")
    if problems:
        onnx_hint = sidecar.onnx_path or "model.onnx"
        raise InputError(f"{engine_path}: {'; '.join(problems)}; rebuild it here: "
                         f"sr-deploy build-engine {onnx_hint} -o {engine_path}")


def engine_cache_key(onnx_sha256: str, tensorrt_version: str, gpu_name: str, compute_capability: str,
                     profile: dict[str, list[int]] | ShapeProfile, precision: str, route: str = "") -> str:
    """A short stable hash of everything that makes an engine reusable: the ONNX bytes, the
    TensorRT version, the GPU, the profile, the precision and the precision route."""
    if isinstance(profile, ShapeProfile):
        profile = profile.as_dict()
    fields = {
        "onnx_sha256": onnx_sha256, "tensorrt_version": tensorrt_version, "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "profile": {k: [int(d) for d in profile[k]] for k in ("min", "opt", "max")},
        "precision": precision, "route": route,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    """$SR_DEPLOY_ENGINE_CACHE, else $XDG_CACHE_HOME/sr-deploy/engines (~/.cache/...)."""
    env = os.environ.get("SR_DEPLOY_ENGINE_CACHE")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sr-deploy" / "engines"


def cached_engine_path(onnx_path: str | Path, key: str, precision: str, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"{Path(onnx_path).stem}-{precision}-{key}.engine"


def gpu_identity(device: str = "cuda") -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') from PyTorch."""
    import torch

    index = (torch.device(device).index or 0) if device.startswith("cuda") else 0
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


# --------------------------------------------------------------------------- fp16 ONNX


@dataclass
class Fp16Onnx:
    """The fp16 graph fed to a strongly typed network."""

    path: Path
    fp16_tensors: int
    block_list: list[str]
    converted: bool  # False when the input graph already held fp16 tensors


def prepare_fp16_onnx(onnx_path: str | Path, output: str | Path, calibration: Sequence[np.ndarray] | None = None,
                      extra_block_list: Sequence[str] = (), echo: Callable[[str], None] = _echo_stderr) -> Fp16Onnx:
    """Write the fp16 ONNX that the strongly typed route builds from, and check it really is fp16.

    A graph that already holds fp16 tensors is used as is. Otherwise it is converted with
    `sr_deploy.export.convert_to_fp16` (onnxconverter-common, float32 inputs/outputs kept),
    keeping in fp32 the nodes whose activations exceed the fp16 range on `calibration`
    (float32 RGB [0, 1] batches, default: `parity_inputs()`, real Set5 crops when present)
    plus `extra_block_list`.

    Raises SRDeployError when the result holds no fp16 tensor: TensorRT 11 would silently
    build a float32 engine from it.
    """
    from .export import calibrate_fp16_block_list, convert_to_fp16, count_fp16_tensors
    from .parity import parity_inputs

    src, dst = Path(onnx_path), Path(output)
    import onnx

    existing = count_fp16_tensors(onnx.load(str(src)))
    if existing > 0:
        echo(f"fp16: {src} already holds {existing} fp16 tensors; building from it as is")
        return Fp16Onnx(src, existing, list(extra_block_list), converted=False)
    inputs = list(calibration) if calibration is not None else parity_inputs()
    block = sorted(set(calibrate_fp16_block_list(str(src), inputs)) | set(extra_block_list))
    if block:
        echo(f"fp16: keeping {len(block)} node(s) in fp32 (activations beyond the fp16 range on the "
             f"calibration images): {', '.join(block[:8])}{' ...' if len(block) > 8 else ''}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.stem + ".tmp.onnx")
    convert_to_fp16(str(src), output=str(tmp), block_list=block or None)
    tmp.replace(dst)
    count = count_fp16_tensors(onnx.load(str(dst)))
    if count == 0:
        raise SRDeployError(f"{dst}: the fp16 conversion produced no fp16 tensors; TensorRT 11 would build a "
                            "float32 engine from it. Use --fp32, or check the ONNX graph")
    echo(f"fp16: {dst} holds {count} fp16 tensors (float32 input and output kept)")
    return Fp16Onnx(dst, count, block, converted=True)


# --------------------------------------------------------------------------- build


@dataclass
class BuildResult:
    engine_path: Path
    sidecar: EngineSidecar
    parity: Any = None  # sr_deploy.parity.ParityReport when checked
    reused: bool = False


def _onnx_scale(onnx_path: Path) -> int:
    from .export import read_onnx_metadata

    meta = read_onnx_metadata(onnx_path) or {}
    for key in ("scale", "sr_deploy.scale"):
        if key in meta:
            try:
                return int(meta[key])
            except (TypeError, ValueError):
                pass
    raise InputError(f"{onnx_path}: no sr_deploy.scale in the ONNX metadata; export it with sr-deploy export")


def _onnx_nodes(onnx_path: Path) -> list[tuple[str, str]]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [(n.name, n.op_type) for n in model.graph.node]


def _check_onnx_path(onnx_path: str | Path) -> Path:
    path = Path(onnx_path)
    if path.suffix.lower() != ".onnx":
        raise InputError(f"{path}: expected an .onnx file (export one with sr-deploy export)")
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    return path


def build_engine(
    onnx_path: str | Path,
    output: str | Path | None = None,
    *,
    precision: str = "fp16",
    profile: ShapeProfile | None = None,
    workspace_gib: float = 4.0,
    opt_level: int | None = None,
    timing_cache: str | Path | None = None,
    fallback_static: bool = True,
    strongly_typed: bool = False,
    verbose: bool = False,
    check_parity: bool = True,
    calibration: Sequence[np.ndarray] | None = None,
    fix_overflow: bool = True,
    device: str = "cuda",
    echo: Callable[[str], None] = _echo_stderr,
) -> BuildResult:
    """Build `onnx_path` into a TensorRT engine at `output` (default: beside it, .engine),
    with its sidecar JSON, then check parity against ONNX Runtime float32 on real images.

    Args:
        precision: fp16 | bf16 | fp32 (see the module docstring for the route per version).
        profile: the input's min/opt/max shapes (default 1x3x64x64 / 1x3x270x480 / 4x3x540x960).
        workspace_gib: builder workspace memory pool limit.
        opt_level: builder optimization level 0-5 (None: TensorRT's default, 3).
        timing_cache: path of the timing cache (default `<output>.timing-cache`), loaded
            when present and saved after the build.
        fallback_static: when the dynamic build fails, retry once with the opt shape static.
        strongly_typed: TensorRT 10.12+: use the fp16-ONNX strongly typed route instead of
            BuilderFlag.FP16 (always the route on 11).
        calibration: float32 RGB [0, 1] batches for the fp16 block list and the parity check
            (default `parity_inputs()`: Set5 crops when present).
        fix_overflow: when fp16 parity fails (NaN/Inf or PSNR < 50 dB), rebuild once keeping
            the offending layers in fp32 (strongly typed route) instead of only suggesting it.

    Raises: InputError (bad arguments, NotInstalledError without TensorRT/CUDA, exit 2),
        SRDeployError (parse/build/parity failure, exit 1).
    """
    from . import _tensorrt

    src = _check_onnx_path(onnx_path)
    if opt_level is not None and not 0 <= int(opt_level) <= 5:
        raise InputError(f"--opt-level {opt_level}: expected 0 to 5")
    if workspace_gib <= 0:
        raise InputError(f"--workspace {workspace_gib}: expected a positive number of GiB")
    profile = profile or resolve_profile()
    engine_path = Path(output) if output is not None else src.with_suffix(".engine")
    if engine_path.resolve() == src.resolve():
        raise InputError(f"{engine_path}: the engine would overwrite the ONNX input")

    from .export import count_fp16_tensors

    source_fp16 = count_fp16_tensors(src)
    if precision == "fp32" and source_fp16:
        raise InputError(f"{src}: an fp16 graph ({source_fp16} fp16 tensors) cannot give a float32 engine; "
                         "export a float32 ONNX for --fp32")

    trt = _tensorrt.import_tensorrt()
    _tensorrt.require_cuda(device)
    trt_version = _tensorrt.tensorrt_version(trt)
    plan = _tensorrt.plan_precision(_tensorrt.parse_version(trt_version), precision, strongly_typed)
    scale = _onnx_scale(src)
    if source_fp16:
        echo(f"note: {src} is already an fp16 graph; the parity reference is that graph on ONNX Runtime CPU")
    check_tensor_limits(profile, scale, src)
    gpu_name, cc = gpu_identity(device)
    onnx_sha = sha256_file(src)
    for note in plan.notes:
        echo(f"TensorRT {trt_version}: {note}")

    engine_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path = Path(timing_cache) if timing_cache is not None else engine_path.with_name(engine_path.name +
                                                                                           ".timing-cache")
    log_path = engine_path.with_name(engine_path.name + ".build.log")
    log_path.write_text(f"sr-deploy {__version__} build-engine {src} -> {engine_path}\n", encoding="utf-8")

    inputs = list(calibration) if calibration is not None else None
    block_extra: list[str] = []
    for attempt in (1, 2):
        fp16 = None
        build_src = src
        if plan.needs_fp16_onnx:
            fp16 = prepare_fp16_onnx(src, engine_path.with_name(engine_path.stem + ".fp16.onnx"), inputs,
                                     block_extra, echo)
            build_src = fp16.path
        elif precision == "fp16":
            _report_fp16_flag_route(src, echo)
        started = time.perf_counter()
        data, used_profile, fell_back = _build_with_fallback(trt, build_src, plan, profile, workspace_gib, opt_level,
                                                             cache_path, log_path, verbose, fallback_static, echo)
        seconds = time.perf_counter() - started
        tmp = engine_path.with_name(engine_path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(engine_path)
        sidecar = EngineSidecar(
            onnx_sha256=onnx_sha, tensorrt_version=trt_version, gpu_name=gpu_name, compute_capability=cc,
            profile=used_profile.as_dict(), precision=precision, route=plan.route, scale=scale,
            onnx_path=str(src), built_onnx_sha256=sha256_file(build_src),
            fp16_tensors=fp16.fp16_tensors if fp16 else 0, fp32_block_list=fp16.block_list if fp16 else [],
            build_seconds=round(seconds, 3), built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            build_log=str(log_path), timing_cache=str(cache_path), static_fallback=fell_back,
        )
        write_sidecar(engine_path, sidecar)
        echo(f"built {engine_path} ({len(data) / 2**20:.1f} MiB, {used_profile}, {precision} via {plan.route}) "
             f"in {seconds:.1f} s")
        if not check_parity:
            return BuildResult(engine_path, sidecar)
        report = engine_parity(src, engine_path, precision, inputs, device)
        echo(report.table())
        if report.passed:
            return BuildResult(engine_path, sidecar, report)
        # Parity failed: fp16 overflow is the likely cause (fp16 max is 65504).
        cause = (f"{engine_path}: parity with ONNX Runtime float32 failed ({report.summary()}). Likely cause: fp16 "
                 "overflow -- activations beyond 65504 become Inf/NaN or lose precision.")
        if precision == "fp32":
            raise SRDeployError(f"{engine_path}: float32 parity failed ({report.summary()}); check the ONNX graph "
                                "with sr-deploy export --check")
        if attempt == 1 and fix_overflow and plan.needs_fp16_onnx:
            from .export import FP16_MAX_RELATIVE_ERROR, FP16_SAFE_MAX, calibrate_fp16_block_list
            from .parity import parity_inputs

            # Stricter than the first calibration: TensorRT's fp16 kernels accumulate in fp16 too,
            # so keep back nodes within 8x of the first threshold as well.
            stricter = calibrate_fp16_block_list(str(src), inputs or parity_inputs(), safe_max=FP16_SAFE_MAX / 8,
                                                 max_relative_error=FP16_MAX_RELATIVE_ERROR / 2)
            more = sorted(set(stricter) - set(fp16.block_list if fp16 else []))
            if more:
                echo(f"{cause} Rebuilding once with {len(more)} more node(s) kept in fp32: {', '.join(more[:8])}")
                block_extra = more
                continue
        hint = ("rebuild with --strongly-typed (TensorRT 10.12+) so the overflowing nodes are kept in fp32, "
                if plan.route == "flag" else "")
        raise SRDeployError(f"{cause} Try: {hint}or --fp32.")
    raise AssertionError("unreachable")


def _report_fp16_flag_route(src: Path, echo: Callable[[str], None]) -> None:
    """On the BuilderFlag.FP16 route the ONNX stays float32 (TensorRT picks fp16 kernels)."""
    echo(f"fp16: {src} is float32; TensorRT 10 picks fp16 kernels under BuilderFlag.FP16")


def _build_with_fallback(trt: Any, build_src: Path, plan: Any, profile: ShapeProfile, workspace_gib: float,
                         opt_level: int | None, cache_path: Path, log_path: Path, verbose: bool, fallback_static: bool,
                         echo: Callable[[str], None]) -> tuple[bytes, ShapeProfile, bool]:
    """Build once; if a dynamic build fails and `fallback_static`, retry once with the opt shape
    static (saying so). Parser errors are not retried."""
    from . import _tensorrt

    def request(p: ShapeProfile) -> _tensorrt.BuildRequest:
        return _tensorrt.BuildRequest(
            onnx_path=build_src, onnx_nodes=_onnx_nodes(build_src), plan=plan, min_shape=p.min, opt_shape=p.opt,
            max_shape=p.max, workspace_bytes=int(workspace_gib * 2**30), opt_level=opt_level, timing_cache=cache_path,
            log_path=log_path, verbose=verbose)

    try:
        return _tensorrt.build_serialized_engine(trt, request(profile), echo), profile, False
    except _tensorrt.BuildFailed as exc:
        if profile.is_static or not fallback_static:
            raise
        static = ShapeProfile.static(profile.opt)
        echo(f"{exc}; retrying once with a static shape {format_shape(profile.opt)} (the opt shape; larger "
             "inputs will be tiled). Use --no-fallback-static to fail instead.")
        return _tensorrt.build_serialized_engine(trt, request(static), echo), static, True


def engine_parity(onnx_path: str | Path, engine_path: str | Path, precision: str,
                  inputs: Sequence[np.ndarray] | None = None, device: str = "cuda") -> Any:
    """Parity of the engine against ONNX Runtime float32 on the CPU (the reference) with the
    export thresholds (`sr_deploy.parity.check_thresholds`). Inputs larger than the engine's
    profile max are cropped to fit."""
    from .backends.ort_backend import OnnxRuntimeBackend
    from .backends.trt_backend import TensorRTBackend
    from .parity import check_thresholds, parity, parity_inputs

    batches = list(inputs) if inputs is not None else parity_inputs()
    with TensorRTBackend(engine_path, device=device) as candidate, \
            OnnxRuntimeBackend(Path(onnx_path), device="cpu", precision="fp32") as reference:
        hi = candidate.max_shape  # larger crops are cut to the profile max; smaller ones the backend pads
        fitted = [np.ascontiguousarray(x[:hi[0], :, :hi[1], :hi[2]]) for x in batches]
        report = parity(reference, candidate, fitted)
    check_thresholds(report, precision)
    return report


# --------------------------------------------------------------------------- cache


def ensure_engine(
    onnx_path: str | Path,
    precision: str = "fp16",
    *,
    profile: ShapeProfile | None = None,
    cache_dir: str | Path | None = None,
    device: str = "cuda",
    strongly_typed: bool = False,
    echo: Callable[[str], None] = _echo_stderr,
    **build_options: Any,
) -> Path:
    """The engine for `onnx_path` from the engine cache, building it on first use.

    The cache key covers the ONNX sha256, TensorRT version, GPU name and compute capability,
    profile, precision and route, so `sr-deploy upscale --backend tensorrt model.onnx` builds
    once per machine and reuses the engine afterwards. The timing cache sits beside the
    engines (one per GPU), so rebuilding for a new profile is fast."""
    from . import _tensorrt

    src = _check_onnx_path(onnx_path)
    trt = _tensorrt.import_tensorrt()
    _tensorrt.require_cuda(device)
    trt_version = _tensorrt.tensorrt_version(trt)
    plan = _tensorrt.plan_precision(_tensorrt.parse_version(trt_version), precision, strongly_typed)
    profile = profile or resolve_profile()
    gpu_name, cc = gpu_identity(device)
    key = engine_cache_key(sha256_file(src), trt_version, gpu_name, cc, profile, precision, plan.route)
    path = cached_engine_path(src, key, precision, cache_dir)
    sidecar = read_sidecar(path) if path.is_file() else None
    if sidecar is not None and sidecar.cache_key() == key:
        echo(f"engine cache: reusing {path}")
        return path
    if sidecar is not None and sidecar.static_fallback:
        # A previous build fell back to static: the key was for the dynamic profile; reuse it.
        echo(f"engine cache: reusing {path} (static fallback build)")
        return path
    echo(f"engine cache: building {path} (first use of {src.name} with TensorRT {trt_version} on {gpu_name})")
    path.parent.mkdir(parents=True, exist_ok=True)
    timing = path.parent / f"timing-{trt_version}-{cc}.cache"
    build_engine(src, path, precision=precision, profile=profile, device=device, strongly_typed=strongly_typed,
                 timing_cache=timing, echo=echo, **build_options)
    return path
