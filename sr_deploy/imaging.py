"""Image files in and out, and the conversions between them and the model's tensors.

Colour order: OpenCV reads and writes BGR / BGRA. This module converts at the edges only:
every array it returns or accepts is RGB (or RGBA, or single-channel grey), so the rest of
the code never sees BGR.

Pixel arrays ("images") here are numpy arrays of shape
    (H, W)      grey,
    (H, W, 3)   RGB,
    (H, W, 4)   RGBA (straight, not premultiplied, alpha),
with dtype uint8 (0..255), uint16 (0..65535) or float32 (0..1, from float TIFF files).

The model side is float32 RGB in [0, 1], channels first: (3, H, W) for one image, (N, 3, H, W)
for a batch. Model outputs are NOT clamped (see `sr_deploy.backends.base`); clamping and
rounding to the output dtype happen once, in `model_output_to_image`.

Alpha: the model upscales RGB only; alpha is resized bicubic (`cv2.INTER_CUBIC`, clamped), and
flattened onto white for a format without it. Why: SR models are trained on natural RGB photos,
not on masks; running the model on alpha would double the compute and can invent texture in
what should be a flat or hard-edged mask. Greyscale images go through the model as three equal
channels and come back as one channel (ITU-R BT.601 luma of the result).

Writes are atomic: written under a hidden temporary name beside the target, flushed, then renamed
over it, so a crash never leaves a half-written image under the final name.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError, SRDeployError
from .formats import (  # noqa: F401 - DATASET_IMAGE_SUFFIXES, IMAGE_FORMATS, OUTPUT_IMAGE_FORMATS re-exported
    DATASET_IMAGE_SUFFIXES,
    IMAGE_EXTENSIONS,
    IMAGE_FORMATS,
    OUTPUT_IMAGE_FORMATS,
    image_format,
)
from .image_metadata import CarriedMetadata, add_jpeg_metadata, add_png_metadata_to_file
from .util.files import atomic_write_bytes as _atomic_write_bytes
from .util.files import partial_path as partial_path  # re-exported: video.py and tests import it from here
from .util.files import space_note
from .util.frames import png_frames, tiff_pages, webp_frames
from .util.jpeg import jpeg_damage


def _quality_params(ext: str, quality: int | None) -> list[int]:
    fmt = image_format(ext)
    if fmt is None or fmt.quality is None:
        return []
    flag, default = fmt.quality
    return [getattr(cv2, flag), int(quality if quality is not None else default)]


def is_image_path(path: str | Path) -> bool:
    """True when `path` has an image extension this module reads and writes (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write `data` to `target` through `partial_path(target)` and an atomic rename (folders made)."""
    _atomic_write_bytes(target, data, make_parents=True)


def image_header_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) as the file's header states it, read without decoding any pixel (Pillow
    parses only the header until pixels are asked for); None when Pillow is not installed or does
    not know the format (the decoder then finds out what the file is)."""
    try:
        from PIL import Image
    except ModuleNotFoundError:
        return None
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # sr-deploy sets its own bound
    try:
        with Image.open(path) as img:  # lazy: header only
            return int(img.size[0]), int(img.size[1])
    except Exception:  # any format Pillow cannot parse: leave it to the decoder
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as grey (H, W), RGB (H, W, 3) or RGBA (H, W, 4).

    dtype is the file's: uint8, uint16 (16-bit PNG/TIFF) or float32 (float TIFF, values as
    stored, nominally [0, 1]). JPEG EXIF orientation is applied, so the array is upright as a
    viewer shows it. Raises `InputError` naming the file when it is missing, empty or does not
    decode.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode also copes with non-ASCII paths
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data.size == 0:
        raise InputError(f"{path}: empty file, not an image")
    head = data[: 1 << 20].tobytes() if data.size > 1 << 20 else data.tobytes()
    if frames := webp_frames(head) or png_frames(head):
        kind = "WebP" if head.startswith(b"RIFF") else "PNG"
        raise InputError(
            f"{path}: animated {kind} ({frames} frames); OpenCV would read only the first: "
            "convert it to a video (e.g. .webm / .mp4) and upscale that"
        )
    if head[:2] in (b"II", b"MM") and (pages := tiff_pages(data.tobytes())):  # a copy for TIFF files only
        raise InputError(f"{path}: a TIFF of {pages} pages; only the first would be read: save each page as a file")
    # IMREAD_UNCHANGED keeps alpha and 16 bits but ignores EXIF orientation. JPEG has no alpha,
    # so for JPEG, ANYCOLOR | ANYDEPTH keeps grey as grey and lets OpenCV apply the orientation.
    fmt = image_format(path)
    if fmt is not None and fmt.name == "jpg" and (damage := jpeg_damage(data.tobytes())):
        raise InputError(f"{path}: damaged JPEG data ({damage})")
    if fmt is not None and fmt.orientation:
        flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH
    else:
        flags = cv2.IMREAD_UNCHANGED
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error as exc:
        raise InputError(f"{path}: not a readable image ({_first_line(str(exc))})") from None
    if image is None:
        raise InputError(f"{path}: not a readable image (corrupt or unsupported format)")
    return _from_opencv(image, path)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def _from_opencv(image: np.ndarray, path: Path) -> np.ndarray:
    """OpenCV's BGR / BGRA / grey array -> RGB / RGBA / grey, dtype uint8, uint16 or float32."""
    if image.dtype == np.float64:
        image = image.astype(np.float32)
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise InputError(f"{path}: unsupported sample type {image.dtype} (expected 8-bit, 16-bit or float)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    if channels == 2:  # grey + alpha (rare in OpenCV): keep as RGBA
        grey, alpha = image[:, :, 0], image[:, :, 1]
        return np.dstack([grey, grey, grey, alpha])
    raise InputError(f"{path}: unsupported number of channels ({channels})")


def output_dtype_for(extension: str, input_dtype: np.dtype) -> np.dtype:
    """The dtype an image of `input_dtype` is written with in a file of `extension`: the input's
    when the format can hold it (16-bit PNG/TIFF, float TIFF), else uint8; float becomes uint16 in
    PNG."""
    fmt = image_format(extension)
    sixteen_bit = fmt is not None and fmt.sixteen_bit
    input_dtype = np.dtype(input_dtype)
    if input_dtype == np.float32:
        if fmt is not None and fmt.float32:
            return np.dtype(np.float32)
        return np.dtype(np.uint16) if sixteen_bit else np.dtype(np.uint8)
    if input_dtype == np.uint16 and sixteen_bit:
        return np.dtype(np.uint16)
    return np.dtype(np.uint8)


def quantize(image: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """float32 in [0, 1] (any shape; out-of-range values are clamped) -> `dtype`: uint8 0..255 or
    uint16 0..65535 rounded to nearest, or float32 clamped to [0, 1]."""
    dtype = np.dtype(dtype)
    clipped = np.clip(image, 0.0, 1.0)
    if dtype == np.float32:
        return clipped.astype(np.float32, copy=False)
    peak = float(np.iinfo(dtype).max)
    return np.rint(clipped * peak).astype(dtype)


def to_float01(image: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float32 array (any shape) -> float32 in [0, 1] (float input passes as is)."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) * np.float32(1 / 255)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * np.float32(1 / 65535)
    return image.astype(np.float32, copy=False)


def image_to_model_input(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Split an image into the model's input and its alpha channel.

    Args:
        image: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA; uint8, uint16 or float32.
    Returns:
        rgb: (3, H, W) float32 RGB in [0, 1], C-contiguous (grey is repeated on 3 channels).
        alpha: (H, W) float32 in [0, 1], or None without alpha.
    """
    values = to_float01(image)
    alpha = None
    if values.ndim == 2:
        values = np.repeat(values[None], 3, axis=0)
        return np.ascontiguousarray(values), None
    if values.shape[2] == 4:
        alpha = np.ascontiguousarray(values[:, :, 3])
        values = values[:, :, :3]
    return np.ascontiguousarray(values.transpose(2, 0, 1)), alpha


def resize_float(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) float32 image to `size_hw` = (height, width): INTER_AREA when
    shrinking (no aliasing), LANCZOS4 when enlarging (sharp). Not clamped (Lanczos overshoots;
    clamping is done by `quantize`)."""
    height, width = size_hw
    if image.shape[:2] == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
    return cv2.resize(image, (width, height), interpolation=interpolation)


def model_output_to_image(
    rgb: np.ndarray,
    alpha_lr: np.ndarray | None,
    dtype: np.dtype | type,
    grey: bool,
    size_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Turn the model's output back into an image.

    Args:
        rgb: (3, sH, sW) float32 RGB, unclamped model output.
        alpha_lr: (H, W) float32 alpha in [0, 1] of the low-resolution input, or None.
        dtype: the output dtype (uint8, uint16 or float32); see `output_dtype_for`.
        grey: return one channel (BT.601 luma of the RGB result).
        size_hw: the final (height, width) when `--outscale` differs from the model's scale;
            None keeps (sH, sW).
    Returns:
        (h, w) grey, (h, w, 3) RGB or (h, w, 4) RGBA of `dtype`; alpha resized with bicubic.
    """
    hwc = np.ascontiguousarray(rgb.transpose(1, 2, 0), dtype=np.float32)
    if size_hw is not None:
        hwc = resize_float(hwc, size_hw)
    height, width = hwc.shape[:2]
    if grey:
        return quantize(cv2.cvtColor(hwc, cv2.COLOR_RGB2GRAY), dtype)
    if alpha_lr is None:
        return quantize(hwc, dtype)
    alpha = cv2.resize(alpha_lr, (width, height), interpolation=cv2.INTER_CUBIC)
    return quantize(np.dstack([hwc, alpha]), dtype)


def png_text_chunks(text: Mapping[str, str]) -> bytes:
    """PNG tEXt chunks (length, type, Latin-1 ``keyword NUL text``, CRC) for `text`: what PNG
    readers show as the file's text fields (Pillow's ``Image.text``, exiftool)."""
    out = b""
    for keyword, value in text.items():
        data = keyword.encode("latin-1")[:79] + b"\0" + value.encode("latin-1", "replace")
        out += struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return out


def jpeg_comment_segments(text: Mapping[str, str]) -> bytes:
    """JPEG COM segments (marker FF FE, big-endian length, Latin-1 ``keyword: text``) for `text`:
    what JPEG readers show as the file's comment (exiftool's Comment, Pillow's ``info["comment"]``)."""
    out = b""
    for keyword, value in text.items():
        data = f"{keyword}: {value}".encode("latin-1", "replace")[: 0xFFFF - 2]
        out += b"\xff\xfe" + struct.pack(">H", len(data) + 2) + data
    return out


_PNG_IEND = b"\0\0\0\0IEND\xaeB`\x82"  # the 12 bytes that end every PNG
_JPEG_SOI, _JPEG_APP0 = b"\xff\xd8", b"\xff\xe0"
# sr-deploy writes its text fields in the last bytes of a PNG (before IEND) and the first of a
# JPEG (after the JFIF header): this much of that end is read to find them (one small read per
# output on a re-run; fields that other tools moved elsewhere are not looked for).
TEXT_PROBE_BYTES = 4096


def add_png_text(data: bytes, text: Mapping[str, str] | None) -> bytes:
    """`data` (a whole PNG file) with tEXt chunks for `text` before its IEND chunk (PNG allows
    text after the image data: nothing else moves)."""
    if not text:
        return data
    if not data.endswith(_PNG_IEND):
        raise SRDeployError("the PNG encoder's output does not end with IEND")
    return data[: -len(_PNG_IEND)] + png_text_chunks(text) + _PNG_IEND


def add_jpeg_comment(data: bytes, text: Mapping[str, str] | None) -> bytes:
    """`data` (a whole JPEG file) with COM segments for `text` after its SOI marker and JFIF APP0
    segment (JFIF readers expect APP0 first); the compressed image data is not touched."""
    if not text:
        return data
    if not data.startswith(_JPEG_SOI):
        raise SRDeployError("the JPEG encoder's output does not start with SOI")
    at = len(_JPEG_SOI)
    if data[at : at + 2] == _JPEG_APP0:
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    return data[:at] + jpeg_comment_segments(text) + data[at:]


def _add_text(data: bytes, ext: str, text: Mapping[str, str] | None) -> bytes:
    """`data` encoded as `ext` with the text fields `text` where its format keeps them
    (`ImageFormat.text`); formats without a place for them are returned as they are."""
    kind = getattr(image_format(ext), "text", None)
    if kind == "tEXt":
        return add_png_text(data, text)
    if kind == "COM":
        return add_jpeg_comment(data, text)
    return data


def _add_text_to_file(path: Path, ext: str, text: Mapping[str, str] | None, metadata: CarriedMetadata | None) -> None:
    """`_add_text` on a file OpenCV wrote, and `metadata` (`image_metadata`) where the format keeps
    it. A JPEG, compressed and far smaller than the image it holds, is read and written again once,
    with both; a PNG's text chunks are appended in place (its last 12 bytes, IEND, are replaced by
    the text chunks and IEND), so that the image data is never read, and its metadata chunks, which
    must precede the image data, copied in with it once (`add_png_metadata_to_file`)."""
    kind = getattr(image_format(ext), "text", None)
    if kind == "COM" and (text or metadata):
        path.write_bytes(add_jpeg_metadata(add_jpeg_comment(path.read_bytes(), text), metadata))
    elif kind == "tEXt":
        if text:
            with open(path, "rb+") as f:
                f.seek(-len(_PNG_IEND), os.SEEK_END)
                if f.read() != _PNG_IEND:
                    raise SRDeployError(f"{path}: the PNG encoder's output does not end with IEND")
                f.seek(-len(_PNG_IEND), os.SEEK_END)
                f.write(png_text_chunks(text) + _PNG_IEND)
        add_png_metadata_to_file(path, metadata)


def _png_text(tail: bytes, keyword: str) -> str | None:
    """The tEXt field `keyword` in `tail`, the last bytes of a PNG file (where sr-deploy writes it);
    None when it is not there or its CRC is wrong."""
    tag = b"tEXt" + keyword.encode("latin-1") + b"\0"
    at = tail.rfind(tag)
    if at < 4:
        return None
    length = struct.unpack(">I", tail[at - 4 : at])[0]
    data, crc = tail[at + 4 : at + 4 + length], tail[at + 4 + length : at + 8 + length]
    if len(data) != length or crc != struct.pack(">I", zlib.crc32(b"tEXt" + data)):
        return None
    return data[len(tag) - 4 :].decode("latin-1")


def _jpeg_comment(head: bytes, keyword: str) -> str | None:
    """The COM segment ``keyword: text`` among the segments before the image data (SOS) in
    `head`, the first bytes of a JPEG file; None when there is none."""
    if not head.startswith(_JPEG_SOI):
        return None
    prefix, at = f"{keyword}: ".encode("latin-1"), len(_JPEG_SOI)
    while at + 4 <= len(head) and head[at] == 0xFF:
        if head[at + 1] == 0xFF:  # fill bytes may precede a marker
            at += 1
            continue
        marker = head[at + 1]
        if marker in (0xD9, 0xDA):  # EOI, SOS: no more header segments
            return None
        length = struct.unpack(">H", head[at + 2 : at + 4])[0]
        segment = head[at + 4 : at + 2 + length]
        if marker == 0xFE and segment.startswith(prefix):
            return segment[len(prefix) :].decode("latin-1")
        at += 2 + length
    return None


def image_text(read: Callable[[int, int], bytes], size: int, suffix: str, keyword: str) -> str | None:
    """The text field `keyword` of an image file of `size` bytes named with `suffix`, read through
    `read(start, end)` (a byte range: of a local file or an object in a store) from the end of the
    file where its format keeps it, without decoding any pixel. None when the format keeps no text
    (`ImageFormat.text`) or the field is not there."""
    kind = getattr(image_format(suffix), "text", None)
    if kind == "tEXt":
        return _png_text(read(max(0, size - TEXT_PROBE_BYTES), size), keyword)
    if kind == "COM":
        return _jpeg_comment(read(0, min(size, TEXT_PROBE_BYTES)), keyword)
    return None


def image_file_text(path: str | Path, keyword: str) -> str | None:
    """`image_text` of a local file; None also when it cannot be read."""

    def read(start: int, end: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    try:
        return image_text(read, os.path.getsize(path), Path(path).suffix, keyword)
    except OSError:
        return None


def flatten_onto_white(image: np.ndarray) -> np.ndarray:
    """(H, W, 4) RGBA (straight alpha; uint8, uint16 or float32) -> (H, W, 3) RGB over white, in place
    (a view of `image`), in row bands: as image editors flatten for JPEG, transparent is white."""
    white = float(np.iinfo(image.dtype).max) if image.dtype.kind == "u" else 1.0
    band = max(1, (4 << 20) // max(1, image.shape[1] * 16))
    for top in range(0, image.shape[0], band):
        rows = image[top : top + band]
        opacity = rows[:, :, 3:].astype(np.float32) / white
        rows[:, :, :3] = quantize((rows[:, :, :3] * opacity + white * (1 - opacity)) / white, image.dtype)
    return image[:, :, :3]


def encode_image(
    image: np.ndarray, extension: str, quality: int | None = None, text: Mapping[str, str] | None = None
) -> bytes:
    """Encode an RGB / RGBA / grey image as `extension` (".png", ".jpg", ...) and return the bytes.

    The image must already have a dtype the format holds (see `output_dtype_for`); anything else
    raises ValueError rather than letting OpenCV silently truncate it. JPEG has no alpha: an RGBA
    image is flattened onto white there (`flatten_onto_white`). `quality`: JPEG/WebP 1..100 (WebP
    >100 is lossless); PNG/TIFF/BMP are lossless and ignore it. `text`: text fields (keyword -> text,
    Latin-1) where the format keeps them (`ImageFormat.text`: PNG tEXt chunks, JPEG comments);
    other formats ignore it.
    """
    ext = extension.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise InputError(f"cannot write images as {extension!r}: use one of {', '.join(sorted(IMAGE_EXTENSIONS))}")
    expected = output_dtype_for(ext, image.dtype)
    if image.dtype != expected:
        raise ValueError(f"{image.dtype} samples cannot be stored in {ext}; quantize to {expected} first")
    if image.ndim == 3 and image.shape[2] == 4:
        if image_format(ext).alpha:  # type: ignore[union-attr] - checked above
            bgr = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
        else:
            bgr = cv2.cvtColor(flatten_onto_white(image.copy()), cv2.COLOR_RGB2BGR)
    elif image.ndim == 3:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    else:
        bgr = image
    ok, buffer = cv2.imencode(ext, bgr, _quality_params(ext, quality))
    if not ok:
        raise SRDeployError(f"OpenCV could not encode a {bgr.shape} {bgr.dtype} image as {ext}")
    return _add_text(buffer.tobytes(), ext, text)


def write_image(path: str | Path, image: np.ndarray, quality: int | None = None) -> None:
    """Encode `image` (RGB / RGBA / grey, see `encode_image`) in the format of `path`'s extension
    and write it atomically (temporary name beside it, then rename). Parent folders are created."""
    path = Path(path)
    atomic_write_bytes(path, encode_image(image, path.suffix, quality))


def write_image_consuming(
    path: str | Path,
    image: np.ndarray,
    quality: int | None = None,
    text: Mapping[str, str] | None = None,
    metadata: CarriedMetadata | None = None,
) -> None:
    """`write_image` for very large images: no full-size copy is made. The RGB(A) channels of
    `image` are swapped to OpenCV's BGR(A) in place (the array is left in that order: do not use
    it afterwards) and OpenCV writes the file itself (PNG rows stream to disk) under the temporary
    name, then it is renamed. `text`: text fields, as `encode_image`; `metadata`: the input's ICC
    profile and EXIF, for a PNG or JPEG (`image_metadata`)."""
    path = Path(path)
    ext = path.suffix.lower()
    expected = output_dtype_for(ext, image.dtype)
    if image.dtype != expected:
        raise ValueError(f"{image.dtype} samples cannot be stored in {ext}; quantize to {expected} first")
    fmt = image_format(ext)
    if image.ndim == 3 and image.shape[2] == 4 and not (fmt is not None and fmt.alpha):
        image = flatten_onto_white(image)
    if image.ndim == 3:
        band = max(1, (16 << 20) // max(1, image.shape[1] * image.shape[2] * image.itemsize))
        for top in range(0, image.shape[0], band):  # in row bands: a few MB of temporaries at most
            rows = image[top : top + band]
            rows[:, :, [0, 2]] = rows[:, :, [2, 0]]
    params = _quality_params(ext, quality)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        if not cv2.imwrite(str(tmp), image, params):  # OpenCV says no more: a full disk is named
            raise SRDeployError(f"{path}: OpenCV could not write {ext}{space_note(path.parent, image.nbytes // 2)}")
        _add_text_to_file(tmp, ext, text, metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except cv2.error as exc:
        tmp.unlink(missing_ok=True)
        raise SRDeployError(f"{path}: writing failed ({_first_line(str(exc))})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def upscaled_size(height: int, width: int, outscale: float) -> tuple[int, int]:
    """The (height, width) of an (height, width) input upscaled by `outscale`, rounded to nearest."""
    return max(1, int(round(height * outscale))), max(1, int(round(width * outscale)))
