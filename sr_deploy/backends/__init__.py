"""Inference backends with one contract (see `base.py`)."""

from .base import Backend

__all__ = ["Backend"]
