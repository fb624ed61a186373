"""The plumbing that makes a run stoppable and resumable: global RNG state as saveable values,
the EMA copy of the generator, a SIGINT / SIGTERM flag checked between iterations, and atomic
writes of the run's files (through `sr_deploy.util.files`, so a killed run never leaves a
half-written state or config behind).
"""

from __future__ import annotations

import copy
import random
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sr_deploy.util.files import atomic_write, atomic_write_text
from sr_deploy.util.text import first_line


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save(obj)` to `path` under a temporary name, renamed over `path` when complete. Into
    an open file, not by name: torch names the archive inside after the file it is given, and the
    temporary name is unique per write, so the same state would give other bytes every time."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def write_text_atomically(path: Path, text: str) -> None:
    """`text` (UTF-8) to `path`, atomically."""
    atomic_write_text(path, text)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch global RNG states as tensors and plain values (loadable with
    ``torch.load(weights_only=True)``)."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (after a ``torch.load`` round trip)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EMA:
    """Exponential moving average of a model's parameters (buffers copied): the averaged copy
    is what validation and the saved checkpoints use when `train.ema_decay` is set."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - self.decay)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


class StopOnSignal:
    """Turns SIGINT / SIGTERM into a flag checked between iterations, so the loop saves its
    state and returns instead of dying mid-write. Handlers are restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:  # a second Ctrl-C: give up on saving
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def slim_state(path: str | Path) -> tuple[int, int]:
    """Shrink a GAN run's state file so that it can be committed beside its run: the
    discriminator's weights are stored as float16 and its Adam moments dropped (a `--resume` then
    starts them afresh, which the trainer accepts); the generator, its EMA, its optimiser, the
    schedules and the RNG states stay exact. Rewritten atomically; returns (bytes before, after).

        python -m train.state RUN_DIR/state_latest.pt
    """
    path = Path(path)
    before = path.stat().st_size
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not {"iteration", "generator", "opt_g"} <= state.keys():
        raise ValueError("no iteration, generator and optimiser in it (a model file?)")
    if state.get("discriminator") is not None:
        state["discriminator"] = {
            k: v.half() if v.is_floating_point() else v for k, v in state["discriminator"].items()
        }
        state["opt_d"] = None
    atomic_torch_save(state, path)
    return before, path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m train.state", description=slim_state.__doc__.split("\n\n")[0])
    parser.add_argument("state", type=Path, help="a run's state_latest.pt")
    args = parser.parse_args(argv)
    if not args.state.is_file():
        print(f"error: {args.state}: no such file", file=sys.stderr)
        return 2
    try:
        old, new = slim_state(args.state)
    except Exception as exc:  # torch.load raises many kinds for a damaged or foreign file
        print(
            f"error: {args.state}: not a training state "
            f"({type(exc).__name__}: {first_line(exc, limit=160) if str(exc).strip() else 'unreadable'})",
            file=sys.stderr,
        )
        return 2
    print(f"{args.state}: {old / 1e6:.1f} MB -> {new / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
