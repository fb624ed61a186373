"""The quick start's own test picture."""

import numpy as np
from click.testing import CliRunner

from sr_deploy.cli import cli
from sr_deploy.imaging import read_image
from sr_deploy.sample import make_sample_image


def test_sample_command_writes_a_readable_deterministic_picture(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["sample", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    img = read_image(tmp_path / "s.png")
    assert img.shape == (160, 240, 3) and img.dtype == np.uint8
    assert np.array_equal(img, make_sample_image())
    assert img.std() > 40  # real content, not a flat image


def test_sample_into_missing_folder_is_one_line_exit_2(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["sample", str(tmp_path / "nope" / "s.png")])
    assert result.exit_code == 2 and "does not exist" in result.output
