"""Helpers shared by the upscale tests: a tiny x4 checkpoint and a backend for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sr_deploy.backends.base import Backend
from sr_deploy.models import SRResNet, load_model, save_checkpoint

TINY_CONFIG = {"scale": 4, "num_blocks": 1, "num_features": 8}


def save_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A 1-block, 8-feature SRResNet x4 with random weights, saved in our format."""
    torch.manual_seed(seed)
    model = SRResNet(**TINY_CONFIG).eval()
    return save_checkpoint(path, model, TINY_CONFIG)


class ModuleBackend(Backend):
    """A minimal CPU float32 backend following base.Backend (numpy in, numpy out)."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, max_shape=None):
        super().__init__(scale=int(model.scale), precision="fp32", device="cpu", max_shape=max_shape)
        self.model = model.eval()
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, x):
        self.calls.append(tuple(x.shape))
        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def tiny_backend(path: Path, **kwargs) -> ModuleBackend:
    return ModuleBackend(load_model(path), **kwargs)
