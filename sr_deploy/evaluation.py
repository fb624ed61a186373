"""Benchmark evaluation as the super-resolution literature does it (`sr-deploy eval`).

For every HR image of a dataset folder (Set5, Set14, ...):

1. crop HR to a multiple of `scale` (`modcrop`), make LR with MATLAB-style bicubic, rounded to
   8-bit levels (`metrics.bicubic_degrade`), or read a ready-made LR image (`lr_dir`);
2. super-resolve: `upscale_fn(lr)` with lr float32 RGB [0, 1] of shape (1, 3, h, w), returning
   (1, 3, scale*h, scale*w) float, unclamped;
3. clamp and round the output to uint8, exactly as saving it to a PNG would;
4. score PSNR / SSIM on the Y channel (`metrics.rgb_to_y`, BT.601, rounded to integers as
   MATLAB's `rgb2ycbcr` does for uint8 images) with `scale` pixels cropped at each border.

Greyscale images (Set14's bridge.png) are scored on their single channel, as the original
MATLAB scripts do (they skip `rgb2ycbcr` when `size(im, 3) == 1`): the model is fed the grey
channel replicated to RGB, its RGB output is turned back into one channel with MATLAB's
`rgb2gray` weights (full-range BT.601 luma, rounded to uint8), and that is compared with the
grey HR on the [0, 255] scale. Scoring Y of a replicated RGB instead would squeeze both images
into [16, 235] and inflate the PSNR (Set14 bicubic x4 would read 26.09 dB instead of 26.00).
With both choices this pipeline reproduces the published bicubic x4 table:
Set5 28.42 dB / 0.8104 and Set14 26.00 dB / 0.7027 (to within 0.01 dB / 0.001).

LPIPS (``--metrics lpips`` = LPIPS-Alex, ``lpips-vgg``; `sr_deploy.perceptual`) is scored on the
full uint8 RGB output against the HR image cropped to the same size (grey images replicated to
RGB), inputs mapped to [-1, 1]: bicubic x4 gives Set5 0.3407 and Set14 0.4400, the published
bicubic row (0.3407 / 0.4393) to within the grey-image convention.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .backends import Backend, load
from .degrade import Degradation, parse_degradation
from .errors import InputError, NonFiniteOutput
from .formats import DATASET_IMAGE_SUFFIXES
from .imaging import read_image, write_image
from .metrics import imresize, modcrop, psnr, ssim, to_uint8
from .util.files import atomic_write_text

METRICS = ("psnr", "ssim", "lpips", "lpips-vgg")
LPIPS_NETS = {"lpips": "alex", "lpips-vgg": "vgg"}
# metric -> (name in tables and summaries, column width, number format)
_COLUMNS = {
    "psnr": ("PSNR", 10, "{:.3f}"),
    "ssim": ("SSIM", 7, "{:.4f}"),
    "lpips": ("LPIPS", 9, "{:.4f}"),
    "lpips-vgg": ("LPIPS-VGG", 9, "{:.4f}"),
}

IMAGE_SUFFIXES = DATASET_IMAGE_SUFFIXES  # the image-format table's readable suffixes

# MATLAB rgb2gray: the luma row of its inverse of the NTSC (YIQ) matrix; sums to 1 (to 1e-15), so
# a replicated grey image maps back to itself exactly after rounding.
_RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


@dataclass
class ImageResult:
    """Scores of one image: PSNR in dB (inf when identical) and SSIM, both on Y (or grey), and
    the LPIPS distances that were asked for (metric name -> value, lower is better)."""

    name: str
    psnr: float
    ssim: float
    lpips: dict[str, float] = field(default_factory=dict)


@dataclass
class DatasetResult:
    """Per-image scores of one dataset folder and their means (the papers' table entries)."""

    name: str
    images: list[ImageResult]
    mean_psnr: float
    mean_ssim: float
    scale: int = 4
    path: str = ""
    mean_lpips: dict[str, float] = field(default_factory=dict)
    metrics: tuple[str, ...] = ("psnr", "ssim")
    degradation: str = "bicubic"  # the `--degrade` spec the LR was made with (or "lr-dir")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: an infinite PSNR becomes the string "inf" (JSON has no infinity)."""
        data = asdict(self)
        for item in [data, *data["images"]]:
            for key in ("psnr", "mean_psnr"):
                if key in item and math.isinf(item[key]):
                    item[key] = "inf"
        return data

    def _values(self, psnr_value: float, ssim_value: float, lpips: dict[str, float]) -> list[float]:
        """The requested metrics of one row (or of the means), in `self.metrics` order."""
        values = {"psnr": psnr_value, "ssim": ssim_value, **lpips}
        return [values[metric] for metric in self.metrics]

    def summary(self, model: str = "") -> str:
        """One line: `Set5 x4 bicubic: PSNR 28.419 dB, SSIM 0.8102, LPIPS 0.3407 (5 images)`,
        with the LR's degradation after the name when it is not plain bicubic
        (`Set14 x4 [jpeg=40] default: ...`)."""
        who = f" {model}" if model else ""
        if self.degradation != "bicubic":
            who = f" [{self.degradation}]{who}"
        means = self._values(self.mean_psnr, self.mean_ssim, self.mean_lpips)
        parts = [
            f"{_COLUMNS[m][0]} {_COLUMNS[m][2].format(v)}{' dB' if m == 'psnr' else ''}"
            for m, v in zip(self.metrics, means)
        ]
        return f"{self.name} x{self.scale}{who}: {', '.join(parts)} ({len(self.images)} images)"

    def table(self) -> str:
        """Per-image rows and the mean, fixed-width text."""
        width = max([len("image"), len("mean"), *(len(r.name) for r in self.images)])

        def row(label: str, values: list[float]) -> str:
            cells = [_COLUMNS[m][2].format(v).rjust(_COLUMNS[m][1]) for m, v in zip(self.metrics, values)]
            return f"{label:<{width}}  " + "  ".join(cells)

        header = f"{'image':<{width}}  " + "  ".join(
            (f"{_COLUMNS[m][0]} (dB)" if m == "psnr" else _COLUMNS[m][0]).rjust(_COLUMNS[m][1]) for m in self.metrics
        )
        lr_text = "" if self.degradation == "bicubic" else f", LR {self.degradation}"
        lines = [f"{self.name} (x{self.scale}{lr_text})", header, "-" * len(header)]
        lines += [row(r.name, self._values(r.psnr, r.ssim, r.lpips)) for r in self.images]
        lines += ["-" * len(header), row("mean", self._values(self.mean_psnr, self.mean_ssim, self.mean_lpips))]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Upscalers: any `Backend` (bicubic is one more)
# --------------------------------------------------------------------------------------------
class BicubicBackend(Backend):
    """The baseline: MATLAB bicubic upscaling of the LR image by `scale`."""

    name = "bicubic"

    def __init__(self, scale: int):
        super().__init__(scale, "fp32", "cpu")

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.stack([np.transpose(imresize(np.transpose(lr, (1, 2, 0)), float(self.scale)), (2, 0, 1)) for lr in x])


def bicubic_upscaler(scale: int) -> Backend:
    return BicubicBackend(scale)


def upscaler_for(
    model: str,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    *,
    scale: int = 4,
) -> Backend:
    """The backend for `model`: ``bicubic`` (the baseline, at `scale`), or any model file /
    bundled name that `sr_deploy.backends.load` reads (.pt/.pth, .onnx, .engine).

    Raises InputError for an unreadable model or an unsupported backend / precision.
    """
    if model == "bicubic":
        return BicubicBackend(scale)
    return load(model, device=device, precision=precision, backend=backend)


def describe(model: str, upscaler: Backend, blend: Mapping[str, object] | None = None) -> str:
    """How reports name what was scored: ``bicubic``, ``model.pt (torch, cpu, fp32)``, or for a
    `--realism` blend (`sr_deploy.realism.realism_blend`) ``psnr + gan @ realism A (torch, ...)``
    rather than the name of its cached file."""
    if isinstance(upscaler, BicubicBackend):
        return "bicubic"
    name = Path(str(model)).name
    if blend is not None:
        ends = (Path(str(blend[end])).name for end in ("psnr_model", "gan_model"))
        name = f"{' + '.join(ends)} @ realism {blend['realism']:g}"
    return f"{name} ({upscaler.name}, {upscaler.device}, {upscaler.precision})"


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
def _read_image(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB or (H, W) grey (`imaging.read_image`, alpha dropped). Raises
    InputError naming the file when it cannot be decoded or is not 8-bit."""
    img = read_image(path)
    if img.dtype != np.uint8:
        raise InputError(f"{path}: {img.dtype} image; eval scores 8-bit images only, as the published tables do")
    return img[..., :3] if img.ndim == 3 else img


def list_images(dataset_dir: str | Path) -> list[Path]:
    """The image files directly in `dataset_dir`, sorted by name. InputError when the folder is
    missing or holds no images."""
    folder = Path(dataset_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such dataset folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no images in this dataset folder (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def _find_lr(lr_dir: Path, hr_path: Path, scale: int) -> Path:
    """The LR file for `hr_path`: same stem, or the stem with `x4` / `_x4` appended (DIV2K and
    benchmark-pack naming), any image suffix."""
    for stem in (hr_path.stem, f"{hr_path.stem}x{scale}", f"{hr_path.stem}_x{scale}"):
        for suffix in (hr_path.suffix, *IMAGE_SUFFIXES):
            candidate = lr_dir / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    raise InputError(
        f"{lr_dir}: no LR image for {hr_path.name} (looked for {hr_path.stem}, "
        f"{hr_path.stem}x{scale}, {hr_path.stem}_x{scale} with an image suffix)"
    )


def _to_grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> uint8 (H, W), MATLAB rgb2gray (full-range BT.601 luma, rounded)."""
    return np.clip(np.round(rgb.astype(np.float64) @ _RGB2GRAY), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def evaluate_image(
    upscale_fn: Callable[[np.ndarray], Any],
    hr: np.ndarray,
    scale: int,
    *,
    lr: np.ndarray | None = None,
    name: str = "image",
    lpips: dict[str, Any] | None = None,
    degradation: Degradation | None = None,
) -> tuple[ImageResult, np.ndarray]:
    """Score one image.

    hr: uint8 (H, W, 3) RGB or (H, W) grey, full size (cropped here to a multiple of `scale`).
    lr: optional uint8 LR image ((H//s, W//s[, 3]), same channel count as hr) instead of the
        bicubic degradation.
    degradation: how to make the LR when `lr` is None (`sr_deploy.degrade`; default plain bicubic).
        Its noise is seeded with `name`.
    lpips: metric name ("lpips", "lpips-vgg") -> `sr_deploy.perceptual.LPIPS` module to score too.
    Returns (scores, sr) with sr the uint8 output that was scored ((H', W', 3) or (H', W')).
    """
    if lr is None:
        try:
            hr, lr_float = (degradation or Degradation()).apply(hr, scale, name)
        except ValueError as exc:
            raise InputError(f"{name}: {exc}") from exc
    else:
        hr = modcrop(hr, scale)
        if lr.ndim != hr.ndim or lr.shape[:2] != (hr.shape[0] // scale, hr.shape[1] // scale):
            raise InputError(
                f"{name}: LR image is {lr.shape}, expected {(hr.shape[0] // scale, hr.shape[1] // scale)}"
                f"{'' if hr.ndim == 2 else ' x 3'} for x{scale} of the HR image {hr.shape}"
            )
        lr_float = lr.astype(np.float32) / 255.0
    grey = hr.ndim == 2
    if min(hr.shape[:2]) - 2 * scale < 11:
        raise InputError(
            f"{name}: image {hr.shape[1]}x{hr.shape[0]} is too small to score at x{scale} "
            f"(SSIM needs 11x11 pixels after cropping {scale} px borders)"
        )
    rgb = np.repeat(lr_float[..., None], 3, axis=2) if grey else lr_float
    x = np.ascontiguousarray(np.transpose(rgb, (2, 0, 1))[None], dtype=np.float32)
    out = upscale_fn(x)
    if hasattr(out, "detach"):  # a torch tensor (backend on torch input): to numpy
        out = out.detach().float().cpu().numpy()
    out = np.asarray(out)
    expected = (1, 3, hr.shape[0], hr.shape[1])
    if out.shape != expected:
        raise InputError(
            f"{name}: the model returned {tuple(out.shape)} for input {tuple(x.shape)}, "
            f"expected {expected}: is it an x{scale} model?"
        )
    if not np.isfinite(out).all():  # a score of NaN output rounded to black is no score
        raise NonFiniteOutput(f"{name}: the model's output has NaN/Inf values (damaged weights, or fp16 overflow)")
    sr = to_uint8(np.transpose(out[0], (1, 2, 0)))
    if grey:
        sr = _to_grey(sr)
    distances = {}
    if lpips:
        from .perceptual import lpips_uint8

        distances = {metric: lpips_uint8(net, sr, hr) for metric, net in lpips.items()}
    return ImageResult(name, psnr(hr, sr, scale), ssim(hr, sr, scale), distances), sr


def evaluate_dataset(
    upscale_fn: Callable[[np.ndarray], Any],
    dataset_dir: str | Path,
    scale: int = 4,
    *,
    lr_dir: str | Path | None = None,
    save_dir: str | Path | None = None,
    progress: bool = True,
    lpips: dict[str, Any] | None = None,
    metrics: Sequence[str] = ("psnr", "ssim"),
    degradation: Degradation | None = None,
) -> DatasetResult:
    """Score `upscale_fn` on every image of `dataset_dir` (see the module docstring).

    upscale_fn: (1, 3, h, w) float32 RGB [0, 1] -> (1, 3, scale*h, scale*w) float, unclamped
        (a `Backend`, or any function).
    lr_dir: ready-made uint8 LR images, matched by name, instead of bicubic degradation.
    degradation: otherwise the LR is made this way (`sr_deploy.degrade`; default plain bicubic).
    save_dir: writes each scored SR image there as PNG (same stem as the HR image).
    lpips: metric name -> LPIPS module (see `lpips_metrics`); metrics: the columns reported.
    Returns a DatasetResult named after the folder. Raises InputError (one line, naming the
    file) for a missing or empty folder, an unreadable image, or an output of the wrong size.
    """
    from tqdm import tqdm

    folder = Path(dataset_dir)
    files = list_images(folder)
    lr_folder = Path(lr_dir) if lr_dir is not None else None
    if lr_folder is not None and not lr_folder.is_dir():
        raise InputError(f"{lr_folder}: no such LR folder")
    out_folder = Path(save_dir) if save_dir is not None else None
    if (
        out_folder is not None
        and out_folder.exists()
        and out_folder.resolve() in (folder.resolve(), lr_folder.resolve() if lr_folder else None)
    ):
        raise InputError(f"{out_folder}: --save-dir must not be an input folder (it would overwrite images)")
    results: list[ImageResult] = []
    for path in tqdm(files, desc=f"eval {folder.name} x{scale}", unit="img", disable=not progress, leave=False):
        hr = _read_image(path)
        lr = None
        if lr_folder is not None:
            lr_path = _find_lr(lr_folder, path, scale)
            lr = _read_image(lr_path)
            if lr.ndim != hr.ndim:
                raise InputError(
                    f"{lr_path}: {'grey' if lr.ndim == 2 else 'colour'} LR image for a "
                    f"{'grey' if hr.ndim == 2 else 'colour'} HR image {path.name}"
                )
        try:  # `name` seeds the degradation's noise: the file is named in full here instead
            result, sr = evaluate_image(
                upscale_fn, hr, scale, lr=lr, name=path.name, lpips=lpips, degradation=degradation
            )
        except InputError as exc:
            where = lr_path if lr is not None and ": LR image is " in str(exc) else path
            raise InputError(f"{where}: {str(exc).split(': ', 1)[-1]}") from None
        results.append(result)
        if out_folder is not None:
            write_image(out_folder / f"{path.stem}.png", sr)
    return DatasetResult(
        name=folder.name,
        images=results,
        mean_psnr=float(np.mean([r.psnr for r in results])),
        mean_ssim=float(np.mean([r.ssim for r in results])),
        scale=scale,
        path=str(folder),
        mean_lpips={m: float(np.mean([r.lpips[m] for r in results])) for m in (lpips or {})},
        metrics=tuple(metrics),
        degradation="lr-dir" if lr_folder is not None else (degradation or Degradation()).name,
    )


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"psnr,ssim,lpips"`` -> ("psnr", "ssim", "lpips"); InputError for an unknown name."""
    names = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise InputError(f"--metrics {text!r}: expected a comma list of {', '.join(METRICS)}")
    return names


def lpips_metrics(metrics: Sequence[str], weights: str | Path | None = None) -> dict[str, Any]:
    """The LPIPS modules the metric names ask for (`sr_deploy.perceptual.LPIPS`), loaded once.
    Raises InputError (one line, where it looked) when their ImageNet weights are not found."""
    wanted = [m for m in metrics if m in LPIPS_NETS]
    if not wanted:
        return {}
    from .perceptual import LPIPS

    return {m: LPIPS(LPIPS_NETS[m], weights) for m in wanted}


def run_eval(
    model: str,
    dataset_dirs: Sequence[str | Path],
    scale: int | None = None,
    *,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    lr_dirs: Sequence[str | Path] | None = None,
    save_dir: str | Path | None = None,
    progress: bool = True,
    metrics: Sequence[str] = ("psnr", "ssim"),
    perceptual_weights: str | Path | None = None,
    degrade: str | None = None,
    blend: Mapping[str, object] | None = None,
) -> tuple[str, list[DatasetResult]]:
    """`sr-deploy eval`: build the upscaler once, check its scale, score every dataset.

    lr_dirs: none, or one per dataset (same order). degrade: an `eval --degrade` spec for the LR
    (`sr_deploy.degrade`), not together with lr_dirs. save_dir: SR images go to
    save_dir/<dataset name>/. blend: the `--realism` blend that `model` is (for the description).
    Returns what was scored (`describe`) and the results.
    """
    if scale is not None and scale < 1:
        raise InputError(f"--scale must be a positive integer, got {scale}")
    if lr_dirs and len(lr_dirs) != len(dataset_dirs):
        raise InputError(f"give one --lr-dir per --dataset ({len(dataset_dirs)} datasets, {len(lr_dirs)} LR folders)")
    degradation = parse_degradation(degrade)
    if lr_dirs and degradation.name != "bicubic":
        raise InputError(f"--degrade {degrade}: not together with --lr-dir (the LR images are given)")
    for d in dataset_dirs:  # fail before loading a model when a folder is wrong
        list_images(d)
    names = [Path(d).name for d in dataset_dirs]
    if save_dir is not None and len(set(names)) < len(names):  # save_dir/<name>/ would mix two sets
        twice = next(name for name in names if names.count(name) > 1)
        raise InputError(f"--save-dir {save_dir}: two --dataset folders are named {twice}; their images would mix")
    lpips = lpips_metrics(metrics, perceptual_weights)  # likewise for missing LPIPS weights
    # scale None: the model's own (bicubic, which has none, is x4 unless asked otherwise).
    upscaler = upscaler_for(model, backend, device, precision, scale=scale or 4)
    scale = scale or upscaler.scale
    try:
        if upscaler.scale != scale:
            raise InputError(
                f"{model}: an x{upscaler.scale} model, but --scale is {scale}; use --scale {upscaler.scale}"
            )
        results = []
        for i, d in enumerate(dataset_dirs):
            target = Path(save_dir) / Path(d).name if save_dir is not None else None
            results.append(
                evaluate_dataset(
                    upscaler,
                    d,
                    scale,
                    lr_dir=lr_dirs[i] if lr_dirs else None,
                    save_dir=target,
                    progress=progress,
                    lpips=lpips,
                    metrics=metrics,
                    degradation=degradation,
                )
            )
    finally:
        upscaler.close()
    return describe(model, upscaler, blend), results


def write_json(
    path: str | Path,
    model: str,
    description: str,
    results: Sequence[DatasetResult],
    blend: Mapping[str, object] | None = None,
) -> Path:
    """Write the results as JSON through a temporary name beside `path`, then rename. A
    `--realism` blend is recorded as ``"realism": {"realism", "psnr_model", "gan_model"}``."""
    path = Path(path)
    payload: dict[str, object] = {"model": model, "upscaler": description}
    if blend is not None:
        payload["realism"] = dict(blend)
    payload["datasets"] = [r.to_dict() for r in results]
    return atomic_write_text(path, json.dumps(payload, indent=2) + "\n", make_parents=True)
