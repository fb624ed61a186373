"""`sr-deploy upscale ... --ray [ADDRESS]`: the same upscale jobs on a Ray cluster (Ray Data).

Only the Ray plumbing lives here; the job is the local one:

    driver (this process)     plans and skips like a local run (`sr_deploy.upscale`), cuts each
                              video into keyframe-aligned pieces (`sr_deploy.video.pieces`),
                              writes every output atomically, joins a video's upscaled pieces in
                              order with its audio, and folds the rows into the local summary.
    actor pool (Ray Data)     `map_batches` over one row per image or video piece; each actor
                              loads the backend once (one GPU per actor when the cluster has GPUs,
                              else CPU) and runs `sr_deploy.upscale.run_one` on its row, into a
                              scratch file whose bytes it returns.

So outputs, skip/resume, atomic writes and the one-line error per failed input are a local run's;
a video's finished pieces wait in the target's segments folder (a re-run resumes piece by piece).
Fault tolerance is Ray's: an actor that dies is restarted and its block re-run (bounded here,
`MAX_ACTOR_RESTARTS`); a block that still fails only fails its input (`max_errored_blocks`).

Where files must be: inputs and outputs in object storage (`s3://`, `gs://`: rows carry keys, the
actors fetch and put, `sr_deploy.upscale.remote_stored`) need no shared disk; local image inputs
are read at the driver's path (shared filesystem); local video pieces travel in the rows.
The driver decides the precision once (`settled_for_workers`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, NotInstalledError, SRDeployError
from .model_file import model_files, model_files_id
from .upscale import Job, UpscaleOptions, UpscaleSummary, jobs_to_run, load_backend, plan_checked, summarize
from .upscale.remote import ANSWER_KEYS, RemoteRun, pool_size, run_row
from .upscale.remote_stored import StoredRemoteRun
from .upscale.run import model_identity, settled_for_workers, with_model_outscale, with_threads
from .upscale.stored import plan_stored_checked, stored_jobs_to_run, sweep_partials, uses_store
from .util.files import process_scratch_dir
from .util.log import DEBUG_ENV, to_stderr
from .util.log import Progress as Log
from .util.net import check_reachable
from .util.text import first_line

RAY_NOT_INSTALLED = "Ray is not installed: pip install 'sr-deploy[ray]' (on the driver and every node)"
# An actor that keeps dying (a crashing driver library, a GPU fault) is restarted this many times
# and a block re-run this many times before the input it holds is reported as failed.
MAX_ACTOR_RESTARTS = 4
MAX_TASK_RETRIES = 3
# Ray's switch for a loopback-only cluster: without it Ray listens on the machine's network address.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Custom resources every actor needs, as JSON (e.g. {"gpu_node": 1}: the actors run only on such nodes).
ACTOR_RESOURCES_ENV = "SR_DEPLOY_RAY_ACTOR_RESOURCES"


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
    cpus_per_actor: CPUs each actor reserves; None = the job's thread count
        (`UpscaleOptions.threads`, which every CPU actor runs with) for CPU actors, 1 for GPU actors.
    gpus_per_actor: None = 1 when the cluster has GPUs and the device is not `cpu`, else 0.
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float | None = None
    gpus_per_actor: float | None = None


class _Upscaler:
    """A Ray Data actor: loads the backend once, then answers one row per call with
    `sr_deploy.upscale.remote.run_row` (an image is read from the shared filesystem, a video
    piece's bytes travel in the row)."""

    def __init__(self, options: UpscaleOptions, model_name: str, model_files: dict[str, bytes]):
        import weakref

        self.workdir = process_scratch_dir("sr-deploy-actor-")  # also sweeps those of killed actors
        # removed when the actor is collected or its process exits (Ray ends the pool's actors so)
        weakref.finalize(self, shutil.rmtree, self.workdir, True)
        for name, data in model_files.items():  # the model travelled through the object store
            (self.workdir / name).write_bytes(data)
        self.options = dataclasses.replace(options, model=str(self.workdir / model_name), progress=False)
        self.backend = load_backend(self.options, lambda line: None)  # the driver said the precision once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {key: [] for key in ANSWER_KEYS}
        for i in range(len(batch["job"])):
            scratch = Path(tempfile.mkdtemp(dir=self.workdir))
            try:
                answer = run_row({key: values[i] for key, values in batch.items()}, self.backend, self.options, scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            for key, value in zip(ANSWER_KEYS, answer):
                out[key].append(value)
        return out


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to the cluster at `address` (or RAY_ADDRESS), or start a local one for this run,
    listening on 127.0.0.1 only; True when this call started the Ray session (to shut it down)."""
    if ray.is_initialized():
        return False
    option = "--ray" if address else "RAY_ADDRESS"  # the error names where the address came from
    address = address or os.environ.get("RAY_ADDRESS") or None
    check_reachable(address, option)  # a bad address: one line within seconds, not minutes of retries
    local = {} if address else {"include_dashboard": False}  # loopback: see `import_ray(local=True)`
    if not address and os.environ.get(DEBUG_ENV) != "1":  # the run's own loopback cluster: Ray's note
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)  # on its token is noise
    try:
        ray.init(address=address, logging_level="warning", log_to_driver=True, configure_logging=True, **local)
    except ConnectionError as exc:
        if address == "auto":  # Ray's own text names an --address flag this command does not have
            raise InputError(
                f"{option} auto: no Ray cluster runs on this machine (start one with `ray start --head`, "
                "or give --ray without an address for a cluster of this run's own)"
            ) from exc
        raise SRDeployError(f"cannot connect to the Ray cluster at {address}: {first_line(exc)}") from exc
    except (RuntimeError, ValueError) as exc:
        where = address or "a new local cluster"
        raise SRDeployError(f"cannot connect to the Ray cluster at {where}: {first_line(exc)}") from exc
    return True


@dataclass(frozen=True)
class _Pool:
    actors: int
    gpus_each: float
    cpus_each: float
    per_node: int  # CPU pools: at most this many actors share a node (they share its RAM)


def _largest_node_cpus(ray: Any) -> float:
    return max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)


def _gpus_each(ray: Any, options: UpscaleOptions, ray_options: RayOptions) -> float:
    """GPUs per actor: 0 for a CPU pool."""
    return pool_size(ray.cluster_resources(), options.device, 1, 1.0, ray_options.gpus_per_actor)[1]


def _fit_threads(ray: Any, options: UpscaleOptions) -> UpscaleOptions:
    """The job's thread count for a CPU pool: the one asked for, else the driver's default capped
    at the largest node's CPUs (an actor runs with it and reserves that many)."""
    if options.threads is not None:
        return options
    threads, largest = with_threads(options).threads or 1, int(_largest_node_cpus(ray))
    return dataclasses.replace(options, threads=max(1, min(threads, largest) if largest else threads))


def _pool(ray: Any, options: UpscaleOptions, ray_options: RayOptions) -> _Pool:
    """The actor pool for this cluster: a CPU actor reserves the job's thread count (the count it
    runs with, for the local run's bytes) unless told otherwise. A pool the cluster cannot hold
    is refused in one line (Ray would wait for it for ever)."""
    o, resources = ray_options, ray.cluster_resources()
    gpus_each = _gpus_each(ray, options, o)
    cpus_each = o.cpus_per_actor if o.cpus_per_actor is not None else 1.0 if gpus_each else float(options.threads or 1)
    largest, total = _largest_node_cpus(ray), float(resources.get("CPU", 0))
    what = "the job's --threads" if o.cpus_per_actor is None else "cpus_per_actor"
    if largest and cpus_each > largest:
        raise InputError(
            f"each Ray actor needs {cpus_each:g} CPUs ({what}), but the largest node of the cluster "
            f"has {largest:g}: pass --threads {int(largest)} or fewer"
        )
    actors, _ = pool_size(resources, options.device, o.actors, cpus_each, gpus_each)
    if o.actors is not None and total and actors * cpus_each > total:
        raise InputError(
            f"--ray-actors {actors} with {cpus_each:g} CPUs each ({what}) needs {actors * cpus_each:g} CPUs, "
            f"but the cluster has {total:g}: ask for fewer actors or threads"
        )
    per_node = min(actors, max(1, int(largest // max(cpus_each, 1e-3)))) if largest and not gpus_each else 1
    return _Pool(actors, gpus_each, cpus_each, per_node)


def _restart_policy() -> dict[str, int]:
    return {"max_restarts": MAX_ACTOR_RESTARTS, "max_task_retries": MAX_TASK_RETRIES}


def _results(
    ray: Any, rows: list[dict], options: UpscaleOptions, pool: _Pool, model: tuple, log: Log
) -> Iterator[dict]:
    """The rows through the actor pool, answered as they come; a failure of the Ray job itself
    (not of one input: those are rows with ok=False) becomes one SRDeployError line."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts the whole job
    if os.environ.get(DEBUG_ENV) != "1":  # its "progress bars disabled" and "execution finished" lines
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    context.print_on_execution_start = False
    context.max_errored_blocks = len(rows)  # a block that keeps failing fails only its input
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))  # one row per block: fine retries
    with warnings.catch_warnings():
        # Ray 2.5x deprecates ray_remote_args_fn but has no named parameter for restarts yet; without
        # it Ray Data restarts a dying actor forever, and an input that crashes its actor would hang.
        warnings.simplefilter("ignore", DeprecationWarning)
        dataset = dataset.map_batches(
            _Upscaler,
            fn_constructor_kwargs={"options": options, "model_name": model[0], "model_files": model[1]},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=pool.actors),
            num_cpus=pool.cpus_each,
            num_gpus=pool.gpus_each,
            ray_remote_args_fn=_restart_policy,
            resources=json.loads(os.environ.get(ACTOR_RESOURCES_ENV) or "{}") or None,
        )
    pieces = sum(row["kind"] == "piece" for row in rows)
    log(
        f"ray: {len(rows)} item(s) ({len(rows) - pieces} image(s), {pieces} video piece(s)) on "
        f"{pool.actors} actor(s)"
        + (f", {pool.gpus_each:g} GPU each" if pool.gpus_each else f", CPU, {options.threads} thread(s) each")
    )
    try:
        yield from dataset.iter_rows()
    except (KeyboardInterrupt, SystemExit, SRDeployError):
        raise
    except Exception as exc:
        raise SRDeployError(f"the Ray job failed: {type(exc).__name__}: {first_line(exc)}") from exc


def run_jobs_on_ray(
    jobs: Sequence[Job], options: UpscaleOptions, ray_options: RayOptions, log: Log = to_stderr, stored: bool = False
) -> UpscaleSummary:
    """Run `jobs` on the cluster; same summary, outputs and rules as `sr_deploy.upscale.run_jobs`
    (`stored`: jobs of `plan_stored`, with locations that may be URIs)."""
    from tqdm import tqdm

    ray = import_ray()
    # skip / resume: the rule compares the model's identity with what outputs record (the thread
    # count is not settled here: the pool fits it to the cluster below)
    options = with_model_outscale(options)  # as `settled` makes it for the workers: one record
    options = dataclasses.replace(options, model_id=model_identity(options.model))  # the file's id, read from disk
    outcomes, todo = (stored_jobs_to_run if stored else jobs_to_run)(jobs, options, log)
    summary = summarize(outcomes)
    if not todo:
        if stored:
            sweep_partials(summary, log)
        return summary
    model = model_files(options.model)
    # hashed again, from the bytes sent: what the workers write names exactly what they were given
    options = dataclasses.replace(options, model_id=model_files_id(*model))
    scratch = Path(tempfile.mkdtemp(prefix="sr-deploy-ray-"))
    driver, started = (StoredRemoteRun if stored else RemoteRun)(todo, summary, log), False
    bar = None
    try:
        started = _connect(ray, ray_options.address)  # first: the precision is decided for the pool's devices
        cpu_workers = not _gpus_each(ray, options, ray_options)
        if cpu_workers:
            options = _fit_threads(ray, options)
        pool = _pool(ray, options, ray_options)  # refused here, before any video is cut
        options = settled_for_workers(options, cpu_workers, log, pool.per_node)
        driver.plan(options, options.model_id, scratch)
        if not driver.rows:
            return summary
        total, show = len(driver.rows), options.progress
        bar = tqdm(
            total=total, unit="item", file=sys.stderr, disable=not show, leave=False, dynamic_ncols=True, desc="ray"
        )
        driver.report = log if bar.disable else (lambda message: bar.write(message, file=sys.stderr))
        answered: set[tuple[int, int]] = set()
        for row in _results(ray, driver.rows, options, pool, model, log):
            answered.add((int(row["job"]), int(row["part"])))
            bar.update(1)
            driver.answer(*(row[key] for key in ANSWER_KEYS))
        # Blocks that failed even after retries (an actor that kept dying) never answered.
        for row in driver.rows:
            if (row["job"], row["part"]) not in answered:
                driver.lost(row, f"the Ray task failed after {MAX_TASK_RETRIES} retries (its actor kept dying)")
    finally:
        driver.close()  # the outputs it still held (an interrupted run)
        if bar is not None:
            bar.close()
        shutil.rmtree(scratch, ignore_errors=True)
        if started:
            ray.shutdown()
    return summary


def upscale_on_ray(
    inputs: Sequence[str | Path],
    output: str | Path,
    options: UpscaleOptions,
    ray_options: RayOptions,
    log: Log = to_stderr,
) -> UpscaleSummary:
    """`sr_deploy.upscale.upscale` on a Ray cluster: the same checks and plan, then `run_jobs_on_ray`."""
    import_ray(local=not (ray_options.address or os.environ.get("RAY_ADDRESS")))  # 'not installed' first
    if uses_store(inputs, output):
        return run_jobs_on_ray(plan_stored_checked(inputs, output, options, log), options, ray_options, log, True)
    return run_jobs_on_ray(plan_checked(inputs, output, options, log=log), options, ray_options, log)
