"""Generator architectures and checkpoint I/O."""

from .checkpoint import (
    ARCHITECTURES,
    LoadedCheckpoint,
    count_parameters,
    fold_batch_norm,
    load_checkpoint,
    load_model,
    resolve_model_path,
    save_checkpoint,
)
from .common import count_flops_per_lr_pixel
from .rrdbnet import RRDBNet
from .srresnet import MSRResNet, SRResNet
from .srvgg import SRVGGNetCompact

__all__ = [
    "ARCHITECTURES", "LoadedCheckpoint", "MSRResNet", "RRDBNet", "SRResNet", "SRVGGNetCompact",
    "count_flops_per_lr_pixel", "count_parameters", "fold_batch_norm", "load_checkpoint",
    "load_model", "resolve_model_path", "save_checkpoint",
]
