"""The upscale job for executors in other processes (`sr_deploy.cluster`'s Ray actors): rows out,
answers in, with no knowledge of the executor.

    driver    `RemoteRun.plan`: one row per image and per piece of a video (`sr_deploy.video.pieces`;
              finished pieces of an earlier run are not sent); `RemoteRun.answer` folds each answer
              into the summary with the local run's reducer (`UpscaleSummary.add`), writes images
              atomically and joins a video once every piece has answered.
    worker    `run_row`: `run_one` on one row, into a scratch file whose bytes go back.

A row is a dict of plain values (what Ray Data's blocks carry): `job`, `part`, `kind` (image or
piece), `source`, `suffix`, `data` (a piece's bytes), `packets`; rows of a run with object storage
(`remote_stored`) also carry `fetch` (the store key the worker reads instead of `source` / `data`)
and `dest` (the key it puts its output under, atomically, instead of answering with the bytes).
An answer: `ANSWER_KEYS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..backends.base import Backend
from ..errors import InputError, SRDeployError
from ..util import storage
from ..util.files import atomic_write_bytes, exclusive_output
from ..util.log import Progress as Log
from ..util.log import to_stderr
from ..video.pieces import PIECE_SUFFIX, VideoPieces, check_piece_frames, piece_options, upscaled_piece_path
from .options import UpscaleOptions
from .plan import Job, Outcome, local_bit_depth, made_meanwhile
from .run import UpscaleSummary, run_one

ANSWER_KEYS = ("job", "part", "ok", "message", "code", "data", "frames")


def piece_settings(options: UpscaleOptions, model_id: str, extension: str) -> dict:
    """What must not change for the finished pieces of a video output of `extension` to be resumed
    (the model by `model_id`, its content; the precision as the driver decided it), and what the
    joined video records of its settings (``record``: `UpscaleOptions.recorded`)."""
    unkeyed = {"progress": None, "overwrite": None, "model_id": None}
    record = options.recorded("video", extension)
    return {"options": dataclasses.asdict(options) | unkeyed, "model": model_id, "record": record}


def pool_size(
    resources: dict, device: str, actors: int | None, cpus_each: float, gpus_each: float | None
) -> tuple[int, float]:
    """(executors, GPUs each) for a cluster with `resources` ({"CPU": n, "GPU": m}): one per GPU
    when it has GPUs and the device is not the CPU, else one per `cpus_each` CPUs, unless given."""
    gpus = float(resources.get("GPU", 0))
    if gpus_each is None:
        gpus_each = 1.0 if gpus >= 1 and device != "cpu" else 0.0
    if actors is None:
        have, each = (gpus, gpus_each) if gpus_each > 0 else (resources.get("CPU", 1), cpus_each)
        actors = max(1, int(float(have) // max(each, 1e-3)))
    if actors < 1:
        raise InputError(f"--ray-actors must be >= 1, got {actors}")
    return actors, gpus_each


def _row_input(row: dict[str, Any], scratch: Path) -> Path:
    """The local file a row's job reads: an image at its path, or fetched from the store (`fetch`);
    a piece's bytes from the row, or fetched from the store."""
    fetch = str(row.get("fetch") or "")
    if row["kind"] == "image" and not storage.is_uri(fetch):
        return Path(fetch or row["source"])
    local = scratch / (f"in-{storage.local_name(fetch)}" if row["kind"] == "image" else f"piece{PIECE_SUFFIX}")
    if fetch:
        return storage.fetch(fetch, local)
    local.write_bytes(row["data"])
    return local


def _run_piece(row: dict[str, Any], piece: Path, backend: Backend, options: UpscaleOptions) -> tuple[Job, Outcome]:
    job = Job(piece, upscaled_piece_path(piece), "video", name=Path(row["source"]))
    # the piece's bits per sample choose the default encoder; 8 when it does not open (its job says why)
    video = piece_options(options.video(), row["suffix"], local_bit_depth(piece) or 8)
    outcome = run_one(job, backend, options, to_stderr, video)
    if outcome.state == "done":
        try:
            check_piece_frames(outcome.frames, int(row["packets"]))
        except SRDeployError as exc:
            outcome = Outcome(job, "failed", f"{job.label}: {exc}", exc.exit_code)
    if outcome.state == "failed":
        outcome = dataclasses.replace(outcome, message=f"{outcome.message} (piece {int(row['part'])})")
    return job, outcome


def run_row(row: dict[str, Any], backend: Backend, options: UpscaleOptions, scratch: Path) -> tuple:
    """A worker's side: `run_one` on one row, in the empty folder `scratch`; the answer as a tuple
    in `ANSWER_KEYS` order (the output file's bytes in `data`, or nothing when the row names a
    store key to put it under: `dest`)."""
    head = (int(row["job"]), int(row["part"]))
    source, dest = str(row["source"]), str(row.get("dest") or "")
    try:
        local = _row_input(row, scratch)
    except SRDeployError as exc:
        return *head, False, str(exc), exc.exit_code, b"", 0
    if row["kind"] == "image":  # the local code path, into a local file: the same bytes
        job = Job(local, scratch / f"out{row['suffix']}", "image")
        outcome = run_one(job, backend, options)
    else:
        job, outcome = _run_piece(row, local, backend, options)
    message = outcome.message.replace(str(local), source).replace(str(Path(source)), source)
    ok = outcome.state != "failed"
    if ok and dest:
        try:
            storage.put_atomic(job.target, dest)
        except SRDeployError as exc:
            return *head, False, f"{source}: {exc}", exc.exit_code, b"", 0
    data = job.target.read_bytes() if ok and not dest else b""
    return *head, ok, "" if ok else message, outcome.code, data, outcome.frames


class RemoteRun:
    """The driver's side: the rows to send, each video's pieces, and the summary the answers are
    folded into. `report`: where lines go (the caller may point it at its progress bar)."""

    def __init__(self, todo: Sequence[Job], summary: UpscaleSummary, log: Log = to_stderr):
        self.todo, self.summary, self.report = todo, summary, log
        self.rows: list[dict[str, Any]] = []
        self.videos: dict[int, VideoPieces] = {}
        self.options: UpscaleOptions | None = None  # the run's settled options, from `plan`
        self.locks: dict[int, ExitStack] = {}  # a video's output lock, held from its cut to its join

    def close(self) -> None:
        """Release the outputs this run still holds (the end of the run, or its interruption)."""
        for lock in self.locks.values():
            lock.close()
        self.locks.clear()

    def _lock(self, index: int, job: Job) -> bool:
        """Hold `job`'s output lock (`exclusive_output`) until the job ends: a local run or
        another driver on the same video fails at once instead of sharing its pieces folder.
        False (the job failed) when another run holds it."""
        lock = ExitStack()
        try:
            lock.enter_context(exclusive_output(job.target))
        except SRDeployError as exc:
            self.fail(job, str(exc), exc.exit_code)
            return False
        self.locks[index] = lock
        return True

    def _write_image(self, job: Job, data: bytes) -> Outcome:
        """An answered image, written atomically under its lock; without --overwrite an output
        that another run wrote while this one's row was away is left as it is (`made_meanwhile`:
        skipped when it is what this run would make, else failed), never replaced by ours with
        both runs saying done."""
        with exclusive_output(job.target):
            if self.options is not None and (meanwhile := made_meanwhile(job, self.options)) is not None:
                return meanwhile
            atomic_write_bytes(job.target, data, make_parents=True)
        return Outcome(job, "done", path=job.target)

    def fail(self, job: Job, message: str, code: int) -> None:
        self.summary.add(Outcome(job, "failed", message, code))
        self.report(f"error: {message}")

    def plan(self, options: UpscaleOptions, model_id: str, scratch: Path) -> None:
        """One row per image and per video piece left to do (finished pieces are not sent)."""
        self.options = options
        for index, job in enumerate(self.todo):
            suffix = Path(str(job.target)).suffix  # a stored job's target may be a URI
            base = {"job": index, "part": 0, "kind": job.kind, "source": str(job.source), "suffix": suffix}
            if job.kind == "image":
                self.rows.append(base | self._image_row(job))
                continue
            if not self._lock(index, job):
                continue
            if (meanwhile := made_meanwhile(job, options)) is not None:  # finished since the skip pass
                self.locks.pop(index).close()
                self.summary.add(meanwhile)
                if meanwhile.state == "failed":
                    self.report(f"error: {meanwhile.message}")
                continue
            try:
                settings = piece_settings(options, model_id, suffix)
                pieces = self._cut(job, scratch / f"video-{index}", options.segment_seconds, settings)
            except SRDeployError as exc:
                self.fail(job, str(exc), exc.exit_code)
                continue
            self.videos[index] = pieces
            if pieces.done:
                self.report(f"{job.source}: resuming: {len(pieces.done)} of {pieces.parts} pieces already done")
            for part, path, packets in pieces.pending:
                self.rows.append(
                    base | {"part": part, "kind": "piece", "packets": packets} | self._piece_row(pieces, part, path)
                )
            if pieces.complete:  # every piece was done by an earlier run
                self.finish(index)

    # What differs between executors' rows (`remote_stored` rows carry store keys instead of bytes).
    def _image_row(self, job: Job) -> dict[str, Any]:
        return {"source": str(job.source.resolve()), "data": b"", "packets": 0}

    @staticmethod
    def _cut(job: Job, scratch: Path, seconds: float, settings: dict) -> VideoPieces:
        return VideoPieces.cut(job.source, job.target, scratch, seconds, settings)

    @staticmethod
    def _piece_row(pieces: VideoPieces, part: int, path: Path) -> dict[str, Any]:
        """A piece's bytes travel in its row; its cut file goes (one piece in memory at a time)."""
        data = path.read_bytes()
        path.unlink()
        return {"data": data}

    def answer(self, index: int, part: int, ok: bool, message: str, code: int, data: bytes, frames: int) -> None:
        """One row answered (the arguments in `ANSWER_KEYS` order)."""
        index, part, ok, code, frames = int(index), int(part), bool(ok), int(code), int(frames)
        job = self.todo[index]
        if job.kind == "image":
            if not ok:
                return self.fail(job, message, code)
            try:
                outcome = self._write_image(job, data)
                if outcome.state == "failed":
                    return self.fail(job, outcome.message, outcome.code)
                self.summary.add(outcome)
            except SRDeployError as exc:
                self.fail(job, str(exc), 1)
            except OSError as exc:
                self.fail(job, f"{job.target}: cannot write ({exc.strerror or exc})", 1)
            return None
        pieces = self.videos[index]
        if ok:
            pieces.add(part, data, frames)
        else:
            pieces.fail(message, code)
        if pieces.complete:
            self.finish(index)
        return None

    def lost(self, row: dict[str, Any], why: str) -> None:
        """A row that never answered (its executor kept dying): its input fails with `why`."""
        piece = f"piece {row['part']}: " if row["kind"] == "piece" else ""
        self.answer(row["job"], row["part"], False, f"{self.todo[row['job']].source}: {piece}{why}", 1, b"", 0)

    def finish(self, index: int) -> None:
        """Every piece of a video has answered: join them into the output, or report its first
        failure (the finished pieces stay for a re-run to resume from)."""
        job, pieces = self.todo[index], self.videos[index]
        with self.locks.pop(index, ExitStack()):  # the output is released once the job has ended
            if pieces.error is None:
                try:
                    frames, audio = pieces.join(self.report)
                    self.summary.add(Outcome(job, "done", path=job.target, frames=frames))
                    return self.report(f"{job.target}: {frames} frames from {pieces.parts} piece(s), audio {audio}")
                except SRDeployError as exc:
                    pieces.error = (str(exc), exc.exit_code)
            self.fail(job, *pieces.error)
