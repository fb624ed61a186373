"""Real-ESRGAN's own inference scripts, installed into an environment of their own, as users run them.

`prepare` builds (once, cached under ``~/.cache/sr-deploy/peers/``) a virtual environment that sees
this interpreter's torch / torchvision / numpy / OpenCV (``--system-site-packages``, so both tools run
the very same PyTorch build and oneDNN) and holds Real-ESRGAN's packages from PyPI. No step may
resolve a torch, a torchvision or a CUDA wheel (`pip_commands`, tested in tests/test_head_to_head.py):

- ``basicsr==1.4.2``: its sdist only exists, and its ``setup.py`` says ``setup_requires=['cython',
  'numpy', 'torch']``. pip's isolated build then installs a second torch (with its CUDA wheels) to read
  the metadata, and without isolation setuptools resolves torch's requirements against the installed
  ones, which fails on a fresh machine whose CUDA wheels pip has moved on (issue 26:
  ``ContextualVersionConflict: nvidia-cublas 13.10 ... Requirement.parse('nvidia-cublas==13.1.1.3.*')``).
  So the sdist is fetched from the package index the way pip finds it (the simple API, pinned by
  sha256), that one line is removed from the unpacked copy, and it is installed with ``--no-deps
  --no-build-isolation``; of its requirements, the ones its modules import that this interpreter lacks
  (``BASICSR_DEPS``: none needs torch) are installed on their own, under constraints that pin every
  package both tools share to this interpreter's version;
- ``realesrgan==0.3.0`` (a wheel, ``--no-deps``) without its face-restoration extras (``facexlib``,
  ``gfpgan``: only ``--face_enhance`` imports them);
- ``ffmpeg-python==0.2.0`` (a wheel, ``--no-deps``; its one requirement, ``future``, is in
  ``BASICSR_DEPS``): the video script drives the ``ffmpeg`` / ``ffprobe`` programs with it.

After installing, the environment's torch must be this interpreter's (same version, same files).

The scripts: ``inference_realesrgan.py`` comes from the ``realesrgan-0.3.0`` sdist on PyPI;
``inference_realesrgan_video.py`` is not in any PyPI file, so it is read from a git clone of
https://github.com/xinntao/Real-ESRGAN at tag v0.3.0 (``--realesrgan-repo PATH``, else cloned into the
cache). Nothing of Real-ESRGAN is committed to this repository.

The fixes applied, to the installed copies only, each found by its exact text or the run stops:
0. basicsr's ``setup.py`` (the unpacked sdist, before installing): no ``setup_requires`` (above);
1. basicsr: ``torchvision.transforms.functional_tensor`` (removed in torchvision 0.17) ->
   ``torchvision.transforms.functional`` (the usual fix; issue 18);
2. video script: ``num_gpus = torch.cuda.device_count()`` is 0 without CUDA, so no process runs:
   clamped to at least 1 (issue 18);
3. video script: ``torch.cuda.synchronize(device)`` after every frame raises "Found no NVIDIA driver"
   on a machine without a GPU: called only when CUDA is available. Issue 18 named the first two
   fixes; this third one was needed here (torch's CUDA build on a machine without a GPU). None of
   them changes what is computed or how fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import urllib.request
import venv
from dataclasses import dataclass
from pathlib import Path

REALESRGAN = "realesrgan==0.3.0"
BASICSR = "basicsr==1.4.2"
FFMPEG_PYTHON = "ffmpeg-python==0.2.0"
TAG = "v0.3.0"
REPO_URL = "https://github.com/xinntao/Real-ESRGAN"
# Pinned so a moved tag or another file is noticed (sha256 of the files as released).
VIDEO_SCRIPT_SHA256 = "e110f4fa34721551106df8f3cf096472da4e959f8264765816b54ca7e548d164"
SHARED = ("torch", "torchvision", "numpy", "opencv-python-headless", "opencv-python", "pillow", "scipy", "tqdm")
# basicsr's requirements its modules import (besides SHARED ones), and ffmpeg-python's `future`. Left
# out of its requirements.txt: torch, torchvision, opencv-python (this interpreter's, SHARED), and what
# only training or metrics scripts use (addict, scikit-image, tb-nightly, yapf).
BASICSR_DEPS = ("lmdb", "pyyaml", "requests", "future")
# The sdists read by hash: basicsr's is built here (after FIX_SETUP_REQUIRES), realesrgan's holds the
# image script. sha256 as PyPI lists them.
SDISTS = {
    BASICSR: ("basicsr-1.4.2.tar.gz", "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87"),
    REALESRGAN: ("realesrgan-0.3.0.tar.gz", "0d36da96ab9f447071606e91f502ccdfb08f80cc82ee4f8caf720c7745ccec7e"),
}
# Packages no install step may name or resolve.
NEVER_RESOLVED = ("torch", "torchvision", "nvidia-", "opencv-python", "triton")

FIX_SETUP_REQUIRES = (
    "        setup_requires=['cython', 'numpy', 'torch'],\n",
    "        # setup_requires=['cython', 'numpy', 'torch'],  (removed by sr-deploy's head_to_head)\n",
)

FIX_BASICSR = ("torchvision.transforms.functional_tensor import", "torchvision.transforms.functional import")
FIX_NUM_GPUS = ("    num_gpus = torch.cuda.device_count()\n", "    num_gpus = max(1, torch.cuda.device_count())\n")
FIX_SYNC = (
    "        torch.cuda.synchronize(device)\n",
    "        if torch.cuda.is_available():\n            torch.cuda.synchronize(device)\n",
)
FIXES = [
    "basicsr-1.4.2/setup.py: no setup_requires (it made setuptools resolve torch and its CUDA wheels)",
    "basicsr/data/degradations.py: torchvision.transforms.functional_tensor -> torchvision.transforms.functional",
    "inference_realesrgan_video.py: num_gpus = max(1, torch.cuda.device_count())",
    "inference_realesrgan_video.py: torch.cuda.synchronize only when CUDA is available",
]


@dataclass(frozen=True)
class PeerEnv:
    python: Path  # the environment's interpreter
    image_script: Path  # inference_realesrgan.py
    video_script: Path | None  # inference_realesrgan_video.py; None when no clone could be had
    video_missing: str  # why video_script is None
    fixes: tuple[str, ...]


def cache_root() -> Path:
    return Path(os.environ.get("SR_DEPLOY_PEERS", Path.home() / ".cache" / "sr-deploy" / "peers"))


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"failed: {' '.join(cmd)}\n" + "\n".join(tail))
    return result


def _replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if new in text:
        return  # already fixed (a cached environment)
    if text.count(old) != 1:
        raise SystemExit(f"{path}: the text to fix was not found once ({old.strip()!r}): another release?")
    path.write_text(text.replace(old, new))


def _constraints(root: Path) -> Path:
    """Pins for the packages both tools share: the peer must not install a torch of its own."""
    from importlib import metadata

    lines = []
    for name in SHARED:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    path = root / "constraints.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def index_url() -> str:
    """The package index pip would use (PIP_INDEX_URL, else pip's configuration, else PyPI)."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        found = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True, text=True
        )
        url = found.stdout.strip() if found.returncode == 0 else ""
    return (url or "https://pypi.org/simple").rstrip("/")


def fetch_sdist(requirement: str, folder: Path) -> Path:
    """The sdist of `requirement` (``name==version``) from the index's simple API (PEP 691 JSON),
    checked against SDISTS' sha256; nothing is built or resolved."""
    name = requirement.split("==")[0]
    filename, pinned = SDISTS[requirement]
    target = folder / filename
    if target.exists():
        return target
    request = urllib.request.Request(
        f"{index_url()}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    (entry,) = [f for f in files if f["filename"] == filename] or [None]
    if entry is None:
        raise SystemExit(f"{index_url()}: no {filename} for {requirement}")
    with urllib.request.urlopen(entry["url"], timeout=300) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != pinned:
        raise SystemExit(f"{filename}: sha256 {digest} is not the released file's")
    folder.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def pip_commands(python: Path, constraints: Path, basicsr_source: Path) -> list[list[str]]:
    """The pip installs that build the environment, in order. basicsr and the wheels go in with
    ``--no-deps``; the commands that resolve anything (build tools, BASICSR_DEPS) carry the constraints
    that pin every SHARED package to this interpreter's; no command names a NEVER_RESOLVED package."""
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    return [
        [*pip, "-c", str(constraints), "setuptools", "wheel"],
        [*pip, "-c", str(constraints), *BASICSR_DEPS],
        [*pip, "--no-deps", "--no-build-isolation", str(basicsr_source)],
        [*pip, "--no-deps", "--only-binary", ":all:", REALESRGAN, FFMPEG_PYTHON],
    ]


def _unpacked_basicsr(root: Path) -> Path:
    """basicsr's sdist, unpacked under `root`, its setup.py without setup_requires."""
    sdist = fetch_sdist(BASICSR, root / "sdist")
    source = root / sdist.name.removesuffix(".tar.gz")
    if not source.exists():
        with tarfile.open(sdist) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: no links or paths outside root
                tar.extractall(root, filter="data")
            else:
                tar.extractall(root)
    _replace_once(source / "setup.py", *FIX_SETUP_REQUIRES)
    return source


def _install(root: Path) -> Path:
    python = root / "venv" / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(system_site_packages=True, with_pip=True, clear=True).create(root / "venv")
    for command in pip_commands(python, _constraints(root), _unpacked_basicsr(root)):
        _run(command)
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    _replace_once(Path(site) / "basicsr" / "data" / "degradations.py", *FIX_BASICSR)
    probe = "import basicsr, realesrgan, ffmpeg, torch; print(torch.__version__, torch.__file__)"
    theirs = _run([str(python), "-c", probe]).stdout.strip().splitlines()[-1]
    import torch

    if theirs != f"{torch.__version__} {torch.__file__}":
        raise SystemExit(f"the Real-ESRGAN environment runs another torch ({theirs}), not {torch.__file__}")
    return python


def _image_script(root: Path) -> Path:
    script = root / "inference_realesrgan.py"
    if script.exists():
        return script
    sdist = fetch_sdist(REALESRGAN, root / "sdist")
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(f"{sdist.name.removesuffix('.tar.gz')}/inference_realesrgan.py")
        script.write_bytes(member.read())
    return script


def _video_source(root: Path, repo: Path | None) -> tuple[bytes | None, str]:
    """inference_realesrgan_video.py at TAG from `repo` (a clone, bare or not), else a fresh clone."""
    if repo is None:
        repo = root / "Real-ESRGAN.git"
        if not repo.exists():
            clone = subprocess.run(
                ["git", "clone", "-q", "--bare", "--depth", "1", "--branch", TAG, REPO_URL, str(repo)],
                capture_output=True,
                text=True,
            )
            if clone.returncode:
                return (
                    None,
                    f"no clone of {REPO_URL} ({clone.stderr.strip().splitlines()[-1:]}); pass --realesrgan-repo",
                )
    show = subprocess.run(["git", "-C", str(repo), "show", f"{TAG}:inference_realesrgan_video.py"], capture_output=True)
    if show.returncode:
        return None, f"{repo}: no {TAG}:inference_realesrgan_video.py"
    if hashlib.sha256(show.stdout).hexdigest() != VIDEO_SCRIPT_SHA256:
        return None, f"{repo}: {TAG}:inference_realesrgan_video.py is not the released file (sha256 differs)"
    return show.stdout, ""


def prepare(repo: Path | None = None) -> PeerEnv:
    """The Real-ESRGAN environment and its two scripts (installed and fixed on first use)."""
    root = cache_root() / f"realesrgan-{REALESRGAN.split('==')[1]}-py{sys.version_info.major}{sys.version_info.minor}"
    root.mkdir(parents=True, exist_ok=True)
    python = _install(root)
    image_script = _image_script(root)
    source, missing = _video_source(root, repo)
    video_script = None
    if source is not None:
        video_script = root / "inference_realesrgan_video.py"
        video_script.write_bytes(source)
        _replace_once(video_script, *FIX_NUM_GPUS)
        _replace_once(video_script, *FIX_SYNC)
    return PeerEnv(python, image_script, video_script, missing, tuple(FIXES))
