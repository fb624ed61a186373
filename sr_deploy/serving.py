"""Talking to a Triton server that serves an sr-deploy repository (`sr_deploy.triton`).

    from sr_deploy.serving import upscale_file
    upscale_file("http://127.0.0.1:8000", "sr_deploy", "photo.png", "photo_x4.png")

`image_to_request` turns an image into the model's input (and remembers what the reply needs:
alpha, grey, bit depth), `response_to_image` turns the model's output back into an image with the
same post-processing as `sr-deploy upscale` (clamp, round, alpha, grey), so that a server running
the same backend gives the same file. Needs `tritonclient[http]` (`pip install 'sr-deploy[triton]'`).

`bundled_tritonserver` starts the `tritonserver` binary that the `nvidia-pytriton` wheel bundles
(with its Python backend; no ONNX Runtime or TensorRT backend) on 127.0.0.1, for trying the
Python-backend flavour on one machine and for the tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import InputError, NotInstalledError, SRDeployError
from .imaging import (
    atomic_write_bytes,
    encode_image,
    image_to_model_input,
    model_output_to_image,
    output_dtype_for,
    read_image,
)
from .util.text import first_line

TRITONCLIENT_NOT_INSTALLED = "tritonclient is not installed: pip install 'sr-deploy[triton]'"
PYTRITON_NOT_INSTALLED = (
    "the bundled tritonserver comes with nvidia-pytriton: pip install --no-deps nvidia-pytriton==0.7.0"
)
INPUT_NAME = "input"
OUTPUT_NAME = "output"


@dataclass(frozen=True)
class ImageRequest:
    """The model input made from one image, and what `response_to_image` needs to finish it.

    batch: (1, 3, H, W) float32 RGB in [0, 1]. alpha: (H, W) float32 in [0, 1] or None.
    grey: the image had one channel. dtype: the input image's dtype (uint8, uint16, float32).
    """

    batch: np.ndarray
    alpha: np.ndarray | None
    grey: bool
    dtype: np.dtype


def image_to_request(image: np.ndarray) -> ImageRequest:
    """An image as `sr_deploy.imaging.read_image` returns it ((H, W) grey, (H, W, 3) RGB or
    (H, W, 4) RGBA; uint8, uint16 or float32) -> the (1, 3, H, W) float32 RGB input."""
    rgb, alpha = image_to_model_input(image)
    return ImageRequest(rgb[None], alpha, image.ndim == 2, image.dtype)


def response_to_image(output: np.ndarray, request: ImageRequest, extension: str = ".png") -> np.ndarray:
    """The model's `output`, (1, 3, sH, sW) float32 RGB unclamped, -> the image `sr-deploy upscale`
    writes for this input as `extension`: clamped, rounded to the dtype the format holds, grey
    or RGBA like the input (alpha upscaled bicubic)."""
    if output.ndim != 4 or output.shape[0] != 1 or output.shape[1] != 3:
        raise SRDeployError(f"the server returned output of shape {tuple(output.shape)}; expected (1, 3, sH, sW)")
    dtype = output_dtype_for(extension, request.dtype)
    return model_output_to_image(output[0], request.alpha, dtype, grey=request.grey)


def _tritonclient_http() -> Any:
    try:
        import tritonclient.http as httpclient
    except ImportError:
        raise NotInstalledError(TRITONCLIENT_NOT_INSTALLED) from None
    return httpclient


# The largest request (N x H x W input pixels) the client sends and the repositories sr-deploy
# writes accept (`sr_deploy.max_request_pixels` in config.pbtxt): 2048 x 2048 in, whose x4 float32
# answer is 0.8 GB; a 3000 x 3000 request took 23 s and returned 1.7 GB (issue 24).
MAX_REQUEST_PIXELS = 2048 * 2048


def check_request_size(shape: tuple[int, ...], limit: int = MAX_REQUEST_PIXELS) -> None:
    """InputError (one line) when a (N, 3, H, W) request has more than `limit` input pixels."""
    pixels = int(np.prod(shape[:1] + shape[2:]))
    if pixels > limit:
        raise InputError(
            f"a request of {'x'.join(map(str, shape))} is {pixels} input pixels, more than the "
            f"{limit} a request may carry: send the image in tiles (sr_deploy.tiling)"
        )


def infer(
    url: str, model: str, batch: np.ndarray, timeout: float = 300.0, max_pixels: int = MAX_REQUEST_PIXELS
) -> np.ndarray:
    """Send `batch` ((N, 3, H, W) float32) to `model` on the Triton server at `url`
    (http://HOST:PORT) and return its `output` (float32). InputError for a batch over `max_pixels`
    input pixels, before anything is sent; SRDeployError when the server fails."""
    check_request_size(tuple(batch.shape), max_pixels)
    httpclient = _tritonclient_http()
    from tritonclient.utils import InferenceServerException

    address = url.split("://", 1)[-1].rstrip("/")
    client = httpclient.InferenceServerClient(address, network_timeout=timeout, connection_timeout=timeout)
    try:
        tensor = httpclient.InferInput(INPUT_NAME, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32), binary_data=True)
        wanted = httpclient.InferRequestedOutput(OUTPUT_NAME, binary_data=True)
        result = client.infer(model, [tensor], outputs=[wanted])
        return result.as_numpy(OUTPUT_NAME)
    except InferenceServerException as exc:
        raise SRDeployError(f"{url} model {model}: {first_line(exc, limit=10_000)}") from None
    except (ConnectionError, OSError) as exc:
        raise SRDeployError(f"{url}: cannot reach the Triton server ({exc})") from None
    finally:
        client.close()


def upscale_file(url: str, model: str, source: str | Path, target: str | Path, quality: int | None = None) -> Path:
    """Upscale the image `source` on the Triton server and write `target` (format from its
    extension) atomically. Returns `target`."""
    source, target = Path(source), Path(target)
    if target.resolve() == source.resolve():
        raise InputError(f"{target}: the output would overwrite the input")
    request = image_to_request(read_image(source))
    image = response_to_image(infer(url, model, request.batch), request, target.suffix)
    atomic_write_bytes(target, encode_image(image, target.suffix, quality))
    return target


# ---------------------------------------------------------------------------------------------
# The tritonserver bundled by nvidia-pytriton


def bundled_tritonserver_dir() -> Path:
    """pytriton's `tritonserver` folder (bin/, backends/python/, python_backend_stubs/)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise NotInstalledError(PYTRITON_NOT_INSTALLED)
    folder = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (folder / "bin" / "tritonserver").is_file():
        raise NotInstalledError(f"{folder}: no bin/tritonserver in this nvidia-pytriton; {PYTRITON_NOT_INSTALLED}")
    return folder


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def bundled_tritonserver(
    repository: str | Path, *, startup_timeout: float = 120.0, log_path: str | Path | None = None
) -> Iterator[str]:
    """Run nvidia-pytriton's `tritonserver` on `repository`, HTTP on 127.0.0.1 (gRPC and metrics
    off), until the block ends; yields the URL. The server is stopped (and killed if it does not
    stop) on exit, also after an error. The Python backend runs this interpreter's environment
    (PYTHONHOME), so sr-deploy must be importable in it.
    """
    dist = bundled_tritonserver_dir()
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise NotInstalledError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    work = Path(tempfile.mkdtemp(prefix="sr-deploy-triton-"))
    log = open(log_path or work / "tritonserver.log", "wb")
    process = None
    try:
        # pytriton's own layout: the server tree with the stub for this Python beside the backend.
        backends = work / "backends"
        shutil.copytree(dist / "backends", backends)
        shutil.copy(stub, backends / "python" / "triton_python_backend_stub")
        libs = dist.parent.parent / "nvidia_pytriton.libs"
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
        env["PYTHONHOME"] = sys.base_prefix  # the stub embeds libpython: give it this interpreter's prefix
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        # ... and this interpreter's import path (site-packages included), which the embedded one lacks.
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        paths += [p for p in sys.path if p and Path(p).is_dir() and p not in paths]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        port = _free_port()
        command = [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={Path(repository).resolve()}",
            f"--backend-directory={backends}",
            f"--cache-directory={dist / 'caches'}",
            "--http-address=127.0.0.1",
            f"--http-port={port}",
            "--allow-grpc=false",
            "--allow-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
        ]
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        _wait_ready(process, url, startup_timeout, Path(log.name))
        yield url
    finally:
        if process is not None:
            _stop(process)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def _wait_ready(process: subprocess.Popen, url: str, timeout: float, log: Path) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise SRDeployError(f"tritonserver exited with code {process.returncode}: {' | '.join(tail)}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise SRDeployError(f"tritonserver was not ready after {timeout:.0f} s (log: {log})")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it and its Python-backend stubs), SIGKILL after 20 s."""
    import signal

    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # any stub left behind
    process.wait()
