"""Image I/O and pre/post-processing: dtypes, channels, alpha, EXIF orientation, atomic writes."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from _upscale_support import cpu_backend, save_tiny_srresnet

from sr_deploy.errors import InputError, SRDeployError
from sr_deploy.imaging import (
    flatten_onto_white,
    image_to_model_input,
    model_output_to_image,
    output_dtype_for,
    partial_path,
    quantize,
    read_image,
    upscaled_size,
    write_image,
    write_image_consuming,
)


def _crop(path: Path, size: int = 40, top: int = 0) -> np.ndarray:
    """RGB uint8 (size x size+8) crop from a real image (read with plain OpenCV, converted here)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[top : top + size, top : top + size + 8])


def jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG of `rgb` carrying an EXIF APP1 segment with the given Orientation tag (0x0112)."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    tiff = (
        b"MM\x00\x2a\x00\x00\x00\x08"
        + struct.pack(">H", 1)
        + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
        + struct.pack(">I", 0)
    )
    app1 = b"Exif\x00\x00" + tiff
    data = encoded.tobytes()
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def test_read_rgb_matches_opencv_bgr(set5_dir):
    image = read_image(set5_dir / "bird.png")
    bgr = cv2.imread(str(set5_dir / "bird.png"), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8 and image.shape == (288, 288, 3)
    np.testing.assert_array_equal(image, bgr[:, :, ::-1])


def test_16bit_png_round_trip_keeps_16_bits(set5_dir, tmp_path):
    rgb16 = _crop(set5_dir / "butterfly.png").astype(np.uint16) * 257 + 3  # uses the low byte too
    write_image(tmp_path / "deep.png", rgb16)
    back = read_image(tmp_path / "deep.png")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, rgb16)
    assert output_dtype_for(".png", np.uint16) == np.uint16
    assert output_dtype_for(".tiff", np.uint16) == np.uint16
    assert output_dtype_for(".jpg", np.uint16) == np.uint8
    # 16 bits survive the model round trip at 16-bit precision (not squeezed through 8 bits)
    x, alpha = image_to_model_input(back)
    assert alpha is None and x.dtype == np.float32 and x.shape == (3, 40, 48)
    again = model_output_to_image(x, None, np.uint16, grey=False)
    np.testing.assert_array_equal(again, rgb16)


def test_greyscale_stays_one_channel(set14_dir, tmp_path):
    grey = read_image(set14_dir / "bridge.png")
    assert grey.ndim == 2 and grey.dtype == np.uint8
    x, alpha = image_to_model_input(grey)
    assert x.shape == (3, *grey.shape) and alpha is None
    np.testing.assert_array_equal(x[0], x[2])
    out = model_output_to_image(x, None, np.uint8, grey=True)
    np.testing.assert_array_equal(out, grey)  # equal channels -> the same luma
    write_image(tmp_path / "g.png", out)
    assert read_image(tmp_path / "g.png").ndim == 2


def test_rgba_alpha_resized_bicubic_rgb_by_model(set5_dir, tmp_path):
    rgb = _crop(set5_dir / "head.png")
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    write_image(tmp_path / "a.png", np.dstack([rgb, alpha]))
    rgba = read_image(tmp_path / "a.png")
    assert rgba.shape == (40, 48, 4)
    np.testing.assert_array_equal(rgba[:, :, 3], alpha)

    backend = cpu_backend(save_tiny_srresnet(tmp_path / "m.pt"))
    x, a = image_to_model_input(rgba)
    sr = backend(x[None])[0]
    out = model_output_to_image(sr, a, np.uint8, grey=False)
    assert out.shape == (160, 192, 4) and out.dtype == np.uint8
    expected_alpha = quantize(cv2.resize(a, (192, 160), interpolation=cv2.INTER_CUBIC), np.uint8)
    np.testing.assert_array_equal(out[:, :, 3], expected_alpha)
    np.testing.assert_array_equal(out[:, :, :3], quantize(sr.transpose(1, 2, 0), np.uint8))
    write_image(tmp_path / "out.webp", out, quality=101)  # lossless WebP keeps alpha
    assert read_image(tmp_path / "out.webp").shape == (160, 192, 4)
    write_image(tmp_path / "out.jpg", out)  # JPEG has no alpha: flattened onto white
    assert read_image(tmp_path / "out.jpg").shape == (160, 192, 3)


def test_rgba_written_as_jpeg_is_flattened_onto_white(set5_dir, tmp_path):
    """What was transparent comes out white, not the colour its pixels happened to hold (here a
    saturated red); half-transparent pixels are half white; opaque ones are the image's. The same
    through `write_image` and the upscaler's `write_image_consuming`, and at 16 bits."""
    rgb = _crop(set5_dir / "head.png", size=32)
    rgb[:, :8] = (255, 0, 0)  # the hidden colour of the transparent columns
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :8], alpha[:, 8:16] = 0, 128
    rgba = np.dstack([rgb, alpha])
    expected = rgb.astype(np.float64)
    expected[:, :8] = 255
    expected[:, 8:16] = expected[:, 8:16] * 128 / 255 + 255 * 127 / 255

    flat = flatten_onto_white(rgba.copy())
    assert flat.shape == (32, 40, 3) and flat.dtype == np.uint8
    assert np.abs(flat - expected).max() <= 0.5
    deep = flatten_onto_white(rgba.astype(np.uint16) * 257)
    assert deep.dtype == np.uint16 and np.abs(deep / 257 - expected).max() <= 0.01

    write_image(tmp_path / "a.jpg", rgba, quality=100)
    write_image_consuming(tmp_path / "b.jpg", rgba.copy(), quality=100)
    for name in ("a.jpg", "b.jpg"):
        back = read_image(tmp_path / name).astype(np.float64)
        assert back.shape == (32, 40, 3)
        assert np.abs(back[:, :6] - 255).max() <= 4, name  # white, not red (JPEG's error aside)
        assert np.abs(back - expected).mean() <= 2, name


@pytest.mark.parametrize("orientation,turn", [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_jpeg_exif_orientation_applied(set5_dir, tmp_path, orientation, turn):
    rgb = _crop(set5_dir / "butterfly.png", top=100)  # 40 x 48 of wing pattern, not square
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(jpeg_with_orientation(rgb, orientation))
    image = read_image(path)
    upright = np.rot90(rgb, turn)  # 6 = rotate 90 clockwise to display, 8 = counter-clockwise
    assert image.shape == upright.shape and image.dtype == np.uint8
    assert np.abs(image.astype(int) - upright.astype(int)).mean() < 3  # JPEG loss only
    wrong = np.rot90(rgb, turn + 2)
    if orientation != 1:
        assert np.abs(image.astype(int) - wrong.astype(int)).mean() > 20


def test_corrupt_and_empty_files_raise_one_line_input_error(set5_dir, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bad.png").write_bytes((set5_dir / "bird.png").read_bytes()[:200])
    for name, cause in [
        ("empty.png", "empty file"),
        ("bad.png", "not a readable image"),
        ("missing.png", "no such file"),
    ]:
        with pytest.raises(InputError) as info:
            read_image(tmp_path / name)
        message = str(info.value)
        assert name in message and cause in message and "\n" not in message


@pytest.mark.parametrize("quality", [90, 95])  # the damage shows as two different libjpeg warnings
def test_a_jpeg_with_damaged_data_is_refused_not_decoded_with_broken_blocks(set14_dir, tmp_path, quality):
    """OpenCV decodes a JPEG whose compressed data is damaged into a picture with broken blocks and
    only warns on stderr; read_image refuses it in one line naming the file and libjpeg's cause."""
    data = bytearray(
        cv2.imencode(".jpg", cv2.imread(str(set14_dir / "lenna.png")), [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
    )
    (tmp_path / "whole.jpg").write_bytes(bytes(data))
    middle = len(data) // 2
    data[middle : middle + 40] = bytes(b ^ 0x5A for b in data[middle : middle + 40])
    (tmp_path / "damaged.jpg").write_bytes(bytes(data))
    assert cv2.imread(str(tmp_path / "damaged.jpg")) is not None  # what OpenCV alone would have taken
    with pytest.raises(InputError) as info:
        read_image(tmp_path / "damaged.jpg")
    message = str(info.value)
    assert (
        message.startswith(f"{tmp_path / 'damaged.jpg'}: damaged JPEG data (Corrupt JPEG data: ")
        and "\n" not in message
    )
    assert read_image(tmp_path / "whole.jpg").shape == (512, 512, 3)


def test_whole_jpegs_of_every_kind_are_not_taken_for_damaged(shared_data, tmp_path):
    """Camera photos and the JPEG variants people have (progressive, 4:4:4, CMYK, grey, a file with
    bytes after its end marker, or a few padding bytes before a marker) read as before."""
    from PIL import Image

    photos = sorted((shared_data / "train" / "Sun_Hays80").glob("*.jpg"))[:20]
    assert len(photos) == 20
    for photo in photos:
        assert read_image(photo).ndim == 3
    with Image.open(photos[0]) as im:
        rgb = im.convert("RGB")
    for name, mode, extra in [
        ("progressive", "RGB", {"progressive": True}),
        ("444", "RGB", {"subsampling": 0}),
        ("cmyk", "CMYK", {}),
        ("grey", "L", {}),
    ]:
        rgb.convert(mode).save(tmp_path / f"{name}.jpg", quality=85, **extra)
        assert read_image(tmp_path / f"{name}.jpg").shape[:2] == (rgb.height, rgb.width)
    (tmp_path / "tail.jpg").write_bytes(photos[0].read_bytes() + b"trailer" * 100)
    assert read_image(tmp_path / "tail.jpg").shape[:2] == (rgb.height, rgb.width)
    # padding some cameras and editors leave (libjpeg warns "extraneous bytes"; the pixels are whole)
    data = photos[0].read_bytes()
    at = data.index(b"\xff\xdb")
    for name, padded in (("dqt", data[:at] + b"\0" + data[at:]), ("eoi", data[:-2] + b"\0" * 8 + data[-2:])):
        (tmp_path / f"pad_{name}.jpg").write_bytes(padded)
        assert np.array_equal(read_image(tmp_path / f"pad_{name}.jpg"), read_image(photos[0])), name


def test_write_is_atomic_and_leaves_no_temporary(set5_dir, tmp_path):
    rgb = _crop(set5_dir / "woman.png")
    target = tmp_path / "sub" / "w.png"
    write_image(target, rgb)
    assert list(target.parent.iterdir()) == [target]
    before = target.read_bytes()
    with pytest.raises(ValueError):  # 16-bit samples cannot go into a JPEG unconverted
        write_image(tmp_path / "sub" / "w.jpg", rgb.astype(np.uint16))
    with pytest.raises(InputError):
        write_image(tmp_path / "sub" / "w.gif", rgb)
    assert list(target.parent.iterdir()) == [target] and target.read_bytes() == before
    assert partial_path(target).name == ".w.partial.png"


def test_quantize_rounds_and_clamps():
    values = np.array([-0.5, 0.0, 0.51 / 255, 0.49 / 255, 1.0, 1.7], dtype=np.float32)
    np.testing.assert_array_equal(quantize(values, np.uint8), [0, 0, 1, 0, 255, 255])
    assert quantize(values, np.uint16)[-1] == 65535
    assert quantize(values, np.float32).max() == 1.0


def test_outscale_size_and_filter(set5_dir):
    rgb = _crop(set5_dir / "bird.png")  # 40 x 48
    x, _ = image_to_model_input(rgb)
    sr = np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)  # a stand-in x4 result
    size = upscaled_size(40, 48, 3.5)
    assert size == (140, 168)
    out = model_output_to_image(sr, None, np.uint8, grey=False, size_hw=size)
    assert out.shape == (140, 168, 3)
    down = model_output_to_image(sr, None, np.uint8, grey=False, size_hw=upscaled_size(40, 48, 1.0))
    # INTER_AREA from a 4x nearest-neighbour image gives back the original pixels
    np.testing.assert_array_equal(down, rgb)


def test_a_full_disk_is_named_when_opencv_cannot_write(tmp_path, monkeypatch):
    """OpenCV's imwrite only returns False ("libpng error: Write Error"): when the file system has
    too little room left, the one line says so; no temporary file is left."""
    import collections

    import sr_deploy.util.files as files

    monkeypatch.setattr(cv2, "imwrite", lambda *args, **kwargs: False)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 60_000, 60_000))
    with pytest.raises(
        SRDeployError, match=r"out\.png: OpenCV could not write \.png \(no space left on device: 0\.1 MB free\)"
    ):
        write_image_consuming(tmp_path / "out.png", np.zeros((384, 384, 3), np.uint8))
    monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: usage(10**12, 0, 10**12))
    with pytest.raises(SRDeployError, match=r"out\.png: OpenCV could not write \.png$"):
        write_image_consuming(tmp_path / "out.png", np.zeros((384, 384, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []
