"""The input's ICC colour profile, carried into the output: a phone photo in Display P3 (or any
photo with a profile) keeps its colours, where an output without the profile would be shown as
sRGB, washed out. Plain functions on encoded bytes and files: PNG gets an iCCP chunk after IHDR
(before the image data, as PNG requires), JPEG APP2 ``ICC_PROFILE`` segments after the JFIF header
and sr-deploy's comment (which a re-run reads from the file's first bytes). Other output formats
(WebP, TIFF, BMP) are written without it."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

from PIL import Image

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_ICC_CHUNK = 65519  # the most profile bytes one APP2 segment holds (64 KiB - length, name, numbering)


def carried_profile(source: str | Path, channels: int) -> bytes | None:
    """The ICC profile of the image file `source` (read from its header, nothing decoded) when it
    describes an output of `channels` channels (an RGB profile for 3 or 4, a grey one for 1);
    None when there is none or it describes another colour space (a CMYK photo is converted to
    RGB, so its profile would be wrong), or the file cannot be read."""
    try:
        with Image.open(source) as image:
            profile = image.info.get("icc_profile")
    except Exception:  # unreadable by Pillow (the decoder that counts is OpenCV): no profile
        return None
    if not isinstance(profile, bytes) or len(profile) < 128:
        return None
    space = profile[16:20]  # the profile header's data colour space
    return profile if space == (b"GRAY" if channels == 1 else b"RGB ") else None


def png_iccp_chunk(profile: bytes) -> bytes:
    """A PNG iCCP chunk (name, compression method 0, zlib-compressed profile, CRC)."""
    data = b"ICC profile\0\0" + zlib.compress(profile, 9)
    return struct.pack(">I", len(data)) + b"iCCP" + data + struct.pack(">I", zlib.crc32(b"iCCP" + data))


def jpeg_icc_segments(profile: bytes) -> bytes:
    """The APP2 ``ICC_PROFILE`` segments that hold `profile` (numbered from 1, as readers join them)."""
    chunks = [profile[at : at + _JPEG_ICC_CHUNK] for at in range(0, len(profile), _JPEG_ICC_CHUNK)]
    out = b""
    for number, chunk in enumerate(chunks, 1):
        body = b"ICC_PROFILE\0" + bytes([number, len(chunks)]) + chunk
        out += b"\xff\xe2" + struct.pack(">H", len(body) + 2) + body
    return out


def add_jpeg_profile(data: bytes, profile: bytes) -> bytes:
    """`data` (a whole JPEG file) with `profile` in APP2 segments after its SOI, JFIF APP0 and
    comment segments; the compressed image data is not touched."""
    at = 2
    while data[at : at + 2] in (b"\xff\xe0", b"\xff\xfe"):
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    return data[:at] + jpeg_icc_segments(profile) + data[at:]


def add_profile_to_file(path: Path, ext: str, profile: bytes | None) -> None:
    """Put `profile` into the image file `path` of format `ext` (PNG or JPEG; others are left as
    they are). A PNG is copied once, in blocks, with the iCCP chunk after IHDR; a JPEG, compressed
    and small next to the image it holds, is read and written again."""
    if not profile:
        return
    if ext in (".jpg", ".jpeg"):
        path.write_bytes(add_jpeg_profile(path.read_bytes(), profile))
    elif ext == ".png":
        moved = path.with_name(path.name + ".icc")
        try:
            with open(path, "rb") as src, open(moved, "wb") as dst:
                head = src.read(8 + 25)  # the signature and IHDR (13 bytes of data), always first
                if head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
                    raise ValueError(f"{path}: the PNG encoder's output does not start with IHDR")
                dst.write(head + png_iccp_chunk(profile))
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(moved, path)
        finally:
            moved.unlink(missing_ok=True)
