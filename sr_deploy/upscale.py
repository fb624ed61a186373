"""`sr-deploy upscale`: images, folders and videos through any backend, nothing lost.

Planning (`plan_jobs`) turns the inputs into (source, target, kind) jobs before any model is
loaded, so usage mistakes (a missing input, an output that would overwrite an input, two inputs
mapping to one output) fail at once. Folders are walked recursively in sorted order, hidden
files and folders skipped, and their relative tree is kept under the output folder.

Running (`run_jobs`) processes each job on its own: a file that fails is reported in one line
(file and cause) and the rest go on; outputs that already exist are skipped unless `overwrite`
(so re-running an interrupted folder resumes it); every output is written under a temporary
name and renamed when complete (see `sr_deploy.imaging.partial_path`).

fp16 safety: with a reduced-precision backend, `Fp32Fallback` checks each batch for NaN/Inf
and re-runs that batch with a float32 twin of the backend, with a warning naming the file.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from .backends.base import Backend
from .errors import InputError, SRDeployError, first_line
from .imaging import (
    IMAGE_EXTENSIONS,
    image_to_model_input,
    is_image_path,
    output_dtype_for,
    quantize,
    read_image,
    upscaled_size,
    write_image_consuming,
)
from .tiling import DEFAULT_TILE_OVERLAP, upscale_tiled_into
from .util.log import Progress as Log
from .util.log import to_stderr
from .video import (
    DEFAULT_CRF,
    DEFAULT_PRESET,
    DEFAULT_SEGMENT_SECONDS,
    DEFAULT_VIDEO_BATCH,
    EXACT,
    VIDEO_EXTENSIONS,
    NonFiniteOutput,
    check_threshold,
    is_video_path,
    upscale_video,
)

Kind = Literal["image", "video"]
OUTPUT_IMAGE_FORMATS = ("png", "jpg", "webp", "same")
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
    dedup_threshold: videos: EXACT reuses the output of a held (identical) frame, N dB also that of
        a frame at least that close (PSNR), None runs the model on every frame (`sr_deploy.video.held`).
    """

    model: str = "default"
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


@dataclass(frozen=True)
class Job:
    """One input file and the output it becomes."""

    source: Path
    target: Path
    kind: Kind


@dataclass
class UpscaleSummary:
    """Outcome of `run_jobs`: targets written, targets skipped (already there), damaged videos
    kept in part (`--allow-partial`: the NAME.partial.EXT files), and failures as (source,
    one-line message, exit code: 2 bad input, 1 failure at run time)."""

    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    partial: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str, int]] = field(default_factory=list)

    def line(self) -> str:
        kept = f"{len(self.partial)} partial, " if self.partial else ""
        return (
            f"upscale: {len(self.done)} done, {len(self.skipped)} skipped (already there), {kept}"
            f"{len(self.failed)} failed"
        )

    def exit_code(self) -> int:
        """0 when nothing failed; 1 when anything failed at run time; else 2 (only bad inputs)."""
        if not self.failed:
            return 0
        return 1 if any(code == 1 for _s, _m, code in self.failed) else 2


def _kind_of(path: Path) -> Kind | None:
    if is_image_path(path):
        return "image"
    if is_video_path(path):
        return "video"
    return None


def _image_target_suffix(source: Path, ext: str) -> str:
    return source.suffix if ext == "same" else "." + ext


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def plan_jobs(inputs: Sequence[str | Path], output: str | Path, ext: str = "png") -> list[Job]:
    """Map INPUT... and OUT to jobs, checking everything that can be checked without a model.

    - One input file and an OUT with an image/video extension: OUT is the output file.
    - Otherwise OUT is a folder: a file input becomes OUT/name, a folder input's files (images
      and videos, recursively, sorted, hidden ones skipped) become OUT/relative/path.
    - Images get the `ext` format (png, jpg, webp, or `same`); videos keep their container.
    Raises InputError for a missing input, a file that is neither image nor video, an OUT that
    is a file where a folder is needed, two inputs with one target, or a target that is an input.
    """
    if ext not in OUTPUT_IMAGE_FORMATS:
        raise InputError(f"--ext {ext!r}: expected one of {', '.join(OUTPUT_IMAGE_FORMATS)}")
    sources = [Path(p) for p in inputs]
    output = Path(output)
    if not sources:
        raise InputError("no INPUT given")
    for source in sources:
        if not source.exists():
            raise InputError(f"{source}: no such file or folder")
        if source.is_file() and _kind_of(source) is None:
            known = ", ".join(sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))
            raise InputError(f"{source}: not an image or video file (known extensions: {known})")

    jobs: list[Job] = []
    single_file = len(sources) == 1 and sources[0].is_file()
    if not single_file and _kind_of(output) is not None and not output.is_dir():
        what = f"{len(sources)} inputs" if len(sources) > 1 else f"the folder {sources[0]}"
        raise InputError(
            f"{output}: names a file, but {what} need an output folder: give -o a folder (or one input file)"
        )
    if single_file and _kind_of(output) is not None and not output.is_dir():
        source = sources[0]
        kind, out_kind = _kind_of(source), _kind_of(output)
        if kind != out_kind:
            raise InputError(f"{output}: a {kind} input cannot be written as a {out_kind} file")
        jobs.append(Job(source, output, kind))
    else:
        if output.exists() and not output.is_dir():
            raise InputError(f"{output}: exists and is not a folder (OUT must be a folder here)")
        output_resolved = output.resolve()
        for source in sources:
            if source.is_file():
                kind = _kind_of(source)
                name = source.name if kind == "video" else source.stem + _image_target_suffix(source, ext)
                jobs.append(Job(source, output / name, kind))
                continue
            if source.resolve() == output_resolved:
                raise InputError(
                    f"{output}: the output folder is the input folder; outputs would mix with "
                    "(and could overwrite) the inputs: choose another -o"
                )
            for path in sorted(source.rglob("*")):
                relative = path.relative_to(source)
                kind = _kind_of(path)
                if kind is None or _is_hidden(relative) or not path.is_file():
                    continue
                if _is_within(path.resolve(), output_resolved):
                    continue  # OUT inside an input folder: never feed our own outputs back in
                if kind == "image":
                    relative = relative.with_suffix(_image_target_suffix(path, ext))
                jobs.append(Job(path, output / relative, kind))

    resolved_sources = {job.source.resolve(): job.source for job in jobs}
    seen: dict[Path, Path] = {}
    for job in jobs:
        target = job.target.resolve()
        if target in resolved_sources:
            raise InputError(
                f"{job.target}: the output would overwrite the input {resolved_sources[target]}; "
                "choose another OUT (or another --ext)"
            )
        if target in seen:
            raise InputError(f"{job.target}: both {seen[target]} and {job.source} would be written there")
        seen[target] = job.source
    return jobs


class Fp32Fallback(Backend):
    """A backend whose output is checked for NaN/Inf on every call (one reduction per batch).

    With a reduced-precision backend, a batch with NaN/Inf is re-run with the float32 twin that
    `make_fp32` builds the first time it is needed (warning once per file). Output that is still
    not finite (fp32 backend, or the fp32 re-run) raises `NonFiniteOutput`: a checkpoint with
    NaN weights must fail, never write black pictures. `source` names the file being processed.
    """

    def __init__(self, primary: Backend, make_fp32: Callable[[], Backend] | None, log: Log = to_stderr):
        super().__init__(primary.scale, primary.precision, primary.device, primary.max_shape)
        self.name = primary.name
        self.primary = primary
        self.precision_reason = primary.precision_reason
        self.make_fp32 = make_fp32
        self.log = log
        self.source: str = ""
        self.fp32: Backend | None = None
        self.reruns = 0
        self._warned: set[str] = set()

    def _non_finite(self, what: str) -> NonFiniteOutput:
        return NonFiniteOutput(
            f"{self.source}: the model's output has NaN/Inf values{what} (a checkpoint with "
            "non-finite weights, or values beyond float range)"
        )

    def __call__(self, x: Any) -> Any:
        y = self.primary(x)
        if np.isfinite(float(y.sum())):  # one reduction: any NaN/Inf makes the sum non-finite
            return y
        if self.make_fp32 is None:
            raise self._non_finite("")
        if self.fp32 is None:
            try:
                self.fp32 = self.make_fp32()
            except SRDeployError as exc:
                raise SRDeployError(
                    f"{self.source}: {self.precision} output has NaN/Inf and no fp32 "
                    f"backend could be loaded to redo it ({exc})"
                ) from exc
        if self.source not in self._warned:
            self._warned.add(self.source)
            self.log(
                f"warning: {self.source}: {self.precision} output had NaN/Inf values; re-ran those batches in fp32"
            )
        self.reruns += 1
        y = self.fp32(x)
        if not np.isfinite(float(y.sum())):
            raise self._non_finite(" even after the fp32 re-run")
        return y

    def close(self) -> None:
        self.primary.close()
        if self.fp32 is not None:
            self.fp32.close()


def load_backend(options: UpscaleOptions, log: Log = to_stderr) -> Backend:
    """The backend for `options` (model, backend, device, precision), wrapped in `Fp32Fallback`
    (NaN/Inf check; fp32 re-run below fp32). Raises InputError for a model that is not there."""
    from .models import resolve_model_path

    path = resolve_model_path(options.model)  # the clear message for a bundled model not yet shipped
    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    from .backends import load

    backend = load(path, options.device, options.precision, backend=options.backend)
    if backend.precision_reason:
        log(f"precision: {backend.precision_reason}")
    if backend.precision == "fp32":
        return Fp32Fallback(backend, None, log)
    return Fp32Fallback(backend, lambda: load(path, options.device, "fp32", backend=backend.name), log)


def upscale_image_file(backend: Backend, source: Path, target: Path, options: UpscaleOptions) -> None:
    """Read `source`, upscale it (tiled), write `target` atomically (format from its extension).

    Keeps greyscale as one channel, alpha (bicubic), 16-bit depth where the format holds it.
    Memory: each tile is clamped and rounded into the 8/16-bit output as it finishes, so the peak
    is the input (as float32), the tiles in flight and the output image, not a float32 output.
    With `--outscale` the tiles go into a 16-bit image at the model's scale, which is resized and
    then rounded to the output depth once.
    """
    image = read_image(source)
    height, width = image.shape[:2]
    grey, input_dtype = image.ndim == 2, image.dtype
    dtype = output_dtype_for(target.suffix, input_dtype)
    rgb, alpha = image_to_model_input(image)
    del image
    size = None
    if options.outscale is not None and options.outscale != backend.scale:
        size = upscaled_size(height, width, options.outscale)
    staging = np.dtype(np.uint16) if size is not None and dtype == np.uint8 else dtype
    scale = backend.scale
    shape: tuple[int, ...] = (height * scale, width * scale)
    channels = 1 if grey else (4 if alpha is not None else 3)
    out = np.empty(shape if channels == 1 else shape + (channels,), dtype=staging)

    def put(y0: int, y1: int, x0: int, x1: int, core: np.ndarray) -> None:
        hwc = np.ascontiguousarray(core.transpose(1, 2, 0), dtype=np.float32)
        if grey:
            out[y0:y1, x0:x1] = quantize(cv2.cvtColor(hwc, cv2.COLOR_RGB2GRAY), staging)
        else:
            out[y0:y1, x0:x1, :3] = quantize(hwc, staging)

    batch_size = options.batch_size or (4 if str(backend.device).startswith("cuda") else 1)
    upscale_tiled_into(backend, rgb, put, options.tile, options.tile_overlap, batch_size)
    del rgb
    if alpha is not None:
        out[:, :, 3] = quantize(cv2.resize(alpha, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC), staging)
    if size is not None:
        shrinking = size[0] * size[1] < shape[0] * shape[1]
        out = cv2.resize(out, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4)
        if staging != dtype:  # 16-bit staging -> 8-bit, rounded and saturated
            out = cv2.multiply(out, 1 / 257, dtype=cv2.CV_8U)
    write_image_consuming(target, out, options.quality)


def _one_line(source: Path, exc: BaseException) -> str:
    text = first_line(exc, limit=10_000) if str(exc).strip() else ""
    if not isinstance(exc, SRDeployError):
        text = f"{type(exc).__name__}: {text}"
    return text if str(source) in text else f"{source}: {text}"


def _model_identity(model: str) -> str:
    """The model file, its size and modification time: enough for a resumed video to know that
    its finished segments came from the same model."""
    try:
        from .models import resolve_model_path

        path = resolve_model_path(model)
        stat = path.stat()
        return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    except Exception:  # a stand-in backend in tests, an unresolvable name: the name is all there is
        return str(model)


def _status(target: Path) -> Literal["done", "todo", "folder"]:
    """An output counts as done only when it is a non-empty file (writes are atomic, so a final
    name is only ever a complete file; a 0-byte one was made by someone else, e.g. `touch`)."""
    if target.is_dir():
        return "folder"
    if target.is_file() and target.stat().st_size > 0:
        return "done"
    return "todo"


def jobs_to_run(jobs: Sequence[Job], options: UpscaleOptions, log: Log = to_stderr) -> tuple[UpscaleSummary, list[Job]]:
    """The skip / resume rule of every run, local or on a cluster: an output that is done (a
    non-empty file) is skipped unless `options.overwrite`; a folder under the output's name fails
    that job (code 2). Returns the summary so far and the jobs left to run."""
    summary = UpscaleSummary()
    todo = []
    for job in jobs:
        status = _status(job.target)
        if status == "folder":
            summary.failed.append((job.source, f"{job.target}: a folder has the output's name; move it away", 2))
            log(f"error: {summary.failed[-1][1]}")
        elif status == "done" and not options.overwrite:
            summary.skipped.append(job.target)
        else:
            todo.append(job)
    if summary.skipped:
        log(f"skipping {len(summary.skipped)} output(s) that already exist (--overwrite redoes them)")
    return summary, todo


# long: the job loop keeps skip/resume, per-kind dispatch and per-file error accounting in one place
def run_jobs(jobs: Sequence[Job], backend: Backend, options: UpscaleOptions, log: Log = to_stderr) -> UpscaleSummary:
    """Run every job; one failing job is logged (`error: FILE: cause`) and the others go on.

    KeyboardInterrupt stops everything (the current output's temporary file is removed; a video's
    finished segments are kept for the re-run to resume from).
    """
    from tqdm import tqdm

    summary, todo = jobs_to_run(jobs, options, log)
    images = sum(job.kind == "image" for job in todo)
    bar = tqdm(
        total=images,
        unit="image",
        file=sys.stderr,
        disable=not options.progress or images < 2,
        dynamic_ncols=True,
        leave=False,
    )

    def report(message: str) -> None:
        if bar.disable:
            log(message)
        else:
            bar.write(message, file=sys.stderr)

    if isinstance(backend, Fp32Fallback):
        backend.log = report
    model_id = _model_identity(options.model)
    try:
        for job in todo:
            if isinstance(backend, Fp32Fallback):
                backend.source = str(job.source)
            try:
                if job.kind == "image":
                    upscale_image_file(backend, job.source, job.target, options)
                    bar.update(1)
                    summary.done.append(job.target)
                    continue
                result = upscale_video(
                    backend,
                    job.source,
                    job.target,
                    tile=options.tile,
                    overlap=options.tile_overlap,
                    batch_size=options.batch_size or DEFAULT_VIDEO_BATCH,
                    outscale=options.outscale,
                    codec=options.codec,
                    crf=options.crf,
                    preset=options.preset,
                    pix_fmt=options.pix_fmt,
                    hwaccel=options.hwaccel,
                    allow_partial=options.allow_partial,
                    segment_seconds=options.segment_seconds,
                    model_id=model_id,
                    progress=options.progress,
                    log=report,
                    dedup_threshold=options.dedup_threshold,
                )
                resumed = f", resumed after frame {result.resumed_from}" if result.resumed_from else ""
                handled = result.frames_inferred + result.frames_reused
                report(
                    f"{result.path}: {result.frames} frames ({result.frames_inferred} inferred{resumed}), "
                    f"{result.frames_reused} of {handled} frames reused, "
                    f"{result.size[0]}x{result.size[1]}, audio {result.audio}, "
                    f"{handled / max(result.seconds, 1e-9):.2f} frames/s"
                )
                if result.partial:
                    summary.partial.append(result.path)
                else:
                    summary.done.append(job.target)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # one bad file must not stop the others
                code = 2 if isinstance(exc, InputError) else 1
                summary.failed.append((job.source, _one_line(job.source, exc), code))
                report(f"error: {summary.failed[-1][1]}")
    finally:
        bar.close()
    return summary


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


def upscale(
    inputs: Sequence[str | Path],
    output: str | Path,
    options: UpscaleOptions,
    log: Log = to_stderr,
    backend: Backend | None = None,
) -> UpscaleSummary:
    """Plan, load the backend (unless given, or unless every output already exists), run.

    Returns the summary; `summary.exit_code()` is the command's exit code.
    """
    validate_options(options)
    jobs = plan_jobs(inputs, output, options.ext)
    if not jobs:
        raise InputError(f"no image or video files found in {', '.join(str(p) for p in inputs)}")
    if _kind_of(Path(output)) is None:
        Path(output).mkdir(parents=True, exist_ok=True)
    pending = [job for job in jobs if options.overwrite or _status(job.target) == "todo"]
    if backend is None and pending:
        backend = load_backend(options, log)
        try:
            return run_jobs(jobs, backend, options, log)
        finally:
            backend.close()
    return run_jobs(jobs, backend, options, log)  # type: ignore[arg-type]
