"""Whether a JPEG file's compressed data is whole. libjpeg (behind OpenCV and Pillow) only warns
on stderr about corrupt entropy-coded data ("Corrupt JPEG data: premature end of data segment")
and hands back a picture with grey or smeared blocks, so a damaged photo would be upscaled as if
it were fine. simplejpeg decodes with libjpeg-turbo and raises on those warnings instead."""

from __future__ import annotations

import re

from .text import first_line

# libjpeg's warnings that mean the picture's data is damaged: JWRN_HIT_MARKER (premature end of
# data segment), JWRN_HUFF_BAD_CODE, JWRN_MUST_RESYNC (found marker instead of RST), JWRN_ARITH_BAD_CODE,
# JWRN_JPEG_EOF. JWRN_EXTRANEOUS_DATA ("N extraneous bytes before marker 0xXX") only before a restart
# marker, or before the end marker when many bytes are left over (the decoder stopped early, as in a
# damaged scan): cameras and editors pad a few bytes before EOI or between header segments, and
# those pictures are whole. The other warnings (an unknown JFIF revision, a bad ICC marker, a
# thumbnail's size) leave the pixels whole too.
_DAMAGE = re.compile(
    r"Corrupt JPEG data: (premature end of data segment|bad Huffman code|found marker|bad arithmetic code)"
    r"|Premature end of JPEG file"
)
_EXTRANEOUS = re.compile(r"Corrupt JPEG data: (\d+) extraneous bytes before marker 0x([0-9a-f]{2})")
_LEFT_OVER_BEFORE_EOI = 64  # bytes: more than any padding seen, less than a damaged scan leaves


def jpeg_damage(data: bytes) -> str | None:
    """libjpeg's warning about damaged data in the JPEG file `data` (all its bytes), or None when
    it decodes whole (or in a colour model simplejpeg does not convert, such as CMYK: OpenCV's
    decode is the one that counts, this only looks for damage). Not every flipped bit shows: most
    change one block and decode without a warning; a lost or cut piece of the data does. Costs a
    second decode, about 10 ms per Mpixel, next to seconds of upscaling."""
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True)
    except ValueError as exc:
        message = first_line(exc)
        extraneous = _EXTRANEOUS.match(message)
        if extraneous:
            count, marker = int(extraneous.group(1)), int(extraneous.group(2), 16)
            damaged = 0xD0 <= marker <= 0xD7 or (marker == 0xD9 and count > _LEFT_OVER_BEFORE_EOI)
            return message if damaged else None
        if _DAMAGE.match(message):
            return message
    return None
