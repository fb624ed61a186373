"""A real S3 endpoint for the tests: moto's standalone server (`moto_server`, the S3 HTTP API) on
127.0.0.1 and a free port, started as a subprocess and stopped afterwards. sr-deploy reaches it
through the same fsspec/s3fs/botocore code as a user's S3: only the standard environment
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION) points there."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "sr-deploy-test",
        "AWS_SECRET_ACCESS_KEY": "sr-deploy-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@contextlib.contextmanager
def moto_s3_server() -> Iterator[str]:
    """Yield the endpoint URL of a running moto S3 server; stopped (and waited for) at exit."""
    port = free_port()
    exe = shutil.which("moto_server")
    command = [exe] if exe else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen(
        [*command, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, MOTO_ALLOW_NONEXISTENT_REGION="true"),
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def s3_fs():
    """The test endpoint's filesystem (fsspec's s3fs, as a user's code would open it), uncached."""
    import fsspec

    return fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False)


def s3_objects(prefix: str) -> dict[str, bytes]:
    """Every object under `prefix` (``s3://bucket/path``): {key relative to it: its bytes}."""
    fs = s3_fs()
    base = prefix.removeprefix("s3://").rstrip("/")
    return {key[len(base) + 1 :]: fs.cat_file(key) for key in sorted(fs.find(base))}
