"""The backend contract every runtime (PyTorch, ONNX Runtime, TensorRT) follows, as one template.

A backend is created by an opener in the backend table (`sr_deploy.backends.table`, used by
`sr_deploy.backends.load`), activated once (model loaded, session/engine built, memory allocated),
then called on batches:

    backend(x) -> y
    x: np.ndarray or torch.Tensor, shape (N, 3, H, W), float32, RGB, values in [0, 1]
    y: the same kind as x (numpy in -> numpy out; a torch tensor -> a torch tensor on x's
       device), shape (N, 3, scale*H, scale*W), float32, RGB, NOT clamped: clamping to [0, 1]
       and rounding happen once, in post-processing.

Attributes: `name` ("torch", "onnxruntime", "tensorrt"), `scale` (int), `precision`
("fp32", "fp16", "bf16"), `device` ("cpu", "cuda", "cuda:N"), `max_shape` ((N, H, W) the
backend can take in one call, or None when unbounded), `min_shape` ((N, H, W) it needs at least,
or None). An input over `max_shape` in H or W is tiled by the caller (`sr_deploy.tiling`), never
silently cut here.

Template (in the manner of Polygraphy's runners): `Backend.__call__` does everything that is
the same for every runtime, once:

1. check the input: a numpy array or torch tensor of shape (N, 3, H, W), N, H, W >= 1;
2. convert it to an array kind the runtime takes (`accepts`, see `input_kinds`);
3. fit it to the runtime's shape profile (`min_shape` / `max_shape`): batches over max N are
   split, inputs under the minimum are edge-padded (the batch with copies of its last image,
   H and W with the last row / column) and the output cropped back; H or W over the maximum is
   an InputError (`too_large_message`);
4. call `infer` on each fitted chunk;
5. convert the result back to the caller's kind, dtype float32, on the caller's device.

A runtime implements only `infer` (and `close`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..errors import InputError

NUMPY, TORCH = "numpy", "torch"
Shape3 = tuple[int, int, int]  # (N, H, W)


def check_batch_shape(shape: tuple[int, ...]) -> None:
    """Raise InputError unless `shape` is (N, 3, H, W) with N, H, W >= 1."""
    if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
        raise InputError(f"expected a batch of shape (N, 3, H, W) with RGB channels, got {tuple(shape)}")


def array_kind(x: Any) -> str:
    """``"numpy"`` or ``"torch"``; InputError for anything else."""
    if isinstance(x, np.ndarray):
        return NUMPY
    import torch

    if isinstance(x, torch.Tensor):
        return TORCH
    raise InputError(f"expected a numpy array or a torch tensor, got {type(x).__name__}")


def to_kind(x: Any, kind: str) -> Any:
    """`x` (numpy or torch) as `kind`: numpy -> a CPU tensor sharing memory; torch -> float32 numpy."""
    if kind == NUMPY:
        if isinstance(x, np.ndarray):
            return np.ascontiguousarray(x, dtype=np.float32)
        return x.detach().float().cpu().numpy()
    import torch

    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return x


def pad_batch(x: Any, n: int, h: int, w: int) -> Any:
    """Edge-replicate `x` (k, 3, hh, ww) up to (n, 3, h, w), numpy or torch; k <= n, hh <= h, ww <= w.
    The batch grows with copies of the last image, H and W with the last row and column."""
    k, _, hh, ww = (int(d) for d in x.shape)
    if (k, hh, ww) == (n, h, w):
        return x
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(np.pad(x, ((0, n - k), (0, 0), (0, h - hh), (0, w - ww)), mode="edge"))
    import torch

    dtype = x.dtype
    y = x.float()  # replicate-padding is not implemented for every reduced dtype on every device
    if (hh, ww) != (h, w):
        y = torch.nn.functional.pad(y, (0, w - ww, 0, h - hh), mode="replicate")
    if k < n:
        y = torch.cat([y, y[-1:].expand(n - k, -1, -1, -1)])
    return y.to(dtype).contiguous()


def _concat(parts: list[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.ascontiguousarray(np.concatenate(parts))
    import torch

    return torch.cat(parts)


class Backend:
    """The template: subclasses set `name`, call `__init__` with their facts, implement `infer`.

    Wrappers that delegate to another backend (a precision fallback, a recording test double)
    override `__call__` instead and leave the fitting to the backend they wrap."""

    name: ClassVar[str] = "backend"

    def __init__(
        self, scale: int, precision: str, device: str, max_shape: Shape3 | None = None, min_shape: Shape3 | None = None
    ) -> None:
        self.scale = scale
        self.precision = precision
        self.precision_reason = ""  # one line: why this precision (``auto`` resolved by the opener)
        self.device = device
        self.max_shape = max_shape
        self.min_shape = min_shape
        # activation values the model keeps alive per output pixel (the automatic tile size's
        # memory model), from the checkpoint's detection or the ONNX / engine metadata; None: unknown
        self.live_values_per_hr_pixel: int | None = None

    # ------------------------------------------------------------------ what a runtime provides

    def infer(self, x: Any) -> Any:
        """Run one batch that fits the profile: `x` (n, 3, h, w) of a kind in `input_kinds(x)`,
        float32 for numpy. Returns (n, 3, s*h, s*w) numpy or torch (any float dtype, any device):
        the template converts it back."""
        raise NotImplementedError(f"{type(self).__name__} implements neither infer nor __call__")

    def input_kinds(self, kind: str) -> tuple[str, ...]:
        """The array kinds `infer` takes for an input of `kind`, preferred first; default numpy only.
        A runtime that can use torch tensors where they are (GPU memory) says so here."""
        return (NUMPY,)

    def too_large_message(self, h: int, w: int) -> str:
        """The InputError text for an input whose H or W exceeds `max_shape`."""
        _, max_h, max_w = self.max_shape  # type: ignore[misc]
        return f"input {h}x{w} is larger than {self.name}'s maximum {max_h}x{max_w}; tile it (sr_deploy.tiling)"

    def close(self) -> None:
        """Release sessions, engines and device memory. Safe to call twice."""
        return None

    # ------------------------------------------------------------------ the template

    def __call__(self, x: Any) -> Any:
        """(N, 3, H, W) float32 RGB [0, 1] -> (N, 3, sH, sW) float32, same array kind as `x`
        (numpy -> numpy; a torch tensor -> a torch tensor on x's device)."""
        kind = array_kind(x)
        check_batch_shape(tuple(int(d) for d in x.shape))
        kinds = self.input_kinds(kind)
        native = to_kind(x, kind if kind in kinds else kinds[0])
        y = self._run_fitted(native)
        if kind == NUMPY:
            return to_kind(y, NUMPY)
        return to_kind(y, TORCH).float().to(x.device)

    def _run_fitted(self, x: Any) -> Any:
        """`infer` on `x` fitted to (`min_shape`, `max_shape`): split, pad, crop back."""
        if self.max_shape is None and self.min_shape is None:
            return self.infer(x)
        n, _, h, w = (int(d) for d in x.shape)
        max_n, max_h, max_w = self.max_shape or (n, h, w)
        min_n, min_h, min_w = self.min_shape or (1, 1, 1)
        if h > max_h or w > max_w:
            raise InputError(self.too_large_message(h, w))
        ph, pw = max(min_h, h), max(min_w, w)
        s = self.scale
        outs = []
        for start in range(0, n, max_n):
            part = x[start : start + max_n]
            k = int(part.shape[0])
            y = self.infer(pad_batch(part, max(min_n, k), ph, pw))
            outs.append(y[:k, :, : h * s, : w * s])
        return _concat(outs)

    # ------------------------------------------------------------------ conveniences

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(scale={self.scale}, precision={self.precision!r}, "
            f"device={self.device!r}, max_shape={self.max_shape})"
        )
