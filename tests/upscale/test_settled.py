"""What the driver settles once for every worker of a job (issue 24): the CPU thread count
(`UpscaleOptions.threads`), applied by every worker's backend, torch and ONNX Runtime alike
(oneDNN / MKL promise equal bits only for equal thread counts, so a Ray actor must run with the
local run's count), and the memory budget of the automatic tile size."""

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


def test_the_automatic_tile_size_follows_the_jobs_memory_budget_not_the_workers(tmp_path, set14_dir, monkeypatch):
    """A worker with little memory free when an image comes must not tile it where the driver's
    plan did not (the seams give other bytes): the budget is measured once and settled."""
    from sr_deploy import tiling
    from sr_deploy.upscale import upscale

    model = save_tiny_srvgg(tmp_path / "tiny.pt")
    image = set14_dir / "barbara.png"  # 720x576
    options = UpscaleOptions(model=str(model), device="cpu", precision="fp32", tile_overlap=0, progress=False)
    backend = load_backend(options, lambda line: None)
    try:
        per_pixel = ((backend.live_values_per_hr_pixel or tiling.DEFAULT_LIVE_VALUES_PER_HR_PIXEL) * 4 + 12) * 16
        # The driver has room for the whole image (fixed here: what is free on a CI machine varies).
        monkeypatch.setattr(tiling, "_cpu_budget_bytes", lambda: 4 * 720 * 720 * per_pixel)
        plan = settled(options, backend)
        assert settled(dataclasses.replace(options, tile=0), backend).memory_budget is None  # --tile set
    finally:
        backend.close()
    assert plan.memory_budget and plan.memory_budget > 720 * 720 * per_pixel  # no tiles in the driver's plan
    assert upscale([image], tmp_path / "driver.png", plan, log=lambda m: None).done

    monkeypatch.setattr(tiling, "_cpu_budget_bytes", lambda: 128 * 128 * per_pixel)  # a busy worker
    assert upscale([image], tmp_path / "worker.png", plan, log=lambda m: None).done
    assert (tmp_path / "worker.png").read_bytes() == (tmp_path / "driver.png").read_bytes()
    # measured on the busy worker instead, the image is tiled: other bytes (what the plan prevents)
    assert upscale([image], tmp_path / "measured.png", options, log=lambda m: None).done
    assert (tmp_path / "measured.png").read_bytes() != (tmp_path / "driver.png").read_bytes()
