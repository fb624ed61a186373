"""Real-ESRGAN's own inference scripts, installed into an environment of their own, as users run them.

`prepare` builds (once, cached under ``~/.cache/sr-deploy/peers/``) a virtual environment that sees
this interpreter's torch / torchvision / numpy / OpenCV (``--system-site-packages``, so both tools run
the very same PyTorch build and oneDNN) and holds Real-ESRGAN's packages from PyPI:

- ``basicsr==1.4.2`` (with its own requirements, built without isolation so no second torch is pulled);
- ``realesrgan==0.3.0`` without its face-restoration extras (``facexlib``, ``gfpgan``: only
  ``--face_enhance`` imports them);
- ``ffmpeg-python==0.2.0`` (the video script drives the ``ffmpeg`` / ``ffprobe`` programs with it).

The scripts: ``inference_realesrgan.py`` comes from the ``realesrgan-0.3.0`` sdist on PyPI;
``inference_realesrgan_video.py`` is not in any PyPI file, so it is read from a git clone of
https://github.com/xinntao/Real-ESRGAN at tag v0.3.0 (``--realesrgan-repo PATH``, else cloned into the
cache). Nothing of Real-ESRGAN is committed to this repository.

The fixes applied, to the installed copies only, each found by its exact text or the run stops:
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
import os
import subprocess
import sys
import tarfile
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

FIX_BASICSR = ("torchvision.transforms.functional_tensor import", "torchvision.transforms.functional import")
FIX_NUM_GPUS = ("    num_gpus = torch.cuda.device_count()\n", "    num_gpus = max(1, torch.cuda.device_count())\n")
FIX_SYNC = (
    "        torch.cuda.synchronize(device)\n",
    "        if torch.cuda.is_available():\n            torch.cuda.synchronize(device)\n",
)
FIXES = [
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


def _install(root: Path) -> Path:
    python = root / "venv" / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(system_site_packages=True, with_pip=True, clear=True).create(root / "venv")
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    constraints = str(_constraints(root))
    _run([*pip, "setuptools", "wheel"])
    _run([*pip, "--no-build-isolation", "-c", constraints, BASICSR, FFMPEG_PYTHON])
    _run([*pip, "--no-deps", REALESRGAN])
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    _replace_once(Path(site) / "basicsr" / "data" / "degradations.py", *FIX_BASICSR)
    _run([str(python), "-c", "import basicsr, realesrgan, ffmpeg"])
    return python


def _image_script(root: Path, python: Path) -> Path:
    script = root / "inference_realesrgan.py"
    if script.exists():
        return script
    sdist_dir = root / "sdist"
    _run(
        [str(python), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "--no-build-isolation"]
        + ["-d", str(sdist_dir), REALESRGAN]
    )
    (sdist,) = sdist_dir.glob("realesrgan-*.tar.gz")
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
    image_script = _image_script(root, python)
    source, missing = _video_source(root, repo)
    video_script = None
    if source is not None:
        video_script = root / "inference_realesrgan_video.py"
        video_script.write_bytes(source)
        _replace_once(video_script, *FIX_NUM_GPUS)
        _replace_once(video_script, *FIX_SYNC)
    return PeerEnv(python, image_script, video_script, missing, tuple(FIXES))
