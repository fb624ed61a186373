"""The benchmarks/ scripts that draw with matplotlib (the plot extra): without it, one line naming
the extra and exit 2 before any work, not a ModuleNotFoundError traceback (realism_figure.py) or
a failure after the whole measurement (head_to_head.py draws its plot last)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTE = "needs matplotlib: pip install 'sr-deploy[plot]'"


def _script(name: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _exits_2_with_one_line(capsys, call, what: str) -> None:
    with pytest.raises(SystemExit) as stop:
        call()
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"error: {what} {NOTE}"] and "Traceback" not in captured.err


def test_realism_figure_without_matplotlib(without_matplotlib, tmp_path, capsys, monkeypatch):
    figure = _script("realism_figure", monkeypatch)
    monkeypatch.setattr(figure, "LPIPS", lambda *a, **k: pytest.fail("the figure's work began"))
    args = ["--dataset", str(tmp_path / "Set14"), "-o", str(tmp_path / "fig.png")]
    _exits_2_with_one_line(capsys, lambda: figure.main(args), "the figure")
    assert list(tmp_path.iterdir()) == []


def test_head_to_head_without_matplotlib_stops_before_measuring(without_matplotlib, tmp_path, capsys, monkeypatch):
    h2h = _script("head_to_head", monkeypatch)
    monkeypatch.setattr(h2h.realesrgan_env, "prepare", lambda *a: pytest.fail("the head-to-head began"))
    monkeypatch.setattr(sys, "argv", ["head_to_head.py", "--out", str(tmp_path / "results")])
    _exits_2_with_one_line(capsys, h2h.main, "the head-to-head plot")
    assert list(tmp_path.iterdir()) == []
