"""Generator architectures, the model registry (`registry.py`) and checkpoint I/O."""

from .checkpoint import (
    ARCHITECTURES,
    LoadedCheckpoint,
    count_parameters,
    existing_model_path,
    fold_batch_norm,
    load_checkpoint,
    load_model,
    resolve_model_path,
    save_checkpoint,
)
from .common import count_flops_per_lr_pixel
from .registry import live_values_per_hr_pixel, native_specs
from .rrdbnet import RRDBNet
from .spec import ArchSpec, Detection, Layout
from .srresnet import MSRResNet, SRResNet
from .srvgg import SRVGGNetCompact

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "Detection",
    "Layout",
    "LoadedCheckpoint",
    "MSRResNet",
    "RRDBNet",
    "SRResNet",
    "SRVGGNetCompact",
    "count_flops_per_lr_pixel",
    "count_parameters",
    "fold_batch_norm",
    "load_checkpoint",
    "live_values_per_hr_pixel",
    "load_model",
    "native_specs",
    "existing_model_path",
    "resolve_model_path",
    "save_checkpoint",
]
