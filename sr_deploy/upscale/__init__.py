"""`sr-deploy upscale`: images, folders and videos through any backend, nothing lost.

One job, any executor:

    options.py   `UpscaleOptions` (what the command can be told) and their checks
    plan.py      INPUT... and OUT -> `Job`s before any model is loaded (`plan_jobs`), the skip /
                 resume rule (`jobs_to_run`), and how a job ended (`Outcome`)
    image.py     one image file: read, tile, write atomically (`upscale_image_file`)
    run.py       `run_one(job, backend, options) -> Outcome`, the reducer into `UpscaleSummary`,
                 the skip pass (`skip_pass`), the local loop (`run_jobs`) and `upscale` (plan,
                 skip, load, run)
    stored.py    the same for INPUT / OUT in object storage (URIs); remote.py, remote_stored.py:
                 the rows a Ray driver sends and the answers it folds in

The local loop and the Ray actors (`sr_deploy.cluster`) both call `run_one`; the Ray driver folds
its rows into the same summary with the same reducer.
"""

from .image import upscale_image_file
from .options import DEFAULT_UPSCALE_MODEL, DEFAULT_UPSCALE_PSNR_MODEL, MAX_OUTSCALE, UpscaleOptions, validate_options
from .plan import Job, Outcome, jobs_to_run, kind_of, plan_jobs
from .run import (
    UpscaleSummary,
    load_backend,
    one_line,
    plan_checked,
    run_jobs,
    run_one,
    settled,
    settled_for_workers,
    summarize,
    upscale,
)

__all__ = [
    "DEFAULT_UPSCALE_MODEL",
    "DEFAULT_UPSCALE_PSNR_MODEL",
    "settled",
    "settled_for_workers",
    "MAX_OUTSCALE",
    "Job",
    "Outcome",
    "UpscaleOptions",
    "UpscaleSummary",
    "jobs_to_run",
    "kind_of",
    "load_backend",
    "one_line",
    "plan_checked",
    "plan_jobs",
    "run_jobs",
    "run_one",
    "summarize",
    "upscale",
    "upscale_image_file",
    "validate_options",
]
