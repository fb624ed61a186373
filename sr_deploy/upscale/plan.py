"""Planning: INPUT... and OUT -> jobs, checked before any model is loaded; which jobs are left.

`plan_jobs` turns the inputs into (source, target, kind) jobs, so usage mistakes (a missing
input, an output that would overwrite an input, two inputs mapping to one output) fail at once.
Folders are walked recursively in sorted order, hidden files and folders skipped, and their
relative tree is kept under the output folder. `jobs_to_run` is the skip / resume rule of every
run, local or on a cluster: an output already there is skipped when it was made with this run's
model (or does not say), and fails its job when it names another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import InputError
from ..imaging import IMAGE_EXTENSIONS, OUTPUT_IMAGE_FORMATS, image_file_text, is_image_path
from ..util.log import Progress as Log
from ..util.log import to_stderr
from ..util.text import PROVENANCE_KEY, provenance_model, same_model, shown
from ..video import VIDEO_EXTENSIONS, container_tag, is_video_path
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


def _folder_jobs(source: Path, output: Path, output_resolved: Path, ext: str) -> list[Job]:
    if source.resolve() == output_resolved:
        raise InputError(
            f"{output}: the output folder is the input folder; outputs would mix with "
            "(and could overwrite) the inputs: choose another -o"
        )
    jobs = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        kind = kind_of(path)
        if kind is None or _is_hidden(relative) or not path.is_file():
            continue
        if _is_within(path.resolve(), output_resolved):
            continue  # OUT inside an input folder: never feed our own outputs back in
        if kind == "image":
            relative = relative.with_suffix(_image_target_suffix(path, ext))
        jobs.append(Job(path, output / relative, kind))
    return jobs


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
    _check_inputs(sources)
    single_file = len(sources) == 1 and sources[0].is_file()
    names_a_file = kind_of(output) is not None and not output.is_dir()
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
                jobs.extend(_folder_jobs(source, output, output_resolved, ext))
    _check_targets(jobs)
    return jobs


def status(target: Path) -> Literal["done", "todo", "folder"]:
    """An output counts as done only when it is a non-empty file (writes are atomic, so a final
    name is only ever a complete file; a 0-byte one was made by someone else, e.g. `touch`)."""
    if target.is_dir():
        return "folder"
    if target.is_file() and target.stat().st_size > 0:
        return "done"
    return "todo"


def made_with(target: str | Path) -> str | None:
    """The model id (`util.text.provenance`) an existing local output says it was made with: a
    PNG's text field, a JPEG's comment, a video's ``comment`` tag; None when its format keeps no
    such record (BMP, TIFF, WebP) or it has none."""
    if kind_of(target) == "video":
        return provenance_model(container_tag(target, "comment"))
    return provenance_model(image_file_text(target, PROVENANCE_KEY))


def jobs_to_run(
    jobs: Sequence[Job],
    options: UpscaleOptions,
    log: Log = to_stderr,
    state: Callable[[Path], str] = status,
    recorded: Callable[[Path], str | None] = made_with,
) -> tuple[list[Outcome], list[Job]]:
    """The skip / resume rule of every run, local or on a cluster: an output that is done (a
    non-empty file) is skipped unless `options.overwrite`. But one that records another model than
    the job's (`options.model_id`, when settled) fails that job (code 2) instead: a re-run with
    another --model or --realism must not count the old outputs as its own. A folder under the
    output's name fails that job too. `state` and `recorded`: how a location's state and model are
    read (`upscale.stored` passes its own for objects in a store). Returns the outcomes so far and
    the jobs left to run."""
    outcomes: list[Outcome] = []
    todo = []
    for job in jobs:
        found = state(job.target)
        if found == "folder":
            outcomes.append(
                Outcome(job, "failed", f"{shown(job.target)}: a folder has the output's name; move it away", 2)
            )
            log(f"error: {outcomes[-1].message}")
        elif found == "done" and not options.overwrite:
            other = recorded(job.target) if options.model_id else None
            if other is not None and not same_model(other, options.model_id):
                message = (  # `shown`: names and the text read from a file stay on one line
                    f"{shown(job.target)}: already there, made with another model ({shown(other)}; "
                    f"this run: {shown(options.model_id)}): --overwrite redoes it, or choose another OUT"
                )
                outcomes.append(Outcome(job, "failed", message, 2))
                log(f"error: {message}")
            else:
                outcomes.append(Outcome(job, "skipped", path=job.target))
        else:
            todo.append(job)
    skipped = sum(o.state == "skipped" for o in outcomes)
    if skipped:
        log(f"skipping {skipped} output(s) that already exist (--overwrite redoes them)")
    return outcomes, todo
