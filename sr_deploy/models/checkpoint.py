"""Checkpoint files: our own format, the containers others wrap weights in, and BN folding.

Our format is one `torch.save` file holding a plain dict::

    {"format": "sr-deploy/1", "arch": "SRResNet", "config": {...constructor kwargs...},
     "scale": 4, "state_dict": {...}, "metadata": {...free-form, JSON-like...}}

so `load_model(path)` needs no other argument. Other files are unwrapped here (`params_ema`,
`params`, `state_dict`, `model`, `net`, a `module.` / `netG.` prefix, or a plain state dict) and the
state dict is handed to the model registry (`registry.py`), which knows the architectures and
their layouts: our own first, then spandrel's when it is installed.

Files: `.pt` / `.pth` / `.ckpt` (and any other name) are read with `torch.load(weights_only=True)`:
tensors and plain containers only, never arbitrary pickled code. That holds for the legacy
(pre-1.6) pickle files too, with `map_location="cpu"`. `.safetensors` files are read with the
`safetensors` package (a flat dict of tensors; its string metadata is kept as `metadata`).
"""

from __future__ import annotations

import copy
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import InputError
from ..util.files import atomic_write, check_local_path
from ..util.files import file_sha256 as file_sha256  # re-exported: callers import it from here
from ..util.text import first_line
from . import registry
from .spec import DEFAULT_LIVE_VALUES_PER_HR_PIXEL, Detection, ModelFacts, StateDict

FORMAT = "sr-deploy/1"

# The architectures our checkpoints may name, by class name (from the registry).
ARCHITECTURES: dict[str, type[nn.Module]] = registry.architectures()

# Keys that wrap a state dict, in the order they are preferred (EMA weights first).
WRAPPER_KEYS = ("params_ema", "params-ema", "params", "state_dict", "model_state_dict", "model", "net", "netG")
# Prefixes left by DataParallel / DistributedDataParallel and GAN training scripts.
STRIPPED_PREFIXES = ("module.", "netG.", "model.")

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# Names that stand for a model shipped inside the package.
BUNDLED_MODELS = {
    "default": "default.pt",
    "default-gan": "default-gan.pt",
    "default-real": "default-real.pt",
    "default-real-psnr": "default-real-psnr.pt",
}
# What each is for, as `sr-deploy info` says it (the model cards: sr_deploy/weights/README.md).
BUNDLED_PURPOSE = {
    "default": "PSNR-oriented, for clean input and the paper tables (SRResNet, MSE on bicubic LR)",
    "default-gan": "perceptual, for clean input: ESRGAN's GAN fine-tuning of `default` (sharper, invented texture)",
    "default-real": "what `upscale` runs by default: for compressed and noisy photos and video "
    "(Real-ESRGAN's degradations, L1 + LPIPS)",
    "default-real-psnr": "the faithful twin of `default-real` (L1 only, same degradations)",
}


@dataclass
class LoadedCheckpoint:
    """A model ready for inference (eval mode, float32, CPU) and what is known about it.

    `size_multiple`: input sizes that need no padding inside the model (1: any); `notes`: what
    `info` should tell about it (a x1 restoration model, not fp16-safe...)."""

    model: nn.Module
    arch: str
    config: dict[str, Any]
    scale: int
    path: Path
    source_format: str  # e.g. "sr-deploy/1", "BasicSR/Real-ESRGAN params_ema", "spandrel 0.4.2 (SwinIR)"
    sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)
    size_multiple: int = 1
    live_values_per_hr_pixel: int = DEFAULT_LIVE_VALUES_PER_HR_PIXEL
    notes: list[str] = field(default_factory=list)
    minimum: int = 0  # the smallest input side the model takes (padded up to inside)
    preferred_exporter: str | None = None

    @property
    def facts(self) -> ModelFacts:
        """What export reads about the model (from the detection, not the module)."""
        return ModelFacts(
            self.arch,
            self.scale,
            self.size_multiple,
            self.minimum,
            self.preferred_exporter,
            self.live_values_per_hr_pixel,
        )


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Map a bundled model name (a key of `BUNDLED_MODELS`) to its file; pass local paths through
    (InputError for a storage URI: `check_local_path`)."""
    text = str(name_or_path)
    if text in BUNDLED_MODELS:
        path = WEIGHTS_DIR / BUNDLED_MODELS[text]
        if not path.is_file():
            raise InputError(
                f"{text}: the bundled model {path.name} is not in this installation of sr-deploy; "
                "pass a model file with --model PATH"
            )
        return path
    return check_local_path(name_or_path)


def existing_model_path(name_or_path: str | Path) -> Path:
    """`resolve_model_path`, and InputError ``PATH: no such model file`` when nothing is there:
    the one check every command makes before it reads, loads or plans around a model."""
    path = resolve_model_path(name_or_path)
    if not path.is_file():
        raise InputError(f"{path}: {'a folder, not a model file' if path.is_dir() else 'no such model file'}")
    return path


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write `model` in our format; `config` are its constructor kwargs. `half` stores the
    weights as float16 (half the size; they are loaded back as float32). Written to a temporary
    name and renamed, so a crash never leaves a half-written checkpoint."""
    arch = type(model).__name__
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch}; expected one of {sorted(ARCHITECTURES)}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format": FORMAT,
        "arch": arch,
        "config": dict(config),
        "scale": int(getattr(model, "scale", config.get("scale", 0))),
        "state_dict": state,
        "metadata": dict(metadata or {}),
    }
    path = Path(path)
    # Serialised to memory first: torch.save names the archive inside after the file it writes,
    # so the same checkpoint saved under two names (a blend cached under its ends' names) would
    # differ in bytes, hence in the sha256 that outputs name their model by.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_write(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return path


def load_model(path: str | Path) -> nn.Module:
    """The model in `path` (any supported layout), in eval mode, float32, on the CPU."""
    return load_checkpoint(path).model


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read a checkpoint of any supported container and layout and build its model.

    Raises `InputError` with one line naming the file for a missing, empty, truncated or
    unreadable file, an unrecognised key layout, weights that do not fit the architecture, or
    non-finite weights (`check_finite_weights`).
    """
    loaded = _load_checkpoint(path)
    check_finite_weights(loaded.path, loaded.model)
    return loaded


def check_finite_weights(path: Path, model: nn.Module) -> None:
    """InputError naming the first NaN/Inf weight: torch does not check an archive's checksums, so
    flipped bytes in a checkpoint load as NaN and every output would be black (or a score of one)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(
                f"{path}: non-finite weights (NaN/Inf) in {name}: the file is damaged, or its training diverged"
            )


def _load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    path = existing_model_path(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, not a PyTorch checkpoint")
    obj, file_metadata = read_weights_file(path)
    sha = file_sha256(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return _load_ours(path, obj, sha)
    state, container = unwrap_state_dict(path, obj)
    detection = detect(path, state)
    try:
        model = detection.build()
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from exc
    source = _describe_source(container, detection.source)
    if path.suffix.lower() == ".safetensors":
        source = f"safetensors / {source}"
    return LoadedCheckpoint(
        model,
        detection.arch,
        detection.config,
        detection.scale,
        path,
        source,
        sha,
        file_metadata,
        detection.size_multiple,
        detection.live_values_per_hr_pixel,
        detection.notes,
        detection.minimum,
        detection.preferred_exporter,
    )


def _describe_source(container: str, layout: str) -> str:
    """ "BasicSR/Real-ESRGAN params_ema", "ESRGAN old architecture", "'model' entry / spandrel ..."."""
    if container == "plain state dict" or (container.startswith("BasicSR") and layout.startswith("BasicSR")):
        return layout if container == "plain state dict" else container
    return f"{container} / {layout}"


def read_weights_file(path: Path) -> tuple[Any, dict[str, Any]]:
    """The object stored in `path` and the file's own metadata (safetensors' header strings).

    `.safetensors` -> (flat dict of CPU tensors, metadata); anything else -> (`torch.load` result
    with weights_only=True, {}). InputError naming the file when it is neither."""
    with open(path, "rb") as f:
        magic = f.read(16)
    if path.suffix.lower() == ".safetensors" or _looks_like_safetensors(magic):
        return _read_safetensors(path)
    # torch.save writes a zip archive (PK..); pre-1.6 torch wrote a pickle (protocol 2+: 0x80).
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise InputError(f"{path}: not a PyTorch checkpoint (neither a torch zip archive, a pickle nor safetensors)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), {}
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError... here
        if found := re.search(r"Unsupported global: GLOBAL ([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+) ", str(exc)):
            raise InputError(  # a class, not only tensors: torch.save(model) rather than its state_dict
                f"{path}: holds a pickled {found[1]}, which is not loaded for safety (a whole model "
                "saved with torch.save(model)? save its state_dict() instead)"
            ) from exc
        raise InputError(
            f"{path}: not a readable PyTorch checkpoint ({_shorten(first_line(exc, limit=10_000))})"
        ) from exc


def _looks_like_safetensors(magic: bytes) -> bool:
    """safetensors files start with an 8-byte little-endian header length, then '{"'."""
    return len(magic) >= 10 and magic[8:10] == b'{"'


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        from safetensors import safe_open
    except ImportError as exc:
        raise InputError(
            f"{path}: reading .safetensors needs the safetensors package: pip install safetensors"
        ) from exc
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # SafetensorError for a bad header, OSError for a short file...
        raise InputError(
            f"{path}: not a readable safetensors file ({_shorten(first_line(exc, limit=10_000))})"
        ) from exc
    return tensors, metadata


def unwrap_state_dict(path: Path, obj: Any) -> tuple[StateDict, str]:
    """The state dict inside `obj` and how it was wrapped ("BasicSR/Real-ESRGAN params_ema",
    "'state_dict' entry", "plain state dict"...). Prefixes `module.` / `netG.` are removed when every
    key has them (`model.` only when that leaves a layout the registry knows)."""
    if not isinstance(obj, Mapping):
        raise InputError(f"{path}: holds a {type(obj).__name__}, expected a dict of weights")
    container = "plain state dict"
    for _ in range(3):  # nested wrappers: {"model": {"state_dict": ...}}
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        obj = obj[key]
        container = f"BasicSR/Real-ESRGAN {key}" if key in ("params", "params_ema", "params-ema") else f"'{key}' entry"
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        kinds = ", ".join(sorted({type(v).__name__ for v in obj.values()})[:3]) or "nothing"
        raise InputError(f"{path}: no tensors in the checkpoint (it holds {kinds}); expected a dict of weights")
    for prefix in STRIPPED_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix) :]: v for k, v in state.items()}
            if prefix != "model." or registry.detect_native(stripped) is not None:
                state = stripped
    return state, container


def detect(path: Path, state: StateDict) -> Detection:
    """Ask the registry what `state` is: the native layouts first, then external sources.

    A native layout whose weights do not fit (e.g. a variant we do not implement) is passed on
    to the external sources; when none of them takes it, the native error is raised."""
    native_error: InputError | None = None
    found = registry.detect_native(state)
    if found is not None:
        spec, layout = found
        try:
            config = layout.infer_config(state)
            converted = layout.convert(state)
            model = _build(path, spec.name, spec.module, config, converted)
            return Detection(
                spec.name,
                config,
                int(getattr(model, "scale", config.get("scale", 0))),
                layout.source,
                lambda: model,
                spec.live_values_per_hr_pixel,
                int(getattr(model, "size_multiple", 1)),
                preferred_exporter=spec.preferred_exporter,
            )
        except (InputError, ValueError, KeyError) as exc:
            native_error = (
                exc
                if isinstance(exc, InputError)
                else InputError(f"{path}: {layout.source} for {spec.name}: {first_line(exc, limit=10_000)}")
            )
    unavailable = []
    for source in registry.external_sources():
        why = source.available()
        if why is not None:
            unavailable.append(why)
            continue
        try:
            detection = source.detect(state)
        except ValueError as exc:
            if native_error is not None:
                raise native_error from exc
            raise InputError(f"{path}: {exc}") from exc
        if detection is not None:
            return detection
    if native_error is not None:
        raise native_error
    hint = f" ({'; '.join(unavailable)})" if unavailable else ""
    raise InputError(
        f"{path}: unrecognised weights layout; no known super-resolution architecture matches{hint}; "
        f"first keys: {', '.join(list(state)[:4])}"
    )


def _load_ours(path: Path, obj: Mapping[str, Any], sha: str) -> LoadedCheckpoint:
    arch = obj.get("arch")
    spec = registry.spec_by_name(str(arch))
    if spec is None:
        raise InputError(f"{path}: unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    config = dict(obj.get("config") or {})
    model = _build(path, spec.name, spec.module, config, dict(obj["state_dict"]))
    scale = int(getattr(model, "scale", config.get("scale", 0)))
    return LoadedCheckpoint(
        model,
        spec.name,
        config,
        scale,
        path,
        FORMAT,
        sha,
        dict(obj.get("metadata") or {}),
        int(getattr(model, "size_multiple", 1)),
        spec.live_values_per_hr_pixel,
        preferred_exporter=spec.preferred_exporter,
    )


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _build(path: Path, arch: str, module: type[nn.Module], config: dict, state: dict) -> nn.Module:
    try:
        model = module(**config)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: bad {arch} configuration {config}: {exc}") from exc
    # Old checkpoints lack BN's num_batches_tracked counters, which inference never reads.
    model_keys = model.state_dict().keys()
    for k in model_keys:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.tensor(0)
    missing = [k for k in model_keys if k not in state]
    unexpected = [k for k in state if k not in model_keys]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in model.state_dict().items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:3]}")
        if mismatched:
            parts.append(f"shape mismatch {mismatched[:2]}")
        raise InputError(f"{path}: weights do not fit {arch}({config}): {'; '.join(parts)}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An equivalent copy of `model` (in eval mode) with every BatchNorm2d that directly follows
    a Conv2d inside an `nn.Sequential` folded into that conv's weight and bias, and replaced by
    `nn.Identity`. Fewer layers to run, and no BN division in fp16. The original is untouched."""
    folded = copy.deepcopy(model).eval()
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
    return folded


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
