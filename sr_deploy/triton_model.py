"""Triton Python-backend model running an sr-deploy backend (copied into the repository as model.py).

`sr-deploy export MODEL --triton-repo DIR --triton-flavour python` puts this file at
DIR/NAME/1/model.py beside the model file; config.pbtxt's parameters name the file
(`sr_deploy.model`), the backend (`sr_deploy.backend`: auto, torch, onnxruntime, tensorrt) and
the precision. The server's Python environment needs sr-deploy installed.

Each request's `input` is (N, 3, H, W) float32 RGB in [0, 1]; each image is upscaled with
`sr_deploy.tiling.upscale_tiled` exactly as `sr-deploy upscale` does (automatic tile size, 16
pixels of overlap), and `output` is (N, 3, sH, sW) float32, unclamped. A failing request gets an
error response with one line; the others in the batch are answered normally.
"""

from __future__ import annotations

import json
import os
import site
import sys
from pathlib import Path

# Some Python-backend stubs (nvidia-pytriton's among them) start the interpreter without `site` and
# without PYTHONPATH: add both, so that numpy and sr-deploy import from the server's environment.
if not sys.flags.no_site:
    site.main()
for _entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    if _entry and _entry not in sys.path:
        sys.path.append(_entry)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402 - provided by Triton's Python backend


class TritonPythonModel:
    """The Python backend's model class: `initialize` once per instance, `execute` per batch."""

    def initialize(self, args: dict) -> None:
        from sr_deploy.backends import load
        from sr_deploy.tiling import DEFAULT_TILE_OVERLAP

        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args.get('model_instance_device_id', 0)}"
        self.backend = load(
            folder / params["sr_deploy.model"],
            device,
            params.get("sr_deploy.precision", "fp32"),
            backend=params.get("sr_deploy.backend", "auto"),
        )
        # Requests over this many input pixels (N x H x W) are refused; absent in older repositories.
        self.max_pixels = int(params.get("sr_deploy.max_request_pixels", "0")) or None
        self.overlap = DEFAULT_TILE_OVERLAP
        self.batch_size = 4 if device.startswith("cuda") else 1

    def execute(self, requests: list) -> list:
        from sr_deploy.tiling import upscale_tiled

        responses = []
        for request in requests:
            try:
                # Both ways through DLPack: stubs built against numpy 1 (nvidia-pytriton's) misread a numpy 2
                # array's item size in as_numpy() / Tensor(name, array) and return garbage or refuse it.
                batch = np.array(np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "input")))
                if batch.ndim != 4 or batch.shape[1] != 3:
                    raise ValueError(f"input must be (N, 3, H, W), got {tuple(batch.shape)}")
                pixels = batch.shape[0] * batch.shape[2] * batch.shape[3]
                if self.max_pixels is not None and pixels > self.max_pixels:
                    raise ValueError(
                        f"a request of {'x'.join(map(str, batch.shape))} is {pixels} input pixels, more than "
                        f"the {self.max_pixels} of sr_deploy.max_request_pixels: send the image in tiles"
                    )
                images = np.ascontiguousarray(batch, dtype=np.float32)
                result = np.stack(
                    [upscale_tiled(self.backend, image, None, self.overlap, self.batch_size) for image in images]
                )
                tensor = pb_utils.Tensor.from_dlpack("output", np.ascontiguousarray(result, dtype=np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            except Exception as exc:  # answer this request with its error, keep serving the others
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(text)))
        return responses

    def finalize(self) -> None:
        self.backend.close()
