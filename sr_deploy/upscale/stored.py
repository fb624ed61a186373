"""Inputs and outputs in object storage (``s3://``, ``gs://``, any fsspec URI): plan, skip, stage.

A run where any INPUT or OUT is a URI plans here (`plan_stored`): the same naming rules as a
local run (`plan.plan_jobs`), but its jobs hold locations as text (a URI or a local path). Every
store is checked before any work (`sr_deploy.util.storage`: a bad URI, missing credentials, a
missing bucket fail in one line, exit 2, nothing written). `stored_jobs_to_run` is the skip rule
(a non-empty object under the final key is done, unless it says another model made it, as in
`plan.jobs_to_run`). `run_staged` runs one job through the local job (`run_one`): the input
fetched to a local stage, the output put to the store atomically; a video's stage is kept between
runs on this machine, so an interrupted local video resumes from its segments. Local paths in a
run without URIs never come here.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..backends.base import Backend
from ..errors import InputError, SRDeployError
from ..imaging import OUTPUT_IMAGE_FORMATS, image_text
from ..util import storage
from ..util.files import OutputBusy, exclusive_output
from ..util.log import Progress as Log
from ..util.log import to_stderr
from ..util.text import first_line
from ..video import VideoOptions, container_tag
from .options import UpscaleOptions
from .plan import (
    EARLIER_OUTPUTS,
    UNREAD,
    Job,
    Outcome,
    Readers,
    earlier_output,
    existing_output,
    jobs_to_run,
    kind_of,
    local_bit_depth,
    local_input_bytes,
    made_meanwhile,
    note_left_out,
    output_record,
    record_found,
    status,
)
from .run import UpscaleSummary, check_video_devices, load_backend, plan_checked, run_one, run_todo, skip_pass


def uses_store(inputs: Sequence[str | Path], output: str | Path) -> bool:
    return any(storage.is_uri(str(p)) for p in [*inputs, output])


def _target_name(relative: str, kind: str, ext: str) -> str:
    if kind != "image" or ext == "same":
        return relative
    stem, dot, _ = relative.rpartition(".")
    return (stem if dot else relative) + "." + ext


def _sources(location: str) -> tuple[bool, list[tuple[str, str]]]:
    """(is one file, [(location, path relative to the folder or the file's name)]) of one INPUT."""
    if storage.is_uri(location):
        info = storage.check_readable(location)
        if info.get("type") == "file":
            return True, [(location, storage.basename(location))]
        return False, storage.list_files(location)
    path = Path(location)
    if not path.exists():
        raise InputError(f"{location}: no such file or folder")
    if path.is_file():
        return True, [(str(path), path.name)]
    return False, [(str(p), p.relative_to(path).as_posix()) for p in sorted(path.rglob("*")) if p.is_file()]


def _names_a_file(output: str) -> bool:
    if kind_of(output) is None:
        return False
    if storage.is_uri(output):
        info = storage.stat(output)
        return info is None or info.get("type") == "file"
    return not Path(output).is_dir()


def plan_stored(inputs: Sequence[str | Path], output: str | Path, ext: str = "png", log: Log = to_stderr) -> list[Job]:
    """`plan.plan_jobs` for locations that may be URIs; the jobs' `source` / `target` are text.
    Checks every store first (InputError, one line) and the same mistakes as a local plan. Like a
    local folder's, a folder's files in no format this reads and the outputs of an earlier run
    inside it (they record that sr-deploy made them: one ranged read each) are left out and named
    on `log`."""
    if ext not in OUTPUT_IMAGE_FORMATS:
        raise InputError(f"--ext {ext!r}: expected one of {', '.join(OUTPUT_IMAGE_FORMATS)}")
    output = str(output)
    if not inputs:
        raise InputError("no INPUT given")
    if storage.is_uri(output):
        storage.check_writable(output)
    planned = [_sources(str(location)) for location in inputs]
    single = len(planned) == 1 and planned[0][0]
    if _names_a_file(output):
        if not single:
            raise InputError(f"{output}: names a file, but these inputs need an output folder: give -o a folder")
        source = planned[0][1][0][0]
        if kind_of(source) is None or kind_of(source) != kind_of(output):
            raise InputError(f"{output}: a {kind_of(source)} input cannot be written as a {kind_of(output)} file")
        return _checked([Job(source, output, kind_of(source))])  # type: ignore[arg-type]
    jobs = []
    for folder, (one_file, found) in zip(inputs, planned, strict=True):
        unread, earlier = [], []
        for location, relative in found:
            kind = kind_of(location)
            if kind is None and one_file:
                raise InputError(f"{location}: not an image or video file")
            if any(part.startswith(".") for part in relative.split("/")):
                continue  # hidden objects: our own temporary keys and segments, like a local run
            if kind is None:
                unread.append(relative)
                continue
            target = _join(output, _target_name(relative, kind, ext))
            out_inside = output.startswith(str(folder).rstrip("/") + "/")  # OUT in the input folder, not the reverse
            if out_inside and location.startswith(output.rstrip("/") + "/"):
                continue  # OUT inside an input folder: never feed our own outputs back in
            if not one_file and earlier_output(location, STORED):
                earlier.append(relative)  # nor the outputs of an earlier run with another OUT
                continue
            jobs.append(Job(location, target, kind))  # type: ignore[arg-type]
        note_left_out(log, folder, UNREAD, unread)
        note_left_out(log, folder, EARLIER_OUTPUTS, earlier)
    return _checked(jobs)


def _join(output: str, relative: str) -> str:
    return storage.join(output, relative) if storage.is_uri(output) else str(Path(output) / relative)


def _checked(jobs: list[Job]) -> list[Job]:
    sources = {str(job.source) for job in jobs}
    seen: dict[str, str] = {}
    for job in jobs:
        target = str(job.target)
        if target in sources:
            raise InputError(f"{target}: the output would overwrite an input; choose another OUT (or another --ext)")
        if target in seen:
            raise InputError(f"{target}: both {seen[target]} and {job.source} would be written there")
        seen[target] = str(job.source)
    return jobs


def _stored_state(target: str | Path) -> str:
    """`plan.status` for a location: a non-empty object (or file) under the final name is done."""
    if storage.is_uri(str(target)):
        return "done" if storage.is_done(str(target)) else "todo"
    return status(Path(target))


def _stored_record(target: str | Path) -> dict[str, str] | None:
    """`plan.output_record` for a location: an image object's record is read with a stat (its size)
    and one ranged read; a video object's tag from its header (PyAV reads it in 64 KiB ranges,
    probing no further: a few hundred KiB; our MP4s carry their index at the front). None when it
    cannot be read now: the put that made it was whole, so it is skipped as before."""
    location = str(target)
    if not storage.is_uri(location):
        return output_record(Path(location))
    try:
        return record_found(_stored_image_text, _stored_video_tag, location)
    except Exception:  # any store's read error (gcsfs, adlfs raise their own; PyAV passes them on as they are)
        return None


def _stored_image_text(location: str, keyword: str) -> str | None:
    info = storage.stat(location) or {}
    read = functools.partial(storage.read_range, location)
    return image_text(read, int(info.get("size") or 0), Path(location).suffix, keyword)


def _stored_video_tag(location: str, tag: str) -> str | None:
    with storage.open_read(location) as header:
        return container_tag(header, tag)


def _stored_input_bytes(source: str | Path) -> int | None:
    """`plan.local_input_bytes` for a location: the object's size from a stat."""
    location = str(source)
    if not storage.is_uri(location):
        return local_input_bytes(Path(location))
    try:
        info = storage.stat(location)
    except Exception:  # unreadable now: the job itself will say why
        return None
    return int(info["size"]) if info and info.get("size") is not None else None


def _stored_bit_depth(source: str | Path) -> int | None:
    """`plan.local_bit_depth` for a location: None for an object in a store (not read to plan)."""
    return None if storage.is_uri(str(source)) else local_bit_depth(source)


# `plan.Readers` for locations that may be in a store.
STORED = Readers(_stored_state, _stored_record, _stored_input_bytes, _stored_bit_depth)


def stored_jobs_to_run(jobs: Sequence[Job], options: UpscaleOptions, log: Log) -> tuple[list[Outcome], list[Job]]:
    """`plan.jobs_to_run` for locations (URIs or local paths)."""
    return jobs_to_run(jobs, options, log, STORED)


def stage_dir(target: str) -> Path:
    """A local folder for one output, the same on every run (a video's segments resume from it)."""
    where = target if storage.is_uri(target) else str(Path(target).resolve())  # one folder per real output
    digest = hashlib.sha256(where.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "sr-deploy-stage" / digest


def local_input(location: str, folder: Path) -> Path:
    """A local file to read `location` from: the path itself, or a copy of the object in `folder`,
    kept while the object's identity (size, ETag / generation, modification time) is the one it
    was fetched with: a resumed run neither fetches it again nor resumes from a replaced object."""
    if not storage.is_uri(location):
        return Path(location)
    local = folder / storage.local_name(location)
    info = storage.stat(location)
    if info is None:
        raise InputError(f"{location}: no such object")
    fetched_as = local.with_name(f".{local.name}.source.json")
    identity = json.dumps(storage.identity(info), sort_keys=True)
    if not (local.is_file() and fetched_as.is_file() and fetched_as.read_text() == identity):
        fetched_as.unlink(missing_ok=True)
        storage.fetch(location, local)
        fetched_as.write_text(identity)
    return local


def run_staged(
    job: Job, backend: Backend, options: UpscaleOptions, log: Log = to_stderr, video: VideoOptions | None = None
) -> Outcome:
    """`run_one` on a job whose input and/or output may be in a store; never raises for a bad file.
    The job's stage folder is locked for the whole job (fetch, run, put, clean-up): two runs on
    one output never share it; the second fails at once, or, when the first has finished the
    output meanwhile, skips it (or refuses it: `plan.existing_output`) instead of writing it again."""
    target = str(job.target)
    try:
        with exclusive_output(stage_dir(target)):
            return made_meanwhile(job, options, STORED) or _run_staged(job, backend, options, log, video)
    except OutputBusy:
        return Outcome(
            job, "failed", f"{target}: another run is writing this output; try again when it has finished", 1
        )


def _run_staged(job: Job, backend: Backend, options: UpscaleOptions, log: Log, video: VideoOptions | None) -> Outcome:
    source, target = str(job.source), str(job.target)
    stage = stage_dir(target)
    local_target = stage / "out" / storage.local_name(target) if storage.is_uri(target) else Path(target)
    try:
        local_source = local_input(source, stage / "in")
        local_target.parent.mkdir(parents=True, exist_ok=True)
    except SRDeployError as exc:
        return Outcome(job, "failed", str(exc) if source in str(exc) else f"{source}: {exc}", exc.exit_code)

    if storage.is_uri(target) and local_target.is_file() and not options.overwrite:  # a put that failed
        if existing_output(Job(local_source, local_target, job.kind), options).state != "skipped":
            local_target.unlink()  # another model's or settings' copy: made again, not refused

    def named(text: str) -> str:  # the input and output as the user gave them, not their stage copies
        return text.replace(str(local_source), source).replace(str(local_target), target)

    outcome = run_one(Job(local_source, local_target, job.kind), backend, options, lambda line: log(named(line)), video)
    if outcome.state == "skipped" and storage.is_uri(target):  # made here by a run whose put failed
        outcome = dataclasses.replace(outcome, state="done")  # the object is not there: put it now
    message = named(outcome.message)
    written = outcome.path or local_target
    path: str | Path = target
    if outcome.state in ("done", "partial") and storage.is_uri(target):
        path = storage.join(storage.parent(target), written.name) if outcome.state == "partial" else target
        try:
            storage.put_atomic(written, path)
        except SRDeployError as exc:
            return Outcome(job, "failed", str(exc), exc.exit_code)
    if outcome.state != "failed" or job.kind == "image":  # a failed video keeps its segments for the re-run
        shutil.rmtree(stage, ignore_errors=True)
    return Outcome(job, outcome.state, message, outcome.code, path, outcome.frames)  # type: ignore[arg-type]


def plan_stored_checked(
    inputs: Sequence[str | Path], output: str | Path, options: UpscaleOptions, log: Log = to_stderr
) -> list[Job]:
    """`run.plan_checked` for locations: options and model file checked, then the stores as the
    jobs are planned, a local OUT checked."""
    return plan_checked(inputs, output, options, planner=plan_stored, log=log)


def upscale_stored(
    inputs: Sequence[str | Path], output: str | Path, options: UpscaleOptions, log: Log = to_stderr
) -> UpscaleSummary:
    """`upscale.run.upscale` for URIs: plan and check the stores, load the backend, run each job staged."""
    options, summary, todo = skip_pass(
        plan_stored_checked(inputs, output, options, log), options, log, stored_jobs_to_run
    )
    if not todo:
        sweep_partials(summary, log)
        return summary
    check_video_devices(todo, options)
    backend = load_backend(options, log)
    try:
        summary = run_todo(todo, summary, backend, options, log, run=run_staged)  # the local loop, staged
    finally:
        backend.close()
    sweep_partials(summary, log)
    return summary


def sweep_partials(summary: UpscaleSummary, log: Log = to_stderr) -> None:
    """Remove the temporary keys that writers killed between upload and move (a Ray actor killed
    mid-put, a ``kill -9``) left beside this run's finished outputs in a store: nobody else would.
    A run still writing one of these outputs concurrently (stores have no locks) then fails its
    move in one line instead of replacing the finished object."""
    finished = [str(target) for target in [*summary.done, *summary.skipped] if storage.is_uri(str(target))]
    if not finished:
        return
    try:
        removed = storage.remove_stale_partials(finished)
    except Exception as exc:  # a listing or a delete refused: the outputs themselves are fine
        log(f"warning: temporary objects left by an interrupted writer were not removed: {first_line(exc)}")
        return
    if removed:
        log(f"removed {removed} temporary object(s) left beside finished outputs by an interrupted writer")
