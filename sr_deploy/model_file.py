"""What a model file is, checked without building a backend: for jobs that hand the file to other
processes (Ray actors, a Triton server) and must refuse a bad one first, with its own message."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError, first_line


def onnx_file_scale(path: str | Path) -> int:
    """The `sr_deploy.scale` an sr-deploy export records in the ONNX file's metadata; InputError
    when the file is not ONNX or has none (weights are not read)."""
    from .export import read_onnx_metadata

    try:
        meta = read_onnx_metadata(path)
    except Exception as exc:  # onnx's protobuf DecodeError and friends: not an ONNX file
        raise InputError(f"{path}: not a readable ONNX file ({first_line(exc)})") from None
    try:
        return int(meta["sr_deploy.scale"])
    except (KeyError, ValueError):
        raise InputError(f"{path}: no sr_deploy.scale in the ONNX metadata; export it with sr-deploy export") from None


def model_file_scale(model: str | Path) -> tuple[Path, int]:
    """(model file, scale) of anything `sr_deploy.backends.load` takes by name: a checkpoint or a
    bundled name (read with `load_checkpoint`, on the CPU), an .onnx file (its `sr_deploy.scale`
    metadata) or a TensorRT engine (its sidecar JSON). InputError names the file and the cause."""
    from .models import resolve_model_path

    path = resolve_model_path(model)
    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return path, onnx_file_scale(path)
    if suffix in (".engine", ".plan"):
        from .engine import read_sidecar

        sidecar = read_sidecar(path)
        if sidecar is None or not sidecar.scale:
            raise InputError(f"{path}: no sidecar JSON with the engine's scale beside it ({path.name}.json)")
        return path, int(sidecar.scale)
    from .models import load_checkpoint

    return path, int(load_checkpoint(path).scale)
