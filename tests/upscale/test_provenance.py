"""One precision decision per job, named in the outputs (issue 24): a PNG's text field, a JPEG's
comment and a video's ``comment`` tag say which model (name + sha256 prefix) and which precision
made it, read back with Pillow and PyAV; the driver's decision is what the workers get (`settled`);
and a re-run skips only the outputs its own model made (another model's fail, exit 2)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from _upscale_support import cpu_backend, make_clip, save_tiny_srvgg
from click.testing import CliRunner
from PIL import Image

from sr_deploy.cli import cli
from sr_deploy.imaging import (
    add_png_text,
    encode_image,
    image_file_text,
    read_image,
    write_image,
    write_image_consuming,
)
from sr_deploy.upscale import UpscaleOptions, settled, settled_for_workers
from sr_deploy.util.text import provenance, provenance_fields, same_model


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_srvgg(tmp_path_factory.mktemp("m") / "vgg.pt")


def _model_id(path: Path) -> str:
    return f"{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"


def test_png_text_fields_are_read_back_and_leave_the_pixels_alone(set5_dir, tmp_path):
    image = read_image(set5_dir / "bird.png")[:40, :48]
    plain = encode_image(image, ".png")
    tagged = encode_image(image, ".png", text={"sr-deploy": "model=x.pt:0123 precision=bf16"})
    assert tagged != plain and tagged == add_png_text(plain, {"sr-deploy": "model=x.pt:0123 precision=bf16"})
    (tmp_path / "a.png").write_bytes(tagged)
    with Image.open(tmp_path / "a.png") as im:
        im.load()  # a CRC error in the chunk would raise here
        assert im.text == {"sr-deploy": "model=x.pt:0123 precision=bf16"}
    assert np.array_equal(read_image(tmp_path / "a.png"), image)
    # the streaming writer appends the same chunk to the file OpenCV wrote: the same bytes
    write_image_consuming(tmp_path / "b.png", image.copy(), text={"sr-deploy": "model=x.pt:0123 precision=bf16"})
    assert (tmp_path / "b.png").read_bytes() == tagged
    assert image_file_text(tmp_path / "b.png", "sr-deploy") == "model=x.pt:0123 precision=bf16"
    # formats without a place for text are unchanged
    assert encode_image(image, ".webp", text={"k": "v"}) == encode_image(image, ".webp")
    assert image_file_text(tmp_path / "a.png", "other") is None


def test_jpeg_comments_are_read_back_and_leave_the_pixels_alone(set5_dir, tmp_path):
    image = read_image(set5_dir / "bird.png")[:40, :48]
    plain = encode_image(image, ".jpg", quality=90)
    tagged = encode_image(image, ".jpg", quality=90, text={"sr-deploy": "model=x.pt:0123 precision=fp32"})
    assert len(tagged) == len(plain) + 4 + len("sr-deploy: model=x.pt:0123 precision=fp32")
    (tmp_path / "a.jpg").write_bytes(tagged)
    with Image.open(tmp_path / "a.jpg") as im:  # JFIF header first, then the comment
        assert (im.info["jfif"], im.info["comment"]) == (257, b"sr-deploy: model=x.pt:0123 precision=fp32")
    assert np.array_equal(read_image(tmp_path / "a.jpg"), cv2.imdecode(np.frombuffer(plain, np.uint8), 1)[..., ::-1])
    write_image_consuming(tmp_path / "b.jpg", image.copy(), 90, text={"sr-deploy": "model=x.pt:0123 precision=fp32"})
    assert (tmp_path / "b.jpg").read_bytes() == tagged
    assert image_file_text(tmp_path / "b.jpg", "sr-deploy") == "model=x.pt:0123 precision=fp32"
    (tmp_path / "plain.jpg").write_bytes(plain)
    assert image_file_text(tmp_path / "plain.jpg", "sr-deploy") is None
    # fill bytes (0xFF) may stand before any marker: the comment is still found
    at = tagged.index(b"\xff\xfe")
    (tmp_path / "fill.jpg").write_bytes(tagged[:at] + b"\xff\xff" + tagged[at:])
    assert image_file_text(tmp_path / "fill.jpg", "sr-deploy") == "model=x.pt:0123 precision=fp32"


@pytest.mark.parametrize(("flag", "precision"), [("auto", "fp32"), ("bf16", "bf16")])
def test_an_upscaled_png_names_its_model_and_the_precision_the_job_ran_in(set5_dir, model, tmp_path, flag, precision):
    write_image(tmp_path / "in" / "a.png", read_image(set5_dir / "head.png")[:24, :32])
    result = CliRunner().invoke(
        cli,
        ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(model), "--device", "cpu"]
        + ["--precision", flag, "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / "a.png") as im:
        record = f"model={_model_id(model)} precision={precision} outscale=model"
        assert im.text == {"sr-deploy": f"{record} input_bytes={(tmp_path / 'in' / 'a.png').stat().st_size}"}
    if flag == "auto":  # the CPU here has no bf16 instructions (tests/conftest.py): fp32, said once
        assert result.stderr.count("precision: fp32") == 1


def test_an_upscaled_video_names_its_model_and_precision_in_its_comment_tag(video_dir, model, tmp_path):
    clip = make_clip(video_dir / "car_traffic_small.mp4", tmp_path / "clip.mp4", 0.4, size=(80, 46), audio=False)
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(
        cli, ["upscale", str(clip), "-o", str(out), "--model", str(model), "--device", "cpu", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    with av.open(str(out)) as container:
        assert container.metadata.get("comment") == (
            f"model={_model_id(model)} precision=fp32 outscale=model codec=libx264 crf=18 preset=medium "
            f"pix_fmt=auto dedup=exact input_bytes={clip.stat().st_size}"
        )


def test_settled_options_carry_the_drivers_decision(model):
    backend = cpu_backend(model)
    try:
        options = UpscaleOptions(model=str(model), device="cpu", precision="auto")
        decided = settled(options, backend)
        assert (decided.precision, decided.model_id) == (backend.precision, _model_id(model))
        assert decided.video().model_id == _model_id(model)  # the video's resume key names it too
        assert settled(decided, backend) == decided  # deciding again changes nothing
    finally:
        backend.close()
    # workers on CPUs: the driver loads the model on its CPU once and hands the verdict over
    assert settled_for_workers(options, cpu_workers=True, log=lambda m: None).precision == "fp32"
    # GPU workers keep `auto` (fp16 on CUDA is a rule, not a measurement); an explicit precision stays
    assert settled_for_workers(options, cpu_workers=False).precision == "auto"
    explicit = UpscaleOptions(model=str(model), device="cpu", precision="bf16")
    assert settled_for_workers(explicit, cpu_workers=True).precision == "bf16"


def _upscale(source: Path, out: Path, model: Path, *extra: str):
    return CliRunner().invoke(
        cli, ["upscale", str(source), "-o", str(out), "--model", str(model), "--device", "cpu", "--no-progress", *extra]
    )


def test_a_rerun_skips_only_what_its_own_model_made(set5_dir, model, tmp_path):
    """Outputs made with another model (another --model, another --realism) are not this run's:
    each fails in one line naming the file and both models, exit 2, nothing touched; --overwrite
    redoes them. The same weights under another name make the same bytes: skipped. Formats that
    record no model (WebP) are skipped as before."""
    source, out = tmp_path / "in", tmp_path / "out"
    write_image(source / "a.png", read_image(set5_dir / "bird.png")[:24, :32])
    write_image(source / "b.jpg", read_image(set5_dir / "head.png")[:24, :32])
    write_image(source / "c.webp", read_image(set5_dir / "baby.png")[:24, :32])
    assert _upscale(source, out, model, "--ext", "same").exit_code == 0
    made = {p.name: p.read_bytes() for p in out.iterdir()}

    other = save_tiny_srvgg(tmp_path / "other.pt", seed=1)
    result = _upscale(source, out, other, "--ext", "same")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert [e.split(":")[1].strip() for e in errors] == [str(out / "a.png"), str(out / "b.jpg")]
    for line in errors:
        assert f"made with another model ({_model_id(model)}; this run: {_model_id(other)})" in line
        assert "--overwrite redoes it" in line
    assert "0 done, 1 skipped (already there), 2 failed" in result.stderr  # c.webp: no record to read
    assert "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == made

    renamed = tmp_path / "renamed.pt"
    renamed.write_bytes(model.read_bytes())
    again = _upscale(source, out, renamed, "--ext", "same")
    assert again.exit_code == 0 and "0 done, 3 skipped" in again.stderr, again.output

    redo = _upscale(source, out, other, "--ext", "same", "--overwrite")
    assert redo.exit_code == 0 and "3 done" in redo.stderr, redo.output
    with Image.open(out / "a.png") as im:
        assert im.text["sr-deploy"].startswith(f"model={_model_id(other)} precision=fp32 outscale=model ")
    assert _upscale(source, out, other, "--ext", "same").exit_code == 0  # now they are its own


def test_records_are_parsed_and_compared_by_the_models_sha256():
    assert provenance_fields("model=a\nb c.pt:0123456789abcdef precision=bf16")["model"] == "a\nb c.pt:0123456789abcdef"
    assert provenance_fields("hello") is None and provenance_fields(None) is None
    assert same_model("??.pt:0123456789abcdef", "мм.pt:0123456789abcdef")  # the digits decide
    assert not same_model("a.pt:0123456789abcdef", "a.pt:0123456789abcdee")
    assert same_model("??.pt", "мм.pt")  # no digits: the whole id, as a PNG field stores it (Latin-1)
    assert same_model("мм.pt", "мм.pt")  # ...or as a video tag does (UTF-8)
    assert same_model("custom", "custom") and not same_model("custom", "other")
    assert same_model("unnamed", "b.pt:0123456789abcdef")  # digits on one side only: nothing to compare
    record = provenance("a b.pt:0123456789abcdef", "fp32", {"outscale": "2.5", "input_bytes": 12})
    assert provenance_fields(record) == {
        "model": "a b.pt:0123456789abcdef",
        "precision": "fp32",
        "outscale": "2.5",
        "input_bytes": "12",
    }
    assert provenance_fields("model=x.pt precision=fp32") == {"model": "x.pt", "precision": "fp32"}  # older records
    # fields a later version may add, empty values, values with spaces: read, never the whole record lost
    assert provenance_fields("model=x.pt precision=fp32 Outscale9=2 preset=") == {
        "model": "x.pt",
        "precision": "fp32",
        "Outscale9": "2",
        "preset": "",
    }
    assert provenance_fields(provenance("x.pt", "fp32", {"title": "a b%c"}))["title"] == "a b%c"
    assert provenance_fields("model=x.pt precision=fp32 and more") is None  # not ours


def test_the_refusal_stays_on_one_line_whatever_the_names_and_records_hold(set5_dir, model, tmp_path):
    """A newline in the output's name, control characters in a record another program wrote:
    escaped (`util.text.shown`), not printed raw."""
    source, out = tmp_path / "in", tmp_path / "out"
    write_image(source / "a\nb.png", read_image(set5_dir / "bird.png")[:24, :32])
    record = "model=\x1b[31mX\rY.pt:0123456789abcdef precision=fp32"
    (out / "a\nb.png").parent.mkdir()
    (out / "a\nb.png").write_bytes(
        encode_image(read_image(set5_dir / "bird.png")[:96, :128], ".png", text={"sr-deploy": record})
    )
    result = _upscale(source, out, model)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {out}/a\\nb.png: already there, made with another model (\\x1b[31mX\\rY.pt:0123456789abcdef; "
        f"this run: {_model_id(model)}): --overwrite redoes it, or choose another OUT"
    ]
    assert "\x1b" not in result.stderr and "\r" not in result.stderr


@pytest.mark.parametrize("container", ["mp4", "mkv"])  # Matroska keeps the tag as COMMENT
def test_a_video_made_with_another_model_is_not_skipped(video_dir, model, tmp_path, container):
    clip = make_clip(video_dir / "car_traffic_small.mp4", tmp_path / "clip.mp4", 0.2, size=(48, 28), audio=False)
    out = tmp_path / f"out.{container}"
    assert _upscale(clip, out, model).exit_code == 0
    made = out.read_bytes()
    result = _upscale(clip, out, save_tiny_srvgg(tmp_path / "other.pt", seed=1))
    assert result.exit_code == 2 and f"{out}: already there, made with another model" in result.stderr
    assert out.read_bytes() == made
    assert _upscale(clip, out, model).exit_code == 0


def test_a_rerun_skips_only_outputs_its_own_input_and_settings_made(set5_dir, model, tmp_path):
    """The record names the settings that decide an output and the input's size: a re-run with
    another --outscale or --quality, or from another input of the same name (IMG_0001.JPG of
    another camera card), fails that output in one line, exit 2, the file kept (``--outscale 4``
    with a x4 model is no other setting). A file in a format that records, with no record, was not
    made by sr-deploy: refused the same way, not taken for done. WebP keeps no record: skipped as before."""
    card1, card2, out = tmp_path / "card1", tmp_path / "card2", tmp_path / "out"
    write_image(card1 / "IMG_0001.jpg", read_image(set5_dir / "bird.png")[:24, :32])
    write_image(card2 / "IMG_0001.jpg", read_image(set5_dir / "head.png")[:28, :30])
    assert _upscale(card1, out, model, "--ext", "jpg").exit_code == 0
    made = (out / "IMG_0001.jpg").read_bytes()

    def refused(result, why: str) -> None:
        assert result.exit_code == 2, result.output
        assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
            f"error: {out / 'IMG_0001.jpg'}: already there, {why}: --overwrite redoes it, or choose another OUT"
        ]
        assert (out / "IMG_0001.jpg").read_bytes() == made

    size1, size2 = (card1 / "IMG_0001.jpg").stat().st_size, (card2 / "IMG_0001.jpg").stat().st_size
    refused(
        _upscale(card2, out, model, "--ext", "jpg"),
        f"made from another input ({size1} bytes; this run's input: {size2} bytes)",
    )
    refused(
        _upscale(card1, out, model, "--ext", "jpg", "--outscale", "2"),
        "made with other settings (outscale=model; this run: outscale=2)",
    )
    refused(
        _upscale(card1, out, model, "--ext", "jpg", "--quality", "80"),
        "made with other settings (quality=95; this run: quality=80)",
    )
    same = _upscale(card1, out, model, "--ext", "jpg", "--quality", "95", "--tile", "16")  # the tiles: how, not what
    assert same.exit_code == 0 and "0 done, 1 skipped" in same.stderr, same.output
    # --outscale 4 with a x4 model makes the same bytes as no --outscale: the same output, skipped
    # (the --ray driver's skip pass drops it the same way: `with_model_outscale`)
    from sr_deploy.upscale.run import with_model_outscale

    assert with_model_outscale(UpscaleOptions(model=str(model), outscale=4.0)).outscale is None
    assert with_model_outscale(UpscaleOptions(model=str(model), outscale=2.0)).outscale == 2.0
    same = _upscale(card1, out, model, "--ext", "jpg", "--outscale", "4")
    assert same.exit_code == 0 and "0 done, 1 skipped" in same.stderr, same.output
    again = _upscale(card1, tmp_path / "out4", model, "--ext", "jpg", "--outscale", "4.0")
    assert again.exit_code == 0 and (tmp_path / "out4" / "IMG_0001.jpg").read_bytes() == made

    # not made by sr-deploy: a PNG and a JPEG without a record; a WebP, which could not say
    write_image(card1 / "x.png", read_image(set5_dir / "baby.png")[:20, :20])
    write_image(card1 / "y.webp", read_image(set5_dir / "baby.png")[:20, :20])
    for name in ("x.png", "y.webp"):
        write_image(out / name, read_image(set5_dir / "baby.png")[:80, :80])
    (out / "IMG_0001.jpg").write_bytes(encode_image(read_image(set5_dir / "bird.png")[:96, :128], ".jpg"))
    made = (out / "IMG_0001.jpg").read_bytes()
    result = _upscale(card1, out, model, "--ext", "same")
    assert result.exit_code == 2, result.output
    errors = sorted(line for line in result.stderr.splitlines() if line.startswith("error:"))
    no_record = "already there, and it does not say sr-deploy made it (no sr-deploy record in it)"
    assert errors == [
        f"error: {out / n}: {no_record}: --overwrite redoes it, or choose another OUT"
        for n in ("IMG_0001.jpg", "x.png")
    ]
    assert "0 done, 1 skipped (already there), 2 failed" in result.stderr
    assert (out / "IMG_0001.jpg").read_bytes() == made


def test_a_video_made_with_other_settings_is_not_skipped(video_dir, model, tmp_path):
    clip = make_clip(video_dir / "car_traffic_small.mp4", tmp_path / "clip.mp4", 0.2, size=(48, 28), audio=False)
    out = tmp_path / "out.mp4"
    assert _upscale(clip, out, model).exit_code == 0
    made = out.read_bytes()
    result = _upscale(clip, out, model, "--crf", "30")
    assert result.exit_code == 2, result.output
    assert f"{out}: already there, made with other settings (crf=18; this run: crf=30)" in result.stderr
    assert out.read_bytes() == made
    again = _upscale(clip, out, model)
    assert again.exit_code == 0 and "0 done, 1 skipped" in again.stderr, again.output


def test_a_ten_bit_videos_default_encoder_is_recorded_and_resumes(video_dir, model, tmp_path):
    """Without --codec a 10-bit input gets HEVC Main 10 (`default_codec` by bit depth); the record
    names it, a re-run without --codec skips (the input's size pins its default), one with another
    --codec is refused; the Ray pieces' record and encoder are resolved the same way."""
    from _upscale_support import ffmpeg

    from sr_deploy.video import VideoOptions
    from sr_deploy.video.pieces import piece_options, with_input_codec

    deep = tmp_path / "deep.mp4"
    ffmpeg(
        "-i", str(video_dir / "car_traffic_small.mp4"), "-t", "0.2", "-vf", "scale=48:28",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le", "-an", str(deep),
    )  # fmt: skip
    out = tmp_path / "out.mp4"
    assert _upscale(deep, out, model).exit_code == 0
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "hevc"
        assert provenance_fields(container.metadata["comment"])["codec"] == "libx265"
    again = _upscale(deep, out, model)
    assert again.exit_code == 0 and "0 done, 1 skipped" in again.stderr, again.output
    other = _upscale(deep, out, model, "--codec", "libx264")
    assert other.exit_code == 2
    assert "made with other settings (codec=libx265; this run: codec=libx264)" in other.stderr, other.output

    # an 8-bit input made with --codec libx265: a run without --codec would make H.264, not skip it
    eight = make_clip(video_dir / "car_traffic_small.mp4", tmp_path / "eight.mp4", 0.2, size=(48, 28), audio=False)
    assert _upscale(eight, tmp_path / "e.mp4", model, "--codec", "libx265").exit_code == 0
    plain = _upscale(eight, tmp_path / "e.mp4", model)
    assert plain.exit_code == 2
    assert "made with other settings (codec=libx265; this run: codec=libx264)" in plain.stderr, plain.output

    settings = {"options": {"codec": None}, "record": VideoOptions().recorded(".mp4")}
    assert settings["record"]["codec"] == "libx264"  # before the input is probed
    assert with_input_codec(settings, ".mp4", 10)["record"] == VideoOptions().recorded(".mp4", 10)
    assert with_input_codec(settings, ".mp4", 10)["record"]["codec"] == "libx265"
    assert piece_options(VideoOptions(), ".mp4", 10).codec == "libx265"
    assert piece_options(VideoOptions(), ".webm", 10).codec == "libvpx-vp9"
    given = {"options": {"codec": "libx264"}, "record": VideoOptions(codec="libx264").recorded(".mp4")}
    assert with_input_codec(given, ".mp4", 10) == given
