"""TensorRT engine artifacts: the input's shape profile, the 2^31-element limit, the sidecar JSON
that says how and where an engine was built, the engine-cache key and paths, the timing-cache
path and the GPU identity. Plain Python, no TensorRT: tested without a GPU.

    profile = resolve_profile(min="1x3x64x64", opt="1x3x270x480", max="4x3x540x960")
    sidecar = read_sidecar("model.engine")      # None when there is none

Shapes are (N, C, H, W) of the *input* (low-resolution) image, C = 3 (RGB float [0, 1]).
Building lives in `sr_deploy.backends.trt_build`, running in `sr_deploy.backends.trt_backend`,
the TensorRT calls in `sr_deploy._tensorrt` (see docs/tensorrt.md for the layers).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .errors import InputError
from .util.files import atomic_write_text, unique_partial_path

MAX_TENSOR_ELEMENTS = 2**31 - 1
"""TensorRT tensors must stay under 2^31 elements (int32 volumes)."""

DEFAULT_MIN = (1, 3, 64, 64)
DEFAULT_OPT = (1, 3, 270, 480)
DEFAULT_MAX = (4, 3, 540, 960)
SIDECAR_FORMAT = "sr-deploy-engine"
SIDECAR_VERSION = 2  # 2: parity result and build options recorded (and part of the cache key)

Shape = tuple[int, int, int, int]


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
            raise InputError(
                f"{name} {format_shape(a)} must not exceed {nxt} {format_shape(b)} in any dimension (min <= opt <= max)"
            )
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
        f = (ratio**0.5) * 0.999
        suggestion = (suggestion[0], 3, max(1, int(hi[2] * f)), max(1, int(hi[3] * f)))
    raise InputError(
        f"--max {format_shape(hi)} at x{scale}: tensor {name!r} would have {worst:,} elements, over TensorRT's "
        f"limit of 2^31; use a smaller max such as {format_shape(suggestion)} (larger images are tiled)"
    )


# --------------------------------------------------------------------------- hashing, sidecar, cache


@dataclass
class BuildOptions:
    """The build options beside the ONNX, TensorRT, GPU, profile and precision that change the
    engine (so they are part of its cache key)."""

    workspace_bytes: int = 4 << 30
    opt_level: int | None = None  # None: TensorRT's default (3)
    sr_deploy_version: str = __version__

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class EngineSidecar:
    """What `model.engine.json` records about how and where an engine was built.

    parity: "passed" (checked against ONNX Runtime float32 after the build) or "skipped"
        (`--no-parity`); an engine whose parity failed is never written."""

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
    workspace_bytes: int = 4 << 30
    opt_level: int | None = None
    parity: str = ""
    parity_summary: str = ""
    sr_deploy_version: str = __version__
    format: str = SIDECAR_FORMAT
    format_version: int = SIDECAR_VERSION

    def options(self) -> BuildOptions:
        return BuildOptions(self.workspace_bytes, self.opt_level, self.sr_deploy_version)

    def cache_key(self, profile: dict[str, list[int]] | None = None) -> str:
        """The key this engine answers to. `profile`: the profile it was asked for, when a
        static fallback build answers a dynamic request (the sidecar keeps the profile used)."""
        return engine_cache_key(
            self.onnx_sha256,
            self.tensorrt_version,
            self.gpu_name,
            self.compute_capability,
            profile or self.profile,
            self.precision,
            self.route,
            self.options(),
        )


def sidecar_path(engine_path: str | Path) -> Path:
    """model.engine -> model.engine.json"""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def write_sidecar(engine_path: str | Path, sidecar: EngineSidecar) -> Path:
    """Write `<engine>.json` atomically (a unique temporary file beside it, then rename)."""
    path = sidecar_path(engine_path)
    atomic_write_text(path, json.dumps(asdict(sidecar), indent=2) + "\n", make_parents=True)
    return path


def unique_temp_path(path: Path, suffix: str = ".tmp") -> Path:
    """A new, empty, uniquely named file beside `path` (`.name.partial-XXXX<suffix>`): concurrent
    writers of the same target never share a temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return unique_partial_path(path.with_suffix(suffix) if suffix else path)


@contextlib.contextmanager
def build_lock(engine_path: str | Path) -> Iterator[None]:
    """An exclusive advisory lock (`<engine>.lock`, fcntl.flock) held while one process builds
    the engine: a second process asking for the same cache entry waits, then finds it built."""
    lock = Path(engine_path).with_name(Path(engine_path).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def check_engine_file(path: str | Path) -> Path:
    """`path` when it may be a serialized TensorRT engine, read without TensorRT; InputError naming
    the file when it is missing, empty, or text (a serialized engine is binary: its header holds
    little-endian integers, so NUL bytes, in the first bytes). Whether TensorRT can load it is only
    known when it does."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such engine file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the engine file ({exc.strerror or exc})") from None
    if not head:
        raise InputError(f"{path}: empty file, not a TensorRT engine")
    if b"\0" not in head:
        raise InputError(f"{path}: a text file, not a TensorRT engine (build one with sr-deploy build-engine)")
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
        raise InputError(f'{path}: not an sr-deploy engine sidecar (no "format": "{SIDECAR_FORMAT}")')
    known = set(EngineSidecar.__dataclass_fields__)
    try:
        return EngineSidecar(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise InputError(f"{path}: incomplete engine sidecar ({exc})") from None


def check_sidecar_matches(
    sidecar: EngineSidecar, engine_path: str | Path, tensorrt_version: str, gpu_name: str, compute_capability: str
) -> None:
    """Refuse (InputError) an engine built by another TensorRT version or for another GPU:
    TensorRT engines are tied to both, and a mismatch fails late or silently runs slow."""
    problems = []
    if sidecar.tensorrt_version != tensorrt_version:
        problems.append(f"built with TensorRT {sidecar.tensorrt_version}, this is TensorRT {tensorrt_version}")
    if sidecar.compute_capability != compute_capability or sidecar.gpu_name != gpu_name:
        problems.append(
            f"built for {sidecar.gpu_name} (compute capability {sidecar.compute_capability}), "
            f"this GPU is {gpu_name} ({compute_capability})"
        )
    if problems:
        onnx_hint = sidecar.onnx_path or "model.onnx"
        raise InputError(
            f"{engine_path}: {'; '.join(problems)}; rebuild it here: "
            f"sr-deploy build-engine {onnx_hint} -o {engine_path}"
        )


def engine_cache_key(
    onnx_sha256: str,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    profile: dict[str, list[int]] | ShapeProfile,
    precision: str,
    route: str = "",
    options: BuildOptions | None = None,
) -> str:
    """A short stable hash of everything that makes an engine reusable: the ONNX bytes, the
    TensorRT version, the GPU, the profile, the precision and its route, and the build options
    (workspace, optimisation level, sr-deploy version)."""
    if isinstance(profile, ShapeProfile):
        profile = profile.as_dict()
    fields = {
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "profile": {k: [int(d) for d in profile[k]] for k in ("min", "opt", "max")},
        "precision": precision,
        "route": route,
        "options": (options or BuildOptions()).as_dict(),
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


def timing_cache_path(folder: str | Path, tensorrt_version: str, gpu_name: str, compute_capability: str) -> Path:
    """The default timing cache in `folder`, one per TensorRT version and GPU: a cache written by
    another version or GPU does not apply (TensorRT refuses it) and must not be overwritten by
    another machine's builds. `timing-10.13.3.9-nvidia-h100-80gb-hbm3-sm90.cache`"""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    return Path(folder) / f"timing-{tensorrt_version}-{slug}-sm{compute_capability.replace('.', '')}.cache"


def gpu_identity(device: str = "cuda") -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') from PyTorch."""
    import torch

    index = (torch.device(device).index or 0) if device.startswith("cuda") else 0
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"
