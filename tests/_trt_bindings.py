"""Fetch the real TensorRT Python bindings of one release and make them importable without a GPU.

PyPI serves the real `tensorrt-cu12-bindings` wheels (about 1.2 MB; NVIDIA proprietary licence:
fetched at test time into a cache folder OUTSIDE the repository, never committed or shipped).
`tensorrt.so` links against libnvinfer / libnvinfer_plugin / libnvonnxparser and takes only a
few C entry points from them (everything else is virtual calls), so three stand-in libraries
built here with gcc, each returning 0/NULL, let the module import with every class, enum,
property and method of that release. Nothing executes: `trt.Builder(...)` raises (the factory
returns nullptr). One release per process.

    python3 tests/_trt_bindings.py            # fetch + prepare both releases (what .ci/run does)
    prepare("11.4.0.106") -> Path | str       # the prepared folder, or why it could not be made
    import_real(folder)                       # in a fresh process: preload the stubs, import tensorrt

Cache folder: $SR_DEPLOY_TRT_BINDINGS, else ~/.cache/sr-deploy/trt-bindings.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

RELEASES = ("10.13.3.9", "11.4.0.106")
LIBRARIES = ("nvinfer", "nvinfer_plugin", "nvonnxparser")
SYMBOLS = (
    "createInferBuilder_INTERNAL",
    "createInferRefitter_INTERNAL",
    "createInferRuntime_INTERNAL",
    "createNvOnnxParser_INTERNAL",
    "createNvOnnxParserRefitter_INTERNAL",
    "getNvOnnxParserVersion",
    "getBuilderPluginRegistry",
    "getPluginRegistry",
    "initLibNvInferPlugins",
    "getInferLibVersion",
    "getLogger",
)


def cache_root() -> Path:
    env = os.environ.get("SR_DEPLOY_TRT_BINDINGS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sr-deploy" / "trt-bindings"


def _stub_source() -> str:
    return "".join(f"void *{name}(void) {{ return 0; }}\n" for name in SYMBOLS)


def prepare(version: str, root: Path | None = None) -> Path | str:
    """The folder holding `pkg/tensorrt` (the real bindings of `version`) and `lib/` (the three
    stand-in libraries); fetched with pip and built with gcc on first use. Returns a one-line
    reason instead when that is impossible here (no network, no gcc)."""
    folder = (root or cache_root()) / version
    done = folder / "READY"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    wheels = folder / "wheel"
    if not list(wheels.glob("*.whl")):
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            f"tensorrt-cu12-bindings=={version}",
            "-d",
            str(wheels),
        ]
        try:
            run = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"pip download tensorrt-cu12-bindings=={version} failed: {exc}"
        if run.returncode != 0 or not list(wheels.glob("*.whl")):
            last = (run.stderr.strip().splitlines() or ["no wheel"])[-1]
            return f"pip download tensorrt-cu12-bindings=={version} failed: {last}"
    if shutil.which("gcc") is None:
        return "gcc is not installed: cannot build the stand-in TensorRT libraries"
    pkg = folder / "pkg"
    shutil.rmtree(pkg, ignore_errors=True)
    with zipfile.ZipFile(next(wheels.glob("*.whl"))) as wheel:
        wheel.extractall(folder / "unpacked")
    shutil.copytree(folder / "unpacked" / "tensorrt_bindings", pkg / "tensorrt")
    major = version.split(".")[0]
    lib = folder / "lib"
    lib.mkdir(exist_ok=True)
    source = folder / "stub.c"
    source.write_text(_stub_source())
    for name in LIBRARIES:
        soname = f"lib{name}.so.{major}"
        run = subprocess.run(
            ["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(lib / soname), str(source)],
            check=False,
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            return f"gcc could not build {soname}: {(run.stderr.strip().splitlines() or ['?'])[-1]}"
    done.write_text(version + "\n")
    return folder


def import_real(folder: Path) -> ModuleType:
    """Preload the stand-in libraries and import the real bindings (once per process)."""
    for lib in sorted((folder / "lib").iterdir()):
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    sys.path.insert(0, str(folder / "pkg"))
    import tensorrt  # noqa: PLC0415

    return tensorrt


if __name__ == "__main__":
    failed = False
    for release in RELEASES:
        result = prepare(release)
        print(f"tensorrt-cu12-bindings {release}: {result}")
        failed |= isinstance(result, str)
    sys.exit(1 if failed else 0)
