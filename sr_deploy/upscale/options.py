"""What `sr-deploy upscale` can be told (`UpscaleOptions`), checked before any model is loaded."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError
from ..formats import image_format
from ..tiling import DEFAULT_TILE_OVERLAP
from ..video import (
    DEFAULT_CRF,
    DEFAULT_PRESET,
    DEFAULT_SEGMENT_SECONDS,
    DEFAULT_VIDEO_BATCH,
    EXACT,
    VideoOptions,
    check_threshold,
)

# What `sr-deploy upscale` runs without --model: the model trained for real inputs (JPEG, noise,
# video compression); `default` (PSNR) and `default-gan` stay addressable by name. With
# `--realism A` and no --model it blends DEFAULT_UPSCALE_PSNR_MODEL (A = 0, its L1-trained twin)
# with DEFAULT_UPSCALE_MODEL (A = 1).
DEFAULT_UPSCALE_MODEL = "default-real"
DEFAULT_UPSCALE_PSNR_MODEL = "default-real-psnr"

# Largest --outscale: beyond it an output size is a typo, not a request (64 x 64 = 4096 times the pixels).
MAX_OUTSCALE = 64.0


@dataclass
class UpscaleOptions:
    """Everything `sr-deploy upscale` can be told; defaults are the CLI's.

    tile: None = automatic, 0 = off (unless the backend's max_shape forces tiles), N = core edge.
    batch_size: tiles per call for images, frames per call for videos; None = 4 for videos and
        for images on CUDA, 1 for images on the CPU.
    outscale: final size factor; None = the model's scale.
    ext: output image format: png, jpg, webp or `same` as the input.
    max_pixels: images (by their header) and videos (by their frames) with more pixels are refused
        before decoding; None: what fits in the memory available (`upscale.image.max_input_pixels`,
        `video.pipeline.check_frame_size`).
    dedup_threshold: videos: EXACT reuses the output of a held (identical) frame, N dB also that of
        a frame at least that close (PSNR), None runs the model on every frame (`sr_deploy.video.held`).
    model_id: the model file's name and sha256 prefix, filled in once by the driver
        (`upscale.run.settled`): it names the model in resume keys and in the outputs' metadata.
    threads: CPU threads of the inference (torch intra-op, ONNX Runtime intra-op); None: the
        driver's default (one per core), filled in once by `upscale.run.settled`. Every worker of
        a job runs with this count: oneDNN and MKL promise bitwise-equal results only for the same
        thread count, and a job gives the same bytes on every worker. With --ray each CPU actor
        reserves this many CPUs.
    memory_budget: bytes the automatic tile size (`--tile` unset) plans for, settled once by the
        driver from the memory it sees (`tiling.memory_budget_bytes`), so that a worker with less
        memory free at that moment does not tile where another did not (other bytes); None:
        measured per image or video (GPU workers of a Ray job measure their own device).
    """

    model: str = DEFAULT_UPSCALE_MODEL
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    tile: int | None = None
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    batch_size: int | None = None
    outscale: float | None = None
    ext: str = "png"
    overwrite: bool = False
    quality: int | None = None
    codec: str | None = None
    crf: int = DEFAULT_CRF
    preset: str = DEFAULT_PRESET
    pix_fmt: str | None = None
    hwaccel: str | None = None
    allow_partial: bool = False
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS
    progress: bool = True
    dedup_threshold: float | None = EXACT
    max_pixels: int | None = None
    model_id: str = ""
    threads: int | None = None
    memory_budget: int | None = None

    def video(self, model_id: str = "") -> VideoOptions:
        """The options of a video job (`model_id`, default `self.model_id`, names the model in
        its resume key and its metadata)."""
        return VideoOptions(
            tile=self.tile,
            memory_budget=self.memory_budget,
            overlap=self.tile_overlap,
            batch_size=self.batch_size or DEFAULT_VIDEO_BATCH,
            outscale=self.outscale,
            codec=self.codec,
            crf=self.crf,
            preset=self.preset,
            pix_fmt=self.pix_fmt,
            hwaccel=self.hwaccel,
            allow_partial=self.allow_partial,
            segment_seconds=self.segment_seconds,
            model_id=model_id or self.model_id,
            progress=self.progress,
            max_pixels=self.max_pixels,
            dedup_threshold=self.dedup_threshold,
        )

    def recorded(self, kind: str, extension: str, bit_depth: int = 8) -> dict[str, str]:
        """The settings that decide what an output of `kind` ("image" / "video") and `extension`
        is, as its record (`util.text.provenance`) names them and the skip rule compares them
        (`plan.jobs_to_run`): as given (``outscale=model``: the model's own scale); an image's
        quality only where its format is lossy, resolved to the format's default. The tiles and
        the precision are not among them: they are how a job runs, not what it makes. A video's
        default encoder depends on the input's `bit_depth`."""
        if kind == "video":
            return self.video().recorded(extension, bit_depth)
        settings = {"outscale": "model" if self.outscale is None else f"{self.outscale:.15g}"}
        fmt = image_format(extension)
        if fmt is not None and fmt.quality is not None:
            quality = self.quality if self.quality is not None else fmt.quality[1]
            settings["quality"] = str(min(quality, 100) if fmt.name == "jpg" else quality)  # JPEG: 101 is 100
        return settings


def validate_options(options: UpscaleOptions) -> None:
    """Everything about the options that can be checked before a model is loaded (InputError)."""
    if options.tile is not None and options.tile < 0:
        raise InputError(f"--tile must be >= 0 (0 turns tiling off), got {options.tile}")
    if options.tile_overlap < 0:
        raise InputError(f"--tile-overlap must be >= 0, got {options.tile_overlap}")
    if options.batch_size is not None and options.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {options.batch_size}")
    if options.outscale is not None and not (math.isfinite(options.outscale) and 0 < options.outscale <= MAX_OUTSCALE):
        raise InputError(f"--outscale must be a number > 0 and <= {MAX_OUTSCALE:g}, got {options.outscale}")
    if not (math.isfinite(options.segment_seconds) and options.segment_seconds >= 0):
        raise InputError(f"--segment-seconds must be >= 0, got {options.segment_seconds}")
    check_threshold(options.dedup_threshold)
    if options.threads is not None and options.threads < 1:
        raise InputError(f"--threads must be >= 1, got {options.threads}")
    if options.max_pixels is not None and options.max_pixels < 1:
        raise InputError(f"--max-pixels must be >= 1, got {options.max_pixels}")
