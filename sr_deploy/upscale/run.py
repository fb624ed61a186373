"""Running: one job through a backend (`run_one`, whatever executes it: the local loop or a Ray
actor), the summary every executor reduces its outcomes into, the local loop and `upscale`.

Each job is processed on its own: a file that fails is reported in one line (file and cause) and
the rest go on; every output is written under a temporary name and renamed when complete (see
`sr_deploy.imaging.partial_path`). The file is named in the error by `run_one`, never by the
backend.

fp16 safety: with a reduced-precision backend, `Fp32Fallback` checks each batch for NaN/Inf and
re-runs that batch with a float32 twin of the backend; `run_one` warns, naming the file.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..backends.base import Backend
from ..backends.fp32_fallback import Fp32Fallback
from ..errors import InputError, SRDeployError
from ..model_file import content_id, model_file_scale
from ..util import storage
from ..util.files import check_output_folder, exclusive_output, file_sha256
from ..util.log import Progress as Log
from ..util.log import debug_traceback, to_stderr
from ..util.text import first_line, shown
from ..video import CQ_CODECS, VideoOptions, check_encoder_options, check_hwaccel, default_codec, upscale_video
from .image import upscale_image_file
from .options import UpscaleOptions, validate_options
from .plan import Job, Outcome, jobs_to_run, kind_of, made_meanwhile, plan_jobs


@dataclass
class UpscaleSummary:
    """Outcome of a run: targets written, targets skipped (already there), damaged videos kept in
    part (`--allow-partial`: the NAME.partial.EXT files), and failures as (source, one-line
    message, exit code: 2 bad input, 1 failure at run time)."""

    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    partial: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str, int]] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        """The one reducer: every executor folds its outcomes into the summary with it."""
        job = outcome.job
        if outcome.state == "failed":
            self.failed.append((job.label, outcome.message, outcome.code))
        elif outcome.state == "partial":
            self.partial.append(outcome.path or job.target)
        elif outcome.state == "skipped":
            self.skipped.append(job.target)
        else:
            self.done.append(job.target)

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


def summarize(outcomes: Sequence[Outcome]) -> UpscaleSummary:
    summary = UpscaleSummary()
    for outcome in outcomes:
        summary.add(outcome)
    return summary


def load_backend(options: UpscaleOptions, log: Log = to_stderr) -> Backend:
    """The backend for `options` (model, backend, device, precision), wrapped in `Fp32Fallback`
    (NaN/Inf check; fp32 re-run below fp32), running with the job's `threads` on the CPU (torch's
    process-wide count; ONNX Runtime's session). Raises InputError for a model that is not there."""
    from ..backends import load
    from ..models import existing_model_path

    path = existing_model_path(options.model)
    extra = {}
    if options.threads and _opened_by(path, options.backend) == "onnxruntime" and _on_cpu(options.device):
        extra["threads"] = options.threads
    backend = load(path, options.device, options.precision, backend=options.backend, **extra)
    if options.threads and str(backend.device) == "cpu":  # the job's count in every worker (UpscaleOptions.threads)
        import torch

        torch.set_num_threads(options.threads)
    if backend.precision_reason:
        log(f"precision: {backend.precision_reason}")
    if backend.precision == "fp32":
        return Fp32Fallback(backend, None)
    return Fp32Fallback(backend, lambda: load(path, options.device, "fp32", backend=backend.name, **extra))


def _on_cpu(device: str) -> bool:
    """Whether a backend asked for `device` runs on the CPU (``auto``: when PyTorch sees no GPU)."""
    if device in ("", "auto"):
        import torch

        return not torch.cuda.is_available()
    return device == "cpu"


def with_threads(options: UpscaleOptions) -> UpscaleOptions:
    """`options` with the job's CPU thread count settled: the one asked for, else this process's
    default (torch's, one per core unless set), before any backend is loaded."""
    if options.threads is not None:
        return options
    import torch

    return dataclasses.replace(options, threads=torch.get_num_threads())


def _opened_by(path: Path, backend: str) -> str:
    """The name of the backend that `load` opens `path` with when asked for `backend` (`load`'s
    own rule: InputError for a pair it refuses)."""
    from ..backends import runner_for

    return runner_for(path, backend).name


def one_line(source: Path, exc: BaseException) -> str:
    """`exc` as the one line of a failed job: naming `source` (unless it already does), with the
    exception's type when it is not one of ours. A name that holds a newline is escaped
    (`shown`) and the cause after it kept, not cut at the newline."""
    name, text = str(source), str(exc).strip()
    named = text.startswith(name + ":")  # our messages start with the file's name
    if named:
        text = text[len(name) + 1 :].strip()
    text = first_line(text, limit=10_000) if text else ""
    if not isinstance(exc, SRDeployError):
        text = f"{type(exc).__name__}: {text}"
    return text if not named and name in text else f"{shown(name)}: {text}"


def model_identity(model: str) -> str:
    """The model file's `content_id` (name and sha256 prefix), as a Ray job names it
    (`model_file.model_files_id`): a resumed video never mixes segments of two models, even when
    weights were replaced in place with the same size and modification time (issue 24)."""
    try:
        from ..models import resolve_model_path

        path = resolve_model_path(model)
        return content_id(path.name, file_sha256(path))
    except Exception:  # a stand-in backend in tests, an unresolvable name: the name is all there is
        return str(model)


def model_scale(model: str, backend: Backend | None = None) -> int | None:
    """The scale of `backend`, else of the model file `model` names (its kind's scale reader);
    None when it cannot be read (a stand-in backend's name: the job's own load says why)."""
    if backend is not None:
        return backend.scale
    try:
        return model_file_scale(model)[1]
    except Exception:
        return None


def with_model_outscale(options: UpscaleOptions, backend: Backend | None = None) -> UpscaleOptions:
    """`options` without ``--outscale`` where it is the model's own scale: the same bytes as
    without it, so the same record and the same skip (Real-ESRGAN users type ``-s 4``)."""
    if options.outscale is not None and options.outscale == model_scale(options.model, backend):
        return dataclasses.replace(options, outscale=None)
    return options


def settled(options: UpscaleOptions, backend: Backend | None = None) -> UpscaleOptions:
    """`options` with the job's decisions made once, by the driver, before any work: the model's
    identity (`model_identity`), ``--outscale`` dropped where it is the model's scale, the CPU
    thread count (`with_threads`) and, given the backend the
    driver loaded, the precision ``--precision auto`` chose on it and the automatic tiles' memory
    budget (`job_memory_budget`, on that backend's device). Every worker (the local loop, Ray
    actors, a video's segments and pieces) gets these options, so none decides again; the
    outputs' metadata and the resume keys name them."""
    options = with_model_outscale(options, backend)
    changes: dict = {}
    if not options.model_id:
        changes["model_id"] = model_identity(options.model)
    if options.threads is None:
        changes["threads"] = with_threads(options).threads
    if backend is not None and options.precision == "auto":
        changes["precision"] = backend.precision
    if backend is not None and options.tile is None and options.memory_budget is None:
        changes["memory_budget"] = job_memory_budget(str(backend.device))
    return dataclasses.replace(options, **changes) if changes else options


def job_memory_budget(device: str, sharers: int = 1) -> int:
    """The automatic tiles' memory budget of a job on `device`, shared by `sharers` workers: what
    `tiling.memory_budget_bytes` measures now, rounded down to a power of two, so that the small
    changes of free memory between runs give the same budget (it is part of a video piece's resume
    key: a resumed run with another budget, which could tile otherwise, starts the pieces again)."""
    from ..tiling import memory_budget_bytes

    budget = max(1, memory_budget_bytes(device) // max(1, sharers))
    return 1 << (budget.bit_length() - 1)


def settled_for_workers(
    options: UpscaleOptions, cpu_workers: bool, log: Log = to_stderr, actors_per_node: int = 1
) -> UpscaleOptions:
    """`settled` for workers in other processes (Ray actors). With CPU workers the driver loads
    the backend on its CPU once to decide ``auto`` and hands the verdict to every actor, so no
    actor decides on its own, and measures the tiles' memory budget on its own RAM, shared by the
    `actors_per_node` actors that may run on one node; GPU workers keep ``auto`` (fp16 on CUDA: a
    rule, nothing measured) and measure their own GPU memory."""
    if not cpu_workers:
        return settled(options)
    if options.tile is None and options.memory_budget is None:
        options = dataclasses.replace(options, memory_budget=job_memory_budget("cpu", actors_per_node))
    if options.precision != "auto":
        return settled(options)
    backend = load_backend(dataclasses.replace(options, device="cpu"), log)
    try:
        return settled(options, backend)
    finally:
        backend.close()


def run_one(
    job: Job, backend: Backend, options: UpscaleOptions, log: Log = to_stderr, video: VideoOptions | None = None
) -> Outcome:
    """Run one job and say how it ended; never raises for a bad file (KeyboardInterrupt and
    SystemExit go through). `video`: a video job's options (default: from `options`)."""
    reruns = backend.reruns if isinstance(backend, Fp32Fallback) else 0
    try:
        with exclusive_output(job.target):  # a second run on the same output fails at once (issue 24)
            # and one that finished it since this run's skip pass is not redone, nor replaced
            outcome = made_meanwhile(job, options) or _run_locked(job, backend, options, log, video)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # one bad file must not stop the others
        if trace := debug_traceback():
            log(trace)
        outcome = Outcome(job, "failed", one_line(job.label, exc), 2 if isinstance(exc, InputError) else 1)
    if isinstance(backend, Fp32Fallback) and backend.reruns > reruns:
        log(f"warning: {job.label}: {backend.precision} output had NaN/Inf values; re-ran those batches in fp32")
    return outcome


def _run_locked(job: Job, backend: Backend, options: UpscaleOptions, log: Log, video: VideoOptions | None) -> Outcome:
    """`run_one`'s work, with the output's lock held."""
    if job.kind == "image":
        upscale_image_file(backend, job.source, job.target, options)
        return Outcome(job, "done", path=job.target)
    result = upscale_video(backend, job.source, job.target, video or options.video(), log=log)
    resumed = f", resumed after frame {result.resumed_from}" if result.resumed_from else ""
    handled = result.frames_inferred + result.frames_reused
    message = (
        f"{result.path}: {result.frames} frames ({result.frames_inferred} inferred{resumed}), "
        f"{result.frames_reused} of {handled} frames reused, "
        f"{result.size[0]}x{result.size[1]}, audio {result.audio}, "
        f"{handled / max(result.seconds, 1e-9):.2f} frames/s"
    )
    state = "partial" if result.partial else "done"
    return Outcome(job, state, message, path=result.path, frames=result.frames)


def skip_pass(
    jobs: Sequence[Job],
    options: UpscaleOptions,
    log: Log = to_stderr,
    rule: Callable[..., tuple[list[Outcome], list[Job]]] = jobs_to_run,
) -> tuple[UpscaleOptions, UpscaleSummary, list[Job]]:
    """Before any model is loaded: the options `settled` (the model's identity, which the skip rule
    compares with what outputs record; the thread count), then the skip / resume `rule`
    (`plan.jobs_to_run`, or `stored.stored_jobs_to_run` for locations). Returns the settled
    options, the summary so far and the jobs left to run."""
    options = settled(options)
    outcomes, todo = rule(jobs, options, log)
    return options, summarize(outcomes), todo


def run_jobs(jobs: Sequence[Job], backend: Backend, options: UpscaleOptions, log: Log = to_stderr) -> UpscaleSummary:
    """Run every job here with `backend`; one failing job is logged (`error: FILE: cause`) and the
    others go on. Outputs that already exist are skipped unless `overwrite` (re-running resumes a
    folder), as `skip_pass` rules.

    KeyboardInterrupt stops everything (the current output's temporary file is removed; a video's
    finished segments are kept for the re-run to resume from).
    """
    options, summary, todo = skip_pass(jobs, options, log)
    return run_todo(todo, summary, backend, options, log)


def run_todo(
    todo: Sequence[Job],
    summary: UpscaleSummary,
    backend: Backend,
    options: UpscaleOptions,
    log: Log = to_stderr,
    run: Callable[..., Outcome] = run_one,
) -> UpscaleSummary:
    """The local loop over the jobs left to do (after the skip pass): the options settled once,
    `run` (`run_one`'s signature; `upscale.stored.run_staged` for store locations) on each job,
    a progress bar over the images, every outcome folded into `summary`, which is returned."""
    from tqdm import tqdm

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

    options = settled(options, backend)
    video = options.video()
    try:
        for job in todo:
            outcome = run(job, backend, options, report, video)
            if outcome.state == "failed":
                report(f"error: {outcome.message}")
            elif job.kind == "image":
                bar.update(1)
            elif outcome.message:  # a video skipped under its lock (made meanwhile) has nothing to say
                report(outcome.message)
            summary.add(outcome)
    finally:
        bar.close()
    return summary


def plan_checked(
    inputs: Sequence[str | Path],
    output: str | Path,
    options: UpscaleOptions,
    model_needed: bool = True,
    planner: Callable[[Sequence[str | Path], str | Path, str, Log], list[Job]] = plan_jobs,
    log: Log = to_stderr,
) -> list[Job]:
    """The options and the model file checked, the jobs planned and a local output folder checked:
    what every executor does before any model is loaded, so that a bad option or a missing model
    leaves nothing behind. `model_needed` False: the caller brings its own backend. `planner`:
    `plan.plan_jobs` for local paths, `stored.plan_stored` for locations that may be URIs. The
    video encoders' --crf and --preset are checked too (the GPU coders, after the skip pass:
    `check_video_devices`). What an input folder holds that the plan leaves out is named in a note
    on `log` (`plan.note_left_out`)."""
    from ..models import existing_model_path

    validate_options(options)
    if model_needed:
        existing_model_path(options.model)
    jobs = planner(inputs, output, options.ext, log)
    if not jobs:
        raise InputError(f"no image or video files found in {', '.join(str(p) for p in inputs)}")
    for codec in {options.codec or default_codec(Path(str(job.target)).suffix) for job in jobs if job.kind == "video"}:
        check_encoder_options(codec, options.crf, options.preset)
    if not storage.is_uri(str(output)) and kind_of(output) is None:
        # Checked, not made: the folder appears when the first job takes its output's lock
        # (`exclusive_output` makes it), so a model or backend that fails to load leaves none.
        check_output_folder(output)
    return jobs


def check_video_devices(todo: Sequence[Job], options: UpscaleOptions) -> None:
    """Open the GPU encoder (NVENC, `--codec h264_nvenc`) and the `--hwaccel` decoding device
    once, when videos are left to do here, before the model loads: on a machine without them the
    run is one line, exit 2, not a failure per video after the load. A `--ray` driver does not
    call this (its actors code the videos); videos the skip pass found done need no device."""
    if not any(job.kind == "video" for job in todo):
        return
    if options.codec in CQ_CODECS:  # the other encoders' options were checked while planning
        check_encoder_options(options.codec, options.crf, options.preset, open_nvenc=True)
    check_hwaccel(options.hwaccel)


def upscale(
    inputs: Sequence[str | Path],
    output: str | Path,
    options: UpscaleOptions,
    log: Log = to_stderr,
    backend: Backend | None = None,
) -> UpscaleSummary:
    """Plan (the model file must exist unless `backend` is given), the skip pass, then load the
    backend (unless given, or unless nothing is left to do) and run what is left (`run_todo`).

    A caller's own `backend` is named in the outputs (and compared by the skip rule) as
    `options.model_id`, else `options.model`: set one of them to the backend's model.

    Returns the summary; `summary.exit_code()` is the command's exit code.
    """
    jobs = plan_checked(inputs, output, options, model_needed=backend is None, log=log)
    options, summary, todo = skip_pass(jobs, options, log)
    if not todo:
        return summary
    check_video_devices(todo, options)
    if backend is not None:
        return run_todo(todo, summary, backend, options, log)
    backend = load_backend(options, log)  # with the job's thread count, settled above
    try:
        return run_todo(todo, summary, backend, options, log)
    finally:
        backend.close()
