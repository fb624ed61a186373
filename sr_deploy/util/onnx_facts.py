"""Facts read from an ONNX file or `onnx.ModelProto`: its precision, metadata and input dims.

`onnx` is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from .text import first_line

# The activation values per output pixel the model keeps alive (tiling's memory model), as exported.
LIVE_VALUES_KEY = "sr_deploy.live_values_per_hr_pixel"

__all__ = [
    "LIVE_VALUES_KEY",
    "graph_precision",
    "is_fp16_graph",
    "load_onnx_file",
    "metadata",
    "read_onnx_metadata",
    "static_input_dims",
]


def load_onnx_file(path: str | Path, load_weights: bool = True) -> Any:
    """`onnx.load` of `path` (graph and metadata only when `load_weights` is False); InputError
    naming the file when it is missing or not a readable ONNX file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {'a folder, not an ONNX file' if path.is_dir() else 'no such ONNX file'}")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, not an ONNX model")
    try:
        return onnx.load(str(path), load_external_data=load_weights)
    except Exception as exc:
        raise InputError(f"{path}: not a readable ONNX file ({first_line(exc)})") from exc


def _as_model(model_or_path: Any) -> Any:
    if isinstance(model_or_path, (str, Path)):
        return load_onnx_file(model_or_path, load_weights=False)
    return model_or_path


def is_fp16_graph(model_or_path: Any) -> bool:
    """True when the graph stores float16 weights (initializers): what `sr-deploy export --fp16`
    and onnxconverter-common write. A float32 graph with fp16 casts only is not fp16 here."""
    from onnx import TensorProto

    model = _as_model(model_or_path)
    return any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)


def graph_precision(model_or_path: Any) -> str:
    """``"fp16"`` for an fp16 graph (`is_fp16_graph`), else ``"fp32"``."""
    return "fp16" if is_fp16_graph(model_or_path) else "fp32"


def metadata(model_or_path: Any) -> dict[str, str]:
    """The graph's `metadata_props` as a dict (``sr_deploy.scale``, ``sr_deploy.arch``...)."""
    return {p.key: p.value for p in _as_model(model_or_path).metadata_props}


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The file's `metadata_props` as a dict (weights are not read); InputError naming the file
    when it is missing or unreadable."""
    return metadata(load_onnx_file(path, load_weights=False))


def static_input_dims(model_or_path: Any) -> list[int | None]:
    """The first input's dims: an int where fixed, None where symbolic or unknown."""
    dims = _as_model(model_or_path).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
