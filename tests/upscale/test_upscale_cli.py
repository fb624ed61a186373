"""`sr-deploy upscale` end to end: folders, bad files, resume, formats, refusals, fp16 fallback."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from _upscale_support import cpu_backend, decoded_video, make_clip, save_tiny_srvgg
from click.testing import CliRunner
from test_imaging import jpeg_with_orientation

from sr_deploy.cli import cli
from sr_deploy.imaging import read_image, write_image


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_srvgg(tmp_path_factory.mktemp("m") / "vgg.pt")


def _rgb(path: Path, top: int = 60, size: int = 24) -> np.ndarray:
    """A small real RGB uint8 crop (size x size+8)."""
    return np.ascontiguousarray(read_image(path)[top : top + size, top : top + size + 8])


def run(*args: str):
    result = CliRunner().invoke(cli, ["upscale", *args, "--device", "cpu", "--no-progress"])
    return result


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_folder_with_a_corrupt_image_reports_it_processes_the_rest_and_resumes(set5_dir, model, tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    write_image(source / "a.png", _rgb(set5_dir / "bird.png"))
    write_image(source / "sub" / "b.png", _rgb(set5_dir / "head.png"))
    (source / "sub" / "c.png").write_bytes((set5_dir / "baby.png").read_bytes()[:300])  # truncated PNG
    (source / "notes.txt").write_text("not an image")

    result = run(str(source), "-o", str(out), "--model", str(model))
    assert result.exit_code == 2, result.output  # a corrupt input is bad input (README: exit codes)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["a.png", "sub/b.png"]
    errors = _error_lines(result)
    assert len(errors) == 1 and "c.png" in errors[0] and "not a readable image" in errors[0]
    assert "2 done, 0 skipped" in result.stderr and "1 failed" in result.stderr
    assert "Traceback" not in result.output
    assert read_image(out / "a.png").shape == (96, 128, 3)

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = run(str(source), "-o", str(out), "--model", str(model))
    assert again.exit_code == 2
    assert "0 done, 2 skipped" in again.stderr and len(_error_lines(again)) == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps  # untouched

    (source / "sub" / "c.png").unlink()
    assert run(str(source), "-o", str(out), "--model", str(model)).exit_code == 0


def test_formats_keep_depth_channels_alpha_and_orientation(set5_dir, set14_dir, model, tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    rgb = _rgb(set5_dir / "butterfly.png")  # 24 x 32
    write_image(source / "deep.png", rgb.astype(np.uint16) * 257)
    write_image(source / "grey.png", np.ascontiguousarray(read_image(set14_dir / "bridge.png")[:24, :32]))
    write_image(source / "alpha.png", np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]))
    (source / "rotated.jpg").write_bytes(jpeg_with_orientation(rgb, 6))

    result = run(str(source), "-o", str(out), "--model", str(model))
    assert result.exit_code == 0, result.output
    deep, grey = read_image(out / "deep.png"), read_image(out / "grey.png")
    alpha, rotated = read_image(out / "alpha.png"), read_image(out / "rotated.png")
    assert deep.dtype == np.uint16 and deep.shape == (96, 128, 3)
    assert len(np.unique(deep & 0xFF)) > 1  # real 16-bit values, not 8-bit ones shifted
    assert grey.dtype == np.uint8 and grey.shape == (96, 128)
    assert alpha.shape == (96, 128, 4) and (alpha[:, :, 3] == 128).all()
    assert rotated.shape == (128, 96, 3)  # EXIF 6: upright is portrait
    # jpg output of a 16-bit input becomes 8-bit
    assert run(str(source / "deep.png"), "-o", str(tmp_path / "deep.jpg"), "--model", str(model)).exit_code == 0
    assert read_image(tmp_path / "deep.jpg").dtype == np.uint8


@pytest.mark.slow
def test_single_input_output_file_outscale_and_ext(set5_dir, model, tmp_path):
    source = tmp_path / "x.png"
    write_image(source, _rgb(set5_dir / "woman.png"))
    result = run(str(source), "-o", str(tmp_path / "named" / "y.webp"), "--model", str(model), "--outscale", "3.5")
    assert result.exit_code == 0, result.output
    assert read_image(tmp_path / "named" / "y.webp").shape == (84, 112, 3)
    result = run(
        str(source),
        "-o",
        str(tmp_path / "folder"),
        "--model",
        str(model),
        "--ext",
        "jpg",
        "--quality",
        "90",
        "--tile",
        "10",
        "--tile-overlap",
        "4",
    )
    assert result.exit_code == 0, result.output
    tiled = read_image(tmp_path / "folder" / "x.jpg")
    assert tiled.shape == (96, 128, 3)


@pytest.mark.slow
def test_mixed_image_and_video_inputs(set5_dir, video_dir, model, tmp_path):
    image = tmp_path / "still.png"
    write_image(image, _rgb(set5_dir / "bird.png"))
    clip = make_clip(video_dir / "car_traffic_small.mp4", tmp_path / "clip.mp4", 0.5, size=(80, 46), audio=False)
    frames = decoded_video(clip)[0]
    result = run(str(image), str(clip), "-o", str(tmp_path / "out"), "--model", str(model), "--preset", "ultrafast")
    assert result.exit_code == 0, result.output
    assert read_image(tmp_path / "out" / "still.png").shape == (96, 128, 3)
    assert decoded_video(tmp_path / "out" / "clip.mp4")[0::2] == (frames, (320, 184))
    assert "2 done" in result.stderr


def test_refuses_to_overwrite_inputs(set5_dir, model, tmp_path):
    source = tmp_path / "a.png"
    write_image(source, _rgb(set5_dir / "bird.png"))
    before = source.read_bytes()
    result = run(str(source), "-o", str(source), "--model", str(model), "--overwrite")
    assert result.exit_code == 2 and "would overwrite the input" in result.stderr
    result = run(str(tmp_path), "-o", str(tmp_path), "--model", str(model), "--ext", "same", "--overwrite")
    assert result.exit_code == 2 and "the output folder is the input folder" in result.stderr
    other = tmp_path / "b.jpg"
    write_image(other, _rgb(set5_dir / "head.png"))
    result = run(str(source), str(other), "-o", str(tmp_path), "--model", str(model), "--ext", "same")
    assert result.exit_code == 2 and "would overwrite the input" in result.stderr
    assert source.read_bytes() == before


def test_output_folder_inside_the_input_folder_is_not_read_back(set5_dir, model, tmp_path):
    write_image(tmp_path / "a.png", _rgb(set5_dir / "bird.png"))
    out = tmp_path / "up"
    assert run(str(tmp_path), "-o", str(out), "--model", str(model)).exit_code == 0
    again = run(str(tmp_path), "-o", str(out), "--model", str(model))
    assert again.exit_code == 0 and "0 done, 1 skipped" in again.stderr
    assert [p.name for p in out.iterdir()] == ["a.png"]


def test_an_input_folder_inside_the_output_folder_is_read(set5_dir, model, tmp_path):
    """`cd work; sr-deploy upscale photos -o .`: the input is inside OUT (not the reverse), so its
    files are inputs, not earlier outputs (it said "no image or video files found in photos")."""
    write_image(tmp_path / "photos" / "a.png", _rgb(set5_dir / "bird.png"))
    result = run(str(tmp_path / "photos"), "-o", str(tmp_path), "--model", str(model))
    assert result.exit_code == 0 and "1 done" in result.stderr, result.output
    assert read_image(tmp_path / "a.png").shape[0] == 4 * read_image(tmp_path / "photos" / "a.png").shape[0]


def test_a_folders_files_in_no_format_it_reads_are_named_not_passed_over(set5_dir, model, tmp_path):
    """A folder of phone photos with HEIC / GIF files among the JPEGs: the run says it left them
    out (how many, the first names) instead of reporting "all done" over photos it never read."""
    source = tmp_path / "in"
    write_image(source / "a.png", _rgb(set5_dir / "bird.png"))
    for name in ("b.gif", "c.heic", "d.txt", "sub/e.avif", ".hidden"):
        (source / name).parent.mkdir(exist_ok=True)
        (source / name).write_bytes(b"not read")
    result = run(str(source), "-o", str(tmp_path / "out"), "--model", str(model))
    assert result.exit_code == 0 and "1 done" in result.stderr, result.output
    assert f"note: {source}: 4 file(s) left out, in no image or video format this reads: b.gif, c.heic, d.txt, ..." in (
        result.stderr.splitlines()
    )


def test_the_inputs_colour_profile_and_exif_are_kept_where_they_still_describe_the_output(set5_dir, model, tmp_path):
    """A photo's ICC profile (a phone's Display P3) goes into PNG and JPEG outputs unchanged, also
    one too large for one JPEG segment, and so do its EXIF fields (date taken, camera, GPS), with
    the orientation the pixels were turned by set to 1 and the pixel dimensions to the output's; a
    re-run still finds the JPEG's record and skips it. A CMYK photo's profile is not carried into
    the RGB output (it would describe the wrong colours)."""
    from PIL import Image, ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    large = srgb + bytes(range(256)) * 600  # 150 KiB: three APP2 segments
    cmyk = srgb[:16] + b"CMYK" + srgb[20:]
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x0132] = 6, "Apple", "2023:07:14 10:20:30"  # orientation, make, date
    exif.get_ifd(0x8769).update({0x9003: "2023:07:14 10:20:30", 0xA002: 32, 0xA003: 24})  # taken; pixels
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 30.0)})  # GPS latitude
    photo = Image.fromarray(_rgb(set5_dir / "bird.png")).crop((0, 0, 32, 24))
    source = tmp_path / "in"
    source.mkdir()
    photo.save(source / "p3.jpg", icc_profile=srgb, exif=exif, quality=90)
    photo.save(source / "large.png", icc_profile=large)
    photo.convert("CMYK").save(source / "cmyk.jpg", icc_profile=cmyk)
    out = tmp_path / "out"
    for ext in ("png", "jpg"):
        assert run(str(source), "-o", str(out / ext), "--model", str(model), "--ext", ext).exit_code == 0
        for name, expected in (("p3", srgb), ("large", large), ("cmyk", None)):
            with Image.open(out / ext / f"{name}.{ext}") as image:
                image.load()
                assert image.info.get("icc_profile") == expected, (ext, name)
        with Image.open(out / ext / f"p3.{ext}") as image:
            assert image.size == (96, 128)  # turned upright by the orientation (6: 90 degrees)
            kept = image.getexif()
            assert (kept[0x0112], kept[0x010F], kept[0x0132]) == (1, "Apple", "2023:07:14 10:20:30")
            assert kept.get_ifd(0x8769) == {0x9003: "2023:07:14 10:20:30", 0xA002: 96, 0xA003: 128}
            assert kept.get_ifd(0x8825) == {1: "N", 2: (48.0, 51.0, 30.0)}
    again = run(str(source), "-o", str(out / "jpg"), "--model", str(model), "--ext", "jpg")
    assert again.exit_code == 0 and "0 done, 3 skipped" in again.stderr, again.output


def test_an_output_named_in_a_format_it_cannot_write_or_with_a_slash_means_what_it_says(set5_dir, model, tmp_path):
    """`-o x.gif` (or .HEIC) is refused, not made into a folder named x.gif; `-o up.png/` names a
    folder (the slash), not a file called up.png."""
    write_image(tmp_path / "a.png", _rgb(set5_dir / "bird.png"))
    for name in ("x.gif", "y.HEIC"):
        result = run(str(tmp_path / "a.png"), "-o", str(tmp_path / name), "--model", str(model))
        assert result.exit_code == 2 and not (tmp_path / name).exists(), result.output
        suffix = name.split(".")[1]
        assert _error_lines(result) == [
            f"error: {tmp_path / name}: sr-deploy does not write .{suffix} files: name a .png, .jpg or .webp "
            "file (or the video's container), or a folder"
        ]
    folder = run(str(tmp_path / "a.png"), "-o", f"{tmp_path / 'up.png'}/", "--model", str(model))
    assert folder.exit_code == 0 and (tmp_path / "up.png" / "a.png").is_file(), folder.output


def test_a_damaged_tiff_is_one_line_without_opencvs_log(set5_dir, model, tmp_path):
    """OpenCV's own log of a broken TIFF (four `[ WARN` / `[ERROR` lines) is not printed next to
    the command's one line; --debug keeps it."""
    import os
    import subprocess
    import sys

    write_image(tmp_path / "whole.tif", _rgb(set5_dir / "bird.png"))
    data = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    command = [sys.executable, "-m", "sr_deploy", "upscale", str(tmp_path / "cut.tif"), "-o", str(tmp_path / "o.png")]
    command += ["--model", str(model), "--device", "cpu", "--no-progress"]
    # in-process CLI runs of other tests set OPENCV_LOG_LEVEL in this process's environment
    env = {key: value for key, value in os.environ.items() if key != "OPENCV_LOG_LEVEL"}
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert quiet.returncode == 2, quiet.stderr
    assert [line for line in quiet.stderr.splitlines() if not line.startswith(("precision:", "upscale:"))] == [
        f"error: {tmp_path / 'cut.tif'}: not a readable image (corrupt or unsupported format)"
    ]
    loud = subprocess.run(command[:3] + ["--debug"] + command[3:], capture_output=True, text=True, timeout=300, env=env)
    assert loud.returncode == 2 and "[ERROR" in loud.stderr


def test_a_second_models_run_over_the_folder_leaves_the_first_runs_outputs_out(set5_dir, model, tmp_path):
    """`upscale photos -o photos/x4`, then `-o photos/x4_other` with another model: the first run's
    outputs (they record sr-deploy made them) are not upscaled again (x16), and a note says so;
    given as a file, one still is."""
    photos = tmp_path / "photos"
    write_image(photos / "a.png", _rgb(set5_dir / "bird.png"))
    assert run(str(photos), "-o", str(photos / "x4"), "--model", str(model)).exit_code == 0
    other = save_tiny_srvgg(tmp_path / "other.pt", seed=1)
    second = run(str(photos), "-o", str(photos / "x4_other"), "--model", str(other))
    assert second.exit_code == 0 and "1 done" in second.stderr, second.output
    assert f"note: {photos}: 1 file(s) left out, made by sr-deploy (give them as files to redo them): x4/a.png" in (
        second.stderr.splitlines()
    )
    assert sorted(str(p.relative_to(photos / "x4_other")) for p in (photos / "x4_other").rglob("*")) == ["a.png"]
    again = run(str(photos / "x4" / "a.png"), "-o", str(tmp_path / "x16.png"), "--model", str(other))
    assert again.exit_code == 0 and read_image(tmp_path / "x16.png").shape == (384, 512, 3), again.output


def test_a_library_caller_with_its_own_backend_needs_no_model_file(set5_dir, model, tmp_path):
    """`upscale(..., backend=B)`: the options' model name is a label, not a file to check."""
    from sr_deploy.upscale import UpscaleOptions, upscale

    write_image(tmp_path / "in.png", _rgb(set5_dir / "bird.png"))
    options = UpscaleOptions(model="in-memory-model", progress=False, device="cpu")
    summary = upscale([tmp_path / "in.png"], tmp_path / "out.png", options, backend=cpu_backend(model))
    assert summary.done == [tmp_path / "out.png"] and read_image(tmp_path / "out.png").shape == (96, 128, 3)


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.png", "-o", "out"], "missing.png: no such file or folder"),
        # The bundled models are shipped (test_default_model.py); realism outside [0, 1] is refused up front.
        (["INPUT", "-o", "out", "--realism", "2"], "--realism 2.0: must be between 0 and 1"),
        (["INPUT", "-o", "out", "--model", "MODEL", "--tile", "-1"], "--tile must be >= 0"),
        (["README", "-o", "out", "--model", "MODEL"], "not an image or video file"),
        (["INPUT", "-o", "out", "--model", "nope.pt"], "nope.pt: no such model file"),
        # it said "s3:/b/m.pt: no such model file" (Path folds the //)
        (["INPUT", "-o", "out", "--model", "s3://b/m.pt"], "error: s3://b/m.pt: expected a local path"),
        # click gives --ray the next word: with one input, INPUTS was "missing" (no word of --ray)
        (["--ray", "INPUT", "-o", "out"], "(an input) as the cluster address: write --ray=ADDRESS"),
        (["-o", "out"], "Missing argument 'INPUTS...'"),
        (["--ray", "typo.png", "-o", "out"], "--ray took 'typo.png' (an input) as the cluster address"),
        # it was ignored: the run went on here, on one process
        (["INPUT", "-o", "out", "--ray-actors", "2"], "--ray-actors is for --ray runs: add --ray"),
        # an encoder's limits, checked before the model loads (x264 itself would only log and clamp)
        (["VIDEO", "-o", "out", "--model", "MODEL", "--preset", "bogus"], "--preset bogus: libx264 takes ultrafast,"),
        (["VIDEO", "-o", "out", "--model", "MODEL", "--crf", "99"], "--crf 99: libx264 takes 0 to 51"),
        (
            ["VIDEO", "-o", "out", "--model", "MODEL", "--codec", "libvpx-vp9", "--crf", "70"],
            "--crf 70: the libvpx-vp9 encoder refuses it (Numerical result out of range)",
        ),
    ],
)
def test_bad_usage_is_one_line_exit_2(set5_dir, video_dir, model, tmp_path, args, message):
    (tmp_path / "README").write_text("hello")
    write_image(tmp_path / "in.png", _rgb(set5_dir / "bird.png"))
    subst = {
        "VIDEO": str(video_dir / "mov_bbb.mp4"),
        "INPUT": str(tmp_path / "in.png"),
        "MODEL": str(model),
        "README": str(tmp_path / "README"),
        "out": str(tmp_path / "out"),
        "missing.png": str(tmp_path / "missing.png"),
        "nope.pt": str(tmp_path / "nope.pt"),
    }
    result = run(*[subst.get(a, a) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(_error_lines(result)) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # refused before the output folder is made


def test_fp16_nan_batches_are_redone_in_fp32_with_a_warning(set5_dir, tmp_path):
    """A model whose activations overflow float16 (x1e6 output conv) gives NaN in fp16."""
    overflow = save_tiny_srvgg(tmp_path / "big.pt", output_gain=1e6)
    source = tmp_path / "in.png"
    write_image(source, _rgb(set5_dir / "head.png"))
    result = run(str(source), "-o", str(tmp_path / "fp16.png"), "--model", str(overflow), "--precision", "fp16")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "in.png" in warnings[0] and "fp32" in warnings[0]
    fp32 = cpu_backend(overflow)
    x = cv2.cvtColor(cv2.imread(str(source)), cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None] / np.float32(255)
    expected = np.rint(np.clip(fp32(x.astype(np.float32))[0], 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    np.testing.assert_array_equal(read_image(tmp_path / "fp16.png"), expected)


def test_onnxruntime_static_shape_backend_is_tiled_to_its_max_shape(set5_dir, model, tmp_path):
    """An ONNX file with a fixed 2x16x16 input: `upscale` tiles to it, same pixels as torch."""
    from sr_deploy.export import export_onnx

    onnx_path = tmp_path / "static.onnx"
    export_onnx(model, onnx_path, static_shape="2x16x16", exporter="legacy", verify=False, log=None)
    source = tmp_path / "in.png"
    rgb = _rgb(set5_dir / "butterfly.png")  # 24 x 32: larger than 16 x 16 both ways
    write_image(source, rgb)
    result = run(
        str(source),
        "-o",
        str(tmp_path / "ort.png"),
        "--model",
        str(onnx_path),
        "--backend",
        "onnxruntime",
        "--tile-overlap",
        "4",
    )
    assert result.exit_code == 0, result.output
    x = rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255
    expected = np.rint(np.clip(cpu_backend(model)(x)[0], 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    out = read_image(tmp_path / "ort.png")
    assert out.shape == (96, 128, 3)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    # the default overlap (16) leaves no room in a 16-pixel window: one clear line, exit 1
    result = run(str(source), "-o", str(tmp_path / "ort2.png"), "--model", str(onnx_path), "--backend", "onnxruntime")
    assert result.exit_code == 1 and "--tile-overlap" in _error_lines(result)[0]


def test_empty_file_or_folder_under_the_output_name_is_not_taken_for_done(set5_dir, model, tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    write_image(source / "a.png", _rgb(set5_dir / "bird.png"))
    write_image(source / "b.png", _rgb(set5_dir / "head.png"))
    out.mkdir()
    (out / "a.png").write_bytes(b"")  # e.g. `touch`, or a copy that failed
    (out / "b.png").mkdir()
    result = run(str(source), "-o", str(out), "--model", str(model))
    assert result.exit_code == 2, result.output
    assert "1 done, 0 skipped" in result.stderr and "1 failed" in result.stderr
    assert read_image(out / "a.png").shape == (96, 128, 3)
    errors = _error_lines(result)
    assert len(errors) == 1 and "b.png" in errors[0] and "a folder has the output's name" in errors[0]


def test_a_file_name_as_output_for_several_inputs_is_refused(set5_dir, model, tmp_path):
    write_image(tmp_path / "a.png", _rgb(set5_dir / "bird.png"))
    write_image(tmp_path / "b.png", _rgb(set5_dir / "head.png"))
    result = run(str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "r.png"), "--model", str(model))
    assert result.exit_code == 2 and "r.png: names a file, but 2 inputs need an output folder" in result.stderr
    assert not (tmp_path / "r.png").exists() and len(_error_lines(result)) == 1


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-2", "1000"])
def test_outscale_is_validated_before_the_model_runs(set5_dir, tmp_path, value):
    write_image(tmp_path / "a.png", _rgb(set5_dir / "bird.png"))
    # A model path that does not exist: the option must be refused before any model is looked at.
    result = run(
        str(tmp_path / "a.png"),
        "-o",
        str(tmp_path / "b.png"),
        "--model",
        str(tmp_path / "none.pt"),
        "--outscale",
        value,
    )
    assert result.exit_code == 2, result.output
    assert "--outscale must be a number > 0 and <= 64" in result.stderr and "Traceback" not in result.output
    assert "OverflowError" not in result.output and not (tmp_path / "b.png").exists()


def test_animated_webp_and_png_and_a_multi_page_tiff_are_refused_in_one_line(set5_dir, model, tmp_path):
    """OpenCV reads only their first picture: a run must not say "done" over a cut animation."""
    from PIL import Image

    frames = [Image.fromarray(_rgb(set5_dir / name)) for name in ("bird.png", "head.png", "baby.png")]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(tmp_path / "apng.png", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "still.webp")
    frames[1].save(tmp_path / "still_png.png")
    frames[2].save(tmp_path / "still_tif.tif")
    names = ("anim.webp", "apng.png", "pages.tif", "still.webp", "still_png.png", "still_tif.tif")
    result = run(*(str(tmp_path / n) for n in names), "-o", str(tmp_path / "out"), "--model", str(model))
    assert result.exit_code == 2, result.output
    assert _error_lines(result) == [
        f"error: {tmp_path / 'anim.webp'}: animated WebP (3 frames); OpenCV would read only the first: "
        "convert it to a video (e.g. .webm / .mp4) and upscale that",
        f"error: {tmp_path / 'apng.png'}: animated PNG (3 frames); OpenCV would read only the first: "
        "convert it to a video (e.g. .webm / .mp4) and upscale that",
        f"error: {tmp_path / 'pages.tif'}: a TIFF of 3 pages; only the first would be read: save each page as a file",
    ]
    for name in ("still", "still_png", "still_tif"):
        assert read_image(tmp_path / "out" / f"{name}.png").shape == (96, 128, 3)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["still.png", "still_png.png", "still_tif.png"]


def test_nan_weights_are_refused_instead_of_writing_black(set5_dir, tmp_path):
    """A checkpoint with a NaN weight (flipped bytes: torch does not check the archive) is refused
    when it loads, naming the weight, exit 2; nothing is written. A NaN the model makes itself
    (fp16 overflow) is redone in fp32 (`test_fp16_nan_batches_are_redone_in_fp32_with_a_warning`)."""
    nan_model = save_tiny_srvgg(tmp_path / "nan.pt", nan_weight=True)
    write_image(tmp_path / "a.png", _rgb(set5_dir / "bird.png"))
    result = run(str(tmp_path / "a.png"), "-o", str(tmp_path / "b.png"), "--model", str(nan_model))
    assert result.exit_code == 2, result.output
    errors = _error_lines(result)
    why = "non-finite weights (NaN/Inf) in body.0.weight: the file is damaged, or its training diverged"
    assert errors == [f"error: {nan_model}: {why}"]
    assert not (tmp_path / "b.png").exists()


@pytest.mark.slow
def test_tiles_are_quantized_into_the_output_as_they_finish(set5_dir, model, tmp_path):
    """The streaming writer gives the same pixels as the float32 path (untiled vs --tile 10)."""
    rgb = _rgb(set5_dir / "baby.png", size=40)
    write_image(tmp_path / "a.png", rgb)
    write_image(tmp_path / "g.png", np.ascontiguousarray(rgb[:, :, 1]))
    for name in ("a", "g"):
        whole = run(
            str(tmp_path / f"{name}.png"),
            "-o",
            str(tmp_path / f"{name}_whole.png"),
            "--model",
            str(model),
            "--tile",
            "0",
        )
        tiled = run(
            str(tmp_path / f"{name}.png"),
            "-o",
            str(tmp_path / f"{name}_tiled.png"),
            "--model",
            str(model),
            "--tile",
            "10",
            "--tile-overlap",
            "8",
        )
        assert whole.exit_code == tiled.exit_code == 0
        a, b = read_image(tmp_path / f"{name}_whole.png"), read_image(tmp_path / f"{name}_tiled.png")
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1
    x = rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255
    expected = np.rint(np.clip(cpu_backend(model)(x)[0], 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    np.testing.assert_array_equal(read_image(tmp_path / "a_whole.png"), expected)


@pytest.mark.slow
def test_image_memory_follows_the_8bit_output_not_a_float32_copy(shared_data, tmp_path):
    """numpy's allocations (tracemalloc sees them) for a 1000x750 -> 4000x3000 upscale with 64-pixel
    tiles: the 8-bit output is 36 MB, a float32 copy of it would be 144 MB on its own."""
    import tracemalloc

    from _upscale_support import NearestBackend

    from sr_deploy.upscale import UpscaleOptions, upscale_image_file

    photo = cv2.resize(cv2.imread(str(min((shared_data / "train" / "Sun_Hays80").glob("*.jpg")))), (1000, 750))
    cv2.imwrite(str(tmp_path / "in.png"), photo)
    tracemalloc.start()
    try:
        upscale_image_file(NearestBackend(4), tmp_path / "in.png", tmp_path / "out.png", UpscaleOptions(tile=64))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    out = read_image(tmp_path / "out.png")
    assert out.shape == (3000, 4000, 3)
    np.testing.assert_array_equal(out[::4, ::4], cv2.cvtColor(photo, cv2.COLOR_BGR2RGB))  # nearest x4: exact
    assert peak < 80e6, f"peak {peak / 1e6:.0f} MB"


def test_result_line_escapes_a_newline_in_the_file_name(set5_dir, model, tmp_path):
    """The `result:` line is read by scripts: a newline inside a name must not split it."""
    source = tmp_path / "in"
    source.mkdir()
    write_image(source / "two\nlines.png", _rgb(set5_dir / "bird.png"))
    out = tmp_path / "out"
    result = run(str(source / "two\nlines.png"), "-o", str(out / "two\nlines_x4.png"), "--model", str(model))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"result: {out}/two\\nlines_x4.png\n"
    assert read_image(out / "two\nlines_x4.png").shape[:2] == (96, 128)


def test_an_error_line_keeps_the_cause_of_a_file_whose_name_holds_a_newline(model, tmp_path):
    """The name is escaped and the cause after it kept (it was cut at the name's newline)."""
    (tmp_path / "evil\nx.jpg").write_bytes(b"not a jpeg at all")
    result = run(str(tmp_path / "evil\nx.jpg"), "-o", str(tmp_path / "out"), "--model", str(model))
    assert result.exit_code == 2, result.output
    assert _error_lines(result) == [
        f"error: {tmp_path}/evil\\nx.jpg: not a readable image (corrupt or unsupported format)"
    ]


def test_debug_shows_the_traceback_of_a_per_file_error(set5_dir, model, tmp_path, monkeypatch):
    """Per-file errors are caught so the other files go on; --debug still shows where they came from."""
    monkeypatch.delenv("SR_DEPLOY_DEBUG", raising=False)
    bad = tmp_path / "bad.png"
    bad.write_bytes((set5_dir / "baby.png").read_bytes()[:300])  # truncated PNG
    plain = CliRunner().invoke(cli, ["upscale", str(bad), "-o", str(tmp_path / "o.png"), "--device", "cpu"])
    assert plain.exit_code == 2 and "Traceback" not in plain.stderr
    debug = CliRunner().invoke(cli, ["--debug", "upscale", str(bad), "-o", str(tmp_path / "o.png"), "--device", "cpu"])
    assert debug.exit_code == 2
    assert "Traceback (most recent call last):" in debug.stderr and "not a readable image" in debug.stderr
    assert _error_lines(debug) == _error_lines(plain)
    monkeypatch.delenv("SR_DEPLOY_DEBUG", raising=False)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says width x height, with one tiny (wrong) IDAT: what a decompression
    bomb looks like before decoding; reading its header must be all that happens."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def test_an_image_too_large_for_memory_is_refused_from_its_header(model, tmp_path):
    """Issue 24 D: a valid 875 KB PNG of 30000x30000 allocated until the machine ran out."""
    bomb = _png_header_only(tmp_path / "bomb.png", 30000, 30000)
    result = run(str(bomb), "-o", str(tmp_path / "out.png"), "--model", str(model))
    assert result.exit_code == 2, result.output
    (error,) = _error_lines(result)
    assert error.startswith(f"error: {bomb}: 30000x30000 is 900.0 Mpx, more than the ")
    assert "Mpx of the memory available now at x4; pass --max-pixels N to change the bound" in error
    assert not (tmp_path / "out.png").exists()


def test_max_pixels_bounds_inputs_by_their_header(set5_dir, model, tmp_path):
    src = tmp_path / "bird.png"
    write_image(src, _rgb(set5_dir / "bird.png"))  # 32x24 = 768 pixels
    refused = run(str(src), "-o", str(tmp_path / "a.png"), "--model", str(model), "--max-pixels", "767")
    assert refused.exit_code == 2
    assert _error_lines(refused) == [
        f"error: {src}: 32x24 is 768 pixels, more than the 767 pixels of --max-pixels; "
        "pass --max-pixels N to change the bound"
    ]
    allowed = run(str(src), "-o", str(tmp_path / "b.png"), "--model", str(model), "--max-pixels", "768")
    assert allowed.exit_code == 0 and read_image(tmp_path / "b.png").shape[:2] == (96, 128)
    bad = run(str(src), "-o", str(tmp_path / "c.png"), "--model", str(model), "--max-pixels", "0")
    assert bad.exit_code == 2 and "--max-pixels must be >= 1, got 0" in bad.stderr


def test_a_model_that_does_not_load_leaves_no_output_folder(set5_dir, tmp_path):
    """Before: the output folder was made while planning, so a damaged checkpoint (or a backend
    that is not installed, or --device cuda here) left an empty `-o` folder behind."""
    write_image(tmp_path / "in" / "a.png", _rgb(set5_dir / "bird.png"))
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint")
    for output in (tmp_path / "out", tmp_path / "new" / "deeper"):
        result = run(str(tmp_path / "in"), "-o", str(output), "--model", str(damaged))
        assert result.exit_code == 2, result.output
        assert _error_lines(result) == [
            f"error: {damaged}: not a PyTorch checkpoint (neither a torch zip archive, a pickle nor safetensors)"
        ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.pt", "in"]


def test_an_output_folder_that_cannot_be_made_is_refused_before_the_model(set5_dir, model, tmp_path):
    write_image(tmp_path / "in" / "a.png", _rgb(set5_dir / "bird.png"))
    (tmp_path / "file").write_text("a file where a folder would go")
    result = run(str(tmp_path / "in"), "-o", str(tmp_path / "file" / "out"), "--model", str(model))
    assert result.exit_code == 2, result.output
    assert len(_error_lines(result)) == 1 and f"{tmp_path / 'file' / 'out'}: cannot write in" in result.stderr
