"""Checkpoints: our own format, foreign state dicts, and deployment BN folding.

Our format is one `torch.save` file holding a plain dict::

    {"format": "sr-deploy/1", "arch": "SRResNet", "config": {...constructor kwargs...},
     "scale": 4, "state_dict": {...}, "metadata": {...free-form, JSON-like...}}

so `load_model(path)` needs no other argument. Foreign layouts are recognised by their keys:
BasicSR / Real-ESRGAN (`params_ema` / `params`: MSRResNet, RRDBNet, SRVGGNetCompact), the
original ESRGAN "old architecture" (`model.0.weight`, `model.1.sub.N.RDBk...`) and the
leftthomas/SRGAN generator (`block1.0.weight` ... `block8.N`).

Every file is read with `torch.load(weights_only=True)`: tensors and plain containers only, never
arbitrary pickled code. That holds for the legacy (pre-1.6) pickle files too, with
`map_location="cpu"` (the leftthomas file was saved from CUDA tensors).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import InputError, first_line
from ..util.files import atomic_write, file_sha256
from .rrdbnet import RRDBNet
from .srresnet import MSRResNet, SRResNet
from .srvgg import SRVGGNetCompact

FORMAT = "sr-deploy/1"

# The architectures a checkpoint may name, by class name. A plain dict, no registry magic.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "SRResNet": SRResNet,
    "MSRResNet": MSRResNet,
    "RRDBNet": RRDBNet,
    "SRVGGNetCompact": SRVGGNetCompact,
}

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# Names that stand for a model shipped inside the package.
BUNDLED_MODELS = {"default": "default.pt", "default-gan": "default-gan.pt"}


@dataclass
class LoadedCheckpoint:
    """A model ready for inference (eval mode, float32, CPU) and what is known about it."""

    model: nn.Module
    arch: str
    config: dict[str, Any]
    scale: int
    path: Path
    source_format: str  # e.g. "sr-deploy/1", "BasicSR params_ema", "ESRGAN old architecture"
    sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Map a bundled model name (`default`, `default-gan`) to its file; pass paths through."""
    text = str(name_or_path)
    if text in BUNDLED_MODELS:
        path = WEIGHTS_DIR / BUNDLED_MODELS[text]
        if not path.is_file() and text == "default-gan":
            raise InputError(
                "default-gan: the perceptual default is not shipped (no VGG19 weights were available "
                "to train it, see sr_deploy/weights/README.md); use default, or pass a GAN model with --model PATH"
            )
        if not path.is_file():
            raise InputError(
                f"{text}: the bundled model {path.name} is not in this installation of sr-deploy; "
                "pass a model file with --model PATH"
            )
        return path
    return Path(name_or_path)


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
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_model(path: str | Path) -> nn.Module:
    """The model in `path` (any supported layout), in eval mode, float32, on the CPU."""
    return load_checkpoint(path).model


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read a checkpoint of any supported layout and build its model.

    Raises `InputError` with one line naming the file for a missing, empty, truncated or
    non-torch file, an unrecognised key layout, or weights that do not fit the architecture.
    """
    path = resolve_model_path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, not a PyTorch checkpoint")
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive (PK..); pre-1.6 torch wrote a pickle (protocol 2+: 0x80).
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise InputError(f"{path}: not a PyTorch checkpoint (neither a torch zip archive nor a pickle)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError... here
        cause = first_line(exc)
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({_shorten(cause)})") from exc
    arch, config, state, source, metadata = _interpret(path, obj)
    model = _build(path, arch, config, state)
    scale = int(getattr(model, "scale", config.get("scale", 0)))
    return LoadedCheckpoint(model, arch, config, scale, path, source, file_sha256(path), metadata)


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _interpret(path: Path, obj: Any) -> tuple[str, dict, dict, str, dict]:
    if not isinstance(obj, Mapping):
        raise InputError(f"{path}: holds a {type(obj).__name__}, expected a dict of weights")
    if obj.get("format") == FORMAT:
        arch = obj.get("arch")
        if arch not in ARCHITECTURES:
            raise InputError(f"{path}: unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")
        return arch, dict(obj["config"]), dict(obj["state_dict"]), FORMAT, dict(obj.get("metadata") or {})
    for key in ("params_ema", "params"):
        if key in obj and isinstance(obj[key], Mapping):
            state = dict(obj[key])
            arch, config = _detect_basicsr(path, state)
            return arch, config, state, f"BasicSR/Real-ESRGAN {key}", {}
    state = dict(obj)
    if "model.0.weight" in state and any(k.startswith("model.1.sub.") for k in state):
        state = _convert_esrgan_old(state)
        arch, config = _detect_basicsr(path, state)
        return arch, config, state, "ESRGAN old architecture", {}
    if "block1.0.weight" in state:
        return "SRResNet", _detect_leftthomas(state), _convert_leftthomas(state), "leftthomas/SRGAN generator", {}
    if "conv_first.weight" in state or "body.0.weight" in state:
        arch, config = _detect_basicsr(path, state)
        return arch, config, state, "BasicSR state dict", {}
    raise InputError(
        f"{path}: unrecognised weights layout; expected an sr-deploy checkpoint, BasicSR/Real-ESRGAN "
        f"'params'/'params_ema', ESRGAN 'model.0.weight...' or leftthomas/SRGAN 'block1.0.weight...'; "
        f"first keys: {', '.join(list(map(str, state))[:4])}"
    )


def _detect_basicsr(path: Path, state: dict) -> tuple[str, dict]:
    if "body.0.rdb1.conv1.weight" in state:
        f = state["conv_first.weight"].shape[0]
        if state["conv_first.weight"].shape[1] != 3:
            raise InputError(f"{path}: RRDBNet with pixel-unshuffled input (BasicSR x1/x2) is not supported")
        num_blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.rdb1", k)))
        ups = sum(1 for k in state if re.fullmatch(r"conv_up\d+\.weight", k))
        return "RRDBNet", {
            "scale": 2**ups, "num_blocks": num_blocks, "num_features": f,
            "growth_channels": state["body.0.rdb1.conv1.weight"].shape[0],
        }
    if "upconv1.weight" in state and "body.0.conv1.weight" in state:
        f = state["conv_first.weight"].shape[0]
        num_blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.conv1", k)))
        r2 = state["upconv1.weight"].shape[0] // f
        scale = 4 if "upconv2.weight" in state else int(round(r2**0.5))
        return "MSRResNet", {"scale": scale, "num_blocks": num_blocks, "num_features": f}
    if "body.0.weight" in state and "conv_first.weight" not in state:
        convs = sorted(
            int(m.group(1)) for k in state if (m := re.fullmatch(r"body\.(\d+)\.weight", k)) and state[k].dim() == 4
        )
        num_feat = state["body.0.weight"].shape[0]
        last = state[f"body.{convs[-1]}.weight"].shape[0]
        scale = int(round((last / 3) ** 0.5))
        act = "prelu" if "body.1.weight" in state else "leakyrelu"
        return "SRVGGNetCompact", {"scale": scale, "num_feat": num_feat, "num_conv": len(convs) - 2, "act_type": act}
    raise InputError(
        f"{path}: BasicSR-style keys but no known architecture (expected RRDBNet 'body.0.rdb1...', "
        f"MSRResNet 'upconv1...' or SRVGGNetCompact 'body.N...'); first keys: {', '.join(list(state)[:4])}"
    )


def _convert_esrgan_old(state: dict) -> dict:
    """Rename the original ESRGAN repository's keys to BasicSR's RRDBNet names."""
    out = {}
    for k, v in state.items():
        if m := re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", k):
            out[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = v
            continue
        fixed = {
            "model.0": "conv_first", "model.3": "conv_up1", "model.6": "conv_up2",
            "model.8": "conv_hr", "model.10": "conv_last",
        }
        prefix, _, leaf = k.rpartition(".")
        if prefix in fixed:
            out[f"{fixed[prefix]}.{leaf}"] = v
        elif re.fullmatch(r"model\.1\.sub\.\d+", prefix):
            out[f"conv_body.{leaf}"] = v  # the trunk's last conv, model.1.sub.<num_blocks>
        else:
            out[k] = v  # left as is: the strict load below names it as unexpected
    return out


def _detect_leftthomas(state: dict) -> dict:
    blocks = sorted(int(m.group(1)) for k in state if (m := re.match(r"block(\d+)\.conv1\.weight", k)))
    ups = sum(1 for k in state if re.fullmatch(r"block\d+\.\d+\.conv\.weight", k))
    return {
        "scale": 2**ups, "num_blocks": len(blocks), "num_features": state["block1.0.weight"].shape[0],
        "batch_norm": True, "output_activation": "tanh01",
        "body_end_prelu": f"block{blocks[-1] + 1}.1.running_mean" not in state,
    }


def _convert_leftthomas(state: dict) -> dict:
    """leftthomas/SRGAN: block1 = head, block2..blockB+1 = residual blocks, block(B+2) =
    conv+BN after the trunk, block(B+3) = [UpsampleBLock x n, final conv]."""
    res_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"block(\d+)\.conv1\.", k))})
    end_id, up_id = res_ids[-1] + 1, res_ids[-1] + 2
    ups = sorted({int(m.group(1)) for k in state if (m := re.match(rf"block{up_id}\.(\d+)\.conv\.", k))})
    out = {}
    for k, v in state.items():
        name = k
        if m := re.fullmatch(r"block1\.(\d)\.(\w+)", k):
            name = f"head.{m.group(1)}.{m.group(2)}"
        elif (m := re.fullmatch(r"block(\d+)\.(conv1|bn1|conv2|bn2|prelu)\.(\w+)", k)) and int(m.group(1)) in res_ids:
            i = res_ids.index(int(m.group(1)))
            part = {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv2.0", "bn2": "conv2.1", "prelu": "act"}
            name = f"body.{i}.{part[m.group(2)]}.{m.group(3)}"
        elif m := re.fullmatch(rf"block{end_id}\.(\d)\.(\w+)", k):
            name = f"body_end.{m.group(1)}.{m.group(2)}"
        elif m := re.fullmatch(rf"block{up_id}\.(\d+)\.(conv|prelu)\.(\w+)", k):
            j = ups.index(int(m.group(1)))
            name = f"upsample.{3 * j + (0 if m.group(2) == 'conv' else 2)}.{m.group(3)}"
        elif m := re.fullmatch(rf"block{up_id}\.(\d+)\.(weight|bias)", k):
            name = f"tail.{m.group(2)}"
        out[name] = v
    return out


def _build(path: Path, arch: str, config: dict, state: dict) -> nn.Module:
    try:
        model = ARCHITECTURES[arch](**config)
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
