"""Training data: HR images cached in memory, random crops, augmentation and degradation.

Every training sample is a pure function of (seed, global sample number): sample `n` of a run is
sample `n` of any other run with the same seed, whatever the number of DataLoader workers and
whether the run was interrupted and resumed. That is how `--resume` continues with the very
batches an uninterrupted run would have seen, without saving a sampler position.

Arrays: images are RGB uint8 HWC in memory; a sample is a pair of float32 CHW tensors in [0, 1]
(`lr` of (3, crop/scale, crop/scale) and `hr` of (3, crop, crop)).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from sr_deploy.degrade import parse_degradation
from sr_deploy.errors import InputError
from sr_deploy.formats import DATASET_IMAGE_SUFFIXES
from sr_deploy.imaging import read_image
from sr_deploy.metrics import bicubic_degrade, imresize, to_uint8

from .degradations import degrade_real, usm_sharpen

IMAGE_SUFFIXES = DATASET_IMAGE_SUFFIXES  # the image-format table's readable suffixes


def list_images(folder: str | Path, what: str = "data") -> list[Path]:
    """The image files directly inside `folder`, sorted by name. InputError (one line) for a
    missing folder or one without images; `what` names the option in the message."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: no such {what} folder")
    if not folder.is_dir():
        raise InputError(f"{folder}: the {what} path is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no images in the {what} folder (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def read_rgb(path: Path) -> np.ndarray:
    """Decode `path` to RGB uint8 HWC (grey is replicated to 3 channels, alpha dropped, 16-bit and
    float samples rounded to 8 bits) with `sr_deploy.imaging.read_image`, the strict decoder of
    `sr-deploy eval`: a truncated or damaged JPEG, an animated PNG / WebP or a multi-page TIFF is
    an InputError naming the file, not an image silently grey-filled or cut to its first frame."""
    img = read_image(path)
    if img.dtype != np.uint8:  # 16-bit (0..65535) or float (0..1) samples
        img = to_uint8(img, 65535.0 if img.dtype == np.uint16 else 1.0)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def load_image_cache(
    folder: str | Path,
    min_size: int = 0,
    max_images: int | None = None,
    what: str = "data",
    progress: bool = True,
) -> tuple[list[Path], list[np.ndarray]]:
    """Decode the images of `folder` once (RGB uint8 HWC). Raises InputError before decoding
    anything heavy is wasted: missing folder, no images, and (after decoding) any image whose
    height or width is below `min_size`, naming the first such file and how many there are."""
    files = list_images(folder, what)
    if max_images is not None:
        files = files[: int(max_images)]
    images = [
        read_rgb(p) for p in tqdm(files, desc=f"decoding {what} images", unit="img", leave=False, disable=not progress)
    ]
    small = [(p, im.shape) for p, im in zip(files, images) if min(im.shape[:2]) < min_size]
    if small:
        path, shape = small[0]
        raise InputError(
            f"{path}: {shape[1]}x{shape[0]} is smaller than the {min_size}x{min_size} crop "
            f"({len(small)} of {len(files)} images in the {what} folder are; lower data.crop_size or remove them)"
        )
    return files, images


def to_float(img: np.ndarray) -> np.ndarray:
    """uint8 HWC -> float32 HWC in [0, 1]."""
    return img.astype(np.float32) * np.float32(1.0 / 255.0)


def degrade(
    hr: np.ndarray, scale: int, kind: str = "bicubic", blur_sigma: float = 1.5, quantize: bool = True
) -> np.ndarray:
    """The LR image of an HR RGB uint8 HWC array whose height and width are multiples of `scale`.

    ``bicubic``: MATLAB's antialiased bicubic ``imresize(hr, 1/scale)`` (`metrics.bicubic_degrade`,
    the degradation of the benchmarks). ``gaussian``: Gaussian blur (sigma `blur_sigma`, mirrored
    borders) then every `scale`-th pixel, the formulation of the SRGAN paper. `quantize` rounds
    to 8-bit levels, as a stored LR image is. Returns float32 (H/scale, W/scale, 3) in [0, 1].
    """
    if kind == "bicubic":
        if quantize:
            return bicubic_degrade(hr, scale, quantize=True)[1]
        lr = imresize(to_float(hr), scale=1.0 / scale)
    elif kind == "gaussian":
        blurred = cv2.GaussianBlur(
            to_float(hr), (0, 0), sigmaX=blur_sigma, sigmaY=blur_sigma, borderType=cv2.BORDER_REFLECT_101
        )
        lr = blurred[::scale, ::scale]
        if quantize:
            return to_uint8(lr).astype(np.float32) * np.float32(1.0 / 255.0)
    else:
        raise InputError(f"data.degradation: expected bicubic or gaussian, got {kind!r}")
    return np.clip(lr, 0.0, 1.0).astype(np.float32)


def augment(img: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 dihedral transforms of an HWC array: bit 0 horizontal flip, bit 1 vertical
    flip, bit 2 transpose (with the flips, every flip and 90-degree rotation)."""
    if code & 1:
        img = img[:, ::-1]
    if code & 2:
        img = img[::-1]
    if code & 4:
        img = img.transpose(1, 0, 2)
    return img


DEGRADATIONS = ("bicubic", "gaussian", "realesrgan")


@dataclass
class DegradationSpec:
    """How a training crop becomes its LR input. ``realesrgan`` is the high-order model of
    `train.degradations` with the settings in `real` (the recipe's ``degradation_real`` section);
    `usm_gt` sharpens the HR target as Real-ESRGAN does (unsharp mask, weight 0.5)."""

    scale: int = 4
    kind: str = "bicubic"
    blur_sigma: float = 1.5
    quantize: bool = True
    real: dict | None = None
    usm_gt: bool = False


class RandomPatches(Dataset):
    """Map-style dataset indexed by the global sample number n = iteration * batch_size + i.

    Sample n takes image ``perm_e[n % N]`` where ``perm_e`` is a seeded permutation of the N
    images for epoch ``e = n // N`` (every image once per epoch), a random crop of `crop_size`,
    a random dihedral transform (when `augment`), and degrades the crop to LR (the high-order
    degradation draws from the same per-sample generator, so it is reproducible too).
    """

    def __init__(
        self, images: list[np.ndarray], crop_size: int, degradation: DegradationSpec, augment: bool, seed: int
    ) -> None:
        if crop_size % degradation.scale:
            raise InputError(f"data.crop_size {crop_size} is not a multiple of the scale {degradation.scale}")
        self.images = images
        self.crop_size = crop_size
        self.degradation = degradation
        self.augment = augment
        self.seed = int(seed)

    def __len__(self) -> int:  # the sampler is infinite; this is one "epoch"
        return len(self.images)

    def __getitem__(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        count = len(self.images)
        epoch, pos = divmod(int(n), count)
        image = self.images[int(np.random.default_rng((self.seed, 1, epoch)).permutation(count)[pos])]
        rng = np.random.default_rng((self.seed, 2, int(n)))
        c = self.crop_size
        top = int(rng.integers(0, image.shape[0] - c + 1))
        left = int(rng.integers(0, image.shape[1] - c + 1))
        crop = image[top : top + c, left : left + c]
        if self.augment:
            crop = augment(crop, int(rng.integers(0, 8)))
        crop = np.ascontiguousarray(crop)
        d = self.degradation
        if d.kind == "realesrgan":
            lr = degrade_real(crop, d.scale, d.real or {}, rng)
        else:
            lr = degrade(crop, d.scale, d.kind, d.blur_sigma, d.quantize)
        hr = usm_sharpen(to_float(crop)) if d.usm_gt else to_float(crop)
        return torch.from_numpy(lr.transpose(2, 0, 1).copy()), torch.from_numpy(hr.transpose(2, 0, 1).copy())


class CountingSampler(Sampler[int]):
    """Yields start, start + 1, start + 2, ... forever (the global sample numbers)."""

    def __init__(self, start: int = 0) -> None:
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        n = self.start
        while True:
            yield n
            n += 1


def worker_init(_worker_id: int) -> None:
    """DataLoader workers: one torch thread each (the main process owns the cores), and
    SIGINT / SIGTERM ignored: Ctrl-C, `timeout` or a job scheduler signal the whole process group,
    and a worker that died of it would make torch raise in the main process before it could save
    the training state. The main process shuts the workers down when it returns; if it is killed
    outright, torch's watchdog in each worker ends it."""
    import signal

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: RandomPatches, batch_size: int, start_iteration: int, workers: int, pin_memory: bool):
    """An infinite DataLoader over `dataset` starting at batch `start_iteration`."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=CountingSampler(start_iteration * batch_size),
        num_workers=workers,
        worker_init_fn=worker_init if workers > 0 else None,
        persistent_workers=False,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
        # The loader draws its workers' base seed from this generator, not from torch's global
        # RNG, so that creating a loader (again, on --resume) leaves the global RNG state alone.
        generator=torch.Generator().manual_seed(start_iteration),
    )


@dataclass
class ValidationSet:
    """HR validation images (RGB uint8 HWC, mod-cropped) and their LR inputs (float32 HWC)."""

    names: list[str]
    hr: list[np.ndarray]
    lr: list[np.ndarray]


def load_validation_set(
    folder: str | Path, scale: int, max_images: int | None = None, progress: bool = True, degrade: str | None = None
) -> ValidationSet:
    """The validation folder with LR made once by MATLAB bicubic (quantised to 8 bits), as the
    benchmark LR images are; `degrade` (an `eval --degrade` spec such as ``jpeg=40``) makes the
    LR exactly as `sr-deploy eval --degrade` does, so a real-world run watches its real target."""
    files, images = load_image_cache(
        folder, min_size=scale, max_images=max_images, what="validation", progress=progress
    )
    degradation = parse_degradation(degrade)
    pairs = [degradation.apply(im, scale, p.name) for p, im in zip(files, images)]
    return ValidationSet([p.name for p in files], [hr for hr, _ in pairs], [lr for _, lr in pairs])
