"""`sr-deploy upscale ... --ray [ADDRESS]`: the same upscale jobs on a Ray cluster (Ray Data).

What runs where:

    driver (this process)     plans the jobs (`sr_deploy.upscale.plan_jobs`), skips outputs that
                              exist, cuts each video into keyframe-aligned pieces (packets copied,
                              no re-encode, timestamps kept), writes every output atomically and
                              joins the upscaled pieces in order with the input's audio
                              (`sr_deploy.video`'s final mux, as a local run's segments).
    actor pool (Ray Data)     `map_batches` over one row per image or video piece; each actor
                              loads the backend once (one GPU per actor when the cluster has GPUs,
                              else CPU), runs the local code on its row (`upscale_image_file`,
                              `upscale_video` on the piece) and returns the output bytes.

So outputs, skip/resume, atomic writes and the one-line error per failed input are exactly a
local run's: an image's bytes are what `upscale_image_file` writes and the driver writes them
with the same atomic rename. A video piece goes through `upscale_video` as a file of its own
(every frame keeps its input timestamp), and the pieces are muxed in order with the input's audio
by the local run's own mux: the result has every frame, in order, with the local run's
timestamps (with a lossless codec, its frames are identical to a local run's). Finished pieces
wait in the target's hidden segments folder, so a re-run resumes a video piece by piece.

Fault tolerance is Ray's: an actor that dies is restarted and its block re-run (Ray Data's
actor pools default to unlimited restarts; here they are bounded, `MAX_ACTOR_RESTARTS`), and a
block that still fails only fails its own input (`DataContext.max_errored_blocks`). A Python
exception inside an actor is caught there and reported as that input's failure.

Where files must be: images are read by the actors at the path the driver gives (a shared
filesystem, or the same path on every node); video pieces and the model file travel through
Ray's object store, so they need no shared filesystem.
"""

# long-module: images (Ray Data actor pool) and videos (segment fan-out and ordered join) share the job bookkeeping of a local run
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .errors import InputError, NotInstalledError, SRDeployError, first_line
from .imaging import atomic_write_bytes, is_image_path, partial_path
from .upscale import (
    Fp32Fallback,
    Job,
    UpscaleOptions,
    UpscaleSummary,
    jobs_to_run,
    load_backend,
    plan_jobs,
    upscale_image_file,
    validate_options,
)
from .util.log import Progress as Log
from .util.log import to_stderr
from .video import DEFAULT_VIDEO_BATCH, default_codec, is_video_path, probe_video, segments_dir, upscale_video

RAY_NOT_INSTALLED = "Ray is not installed: pip install 'sr-deploy[ray]' (on the driver and every node)"
# An actor that keeps dying (a crashing driver library, a GPU fault) is restarted this many times
# and a block re-run this many times before the input it holds is reported as failed.
MAX_ACTOR_RESTARTS = 4
MAX_TASK_RETRIES = 3


# Ray's own switch for a single-machine cluster on the loopback interface (the default on Windows and
# macOS): without it, Ray replaces 127.0.0.1 by the machine's network address and listens there.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray(local: bool = False) -> Any:
    """The `ray` module with Ray Data, or NotInstalledError (exit 2) naming the extra.

    `local`: this process will start a cluster of its own; when Ray is not imported yet, make it
    listen on 127.0.0.1 only (read by Ray at import, and by the processes it starts).
    """
    if local and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ONLY_ENV, "0")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise NotInstalledError(RAY_NOT_INSTALLED) from None
    return ray


@dataclass
class RayOptions:
    """How to use the cluster.

    address: None = the cluster named by RAY_ADDRESS, else a new local one for this run (on
        127.0.0.1, stopped at the end); "auto" (the cluster this machine is part of), "HOST:6379"
        or "ray://HOST:10001" = that cluster (must exist).
    actors: size of the actor pool; None = one per GPU of the cluster (when it has GPUs and the
        device is not cpu), else one per `cpus_per_actor` CPUs.
    cpus_per_actor: CPUs each actor reserves (its torch / ONNX Runtime thread count on the CPU).
    gpus_per_actor: None = 1 when the cluster has GPUs and the device is not `cpu`, else 0.
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None


# ---------------------------------------------------------------------------------------------
# Video pieces (driver side: cut and join; actor side: `upscale_video` on one piece)

PIECE_SUFFIX = ".mp4"
# Upscaled pieces as MP4, like a local run's segments: MP4 stores B-frame decode times (NUT does not,
# and the final mux needs them).
UPSCALED_PIECE_SUFFIX = ".mp4"


def split_video(source: Path, folder: Path, seconds: float) -> list[tuple[Path, int]]:
    """Cut `source`'s first video stream into independently decodable pieces, copying packets.

    A piece starts at a keyframe: the first one at least `seconds` after the previous piece's
    start (`seconds` 0: one piece). Packets keep their timestamps and time base, so the frames of
    the pieces, in order, are the source's frames with their own presentation times. No audio.
    Returns [(piece file, packets in it)] in order. InputError when `source` does not demux.
    MP4 pieces: they keep the stream's time base and B-frame decode times (NUT re-times both).
    """
    import av

    folder.mkdir(parents=True, exist_ok=True)
    try:
        src = av.open(str(source))
    except (av.FFmpegError, OSError) as exc:
        raise InputError(f"{source}: cannot open as a video ({first_line(exc)})") from None
    pieces: list[tuple[Path, int]] = []
    out = out_stream = None
    start = 0
    try:
        if not src.streams.video:
            raise InputError(f"{source}: no video stream")
        stream = src.streams.video[0]
        span = max(1, int(seconds / stream.time_base)) if seconds > 0 else None
        for packet in src.demux(stream):
            if packet.size == 0 or (packet.pts is None and packet.dts is None):
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
            if packet.is_keyframe and (out is None or (span is not None and stamp - start >= span)):
                if out is not None:
                    out.close()
                path = folder / f"piece-{len(pieces):05d}{PIECE_SUFFIX}"
                # keep every timestamp as it is: by default a muxer shifts a piece whose first dts is
                # negative (B-frames at the very start), which would move that piece against the others
                out = av.open(str(path), "w", format="mp4", options={"avoid_negative_ts": "disabled"})
                out_stream = out.add_stream_from_template(stream)
                out_stream.time_base = stream.time_base
                pieces.append((path, 0))
                start = stamp
            if out is None:
                continue  # packets before the first keyframe do not decode on their own
            packet.stream = out_stream
            out.mux(packet)
            pieces[-1] = (pieces[-1][0], pieces[-1][1] + 1)
        if out is not None:
            out.close()
            out = None
    except av.FFmpegError as exc:
        raise InputError(f"{source}: cannot be cut into pieces ({first_line(exc)})") from None
    finally:
        if out is not None:
            out.close()
        src.close()
    if not pieces:
        raise InputError(f"{source}: no keyframe in the video stream")
    return pieces


def upscale_piece(backend: Any, piece: Path, target_suffix: str, options: UpscaleOptions, log: Log) -> tuple[Path, int]:
    """Upscale one piece with `sr_deploy.video.upscale_video` (one encoder session, no resume),
    encoded as the whole video would be for `target_suffix`. Returns (output piece, frames)."""
    output = piece.with_name(piece.stem + "-x" + UPSCALED_PIECE_SUFFIX)
    result = upscale_video(
        backend,
        piece,
        output,
        tile=options.tile,
        overlap=options.tile_overlap,
        batch_size=options.batch_size or DEFAULT_VIDEO_BATCH,
        outscale=options.outscale,
        codec=options.codec or default_codec(target_suffix),
        crf=options.crf,
        preset=options.preset,
        pix_fmt=options.pix_fmt,
        hwaccel=options.hwaccel,
        allow_partial=False,
        segment_seconds=0,
        resume=False,
        progress=False,
        log=log,
        dedup_threshold=options.dedup_threshold,  # each piece starts with no reference frame
    )
    return output, result.frames


def join_pieces(pieces: Sequence[Path], source: Path, target: Path, log: Log) -> str:
    """Mux the upscaled `pieces` (in order) with `source`'s audio and subtitles into `target`, by
    `sr_deploy.video`'s own final mux, atomically (hidden temporary, then a rename). Returns what
    happened to the audio."""
    import av

    from .video.mux import mux
    from .video.segments import Segment

    folder = pieces[0].parent
    segments = [Segment(p.name, 0, 0, 0) for p in pieces]
    tmp = partial_path(target)
    try:
        audio = mux(source, folder, segments, tmp, target.suffix, probe_video(source), log)
        os.replace(tmp, target)
    except (av.FFmpegError, OSError) as exc:
        raise SRDeployError(f"{target}: writing the output failed: {first_line(exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return audio


@dataclass
class _Resume:
    """A video's finished pieces, kept beside the target (`.NAME.segments/ray/`) with a manifest,
    so that a re-run with the same input, model and settings sends only the missing pieces."""

    folder: Path
    key: dict
    frames: dict[int, int] = field(default_factory=dict)

    @classmethod
    def open(cls, job: Job, options: UpscaleOptions, model_id: str) -> _Resume:
        from .video.segments import resume_key

        settings = {
            "options": dataclasses.asdict(options) | {"progress": None, "overwrite": None},
            "model": model_id,
            "ray_pieces": 2,
        }
        folder = segments_dir(job.target) / "ray"
        resume = cls(folder, resume_key(job.source, settings))
        try:
            data = json.loads((folder / "manifest.json").read_text())
            if data["key"] == resume.key:
                resume.frames = {
                    int(k): int(v) for k, v in data["frames"].items() if (folder / resume.name(int(k))).is_file()
                }
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if not resume.frames:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return resume

    @staticmethod
    def name(part: int) -> str:
        return f"piece-{part:05d}{UPSCALED_PIECE_SUFFIX}"

    def add(self, part: int, data: bytes, frames: int) -> None:
        atomic_write_bytes(self.folder / self.name(part), data)
        self.frames[part] = frames
        tmp = self.folder / "manifest.json.tmp"
        tmp.write_text(json.dumps({"key": self.key, "frames": self.frames}))
        os.replace(tmp, self.folder / "manifest.json")


# ---------------------------------------------------------------------------------------------
# The actor


class _Upscaler:
    """A Ray Data actor: loads the backend once, then upscales one row per call.

    A row is an image (`source` is read from the shared filesystem) or a video piece (`data` holds
    its bytes). Returns per row: `ok`, `message` and `code` (one line and exit code when not ok),
    `data` (the output file's bytes), `frames` (pieces). Exceptions are caught per row: a bad
    input fails only itself.
    """

    def __init__(self, options: UpscaleOptions, model_name: str, model_files: dict[str, bytes]):
        import weakref

        self.workdir = Path(tempfile.mkdtemp(prefix="sr-deploy-actor-"))
        # removed when the actor is collected or its process exits (Ray ends the pool's actors so);
        # a SIGKILLed actor leaves it behind, like any killed process's temporary files
        weakref.finalize(self, shutil.rmtree, self.workdir, True)
        model = options.model
        if model_files:  # the model travelled through the object store: write it where it is loaded
            for name, data in model_files.items():
                (self.workdir / name).write_bytes(data)
            model = str(self.workdir / model_name)
        self.options = dataclasses.replace(options, model=model, progress=False)
        self.backend = load_backend(self.options)

    def _one(self, row: dict[str, Any]) -> tuple[bytes, int]:
        if isinstance(self.backend, Fp32Fallback):
            self.backend.source = str(row["source"])
        scratch = Path(tempfile.mkdtemp(dir=self.workdir))
        try:
            if row["kind"] == "image":  # the local code path, into a local file: the same bytes
                output = scratch / f"out{row['suffix']}"
                upscale_image_file(self.backend, Path(row["source"]), output, self.options)
                return output.read_bytes(), 0
            piece = scratch / f"piece{PIECE_SUFFIX}"
            piece.write_bytes(row["data"])
            output, frames = upscale_piece(self.backend, piece, row["suffix"], self.options, to_stderr)
            if frames != int(row["packets"]):
                raise SRDeployError(
                    f"{frames} of its {int(row['packets'])} frames decoded on their own "
                    "(an open-GOP stream?): run this video without --ray"
                )
            return output.read_bytes(), frames
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from .upscale import _one_line

        out: dict[str, list] = {key: [] for key in ("job", "part", "ok", "message", "code", "data", "frames")}
        for i in range(len(batch["job"])):
            row = {key: values[i] for key, values in batch.items()}
            data, frames, ok, message, code = b"", 0, True, "", 0
            try:
                data, frames = self._one(row)
            except Exception as exc:  # one bad input must not stop the others
                ok, code = False, 2 if isinstance(exc, InputError) else 1
                message = _one_line(Path(row["source"]), exc)
                if row["kind"] == "piece":
                    message = f"{message} (piece {int(row['part'])})"
            for key, value in (
                ("job", int(row["job"])),
                ("part", int(row["part"])),
                ("ok", ok),
                ("message", message),
                ("code", code),
                ("data", data),
                ("frames", frames),
            ):
                out[key].append(value)
        return out


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass
class _VideoState:
    job: Job
    resume: _Resume
    parts: int
    answered: int = 0
    error: tuple[str, int] | None = None


def _model_files(model: str) -> tuple[str, dict[str, bytes]]:
    """The model file (and a TensorRT engine's sidecar JSON) as bytes, to ship to the actors.
    Checked here first (`model_file_scale`), so that a bad file is one line, not an actor's death."""
    from .model_file import model_file_scale

    path, _ = model_file_scale(model)
    files = {path.name: path.read_bytes()}
    sidecar = path.with_name(path.name + ".json")
    if path.suffix.lower() in (".engine", ".plan") and sidecar.is_file():
        files[sidecar.name] = sidecar.read_bytes()
    return path.name, files


def _model_id(path_name: str, files: dict[str, bytes]) -> str:
    import hashlib

    return path_name + ":" + hashlib.sha256(files[path_name]).hexdigest()[:16]


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to the cluster at `address` (or RAY_ADDRESS), or start a local one for this run,
    listening on 127.0.0.1 only; True when this call started the Ray session (to shut it down)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    local = {} if address else {"include_dashboard": False}  # loopback: see `import_ray(local=True)`
    try:
        ray.init(address=address, logging_level="warning", log_to_driver=True, configure_logging=True, **local)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a new local cluster"
        raise SRDeployError(f"cannot connect to the Ray cluster at {where}: {first_line(exc)}") from exc
    return True


def _pool_size(ray: Any, options: UpscaleOptions, ray_options: RayOptions) -> tuple[int, float]:
    """(actors, GPUs per actor) for this cluster."""
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    gpus_per_actor = ray_options.gpus_per_actor
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus >= 1 and options.device != "cpu" else 0.0
    actors = ray_options.actors
    if actors is None:
        if gpus_per_actor > 0:
            actors = max(1, int(gpus // gpus_per_actor))
        else:
            actors = max(1, int(float(resources.get("CPU", 1)) // max(ray_options.cpus_per_actor, 1e-3)))
    if actors < 1:
        raise InputError(f"--ray-actors must be >= 1, got {actors}")
    return actors, gpus_per_actor


def _rows(dataset: Any) -> Iterator[dict[str, Any]]:
    """The dataset's result rows as they come; a failure of the Ray job itself (not of one input:
    those are rows with ok=False) becomes one SRDeployError line."""
    try:
        yield from dataset.iter_rows()
    except (KeyboardInterrupt, SystemExit, SRDeployError):
        raise
    except Exception as exc:
        raise SRDeployError(f"the Ray job failed: {type(exc).__name__}: {first_line(exc)}") from exc


def _restart_policy() -> dict[str, int]:
    return {"max_restarts": MAX_ACTOR_RESTARTS, "max_task_retries": MAX_TASK_RETRIES}


def run_jobs_on_ray(
    jobs: Sequence[Job], options: UpscaleOptions, ray_options: RayOptions, log: Log = to_stderr
) -> UpscaleSummary:
    """Run `jobs` on the cluster; same summary, outputs and rules as `sr_deploy.upscale.run_jobs`.

    Outputs that are done are skipped unless `options.overwrite`; every other job ends either in
    `done` (its output complete under its final name) or in `failed` with one line and a code.
    """
    from tqdm import tqdm

    ray = import_ray()
    summary, todo = jobs_to_run(jobs, options, log)  # the local run's skip / resume rule
    if not todo:
        return summary
    model_name, model_files = _model_files(options.model)
    model_id = _model_id(model_name, model_files)

    scratch = Path(tempfile.mkdtemp(prefix="sr-deploy-ray-"))
    started = False
    bar = None

    def fail(job: Job, message: str, code: int) -> None:
        summary.failed.append((job.source, message, code))
        (bar.write if bar is not None and not bar.disable else log)(f"error: {message}")

    try:
        rows: list[dict[str, Any]] = []
        videos: dict[int, _VideoState] = {}
        empty = {"data": b"", "packets": 0}
        for index, job in enumerate(todo):
            if job.kind == "image":
                rows.append(
                    {
                        "job": index,
                        "part": 0,
                        "kind": "image",
                        "source": str(job.source.resolve()),
                        "suffix": job.target.suffix,
                        **empty,
                    }
                )
                continue
            try:
                info = probe_video(job.source)
                if info.rotation:
                    raise InputError(
                        f"{job.source}: a rotated video ({info.rotation} degrees) is not cut into "
                        "pieces yet: run it without --ray"
                    )
                pieces = split_video(job.source, scratch / f"video-{index}", options.segment_seconds)
                resume = _Resume.open(job, options, model_id)
            except SRDeployError as exc:
                fail(job, str(exc), exc.exit_code)
                continue
            videos[index] = _VideoState(job, resume, len(pieces), answered=len(resume.frames))
            if resume.frames:
                log(f"{job.source}: resuming: {len(resume.frames)} of {len(pieces)} pieces already done")
            for part, (path, packets) in enumerate(pieces):
                if part not in resume.frames:
                    rows.append(
                        {
                            "job": index,
                            "part": part,
                            "kind": "piece",
                            "source": str(job.source),
                            "suffix": job.target.suffix,
                            "data": path.read_bytes(),
                            "packets": packets,
                        }
                    )
                path.unlink()
        for state in videos.values():
            if state.answered == state.parts:  # every piece was done by an earlier run
                _finish_video(state, summary, fail, log)
        if not rows:
            return summary

        started = _connect(ray, ray_options.address)
        actors, gpus_per_actor = _pool_size(ray, options, ray_options)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours below counts the whole job
        context.print_on_execution_start = False
        context.max_errored_blocks = len(rows)  # a block that keeps failing fails only its input
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))  # one row per block: fine retries
        with warnings.catch_warnings():
            # Ray 2.5x deprecates ray_remote_args_fn but has no named parameter for restarts yet; without
            # it Ray Data restarts a dying actor forever, and an input that crashes its actor would hang.
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = dataset.map_batches(
                _Upscaler,
                fn_constructor_kwargs={"options": options, "model_name": model_name, "model_files": model_files},
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=ray_options.cpus_per_actor,
                num_gpus=gpus_per_actor,
                ray_remote_args_fn=_restart_policy,
            )
        pieces_total = sum(row["kind"] == "piece" for row in rows)
        log(
            f"ray: {len(rows)} item(s) ({len(rows) - pieces_total} image(s), {pieces_total} video piece(s)) on "
            f"{actors} actor(s)" + (f", {gpus_per_actor:g} GPU each" if gpus_per_actor else ", CPU")
        )
        bar = tqdm(
            total=len(rows),
            unit="item",
            file=sys.stderr,
            disable=not options.progress,
            dynamic_ncols=True,
            leave=False,
            desc="ray",
        )

        def report(message: str) -> None:
            if bar.disable:
                log(message)
            else:
                bar.write(message, file=sys.stderr)

        answered: set[tuple[int, int]] = set()
        for row in _rows(dataset):
            job_index, part = int(row["job"]), int(row["part"])
            answered.add((job_index, part))
            bar.update(1)
            job = todo[job_index]
            if job.kind == "image":
                if not row["ok"]:
                    fail(job, row["message"], int(row["code"]))
                    continue
                try:
                    atomic_write_bytes(job.target, row["data"])
                    summary.done.append(job.target)
                except OSError as exc:
                    fail(job, f"{job.target}: cannot write ({exc.strerror or exc})", 1)
                continue
            state = videos[job_index]
            state.answered += 1
            if not row["ok"]:
                state.error = state.error or (row["message"], int(row["code"]))
            else:
                state.resume.add(part, row["data"], int(row["frames"]))
            if state.answered == state.parts:
                _finish_video(state, summary, fail, report)
        # Blocks that failed even after retries (an actor that kept dying) never answered.
        lost = f"the Ray task failed after {MAX_TASK_RETRIES} retries (its actor kept dying)"
        for row in rows:
            key = (int(row["job"]), int(row["part"]))
            if key in answered:
                continue
            answered.add(key)
            job = todo[key[0]]
            if job.kind == "image":
                fail(job, f"{job.source}: {lost}", 1)
            else:
                state = videos[key[0]]
                state.answered += 1
                state.error = state.error or (f"{job.source}: piece {key[1]}: {lost}", 1)
                if state.answered == state.parts:
                    _finish_video(state, summary, fail, report)
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(scratch, ignore_errors=True)
        if started:
            ray.shutdown()
    return summary


def _finish_video(
    state: _VideoState, summary: UpscaleSummary, fail: Callable[[Job, str, int], None], report: Log
) -> None:
    """Every piece of a video has answered: join them into the output, or report its first failure
    (the finished pieces stay for a re-run to resume from)."""
    job = state.job
    if state.error is None:
        try:
            parts = [state.resume.folder / state.resume.name(i) for i in range(state.parts)]
            audio = join_pieces(parts, job.source, job.target, report)
            frames = sum(state.resume.frames.values())
            shutil.rmtree(segments_dir(job.target), ignore_errors=True)
            summary.done.append(job.target)
            report(f"{job.target}: {frames} frames from {state.parts} piece(s), audio {audio}")
            return
        except SRDeployError as exc:
            state.error = (str(exc), exc.exit_code)
    fail(job, *state.error)


def upscale_on_ray(
    inputs: Sequence[str | Path],
    output: str | Path,
    options: UpscaleOptions,
    ray_options: RayOptions,
    log: Log = to_stderr,
) -> UpscaleSummary:
    """`sr_deploy.upscale.upscale` on a Ray cluster: the same checks and plan, then `run_jobs_on_ray`."""
    import_ray(local=not (ray_options.address or os.environ.get("RAY_ADDRESS")))  # 'not installed' first
    validate_options(options)
    jobs = plan_jobs(inputs, output, options.ext)
    if not jobs:
        raise InputError(f"no image or video files found in {', '.join(str(p) for p in inputs)}")
    if not (is_image_path(output) or is_video_path(output)):
        Path(output).mkdir(parents=True, exist_ok=True)
    return run_jobs_on_ray(jobs, options, ray_options, log)
