"""The bottom layer: small helpers every other module may use, that use nothing of sr-deploy but
`sr_deploy.errors` (import-linter keeps it so, see pyproject.toml).

- `files`: atomic writes (temporary name beside the target, then rename), file sha256, output checks.
- `text`: the first line of an error, for one-line messages.
- `shapes`: "NxCxHxW"-style text -> integers, with one-line errors naming the option.
- `onnx_facts`: facts read from an ONNX file (loaded without weights where possible): precision,
  metadata, static input dims.
- `log`: the one progress-message type (`Progress`) and the package logger.
"""

from .files import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    check_local_path,
    check_output_path,
    file_sha256,
    partial_path,
)
from .log import LOGGER, Progress, progress_to, quiet, silent, to_stderr
from .shapes import parse_dims
from .text import first_line

__all__ = [
    "LOGGER",
    "Progress",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_local_path",
    "check_output_path",
    "file_sha256",
    "first_line",
    "parse_dims",
    "partial_path",
    "progress_to",
    "quiet",
    "silent",
    "to_stderr",
]
