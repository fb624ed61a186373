"""`Fp32Fallback`: a backend wrapper that never lets NaN/Inf through.

Every batch's output is checked (one reduction). With a reduced-precision backend, a batch with
NaN/Inf is re-run with a float32 twin, built by `make_fp32` the first time it is needed; output
that is still not finite (an fp32 backend, or the fp32 re-run) raises `NonFiniteOutput`: a
checkpoint with NaN weights must fail, never write black pictures.

The wrapper knows nothing about files: the job that calls it names the file in its errors, and
reads `reruns` to say which files were re-run in fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import NonFiniteOutput, SRDeployError
from .base import Backend


class Fp32Fallback(Backend):
    """`primary`, its output checked for NaN/Inf on every call; `reruns` counts the batches that
    were re-run in fp32."""

    def __init__(self, primary: Backend, make_fp32: Callable[[], Backend] | None):
        super().__init__(primary.scale, primary.precision, primary.device, primary.max_shape)
        self.name = primary.name
        self.primary = primary
        self.precision_reason = primary.precision_reason
        self.live_values_per_hr_pixel = primary.live_values_per_hr_pixel
        self.make_fp32 = make_fp32
        self.fp32: Backend | None = None
        self.reruns = 0

    @staticmethod
    def _non_finite(what: str) -> NonFiniteOutput:
        return NonFiniteOutput(
            f"the model's output has NaN/Inf values{what} (a checkpoint with non-finite weights, "
            "or values beyond float range)"
        )

    def __call__(self, x: Any) -> Any:
        y = self.primary(x)
        if np.isfinite(float(y.sum())):  # one reduction: any NaN/Inf makes the sum non-finite
            return y
        if self.make_fp32 is None:
            raise self._non_finite("")
        if self.fp32 is None:
            try:
                self.fp32 = self.make_fp32()
            except SRDeployError as exc:
                raise SRDeployError(
                    f"{self.precision} output has NaN/Inf and no fp32 backend could be loaded to redo it ({exc})"
                ) from exc
        self.reruns += 1
        y = self.fp32(x)
        if not np.isfinite(float(y.sum())):
            raise self._non_finite(" even after the fp32 re-run")
        return y

    def close(self) -> None:
        self.primary.close()
        if self.fp32 is not None:
            self.fp32.close()
