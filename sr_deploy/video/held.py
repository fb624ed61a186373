"""Held and duplicate frames: a decoded frame equal (or, with a threshold, close) to the frame whose
model output was last computed reuses that output instead of running the model again.

Animation is drawn on twos and threes (each drawing shown for 2 or 3 frames), screen recordings and
slides hold a picture for seconds, and a frame-rate conversion duplicates frames: the model would
compute the same output again. `HeldFrames` decides, frame by frame in decode order, and `HeldBatcher`
forms the model batches from the frames that need the model only, so a batch is always full of new
work; each timestamp carries the index of the output it is written with.

The comparison is with the *reference*: the last frame that went through the model, not merely the
previous frame. A slow fade where each frame is within the threshold of the one before is then still
recomputed once it has drifted past the threshold from the frame whose output is being reused.

- exact (the default, `EXACT`): the decoded RGB arrays are equal, byte for byte. Such a frame's output
  would be the model output of the same input: the video is the same as without reuse.
- `threshold_db`: the PSNR of the frame against the reference (peak 255, or 65535 for 16-bit RGB) is
  at least that many dB; an exact duplicate has infinite PSNR. The output then differs from a run
  without reuse by at most what the input did.
- None (`--dedup-threshold off`): every frame goes through the model.

State lives for one `upscale_video` call: a resumed run, a new segment file of a later run and each
Ray piece starts with no reference, so the first frame it decodes always goes through the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

EXACT = math.inf  # the threshold meaning "exact duplicates only" (their PSNR is infinite)
# A run of held frames is handed on after this many timestamps even when no new frame has come, so
# the writer and the progress bar keep moving through a long still.
MAX_HELD_STAMPS = 256


def parse_threshold(text: str | float | None) -> float | None:
    """``exact`` / ``inf`` -> EXACT, ``off`` / ``none`` / None -> None, a number of dB (> 0) -> that
    number; InputError otherwise."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        word = text.strip().lower()
        if word in ("off", "none", "no"):
            return None
        if word in ("exact", "inf"):
            return EXACT
        try:
            value = float(word)
        except ValueError:
            raise InputError(f"--dedup-threshold must be a number of dB > 0, 'exact' or 'off', got {text!r}") from None
    check_threshold(value)
    return value


def check_threshold(threshold_db: float | None) -> None:
    """InputError for a threshold that is not None, EXACT or a number of dB > 0."""
    if threshold_db is not None and (math.isnan(threshold_db) or threshold_db <= 0):
        raise InputError(f"--dedup-threshold must be a number of dB > 0, 'exact' or 'off', got {threshold_db}")


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two frames of the same shape and dtype (uint8 or uint16 RGB) over all channels; inf
    when equal."""
    peak = 255.0 if a.dtype == np.uint8 else 65535.0
    diff = np.subtract(a, b, dtype=np.float32)
    mse = float(np.dot(diff.ravel(), diff.ravel())) / diff.size
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


class HeldFrames:
    """Whether each decoded frame, in order, is a held copy of the reference (see the module)."""

    def __init__(self, threshold_db: float | None = EXACT) -> None:
        self.threshold_db = threshold_db
        self.reference: np.ndarray | None = None
        self.reused = 0

    def is_held(self, frame: np.ndarray) -> bool:
        """True: reuse the reference's output. False: `frame` goes through the model and becomes
        the reference."""
        if self.threshold_db is None:
            return False
        ref = self.reference
        if ref is not None and ref.shape == frame.shape and ref.dtype == frame.dtype:
            if np.array_equal(ref, frame) or (self.threshold_db != EXACT and psnr_db(ref, frame) >= self.threshold_db):
                self.reused += 1
                return True
        self.reference = frame
        return False


@dataclass
class HeldBatch:
    """A batch for the model: `frames` (those that need it, possibly none), and per timestamp in
    `stamps` the index in `frames` of the output it is written with (-1: the last output of an
    earlier batch)."""

    stamps: list[int] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)


class HeldBatcher:
    """Collects decoded frames into `HeldBatch`es of `batch_size` frames for the model, held frames
    riding along as timestamps only."""

    def __init__(self, batch_size: int, threshold_db: float | None = EXACT) -> None:
        self.batch_size = batch_size
        self.held = HeldFrames(threshold_db)
        self.pending = HeldBatch()

    @property
    def reused(self) -> int:
        return self.held.reused

    def add(self, pts: int, frame: np.ndarray) -> HeldBatch | None:
        """Add one frame; the batch to hand on when it is full (else None)."""
        batch = self.pending
        if not self.held.is_held(frame):
            batch.frames.append(frame)
        batch.stamps.append(pts)
        batch.slots.append(len(batch.frames) - 1)  # the newest model frame: this one or the one it holds
        if len(batch.frames) == self.batch_size or len(batch.stamps) >= MAX_HELD_STAMPS:
            return self.flush()
        return None

    def flush(self) -> HeldBatch | None:
        """The batch collected so far (None when empty), and a new one started."""
        batch, self.pending = self.pending, HeldBatch()
        return batch if batch.stamps else None


class HeldOutputs:
    """The writer's side: the output for each timestamp of a batch, carrying the last computed
    output over to the next batch."""

    def __init__(self) -> None:
        self.last: object | None = None

    def expand(self, slots: list[int], outputs: list) -> list:
        """Per slot, `outputs[slot]`, or the last output of an earlier batch for -1."""
        result = []
        for slot in slots:
            if slot >= 0:
                result.append(outputs[slot])
            elif self.last is None:  # cannot happen: the first frame of a run always goes through the model
                raise RuntimeError("a held frame before any computed frame")
            else:
                result.append(self.last)
        if outputs:
            self.last = outputs[-1]
        return result
