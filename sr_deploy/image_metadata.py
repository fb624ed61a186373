"""What an image output keeps of its input besides the pixels: the ICC colour profile (a phone
photo in Display P3 keeps its colours, where an output without it would be shown as sRGB, washed
out) and the EXIF fields (date taken, camera, GPS: what photo libraries sort and map by).

Plain functions on encoded bytes and files. PNG gets iCCP and eXIf chunks after IHDR (before the
image data, where readers look); JPEG gets an APP1 ``Exif`` segment and APP2 ``ICC_PROFILE``
segments after the JFIF header and sr-deploy's comment (which a re-run reads from the file's first
bytes). Other output formats (WebP, TIFF, BMP) are written without them."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_ICC_CHUNK = 65519  # the most profile bytes one APP2 segment holds (64 KiB - length, name, numbering)
_JPEG_EXIF_MAX = 65533 - 6  # one APP1 segment, less its "Exif\0\0" name
_ORIENTATION, _EXIF_IFD, _PIXEL_X, _PIXEL_Y = 0x0112, 0x8769, 0xA002, 0xA003


@dataclass(frozen=True)
class CarriedMetadata:
    """An input's ICC profile and EXIF (a TIFF structure, without JPEG's ``Exif\\0\\0`` name), as
    its output takes them; None where it has none (or none that fits the output)."""

    profile: bytes | None = None
    exif: bytes | None = None


def carried_metadata(source: str | Path, channels: int, size: tuple[int, int], oriented: bool) -> CarriedMetadata:
    """What the output of the image file `source` keeps (read from its header, nothing decoded).
    `channels`: the output's (3 or 4: RGB, 1: grey): a profile of another colour space (a CMYK
    photo, converted to RGB) is left out. `size`: the output's (width, height), which EXIF's pixel
    dimensions are set to. `oriented`: the reader turned the pixels upright by the EXIF orientation
    (JPEG), so the output's is 1 (else it is kept, and viewers turn the output as they did the
    input). Nothing when the file cannot be read by Pillow (the decoder that counts is OpenCV)."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # sr-deploy bounds inputs itself (--max-pixels)
    try:
        with Image.open(source) as image:
            profile = image.info.get("icc_profile")
            exif = image.getexif()
            if exif and oriented and _ORIENTATION in exif:
                exif[_ORIENTATION] = 1
            if exif and _EXIF_IFD in exif:
                details = exif.get_ifd(_EXIF_IFD)
                for tag, value in ((_PIXEL_X, size[0]), (_PIXEL_Y, size[1])):
                    if tag in details:
                        details[tag] = value
            raw = exif.tobytes()[6:] if exif else None  # Pillow writes JPEG's "Exif\0\0" name first
    except Exception:
        return CarriedMetadata()
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    space = b"GRAY" if channels == 1 else b"RGB "
    fits = isinstance(profile, bytes) and len(profile) >= 128 and profile[16:20] == space  # header's colour space
    return CarriedMetadata(profile if fits else None, raw or None)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_chunks(metadata: CarriedMetadata) -> bytes:
    """The PNG chunks that hold `metadata`: iCCP (name, compression method 0, the profile deflated)
    and eXIf (the TIFF structure as it is)."""
    out = _png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(metadata.profile, 9)) if metadata.profile else b""
    return out + (_png_chunk(b"eXIf", metadata.exif) if metadata.exif else b"")


def jpeg_segments(metadata: CarriedMetadata) -> bytes:
    """The JPEG segments that hold `metadata`: APP1 ``Exif`` (left out when larger than one segment
    holds) and APP2 ``ICC_PROFILE`` (numbered from 1, as readers join them)."""
    out = b""
    if metadata.exif and len(metadata.exif) <= _JPEG_EXIF_MAX:
        out += b"\xff\xe1" + struct.pack(">H", len(metadata.exif) + 8) + b"Exif\0\0" + metadata.exif
    profile = metadata.profile or b""
    chunks = [profile[at : at + _JPEG_ICC_CHUNK] for at in range(0, len(profile), _JPEG_ICC_CHUNK)]
    for number, chunk in enumerate(chunks, 1):
        body = b"ICC_PROFILE\0" + bytes([number, len(chunks)]) + chunk
        out += b"\xff\xe2" + struct.pack(">H", len(body) + 2) + body
    return out


def add_jpeg_metadata(data: bytes, metadata: CarriedMetadata | None) -> bytes:
    """`data` (a whole JPEG file) with `metadata`'s segments after its SOI, JFIF APP0 and comment
    segments (sr-deploy's comment, which a re-run reads from the first bytes, stays there); the
    compressed image data is not touched."""
    if metadata is None or not (metadata.profile or metadata.exif):
        return data
    at = 2
    while data[at : at + 2] in (b"\xff\xe0", b"\xff\xfe"):
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    return data[:at] + jpeg_segments(metadata) + data[at:]


def add_png_metadata_to_file(path: Path, metadata: CarriedMetadata | None) -> None:
    """Put `metadata` into the PNG file `path`: its chunks go after IHDR (before the image data,
    where PNG wants them), so the file is copied once, in blocks."""
    if metadata is None or not (metadata.profile or metadata.exif):
        return
    moved = path.with_name(path.name + ".meta")
    try:
        with open(path, "rb") as src, open(moved, "wb") as dst:
            head = src.read(8 + 25)  # the signature and IHDR (13 bytes of data), always first
            if head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
                raise ValueError(f"{path}: the PNG encoder's output does not start with IHDR")
            dst.write(head + png_chunks(metadata))
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(moved, path)
    finally:
        moved.unlink(missing_ok=True)
