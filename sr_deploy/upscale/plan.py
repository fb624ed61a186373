"""Planning: INPUT... and OUT -> jobs, checked before any model is loaded; which jobs are left.

`plan_jobs` turns the inputs into (source, target, kind) jobs, so usage mistakes (a missing
input, an output that would overwrite an input, two inputs mapping to one output) fail at once.
Folders are walked recursively in sorted order, hidden files and folders skipped, and their
relative tree is kept under the output folder. `jobs_to_run` is the skip / resume rule of every
run, local or on a cluster: an output already there is skipped when its record says this run
would make it again (the model, the settings that decide it, the input's size), or its format keeps
no record; it fails its job when the record says otherwise or is missing from a format that keeps one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import InputError
from ..formats import FOREIGN_IMAGE_SUFFIXES, image_format
from ..imaging import IMAGE_EXTENSIONS, OUTPUT_IMAGE_FORMATS, image_file_text, is_image_path
from ..util.log import Progress as Log
from ..util.log import to_stderr
from ..util.text import PROVENANCE_KEY, provenance_fields, same_model, shown
from ..video import VIDEO_EXTENSIONS, container_tag, is_video_path, probe_video
from .options import UpscaleOptions

Kind = Literal["image", "video"]
State = Literal["done", "skipped", "partial", "failed"]


@dataclass(frozen=True)
class Job:
    """One input file and the output it becomes. `name`: how errors name the input when it is not
    `source` itself (a piece of a video names the video)."""

    source: Path
    target: Path
    kind: Kind
    name: Path | None = None

    @property
    def label(self) -> Path:
        return self.name or self.source


@dataclass(frozen=True)
class Outcome:
    """How one job ended. `message`: one line (the error when failed; what a video job did when
    done); `code`: a failure's exit code (2 bad input, 1 failure at run time); `path`: the file
    written (a damaged video's NAME.partial.EXT when partial); `frames`: a video's frames."""

    job: Job
    state: State
    message: str = ""
    code: int = 0
    path: Path | None = None
    frames: int = 0


def kind_of(path: str | Path) -> Kind | None:
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


def _check_inputs(sources: list[Path]) -> None:
    if not sources:
        raise InputError("no INPUT given")
    for source in sources:
        if not source.exists():
            raise InputError(f"{source}: no such file or folder")
        if source.is_file() and kind_of(source) is None:
            known = ", ".join(sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))
            raise InputError(f"{source}: not an image or video file (known extensions: {known})")


def _folder_jobs(source: Path, output: Path, output_resolved: Path, ext: str, log: Log) -> list[Job]:
    if source.resolve() == output_resolved:
        raise InputError(
            f"{output}: the output folder is the input folder; outputs would mix with "
            "(and could overwrite) the inputs: choose another -o"
        )
    jobs, unread, earlier = [], [], []
    out_inside = _is_within(output_resolved, source.resolve())  # OUT in the input folder, not the reverse
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if _is_hidden(relative) or not path.is_file():
            continue
        kind = kind_of(path)
        if kind is None:
            unread.append(str(relative))
            continue
        if out_inside and _is_within(path.resolve(), output_resolved):
            continue  # OUT inside an input folder: never feed our own outputs back in
        if earlier_output(path):
            earlier.append(str(relative))  # nor the outputs of an earlier run with another OUT
            continue
        if kind == "image":
            relative = relative.with_suffix(_image_target_suffix(path, ext))
        jobs.append(Job(path, output / relative, kind))
    note_left_out(log, source, UNREAD, unread)
    note_left_out(log, source, EARLIER_OUTPUTS, earlier)
    return jobs


# Why a plan leaves a file of an input folder out (`note_left_out`).
UNREAD = "in no image or video format this reads"
EARLIER_OUTPUTS = "made by sr-deploy (give them as files to redo them)"


def note_left_out(log: Log, folder: object, why: str, names: Sequence[str], shown_names: int = 3) -> None:
    """One note naming the files (`names`, relative to the input `folder`) that a plan left out and
    `why`: a run says so rather than report "all done" over photos it never read (HEIC, GIF,
    sidecar files; hidden files are left out on purpose and not named)."""
    if names:
        listed = shown(", ".join(names[:shown_names])) + (", ..." if len(names) > shown_names else "")
        log(f"note: {shown(folder)}: {len(names)} file(s) left out, {why}: {listed}")


def _check_targets(jobs: list[Job]) -> None:
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


def plan_jobs(inputs: Sequence[str | Path], output: str | Path, ext: str = "png", log: Log = to_stderr) -> list[Job]:
    """Map INPUT... and OUT to jobs, checking everything that can be checked without a model.

    - One input file and an OUT with an image/video extension: OUT is the output file.
    - Otherwise OUT is a folder: a file input becomes OUT/name, a folder input's files (images
      and videos, recursively, sorted, hidden ones skipped) become OUT/relative/path.
    - Images get the `ext` format (png, jpg, webp, or `same`); videos keep their container.
    Raises InputError for a missing input, a file that is neither image nor video, an OUT that
    is a file where a folder is needed, two inputs with one target, or a target that is an input.
    What a folder holds that is left out is named on `log` (`note_left_out`).
    """
    if ext not in OUTPUT_IMAGE_FORMATS:
        raise InputError(f"--ext {ext!r}: expected one of {', '.join(OUTPUT_IMAGE_FORMATS)}")
    sources = [Path(p) for p in inputs]
    as_folder = str(output).endswith(("/", os.sep))  # `-o up.png/`: the user named a folder
    output = Path(output)
    _check_inputs(sources)
    if output.suffix.lower() in FOREIGN_IMAGE_SUFFIXES and not output.is_dir() and not as_folder:
        raise InputError(
            f"{output}: sr-deploy does not write {output.suffix} files: name a .png, .jpg or .webp file "
            "(or the video's container), or a folder"
        )
    single_file = len(sources) == 1 and sources[0].is_file()
    names_a_file = kind_of(output) is not None and not output.is_dir() and not as_folder
    if not single_file and names_a_file:
        what = f"{len(sources)} inputs" if len(sources) > 1 else f"the folder {sources[0]}"
        raise InputError(
            f"{output}: names a file, but {what} need an output folder: give -o a folder (or one input file)"
        )
    jobs: list[Job] = []
    if single_file and names_a_file:
        source = sources[0]
        kind, out_kind = kind_of(source), kind_of(output)
        if kind != out_kind:
            raise InputError(f"{output}: a {kind} input cannot be written as a {out_kind} file")
        jobs.append(Job(source, output, kind))
    else:
        if output.exists() and not output.is_dir():
            raise InputError(f"{output}: exists and is not a folder (OUT must be a folder here)")
        output_resolved = output.resolve()
        for source in sources:
            if source.is_file():
                kind = kind_of(source)
                name = source.name if kind == "video" else source.stem + _image_target_suffix(source, ext)
                jobs.append(Job(source, output / name, kind))
            else:
                jobs.extend(_folder_jobs(source, output, output_resolved, ext, log))
    _check_targets(jobs)
    return jobs


def status(target: str | Path) -> Literal["done", "todo", "folder"]:
    """An output counts as done only when it is a non-empty file (writes are atomic, so a final
    name is only ever a complete file; a 0-byte one was made by someone else, e.g. `touch`)."""
    target = Path(target)
    if target.is_dir():
        return "folder"
    if target.is_file() and target.stat().st_size > 0:
        return "done"
    return "todo"


def output_record(target: str | Path) -> dict[str, str] | None:
    """How an existing local output says it was made (`util.text.provenance_fields`): a PNG's text
    field, a JPEG's comment, a video's ``comment`` tag. ``{}`` when its format keeps such a record
    and it holds none (the file was not made by sr-deploy, or by a version before JPEG comments);
    None when its format keeps none (BMP, TIFF, WebP): nothing to tell."""
    return record_found(image_file_text, container_tag, target)


def record_found(
    image_text: Callable[[Any, str], str | None], video_tag: Callable[[Any, str], str | None], target: str | Path
) -> dict[str, str] | None:
    """`output_record` with the readers of an image's text field and a video's tag given (a store's
    location is read with ranged requests, `upscale.stored`)."""
    if kind_of(target) == "video":
        return provenance_fields(video_tag(target, "comment")) or {}
    fmt = image_format(Path(str(target)).suffix)
    if fmt is None or fmt.text is None:
        return None
    return provenance_fields(image_text(target, PROVENANCE_KEY)) or {}


def expected_record(
    job: Job, options: UpscaleOptions, input_bytes: int | None, bit_depth: int | None = None
) -> dict[str, str]:
    """What this run would record in `job`'s output besides the precision (`util.text.provenance`):
    the model, the settings that decide the output, the input's size. Without --codec a video's
    encoder is its input's default (by its `bit_depth`); when that is not known (an input in a
    store, not read here) the encoder is left out of the comparison."""
    record = {"model": options.model_id} | options.recorded(job.kind, Path(str(job.target)).suffix, bit_depth or 8)
    if job.kind == "video" and not options.codec and bit_depth is None:
        del record["codec"]
    return record | ({"input_bytes": str(input_bytes)} if input_bytes is not None else {})


def record_mismatch(found: dict[str, str] | None, expected: dict[str, str]) -> str | None:
    """Why an existing output with record `found` (`output_record`) is not what this run would make
    (`expected_record`), or None when it may be: nothing to tell (None), or every field both
    records hold agrees (the model by `same_model`; a record from before the settings were recorded
    names only the model)."""
    if found is None:
        return None
    if not found:
        return "already there, and it does not say sr-deploy made it (no sr-deploy record in it)"
    if not same_model(found["model"], expected["model"]):
        return f"already there, made with another model ({shown(found['model'])}; this run: {shown(expected['model'])})"
    theirs, ours = found.get("input_bytes"), expected.get("input_bytes")
    if theirs and ours and theirs != ours:  # e.g. IMG_0001.JPG of another camera card
        return f"already there, made from another input ({shown(theirs)} bytes; this run's input: {ours} bytes)"
    settings = [key for key in expected if key not in ("model", "input_bytes")]
    differ = [key for key in settings if found.get(key, expected[key]) != expected[key]]
    if differ:
        theirs = " ".join(f"{key}={shown(found[key])}" for key in differ)
        ours = " ".join(f"{key}={expected[key]}" for key in differ)
        return f"already there, made with other settings ({theirs}; this run: {ours})"
    return None


def local_input_bytes(source: str | Path) -> int | None:
    """The size of a local input file, None when it cannot be read now (the job itself says why)."""
    try:
        return Path(source).stat().st_size
    except OSError:
        return None


def local_bit_depth(source: str | Path) -> int | None:
    """A local video input's bits per sample (its header and first frame), None when it cannot be
    read now or is not local: what decides the default encoder of its output."""
    try:
        return probe_video(Path(source)).bit_depth
    except Exception:  # a damaged or missing input: its job says why
        return None


@dataclass(frozen=True)
class Readers:
    """How the skip rule reads a job's locations: an output's state (`status`) and record
    (`output_record`), an input's size and bit depth. `LOCAL` reads files; `upscale.stored` has
    its own for objects in a store."""

    state: Callable[[Any], str] = status
    record: Callable[[Any], dict[str, str] | None] = output_record
    input_bytes: Callable[[Any], int | None] = local_input_bytes
    bit_depth: Callable[[Any], int | None] = local_bit_depth


LOCAL = Readers()


def earlier_output(location: str | Path, read: Readers = LOCAL) -> bool:
    """`location` records that sr-deploy made it (`Readers.record`): an output of an earlier run
    that was written inside the input folder (`photos/x4/` when this run writes `photos/x4_gan/`),
    which a second model's run would otherwise upscale again (x16)."""
    try:
        return bool(read.record(location))
    except Exception:  # unreadable: a job finds out what it is
        return False


def existing_output(job: Job, options: UpscaleOptions, read: Readers = LOCAL) -> Outcome:
    """What becomes of `job` when its output is already done: skipped when its record says this run
    would make it again (`record_mismatch`), else failed (code 2), the file kept."""
    why = None
    if options.model_id:
        depth = read.bit_depth(job.source) if job.kind == "video" and not options.codec else None
        expected = expected_record(job, options, read.input_bytes(job.source), depth)
        why = record_mismatch(read.record(job.target), expected)
    if why is None:
        return Outcome(job, "skipped", path=job.target)
    return Outcome(job, "failed", f"{shown(job.target)}: {why}: --overwrite redoes it, or choose another OUT", 2)


def made_meanwhile(job: Job, options: UpscaleOptions, read: Readers = LOCAL) -> Outcome | None:
    """Under the output's lock, just before a job writes: the outcome when another run finished the
    output since this run's skip pass (`existing_output`: skipped if it is what this run would make,
    else failed), so that two runs started together never both write it, nor one replace the
    other's output of another model; None when it is still to do (or --overwrite)."""
    if options.overwrite or read.state(job.target) != "done":
        return None
    return existing_output(job, options, read)


def jobs_to_run(
    jobs: Sequence[Job],
    options: UpscaleOptions,
    log: Log = to_stderr,
    read: Readers = LOCAL,
) -> tuple[list[Outcome], list[Job]]:
    """The skip / resume rule of every run, local or on a cluster: an output that is done (a
    non-empty file) is skipped unless `options.overwrite`, when its record says this run would make
    it again (`record_mismatch`: the same model, settings and input size). One that says otherwise,
    or that its format could say it but holds no record (a file not made by sr-deploy), fails that
    job (code 2) instead: a re-run with another --model, --realism or --outscale, or from another
    input with the same name, must not count the old outputs as its own. A folder under the
    output's name fails that job too. `read`: how locations are read (`Readers`; `upscale.stored`
    passes its own for objects in a store). Returns the outcomes so far and the jobs left to run."""
    outcomes: list[Outcome] = []
    todo = []
    for job in jobs:
        found = read.state(job.target)
        if found == "folder":
            outcomes.append(
                Outcome(job, "failed", f"{shown(job.target)}: a folder has the output's name; move it away", 2)
            )
            log(f"error: {outcomes[-1].message}")
        elif found == "done" and not options.overwrite:
            outcomes.append(existing_output(job, options, read))
            if outcomes[-1].state == "failed":
                log(f"error: {outcomes[-1].message}")
        else:
            todo.append(job)
    skipped = sum(o.state == "skipped" for o in outcomes)
    if skipped:
        log(f"skipping {skipped} output(s) that already exist (--overwrite redoes them)")
    return outcomes, todo
