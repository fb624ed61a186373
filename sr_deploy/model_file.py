"""The one table of model-file kinds: what a model file is, read without building a backend.

Each `ModelFileKind` row says which suffixes a kind has, how its scale is read (for jobs that hand
the file to other processes, Ray actors or a Triton server, and must refuse a bad one first, with
its own message), and which sidecar file travels with it. The backend table
(`sr_deploy.backends.table`) names the kinds each backend opens; the Ray driver and the Triton
repository writer ship `companion_files`. A new backend for an existing kind is one module and one
row there; a new kind of file is one row here.

Imports nothing heavy: the readers import what they need when called.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError


def _checkpoint_scale(path: Path) -> int:
    from .models import load_checkpoint

    return int(load_checkpoint(path).scale)


def _onnx_scale(path: Path) -> int:
    """The `sr_deploy.scale` an sr-deploy export records in the ONNX metadata (weights not read)."""
    from .util.onnx_facts import read_onnx_metadata

    meta = read_onnx_metadata(path)
    try:
        return int(meta["sr_deploy.scale"])
    except (KeyError, ValueError):
        raise InputError(f"{path}: no sr_deploy.scale in the ONNX metadata; export it with sr-deploy export") from None


def _engine_scale(path: Path) -> int:
    from .engine import read_sidecar

    sidecar = read_sidecar(path)
    if sidecar is None or not sidecar.scale:
        raise InputError(f"{path}: no sidecar JSON with the engine's scale beside it ({path.name}.json)")
    return int(sidecar.scale)


@dataclass(frozen=True)
class ModelFileKind:
    """One row: `name` (what the backend table refers to), `suffixes` (lower case, with the dot),
    `read_scale` (path -> scale; InputError naming the file), `sidecar` (the suffix appended to
    the file's name for a file that travels with it, e.g. an engine's ``.json``; "" for none)."""

    name: str
    suffixes: tuple[str, ...]
    read_scale: Callable[[Path], int]
    sidecar: str = ""


MODEL_FILE_KINDS: tuple[ModelFileKind, ...] = (
    ModelFileKind("checkpoint", (".pt", ".pth", ".ckpt", ".safetensors"), _checkpoint_scale),
    ModelFileKind("onnx", (".onnx",), _onnx_scale),
    ModelFileKind("engine", (".engine", ".plan"), _engine_scale, sidecar=".json"),
)


def file_kind(name: str) -> ModelFileKind:
    """The row called `name` (KeyError for a kind that is not in the table: a programming error)."""
    for kind in MODEL_FILE_KINDS:
        if kind.name == name:
            return kind
    raise KeyError(name)


def kind_of_file(path: str | Path) -> ModelFileKind | None:
    """The row whose suffixes hold `path`'s (case-insensitive), or None."""
    suffix = Path(path).suffix.lower()
    return next((kind for kind in MODEL_FILE_KINDS if suffix in kind.suffixes), None)


def onnx_file_scale(path: str | Path) -> int:
    """The `sr_deploy.scale` of an sr-deploy ONNX export; InputError when the file is not ONNX or
    has none."""
    return _onnx_scale(Path(path))


def model_file_scale(model: str | Path) -> tuple[Path, int]:
    """(model file, scale) of anything `sr_deploy.backends.load` takes by name: a checkpoint or a
    bundled name, an .onnx file or a TensorRT engine (its kind's `read_scale`). InputError names
    the file and the cause."""
    from .models import existing_model_path

    path = existing_model_path(model)
    kind = kind_of_file(path) or file_kind("checkpoint")  # load_checkpoint says what else it is not
    return path, kind.read_scale(path)


def companion_files(path: Path) -> list[Path]:
    """`path` and the sidecar of its kind, when there is one beside it: what travels with it."""
    kind = kind_of_file(path)
    sidecar = path.with_name(path.name + kind.sidecar) if kind is not None and kind.sidecar else None
    return [path] + ([sidecar] if sidecar is not None and sidecar.is_file() else [])


def model_files(model: str | Path) -> tuple[str, dict[str, bytes]]:
    """(file name, {name: bytes} of the file and its sidecar), to ship to other processes. The
    file is checked first (`model_file_scale`), so that a bad one is one line, not a remote death."""
    path, _ = model_file_scale(model)
    return path.name, {p.name: p.read_bytes() for p in companion_files(path)}


def content_id(name: str, sha256: str) -> str:
    """How a job names its model: the file's name and the first 16 hex digits of the sha256 of its
    bytes (``default.pt:1a2b3c4d5e6f7a8b``); outputs record it, resume keys hold it, and a re-run
    compares its digits (`util.text.same_model`)."""
    return f"{name}:{sha256[:16]}"


def model_files_id(name: str, files: dict[str, bytes]) -> str:
    """Names the shipped model by content (a resumed job never mixes two models' outputs)."""
    return content_id(name, hashlib.sha256(files[name]).hexdigest())
