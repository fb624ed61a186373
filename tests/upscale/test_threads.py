"""The job's CPU thread count (`UpscaleOptions.threads`): settled once by the driver and applied
by every worker's backend, torch and ONNX Runtime alike (issue 24: oneDNN / MKL promise equal
bits only for equal thread counts, so a Ray actor must run with the local run's count)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _upscale_support import save_tiny_srvgg

from sr_deploy.errors import InputError
from sr_deploy.export import export_onnx
from sr_deploy.upscale import UpscaleOptions
from sr_deploy.upscale.options import validate_options
from sr_deploy.upscale.run import load_backend, settled


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_driver_settles_its_thread_count_and_workers_apply_it(tmp_path, restore_threads):
    model = save_tiny_srvgg(tmp_path / "tiny.pt")
    torch.set_num_threads(2)
    options = settled(UpscaleOptions(model=str(model), device="cpu", precision="fp32"))
    assert options.threads == 2  # the driver's count, written into the options every worker gets
    assert settled(dataclasses.replace(options, threads=1)).threads == 1  # an explicit count stays

    worker = dataclasses.replace(options, threads=1)
    backend = load_backend(worker, lambda line: None)
    try:
        assert torch.get_num_threads() == 1
    finally:
        backend.close()

    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(model, onnx_path, exporter="legacy", verify=False, log=None)
    backend = load_backend(dataclasses.replace(worker, model=str(onnx_path)), lambda line: None)
    try:
        assert backend.name == "onnxruntime"
        assert backend.primary.session.get_session_options().intra_op_num_threads == 1
    finally:
        backend.close()


def test_a_thread_count_below_one_is_refused():
    with pytest.raises(InputError, match=r"^--threads must be >= 1, got 0$"):
        validate_options(UpscaleOptions(threads=0))
