"""`sr-deploy upscale ... --ray [ADDRESS]`: the same upscale jobs on a Ray cluster (Ray Data).

What runs where:

    driver (this process)     plans the jobs (`sr_deploy.upscale.plan_jobs`), skips outputs that
                              exist, cuts each video into keyframe-aligned segments (ffmpeg stream
                              copy, no re-encode), writes every output atomically and joins the
                              upscaled segments in order with the input's audio.
    actor pool (Ray Data)     `map_batches` over one row per image or video segment; each actor
                              loads the backend once (one GPU per actor when the cluster has GPUs,
                              else CPU) and returns the encoded output bytes.

So outputs, skip/resume, atomic writes and the one-line error per failed input are exactly a
local run's: the bytes of an image come from the same function (`upscale_image_bytes`) and the
driver writes them with the same atomic rename. A video segment is decoded, upscaled and encoded
on its own, with the input's frame rate and the tile size a local run would choose, and the
segments are concatenated by stream copy: the joined video has every frame, in order, with the
local run's timing (with a lossless codec its frames are identical to a local run's).

Fault tolerance is Ray's: an actor that dies is restarted and its block re-run (Ray Data's
actor pools default to unlimited restarts; here they are bounded, `MAX_ACTOR_RESTARTS`), and a
block that still fails only fails its own input (`DataContext.max_errored_blocks`). A Python
exception inside an actor is caught there and reported as that input's failure.

Where files must be: images are read by the actors at the path the driver gives (a shared
filesystem, or the same path on every node); video segments and the model file travel through
Ray's object store, so they need no shared filesystem.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np

from .errors import InputError, NotInstalledError, SRDeployError, first_line
from .imaging import atomic_write_bytes, partial_path
from .upscale import (
    Fp32Fallback,
    Job,
    UpscaleOptions,
    UpscaleSummary,
    load_backend,
    prepare_jobs,
    upscale_image_bytes,
)
from .video import (
    DEFAULT_VIDEO_BATCH,
    default_codec,
    even_size,
    find_ffmpeg,
    frames_to_model_input,
    model_output_to_frames,
    probe_streams,
)

RAY_NOT_INSTALLED = "Ray is not installed: pip install 'sr-deploy[ray]' (on the driver and every node)"
DEFAULT_SEGMENT_SECONDS = 10.0
# An actor that keeps dying (a crashing driver library, a GPU fault) is restarted this many times
# and a block re-run this many times before the input it holds is reported as failed.
MAX_ACTOR_RESTARTS = 4
MAX_TASK_RETRIES = 3

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def import_ray() -> Any:
    """The `ray` module with Ray Data, or NotInstalledError (exit 2) naming the extra."""
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
    segment_seconds: videos are cut at the first keyframe after every this many seconds.
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS


# ---------------------------------------------------------------------------------------------
# Video segments (driver side: cut and join; actor side: upscale one segment)


def split_video(source: Path, folder: Path, seconds: float, ffmpeg: str) -> list[Path]:
    """Cut `source`'s first video stream into independently decodable pieces by stream copy.

    Each piece starts at a keyframe (ffmpeg's segment muxer cuts at the first keyframe after every
    `seconds`), has its timestamps reset and no audio; their frames, in order, are the source's
    frames. Returns the pieces in order (`folder/part-00000.mkv`, ...). Matroska, because it takes
    any codec a source can hold. Raises InputError when ffmpeg cannot read `source`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    pattern = folder / "part-%05d.mkv"
    command = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(source),
               "-map", "0:v:0", "-an", "-sn", "-dn", "-c:v", "copy", "-f", "segment",
               "-segment_time", f"{seconds:g}", "-reset_timestamps", "1", str(pattern)]
    proc = subprocess.run(command, capture_output=True, text=True, errors="replace")
    parts = sorted(folder.glob("part-*.mkv"))
    if proc.returncode != 0 or not parts:
        last = (proc.stderr.strip().splitlines() or ["no video stream"])[-1]
        raise InputError(f"{source}: cannot be cut into segments ({last})")
    return parts


@dataclass(frozen=True)
class VideoFacts:
    """What the driver reads once from a video and every segment is encoded with: OpenCV's average
    frame rate of the whole file (as a local run uses), and its frame size."""

    fps: float
    width: int
    height: int


def video_facts(source: Path) -> VideoFacts:
    """Frame rate and size of `source` as `sr_deploy.video.upscale_video` reads them (25 fps when
    the container gives none). Raises InputError when OpenCV cannot open it."""
    capture = cv2.VideoCapture(str(source))
    try:
        if not capture.isOpened():
            raise InputError(f"{source}: cannot open as a video (missing, corrupt or unsupported)")
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()
    if width <= 0 or height <= 0:
        raise InputError(f"{source}: no video stream OpenCV can decode")
    return VideoFacts(fps if fps > 0 and math.isfinite(fps) else 25.0, width, height)


def upscale_segment(backend: Any, segment: Path, target: Path, facts: VideoFacts, suffix: str,
                    options: UpscaleOptions) -> int:
    """Upscale one video segment into `target` (video only), encoded like a local run's output
    (codec for `suffix`, crf, preset, frame rate `facts.fps`, even output size). Returns the
    number of frames. The tile size is decided from the whole video's frame size, as a local run
    decides it once per video."""
    from .tiling import auto_tile_size, upscale_batch
    from .video import _FrameSink

    batch_size = options.batch_size or DEFAULT_VIDEO_BATCH
    factor = options.outscale if options.outscale is not None else backend.scale
    out_h, out_w = even_size(round(facts.height * factor), round(facts.width * factor))
    model_size = (facts.height * backend.scale, facts.width * backend.scale)
    size_hw = None if (out_h, out_w) == model_size else (out_h, out_w)
    tile = options.tile
    if tile is None:
        tile = auto_tile_size(backend, facts.height, facts.width, options.tile_overlap, batch_size)
    capture = cv2.VideoCapture(str(segment))
    if not capture.isOpened():
        raise SRDeployError(f"{segment.name}: OpenCV cannot open the segment")
    codec = options.codec or default_codec(suffix)
    sink = _FrameSink(target, (out_w, out_h), facts.fps, find_ffmpeg(), codec, options.crf, options.preset)
    count = 0
    try:
        while True:
            frames = []
            while len(frames) < batch_size:
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                frames.append(frame)
            if frames:
                result = upscale_batch(backend, frames_to_model_input(frames), tile, options.tile_overlap)
                sink.write(model_output_to_frames(result, size_hw))
                count += len(frames)
            if len(frames) < batch_size:
                break
        sink.finish()
    except BaseException:
        sink.abort()
        raise
    finally:
        capture.release()
    return count


def join_segments(parts: Sequence[Path], source: Path, target: Path, ffmpeg: str, log: Log) -> str:
    """Concatenate upscaled `parts` (in order, stream copy) and mux `source`'s audio and subtitles
    into `target`, atomically (hidden temporaries beside it, then a rename). Returns what happened
    to the audio, as `sr_deploy.video.VideoResult.audio`."""
    from .video import _mux_streams

    listing = parts[0].parent / "parts.txt"
    listing.write_text("".join(f"file '{p.resolve()}'\n" for p in parts))
    streams = probe_streams(source, ffmpeg)
    needs_mux = "Audio" in streams or "Subtitle" in streams
    final_tmp = partial_path(target)
    video_tmp = target.with_name(f".{target.stem}.video-partial{target.suffix}") if needs_mux else final_tmp
    fast_start = ["-movflags", "+faststart"] if target.suffix.lower() in (".mp4", ".m4v", ".mov") else []
    try:
        proc = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-f", "concat",
                               "-safe", "0", "-i", str(listing), "-map", "0:v:0", "-c", "copy", *fast_start,
                               str(video_tmp)], capture_output=True, text=True, errors="replace")
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise SRDeployError(f"{source}: joining the upscaled segments failed ({last})")
        audio = "none in input"
        if needs_mux:
            audio = _mux_streams(ffmpeg, video_tmp, source, final_tmp, streams, log)
        os.replace(final_tmp, target)
        return audio
    finally:
        for path in {video_tmp, final_tmp}:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The actor


class _Upscaler:
    """A Ray Data actor: loads the backend once, then upscales one row per call.

    A row is an image (`source` is read from the shared filesystem) or a video segment (`data`
    holds its bytes). Returns per row: `ok`, `message` (one line when not ok), `data` (the encoded
    output), `frames` (segments). Exceptions are caught per row: a bad input fails only itself.
    """

    def __init__(self, options: UpscaleOptions, model_name: str, model_files: dict[str, bytes]):
        import dataclasses

        self.workdir = Path(tempfile.mkdtemp(prefix="sr-deploy-actor-"))
        model = options.model
        if model_files:  # the model travelled through the object store: write it where it is loaded
            for name, data in model_files.items():
                (self.workdir / name).write_bytes(data)
            model = str(self.workdir / model_name)
        self.options = dataclasses.replace(options, model=model, progress=False)
        self.backend = load_backend(self.options)

    def _one(self, row: dict[str, Any]) -> tuple[bytes, int]:
        if isinstance(self.backend, Fp32Fallback):
            self.backend.source = row["source"]
        if row["kind"] == "image":
            return upscale_image_bytes(self.backend, Path(row["source"]), row["suffix"], self.options), 0
        part = int(row["part"])
        segment = self.workdir / f"in-{os.getpid()}-{part}.mkv"
        output = self.workdir / f"out-{os.getpid()}-{part}{row['suffix']}"
        try:
            segment.write_bytes(row["data"])
            facts = VideoFacts(float(row["fps"]), int(row["width"]), int(row["height"]))
            frames = upscale_segment(self.backend, segment, output, facts, row["suffix"], self.options)
            return output.read_bytes(), frames
        finally:
            segment.unlink(missing_ok=True)
            output.unlink(missing_ok=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from .upscale import _one_line

        out: dict[str, list] = {"job": [], "part": [], "ok": [], "message": [], "data": [], "frames": []}
        for i in range(len(batch["job"])):
            row = {key: values[i] for key, values in batch.items()}
            try:
                data, frames = self._one(row)
                ok, message = True, ""
            except Exception as exc:  # one bad input must not stop the others
                data, frames, ok = b"", 0, False
                message = _one_line(Path(row["source"]), exc)
                if row["kind"] == "segment":
                    message = f"{message} (segment {int(row['part'])})"
            out["job"].append(int(row["job"]))
            out["part"].append(int(row["part"]))
            out["ok"].append(ok)
            out["message"].append(message)
            out["data"].append(data)
            out["frames"].append(frames)
        return out


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass
class _VideoState:
    job: Job
    folder: Path
    parts: int
    done: dict[int, Path] = field(default_factory=dict)
    answered: int = 0
    frames: int = 0
    error: str | None = None


def _model_files(model: str) -> tuple[str, dict[str, bytes]]:
    """The model file (and a TensorRT engine's sidecar JSON) as bytes, to ship to the actors.
    Checked here first (`model_file_scale`), so that a bad file is one line, not an actor's death."""
    from .model_file import model_file_scale

    path, _ = model_file_scale(model)
    files = {path.name: path.read_bytes()}
    sidecar = path.with_name(path.name + ".json")
    if path.suffix == ".engine" and sidecar.is_file():
        files[sidecar.name] = sidecar.read_bytes()
    return path.name, files


def _connect(ray: Any, address: str | None, log: Log) -> bool:
    """Connect to the cluster at `address` (or RAY_ADDRESS), or start a local one for this run,
    listening on 127.0.0.1 only; True when this call started the Ray session (to shut it down)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    local = {} if address else {"_node_ip_address": "127.0.0.1", "include_dashboard": False}
    try:
        ray.init(address=address, logging_level="warning", log_to_driver=True, configure_logging=True, **local)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a new local cluster"
        raise SRDeployError(f"cannot connect to the Ray cluster at {where}: {str(exc).strip().splitlines()[0]}") \
            from exc
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


def run_jobs_on_ray(jobs: Sequence[Job], options: UpscaleOptions, ray_options: RayOptions,
                    log: Log = _stderr) -> UpscaleSummary:
    """Run `jobs` on the cluster; same summary, outputs and rules as `sr_deploy.upscale.run_jobs`.

    Outputs that exist are skipped unless `options.overwrite`; every other job ends either in
    `done` (its output complete under its final name) or in `failed` with one line.
    """
    from tqdm import tqdm

    ray = import_ray()
    summary = UpscaleSummary()
    todo = []
    for job in jobs:
        if job.target.exists() and not options.overwrite:
            summary.skipped.append(job.target)
        else:
            todo.append(job)
    if summary.skipped:
        log(f"skipping {len(summary.skipped)} output(s) that already exist (--overwrite redoes them)")
    if not todo:
        return summary
    if ray_options.segment_seconds <= 0:
        raise InputError(f"--segment-seconds must be > 0, got {ray_options.segment_seconds}")
    model_name, model_files = _model_files(options.model)

    scratch = Path(tempfile.mkdtemp(prefix="sr-deploy-ray-"))
    started = False
    bar = None
    try:
        rows: list[dict[str, Any]] = []
        videos: dict[int, _VideoState] = {}
        ffmpeg = find_ffmpeg()
        for index, job in enumerate(todo):
            if job.kind == "image":
                rows.append({"job": index, "part": 0, "kind": "image", "source": str(job.source.resolve()),
                             "suffix": job.target.suffix, "data": b"", "fps": 0.0, "width": 0, "height": 0})
                continue
            try:
                if ffmpeg is None:
                    raise SRDeployError(f"{job.source}: a video on Ray needs ffmpeg (imageio-ffmpeg) to cut and "
                                        "join segments")
                facts = video_facts(job.source)
                folder = scratch / f"video-{index}"
                parts = split_video(job.source, folder / "in", ray_options.segment_seconds, ffmpeg)
            except SRDeployError as exc:
                summary.failed.append((job.source, str(exc)))
                log(f"error: {exc}")
                continue
            videos[index] = _VideoState(job, folder, len(parts))
            for part, path in enumerate(parts):
                rows.append({"job": index, "part": part, "kind": "segment", "source": str(job.source),
                             "suffix": job.target.suffix, "data": path.read_bytes(), "fps": facts.fps,
                             "width": facts.width, "height": facts.height})
                path.unlink()
        if not rows:
            return summary

        started = _connect(ray, ray_options.address, log)
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
                _Upscaler, fn_constructor_kwargs={"options": options, "model_name": model_name,
                                                  "model_files": model_files},
                batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=ray_options.cpus_per_actor,
                num_gpus=gpus_per_actor, ray_remote_args_fn=_restart_policy)
        log(f"ray: {len(rows)} item(s) ({len(rows) - sum(v.parts for v in videos.values())} image(s), "
            f"{sum(v.parts for v in videos.values())} video segment(s)) on {actors} actor(s)"
            + (f", {gpus_per_actor:g} GPU each" if gpus_per_actor else ", CPU"))
        bar = tqdm(total=len(rows), unit="item", file=sys.stderr, disable=not options.progress, dynamic_ncols=True,
                   leave=False, desc="ray")

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
                if row["ok"]:
                    try:
                        atomic_write_bytes(job.target, row["data"])
                        summary.done.append(job.target)
                    except OSError as exc:
                        summary.failed.append((job.source, f"{job.target}: cannot write ({exc.strerror or exc})"))
                        report(f"error: {summary.failed[-1][1]}")
                else:
                    summary.failed.append((job.source, row["message"]))
                    report(f"error: {row['message']}")
                continue
            state = videos[job_index]
            state.answered += 1
            if not row["ok"]:
                state.error = state.error or row["message"]
            else:
                path = state.folder / "out" / f"part-{part:05d}{job.target.suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(row["data"])
                state.done[part] = path
                state.frames += int(row["frames"])
            if state.answered == state.parts:
                _finish_video(state, ffmpeg, summary, report)
        # Blocks that failed even after retries (an actor that kept dying) never answered.
        for index, job in enumerate(todo):
            if job.kind == "image" and (index, 0) not in answered:
                summary.failed.append((job.source, f"{job.source}: the Ray task failed after "
                                                   f"{MAX_TASK_RETRIES} retries (its actor kept dying)"))
                report(f"error: {summary.failed[-1][1]}")
        for state in videos.values():
            if state.answered < state.parts:
                state.error = state.error or (f"{state.job.source}: a segment's Ray task failed after "
                                              f"{MAX_TASK_RETRIES} retries (its actor kept dying)")
                _finish_video(state, ffmpeg, summary, report)
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(scratch, ignore_errors=True)
        if started:
            ray.shutdown()
    return summary


def _finish_video(state: _VideoState, ffmpeg: str, summary: UpscaleSummary, report: Log) -> None:
    """All of a video's segments have answered: join them, or report its (first) failure."""
    job = state.job
    if job.target in summary.done or any(source == job.source for source, _ in summary.failed):
        return
    if state.error is None and len(state.done) == state.parts:
        try:
            audio = join_segments([state.done[i] for i in range(state.parts)], job.source, job.target, ffmpeg,
                                  report)
            summary.done.append(job.target)
            report(f"{job.target}: {state.frames} frames from {state.parts} segment(s), audio {audio}")
            return
        except SRDeployError as exc:
            state.error = str(exc)
    summary.failed.append((job.source, state.error or f"{job.source}: segments missing"))
    report(f"error: {summary.failed[-1][1]}")


def upscale_on_ray(inputs: Sequence[str | Path], output: str | Path, options: UpscaleOptions,
                   ray_options: RayOptions, log: Log = _stderr) -> UpscaleSummary:
    """`sr_deploy.upscale.upscale` on a Ray cluster: the same checks and plan, then `run_jobs_on_ray`."""
    import_ray()  # the one-line 'not installed' message before any work
    return run_jobs_on_ray(prepare_jobs(inputs, output, options), options, ray_options, log)
