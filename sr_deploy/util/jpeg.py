"""Whether a JPEG file's compressed data is whole. libjpeg (behind OpenCV and Pillow) only warns
on stderr about corrupt entropy-coded data ("Corrupt JPEG data: premature end of data segment")
and hands back a picture with grey or smeared blocks, so a damaged photo would be upscaled as if
it were fine. simplejpeg decodes with libjpeg-turbo and raises on those warnings instead."""

from __future__ import annotations

from .text import first_line

# libjpeg's warnings that mean the picture's data is damaged (JWRN_HIT_MARKER, JWRN_HUFF_BAD_CODE,
# JWRN_EXTRANEOUS_DATA, JWRN_MUST_RESYNC, JWRN_ARITH_BAD_CODE, JWRN_JPEG_EOF); its other warnings
# (an unknown JFIF revision, a bad ICC marker, a thumbnail's size) leave the pixels whole.
_DAMAGE = ("Corrupt JPEG data", "Premature end of JPEG file")
_HARMLESS = ("Corrupt JPEG data: bad ICC marker",)


def jpeg_damage(data: bytes) -> str | None:
    """libjpeg's warning about damaged data in the JPEG file `data` (all its bytes), or None when
    it decodes whole (or in a colour model simplejpeg does not convert, such as CMYK: OpenCV's
    decode is the one that counts, this only looks for damage). Costs a second decode, about
    10 ms per Mpixel, next to seconds of upscaling."""
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True)
    except ValueError as exc:
        message = first_line(exc)
        if message.startswith(_DAMAGE) and not message.startswith(_HARMLESS):
            return message
    return None
