"""One precision decision per job, named in the outputs (issue 24): a PNG's text field and a
video's ``comment`` tag say which model (name + sha256 prefix) and which precision made it, read
back with Pillow and PyAV; the driver's decision is what the workers get (`settled`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np
import pytest
from _upscale_support import cpu_backend, make_clip, save_tiny_srvgg
from click.testing import CliRunner
from PIL import Image

from sr_deploy.cli import cli
from sr_deploy.imaging import add_png_text, encode_image, read_image, write_image, write_image_consuming
from sr_deploy.upscale import UpscaleOptions, settled, settled_for_workers


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
    # other formats have no such field and are unchanged
    assert encode_image(image, ".jpg", text={"k": "v"}) == encode_image(image, ".jpg")


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
        assert im.text == {"sr-deploy": f"model={_model_id(model)} precision={precision}"}
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
        assert container.metadata.get("comment") == f"model={_model_id(model)} precision=fp32"


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
