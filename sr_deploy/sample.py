"""A small test picture the package draws itself, so the quick start needs no download.

`make_sample_image()` returns an (H, W, 3) uint8 RGB image with what shows a super-resolution
model at work: text, thin lines at several angles, a zone plate (fine rings), smooth gradients
and hard colour edges. It is drawn at 4x the size and downscaled with area averaging, so the
result looks like a real low-resolution photo of sharp content rather than aliased pixels.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .imaging import write_image


def make_sample_image(height: int = 160, width: int = 240) -> np.ndarray:
    """An (height, width, 3) uint8 RGB test picture; deterministic."""
    h, w = height * 4, width * 4
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Background: a diagonal colour gradient.
    img = np.stack([xx / w, yy / h, 1.0 - (xx + yy) / (w + h)], axis=-1) * 0.6 + 0.2
    # Zone plate on the right third: rings whose frequency rises with the radius.
    cx, cy, r = w * 0.83, h * 0.55, min(w, h) * 0.3
    rr2 = (xx - cx) ** 2 + (yy - cy) ** 2
    ring = 0.5 + 0.5 * np.cos(np.pi * rr2 / (r * 9.0))
    inside = rr2 < r * r
    img[inside] = ring[inside, None]
    img = (img * 255).astype(np.uint8)
    # Text, lines and shapes on the left (drawn in RGB order).
    cv2.putText(
        img, "sr-deploy", (int(w * 0.04), int(h * 0.22)), cv2.FONT_HERSHEY_DUPLEX, 3.2, (20, 20, 30), 7, cv2.LINE_AA
    )
    cv2.putText(
        img,
        "x4 super-resolution 0123456789",
        (int(w * 0.04), int(h * 0.34)),
        cv2.FONT_HERSHEY_SIMPLEX,
        1.05,
        (250, 250, 250),
        3,
        cv2.LINE_AA,
    )
    for i, angle in enumerate(range(0, 90, 10)):
        a = np.deg2rad(angle)
        x0, y0 = int(w * 0.05), int(h * 0.95)
        x1, y1 = int(x0 + np.cos(a) * w * 0.5), int(y0 - np.sin(a) * h * 0.5)
        cv2.line(img, (x0, y0), (x1, y1), (200, 30 + 20 * i, 40), 3, cv2.LINE_AA)
    cv2.rectangle(img, (int(w * 0.42), int(h * 0.45)), (int(w * 0.58), int(h * 0.7)), (30, 120, 220), -1)
    cv2.circle(img, (int(w * 0.5), int(h * 0.57)), int(h * 0.07), (250, 210, 40), -1, cv2.LINE_AA)
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def write_sample_image(path: str | Path, height: int = 160, width: int = 240) -> Path:
    """Write `make_sample_image()` to `path` (any image extension; atomic). Returns the path."""
    path = Path(path)
    write_image(path, make_sample_image(height, width))
    return path
