"""The backend contract every runtime (PyTorch, ONNX Runtime, TensorRT) follows.

A backend is created by a loader (`sr_deploy.backends.load`), activated once (model loaded,
session/engine built, memory allocated), then called on batches:

    backend(x) -> y
    x: np.ndarray or torch.Tensor, shape (N, 3, H, W), float32, RGB, values in [0, 1]
    y: the same kind as x (numpy in -> numpy out; a torch tensor -> a torch tensor on x's
       device), shape (N, 3, scale*H, scale*W), float32, RGB, NOT clamped: clamping to [0, 1]
       and rounding happen once, in post-processing.

Attributes: `name` ("torch", "onnxruntime", "tensorrt"), `scale` (int), `precision`
("fp32", "fp16", "bf16"), `device` ("cpu", "cuda", "cuda:N"), `max_shape` ((N, H, W) the
backend can take in one call, or None when unbounded). An input over `max_shape` is tiled by
the caller (`sr_deploy.tiling`), never rejected here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Backend(ABC):
    name: str = "backend"

    def __init__(self, scale: int, precision: str, device: str, max_shape: tuple[int, int, int] | None = None):
        self.scale = scale
        self.precision = precision
        self.device = device
        self.max_shape = max_shape

    @abstractmethod
    def __call__(self, x: Any) -> Any:
        """(N, 3, H, W) float32 RGB [0, 1] -> (N, 3, sH, sW) float32, same array kind as `x`."""

    def close(self) -> None:
        """Release sessions, engines and device memory. Safe to call twice."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(scale={self.scale}, precision={self.precision!r}, "
                f"device={self.device!r}, max_shape={self.max_shape})")
