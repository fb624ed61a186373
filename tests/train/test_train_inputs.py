"""What `python -m train` refuses before it trains or writes anything, and what it guards while it
runs (probe-ml D5, D6, D7, D10, D13): a second run on the same --out, a config of the wrong type,
range, keys or recipe, a damaged state file, a damaged JPEG in --data or --val, an --out inside the
data, and the speed of a logging window that a validation cut.

Every run here is in-process on synthetic 32x32 images with a 1-block, 8-feature SRResNet: a
training run is a fraction of a second, a refused one does no training at all.
"""

from __future__ import annotations

import csv
import glob
from pathlib import Path

import cv2
import numpy as np
import pytest

from sr_deploy.util.files import exclusive_output
from train.cli import main as train_main
from train.config import load_config
from train.schema import validate_config

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    *("--workers", "0", "--no-progress", "--set", "data.batch_size=2", "--set", "data.crop_size=16"),
    *("--set", "model.num_blocks=1", "--set", "model.num_features=8", "--set", "log.every=1"),
]


def run(*args: object) -> int:
    return train_main([str(a) for a in args])


def write_images(folder: Path, count: int = 3, size: int = 32, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return folder


def truncated_jpeg(path: Path, size: int = 48) -> Path:
    """A JPEG cut to 60 % of its bytes: OpenCV decodes it (grey-filling the rest) with only a
    libjpeg warning; `sr-deploy eval` refuses it."""
    rng = np.random.default_rng(1)
    ok, data = cv2.imencode(".jpg", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    assert ok
    path.write_bytes(data.tobytes()[: int(data.size * 0.6)])
    assert cv2.imread(str(path)) is not None  # the lenient decoder takes it
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_images(tmp_path / "data")


@pytest.fixture
def finished_run(tmp_path: Path, data: Path) -> Path:
    """A finished 2-iteration srresnet run."""
    out = tmp_path / "done"
    assert run("srresnet", *TINY, "--data", data, "--out", out, "--iters", 2) == 0
    return out


# ------------------------------------------------------------------------------ D5: one run per --out
def test_a_second_run_on_the_same_out_fails_at_once_while_the_first_goes_on(tmp_path, data, capsys, monkeypatch):
    """The run folder is locked for the whole run: a run started on it meanwhile (here from
    inside the first one's start-up, once it has written its config and log) is refused at once,
    exit 2, one line, and leaves the first one's files alone."""
    from train import trainer

    out, seen = tmp_path / "race", {}
    original = trainer.Trainer._log_start

    def start_then_race(self, log, start):
        original(self, log, start)
        capsys.readouterr()
        seen["rc"] = run("srresnet", *TINY, "--data", data, "--out", out, "--iters", 2)
        seen["err"] = capsys.readouterr().err.strip().splitlines()

    monkeypatch.setattr(trainer.Trainer, "_log_start", start_then_race)
    assert run("srresnet", *TINY, "--data", data, "--out", out, "--iters", 2) == 0
    assert seen["rc"] == 2
    assert len(seen["err"]) == 1 and "another run is using it" in seen["err"][0] and str(out) in seen["err"][0]
    log = (out / "train.log").read_text()
    assert log.count(" start srresnet: ") == 1 and "done: 2 iterations" in log
    assert not list(tmp_path.glob(".race.lock"))  # the lock file goes with the run


def test_a_run_is_refused_while_another_process_holds_the_folder(tmp_path, data, capsys):
    out = tmp_path / "busy"
    with exclusive_output(out.resolve()):
        assert run("srresnet", *TINY, "--data", data, "--out", out, "--iters", 2) == 2
    assert "another run is using it" in one_error_line(capsys)
    assert not out.exists()


# ------------------------------------------------------------------------------ D6: the config
@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("train.lr=abc", "train.lr 'abc': expected a finite number > 0"),
        ("train.lr=-1", "train.lr -1: expected a finite number > 0"),
        ("train.lr=.nan", "train.lr nan: expected a finite number > 0"),
        ("data.batch_size=0", "data.batch_size 0: expected an integer >= 1"),
        ("data.crop_size=1.5", "data.crop_size 1.5: expected an integer >= 1"),
        ("model.num_blocks=-3", "model.num_blocks -3: expected an integer >= 1"),
        ("train.betas=[0.9]", "train.betas [0.9]: expected two numbers"),
        ("train.schedule=step", "train.schedule 'step': expected one of none, multistep, cosine"),
        ("val.degrade=jpeg=400", "val.degrade 'jpeg=400': expected an eval --degrade spec"),
        ("losses.pixel.kind=l1", "no setting 'losses.pixel.kind' (the settings of losses.pixel: type, weight)"),
        ("losses.pixl={type: l1, weight: 1.0}", "no loss 'losses.pixl'"),
        ("train.lrr=1e-4", "no setting 'train.lrr' (the settings of train: amp, betas,"),
    ],
)
def test_bad_settings_are_one_line_exit_2_and_nothing_is_written(setting, expected, tmp_path, data, capsys):
    out = tmp_path / "run"
    assert run("srresnet", *TINY, "--data", data, "--out", out, "--iters", 2, "--set", setting) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: --set {setting}: ") and expected in line, line
    assert not out.exists()


def test_shortcut_options_are_checked_and_named(tmp_path, data, capsys):
    assert run("srresnet", *TINY, "--data", data, "--out", tmp_path / "r", "--iters", 0) == 2
    assert "--iters 0: train.iterations 0: expected an integer >= 1" in one_error_line(capsys)
    assert run("srresnet", *TINY, "--data", data, "--out", tmp_path / "r", "--max-images", 0) == 2
    assert "--max-images 0: data.max_images 0: expected an integer >= 1 or null" in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_a_config_file_without_a_required_key_or_of_another_recipe(tmp_path, data, capsys):
    text = (ROOT / "train" / "configs" / "srresnet.yaml").read_text()
    no_lr = tmp_path / "nolr.yaml"
    no_lr.write_text(text.replace("  lr: 1.0e-4\n", ""))
    assert "lr" not in load_config(no_lr)["train"]
    assert run("srresnet", *TINY, "--data", data, "--out", tmp_path / "r", "--config", no_lr) == 2
    assert f"{no_lr}: train.lr is missing" in one_error_line(capsys)
    other = ROOT / "train" / "configs" / "esrgan.yaml"
    assert run("srresnet", *TINY, "--data", data, "--out", tmp_path / "r", "--config", other) == 2
    line = one_error_line(capsys)
    assert str(other) in line and "recipe: esrgan in the config, but the command line names srresnet" in line
    unknown = tmp_path / "extra.yaml"
    unknown.write_text(text + "\nschedule: cosine\n")
    assert run("srresnet", *TINY, "--data", data, "--out", tmp_path / "r", "--config", unknown) == 2
    assert f"{unknown}: no top-level setting 'schedule'" in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_resume_by_another_recipe_or_from_an_empty_state_is_one_line(finished_run, data, capsys):
    resume = ["--data", data, "--out", finished_run, "--resume", "--workers", "0", "--no-progress"]
    before = (finished_run / "train.log").read_text()
    assert run("srgan", *resume, "--iters", 3) == 2
    line = one_error_line(capsys)
    assert str(finished_run / "config.yaml") in line and "made by the srresnet recipe, not srgan" in line
    (finished_run / "state_latest.pt").write_bytes(b"")
    assert run("srresnet", *resume, "--iters", 3) == 2
    assert "state_latest.pt: empty file, not a training state" in one_error_line(capsys)
    (finished_run / "state_latest.pt").write_bytes(b"\x80\x02")  # a torch.load error with a short message
    assert run("srresnet", *resume, "--iters", 3) == 2
    assert "state_latest.pt: unreadable training state" in one_error_line(capsys)
    assert (finished_run / "train.log").read_text() == before


def test_first_line_of_an_exception_without_a_message():
    from sr_deploy.util.text import first_line

    assert first_line(EOFError()) == "EOFError" and first_line(ValueError("\n\n")) == "ValueError"
    assert first_line(ValueError("\n  two\nthree")) == "two"


def test_every_recipe_and_committed_run_config_passes_the_check():
    """The known keys are those the recipes and the committed runs use: resuming any of them
    must not be refused by the check."""
    from train.data import DEGRADATIONS
    from train.discriminators import DISCRIMINATORS
    from train.schema import DEGRADATIONS as SCHEMA_DEGRADATIONS
    from train.schema import DISCRIMINATORS as SCHEMA_DISCRIMINATORS

    files = sorted(glob.glob(str(ROOT / "train" / "configs" / "*.yaml")))
    files += sorted(glob.glob(str(ROOT / "train" / "runs" / "*" / "config.yaml")))
    assert len(files) >= 6
    for path in files:
        validate_config(load_config(path), path)
    assert tuple(SCHEMA_DEGRADATIONS) == tuple(DEGRADATIONS)
    assert tuple(SCHEMA_DISCRIMINATORS) == tuple(DISCRIMINATORS)


# ------------------------------------------------------------------------------ D7: damaged images
@pytest.mark.parametrize("where", ["data", "val"])
def test_a_truncated_jpeg_in_data_or_val_is_refused_naming_it(where, tmp_path, data, capsys):
    folder = data if where == "data" else write_images(tmp_path / "val", count=1)
    bad = truncated_jpeg(folder / "bad.jpg")
    out = tmp_path / "run"
    val = ["--val", folder] if where == "val" else []
    assert run("srresnet", *TINY, "--data", data, *val, "--out", out, "--iters", 2) == 2
    line = one_error_line(capsys)
    assert str(bad) in line and "damaged JPEG data" in line, line
    assert not out.exists()


# ------------------------------------------------------------------------------ D10: --out in the data
@pytest.mark.parametrize("case", ["data", "inside_data", "val", "inside_val_by_link"])
def test_out_equal_to_or_inside_data_or_val_is_refused(case, tmp_path, data, capsys):
    val = write_images(tmp_path / "val", count=1)
    out = {
        "data": data,
        "inside_data": data / "runs" / "r",
        "val": tmp_path / "data" / ".." / "val",
    }.get(case)
    if case == "inside_val_by_link":
        (tmp_path / "link").symlink_to(val)
        out = tmp_path / "link" / "r"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert run("srresnet", *TINY, "--data", data, "--val", val, "--out", out, "--iters", 2) == 2
    line = one_error_line(capsys)
    option = "--data" if "data" in case else "--val"
    assert str(out) in line and f"the {option} folder" in line, line
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


# ------------------------------------------------------------------------------ D13: speed of a window
def test_the_speed_counts_only_the_iterations_timed_since_the_last_validation(tmp_path, monkeypatch):
    """10 iterations, a validation (the timer restarts), 2 iterations in 4 s: 0.5 it/s, not the
    12 / 4 = 3 it/s the window's whole count would give; the ETA follows."""
    import torch

    from train import validation

    clock = {"t": 0.0}
    monkeypatch.setattr(validation.time, "perf_counter", lambda: clock["t"])
    window = validation.LossLog(tmp_path / "loss.csv", 0)
    lines: list[str] = []
    for _ in range(10):
        window.add({"pixel": torch.tensor(1.0)})
        clock["t"] += 0.1
    clock["t"] += 30.0  # the validation
    window.restart_timer()
    for _ in range(2):
        window.add({"pixel": torch.tensor(1.0)})
        clock["t"] += 2.0
    window.flush(12, 112, 1e-4, lines.append)
    window.close()
    with open(tmp_path / "loss.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["it_per_s"]) == pytest.approx(0.5) and float(row["pixel"]) == pytest.approx(1.0)
    assert "0.50 it/s  eta 3m20s" in lines[0], lines[0]


def test_training_logs_a_speed_no_faster_than_its_iterations_took(tmp_path, data, monkeypatch):
    """End to end: validation every iteration, a log line every 4. Each iteration takes 1 s of a
    fake clock and each validation 0 s of it: the logged speed is 1 it/s (it was 4)."""
    from train import trainer, validation

    clock = {"t": 0.0}
    monkeypatch.setattr(validation.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: clock["t"])
    original = trainer.Trainer._generator_step

    def slow_step(self, lr, hr):
        clock["t"] += 1.0
        return original(self, lr, hr)

    monkeypatch.setattr(trainer.Trainer, "_generator_step", slow_step)
    val = write_images(tmp_path / "val", count=1)
    out = tmp_path / "run"
    args = [*TINY, "--set", "log.every=4", "--set", "val.every=1", "--set", "checkpoint.every=100"]
    assert run("srresnet", *args, "--data", data, "--val", val, "--out", out, "--iters", 4) == 0
    with open(out / "loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["it_per_s"]) for r in rows] == [pytest.approx(1.0)]


def test_interpolate_refuses_an_output_it_cannot_write_before_any_work(tmp_path, capsys):
    """`python -m train.interpolate A B -o X`: a missing folder, a folder given as the file, or a
    name that is not a checkpoint's is one line, exit 2 (a read-only folder was a traceback after
    both models had loaded)."""
    from train.interpolate import main

    missing = tmp_path / "missing" / "i.pt"
    for output, message in [
        (missing, f"{missing}: the folder {missing.parent} does not exist"),
        (tmp_path, f"{tmp_path}: expected a .pt or .pth file name"),
        (tmp_path / "i.json", f"{tmp_path / 'i.json'}: expected a .pt or .pth file name"),
    ]:
        assert main(["default", "default-gan", "--alpha", "0.5", "-o", str(output)]) == 2
        assert capsys.readouterr().err == f"error: {message}\n"
    assert main(["default", "default-gan", "--alpha", "0.5", "-o", str(tmp_path / "i.pt")]) == 0
    assert (tmp_path / "i.pt").is_file()
