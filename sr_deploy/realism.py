"""Realism control at use time: ESRGAN's network interpolation (Wang et al. 2018, Sec. 3.4).

theta = (1 - A) * theta_PSNR + A * theta_GAN, parameter by parameter, between two generators of
the same architecture: A = 0 is the PSNR-oriented model (smooth, faithful), A = 1 the GAN model
(sharp, hallucinated texture), anything in between trades one for the other without retraining.

`resolve_realism` turns ``--model M [--gan-model G] --realism A`` into one checkpoint path that
every backend, export and eval reads as usual: A = 0 and A = 1 return the endpoint files
themselves (bit for bit), other values an interpolated checkpoint written once to a cache
folder (``$SR_DEPLOY_CACHE/realism``, default ``~/.cache/sr_deploy/realism``) under a name
that says both ends and A, with a key of both files' sha256 and A, so repeated runs reuse it
(``default-real-psnr+default-real@0.5-KEY.pt``: what outputs then name as their model).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import torch

from .errors import InputError
from .models import existing_model_path, load_checkpoint, save_checkpoint
from .util.files import atomic_write_text, file_sha256

# The bundled pairs, PSNR end -> GAN end: `--realism A` with the PSNR end blends it with its GAN
# partner. For clean input `default` / `default-gan`; for real input (JPEG, noise, video) the
# Real-ESRNet twin `default-real-psnr` / `default-real`, which `upscale --realism A` uses.
BUNDLED_PAIR = {"default": "default-gan", "default-real-psnr": "default-real"}


def interpolate_state_dicts(
    first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """(1 - alpha) * first + alpha * second for floating tensors; integer buffers (BN's
    num_batches_tracked) come from `first`. alpha 0 and 1 return exact copies of an endpoint
    (no arithmetic, so no rounding); other values are computed in float64 and cast back.
    Raises ValueError when the keys or shapes differ."""
    if first.keys() != second.keys():
        only = sorted(set(first) ^ set(second))[:3]
        raise ValueError(f"the state dicts differ in keys, e.g. {only}")
    out = {}
    for key, a in first.items():
        b = second[key]
        if a.shape != b.shape:
            raise ValueError(f"{key}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        if not a.is_floating_point() or alpha == 0.0:
            out[key] = a.clone()
        elif alpha == 1.0:
            out[key] = b.clone()
        else:
            mixed = (1.0 - alpha) * a.double() + alpha * b.double()
            out[key] = mixed.to(a.dtype)
    return out


def check_alpha(alpha: float, option: str = "--realism") -> float:
    """`alpha` as a float in [0, 1]; InputError otherwise (NaN and inf included)."""
    alpha = float(alpha)
    if not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise InputError(f"{option} {alpha}: must be between 0 and 1")
    return alpha


def interpolate_checkpoints(
    psnr_model: str | Path, gan_model: str | Path, alpha: float, output: str | Path, name_ends: bool = True
) -> Path:
    """Blend two generator files (any layout `load_checkpoint` reads, or bundled names) and write
    `output` in sr-deploy format, atomically. The metadata records both ends' sha256 and, with
    `name_ends`, the ends as given (False for the realism cache: the same two files then give the
    same bytes however they were named). InputError for different architectures, an alpha
    outside [0, 1] or an output that is one of the inputs."""
    alpha = check_alpha(alpha, "--alpha")
    output = Path(output)
    a, b = load_checkpoint(psnr_model), load_checkpoint(gan_model)
    for src in (a.path, b.path):
        if output.exists() and output.resolve() == Path(src).resolve():
            raise InputError(f"{output}: refusing to overwrite an input model; choose another output")
    if a.arch != b.arch or a.config != b.config:
        raise InputError(
            f"{gan_model}: a different architecture ({b.arch} {b.config}) from {psnr_model} ({a.arch} {a.config}); "
            "interpolation needs two models of the same architecture"
        )
    try:
        state = interpolate_state_dicts(a.model.state_dict(), b.model.state_dict(), alpha)
    except ValueError as exc:
        raise InputError(f"{gan_model}: cannot interpolate with {psnr_model}: {exc}") from exc
    model = a.model
    model.load_state_dict(state)
    meta = {
        "interpolated": {
            "alpha": alpha,
            **({"psnr_model": str(psnr_model), "gan_model": str(gan_model)} if name_ends else {}),
            "psnr_sha256": a.sha256,
            "gan_sha256": b.sha256,
        },
        "recipe": "network interpolation",
    }
    return save_checkpoint(output, model, a.config, meta)


def cache_dir() -> Path:
    """Where interpolated checkpoints are kept: ``$SR_DEPLOY_CACHE/realism`` or
    ``~/.cache/sr_deploy/realism``."""
    root = os.environ.get("SR_DEPLOY_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "sr_deploy") / "realism"


def _gan_end(model: str, gan_model: str | None) -> str:
    """The GAN end of a `--realism` blend from `model`: `gan_model`, else the bundled partner.
    InputError for a model that is not there (before any talk of partners), for a GAN end given
    as `model`, and for a model without a bundled partner and no `gan_model`."""
    if gan_model is not None:
        return gan_model
    gan_ends = {gan: psnr for psnr, gan in BUNDLED_PAIR.items()}
    if model in gan_ends:
        raise InputError(f"--realism blends from the faithful end: pass --model {gan_ends[model]} (A = 1 is {model})")
    if model not in BUNDLED_PAIR:
        existing_model_path(model)  # a typo is a missing file, not a missing partner
        ends = ", ".join(f"{psnr} (with {gan})" for psnr, gan in BUNDLED_PAIR.items())
        raise InputError(f"--realism needs --gan-model PATH for {model} (bundled pairs: {ends})")
    return BUNDLED_PAIR[model]


def realism_blend(model: str, gan_model: str | None, realism: float | None) -> dict[str, object] | None:
    """What a report says about a blend, so its numbers can be traced and repeated:
    ``{"realism": A, "psnr_model": model, "gan_model": the GAN end}``; None without `realism`."""
    if realism is None:
        return None
    return {"realism": check_alpha(realism), "psnr_model": model, "gan_model": _gan_end(model, gan_model)}


def resolve_realism(model: str, gan_model: str | None, realism: float | None) -> str:
    """The model to load for ``--model MODEL [--gan-model GAN] --realism A``.

    Without `realism`, `model` itself (and `gan_model` must not be given). With it, the GAN end
    is `gan_model`, or the bundled partner (`BUNDLED_PAIR`) when `model` is a bundled PSNR end;
    A = 0 returns `model`, A = 1 the GAN model, anything between the path of the interpolated
    checkpoint (made once, cached).
    """
    if realism is None:
        if gan_model is not None:
            raise InputError(f"--gan-model {gan_model}: give --realism A too (0 = {model}, 1 = {gan_model})")
        return model
    alpha = check_alpha(realism)
    gan_model = _gan_end(model, gan_model)
    if alpha == 0.0:
        return model
    if alpha == 1.0:
        return gan_model
    # The cache key needs only the files' bytes: hash them, building no model on a cache hit.
    paths = [existing_model_path(m) for m in (model, gan_model)]
    psnr_sha, gan_sha = (file_sha256(path) for path in paths)
    key = hashlib.sha256(f"{psnr_sha}:{gan_sha}:{alpha!r}".encode()).hexdigest()[:16]
    # The file's name is what outputs and reports name the model by (its provenance, a Ray job's
    # model id): both ends and A, readable; the key (of both ends' bytes and the exact A) keeps it unique.
    ends = "+".join(path.stem.encode()[:60].decode(errors="ignore") for path in paths)  # bytes: names have a limit
    target = cache_dir() / f"{ends}@{alpha:g}-{key}.pt"
    if not _intact(target):  # absent, or damaged since it was made: made again
        target.parent.mkdir(parents=True, exist_ok=True)
        interpolate_checkpoints(model, gan_model, alpha, target, name_ends=False)  # bytes: the files' only
        atomic_write_text(_digest_path(target), file_sha256(target) + "\n")
    return str(target)


def _digest_path(blend: Path) -> Path:
    """The sha256 of a cached blend's bytes, written beside it when it is made."""
    return blend.with_name(blend.name + ".sha256")


def _intact(blend: Path) -> bool:
    """The cached `blend` has the bytes it was made with: a cache file damaged since (flipped bytes
    load as NaN or as other weights without a word) is made again, not trusted."""
    try:
        return blend.is_file() and _digest_path(blend).read_text().strip() == file_sha256(blend)
    except OSError:
        return False


def clear_cache() -> int:
    """Remove the cached blends (and their digests); returns how many blends there were."""
    folder = cache_dir()
    blends = list(folder.glob("*.pt")) if folder.is_dir() else []
    for path in blends + (list(folder.glob("*.pt.sha256")) if folder.is_dir() else []):
        path.unlink(missing_ok=True)
    return len(blends)
