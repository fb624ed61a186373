"""Byte-for-byte comparison of output trees that says what differs in a few lines (names, sizes,
PNG text fields, the largest pixel difference) instead of dumping megabytes of PNG bytes."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np


def _describe(name: str, got: bytes, want: bytes) -> str:
    line = f"{name}: {len(got)} bytes (sha256 {hashlib.sha256(got).hexdigest()[:12]}) vs {len(want)} expected"
    images = [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) for data in (got, want)]
    if all(image is not None for image in images):
        a, b = images
        if a.shape != b.shape:
            return f"{line}; shape {a.shape} vs {b.shape}"
        diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
        line += f"; pixels: {int((diff > 0).sum())} values differ, max {int(diff.max())}"
    texts = [_png_text(data) for data in (got, want)]
    if texts[0] != texts[1]:
        line += f"; PNG text {texts[0]} vs {texts[1]}"
    return line


def _png_text(data: bytes) -> dict[str, str]:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return dict(getattr(image, "text", {}) or {})
    except Exception:  # not an image Pillow reads: no text to compare
        return {}


def assert_same_files(got: dict[str, bytes], want: dict[str, bytes]) -> None:
    """`got` == `want` (file name -> bytes), or an AssertionError naming each difference."""
    problems = [f"missing: {name}" for name in sorted(set(want) - set(got))]
    problems += [f"unexpected: {name} ({len(got[name])} bytes)" for name in sorted(set(got) - set(want))]
    problems += [_describe(n, got[n], want[n]) for n in sorted(set(got) & set(want)) if got[n] != want[n]]
    assert not problems, "outputs differ from the reference:\n" + "\n".join(problems)
