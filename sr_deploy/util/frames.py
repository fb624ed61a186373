"""How many pictures an image file holds: animated WebP and PNG (APNG), multi-page TIFF. OpenCV
reads the first and says nothing of the others, so a run would report "done" over an animation
it cut to one frame. Plain functions on the file's bytes."""

from __future__ import annotations

import io
import struct

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def webp_frames(data: bytes) -> int:
    """Frames of an animated WebP (its ANMF chunks; 0 for a still WebP or any other format).
    `data`: the file's bytes (the first megabyte is enough to see that it is animated)."""
    if len(data) < 21 or data[:4] != b"RIFF" or data[8:12] != b"WEBP" or data[12:16] != b"VP8X":
        return 0
    if not data[20] & 0x02:  # VP8X flags: bit 1 = animation
        return 0
    frames, offset = 0, 12
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset + 4 : offset + 8], "little")
        frames += data[offset : offset + 4] == b"ANMF"
        offset += 8 + size + (size & 1)
    return max(frames, 2)


def png_frames(data: bytes) -> int:
    """Frames of an animated PNG (its acTL chunk, which must come before the image data; 0 for a
    still PNG or any other format)."""
    if not data.startswith(_PNG_SIGNATURE):
        return 0
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind == b"acTL" and offset + 12 <= len(data):
            return max(int.from_bytes(data[offset + 8 : offset + 12], "big"), 2)
        if kind == b"IDAT":
            return 0
        offset += 12 + size
    return 0


def tiff_pages(data: bytes) -> int:
    """Pages of a multi-page TIFF (0 for a single page or any other format), read by Pillow from
    the directories alone (no page is decoded). A reduced-resolution copy (a scanner's or an
    editor's thumbnail: NewSubfileType bit 0) is not a page."""
    if data[:4] not in (b"II*\0", b"MM\0*"):
        return 0
    from PIL import Image

    pages = 0
    try:
        with Image.open(io.BytesIO(data)) as image:
            for index in range(int(getattr(image, "n_frames", 1))):
                image.seek(index)
                pages += not int(image.tag_v2.get(254, 0)) & 1
    except Exception:  # not readable by Pillow: OpenCV's decode says what the file is
        return 0
    return pages if pages > 1 else 0
