"""ONNX -> TensorRT engine: precision per TensorRT version, shape profile, timing cache, a
parity check against ONNX Runtime float32, the sidecar JSON, and the engine cache.

The top layer of sr-deploy's TensorRT code (imports flow down only):

    trt_build (this module: build + parity + engine cache)
      -> trt_backend (deserialize and run an engine), ort_backend (the parity reference)
      -> sr_deploy.engine (artifacts: profile, sidecar, cache key, GPU identity)
      -> sr_deploy._tensorrt (the only module that imports `tensorrt`)

    profile = resolve_profile(min="1x3x64x64", opt="1x3x270x480", max="4x3x540x960")
    result = build_engine("model.onnx", "model.engine", precision="fp16", profile=profile)

Precision, decided by `_tensorrt.plan_precision` (see docs/tensorrt.md):
- TensorRT 11: strongly typed only. fp16 = an fp16 ONNX graph (float32 I/O kept) made by
  `prepare_fp16_onnx`, with the nodes whose activations overflow fp16 on real images kept in
  fp32; no precision flags, no EXPLICIT_BATCH.
- TensorRT 10: BuilderFlag.FP16 on the float32 graph (weakly typed), or with
  `strongly_typed=True` on 10.12+ the same fp16-ONNX route as 11. Never both on one network.
- fp32: TF32 cleared, so the engine is a float32 reference.

An engine is built under a unique temporary name and promoted (renamed, sidecar written) only
after its parity check passed, so neither `build-engine` nor the engine cache ever leaves an
engine that failed it.
"""

# long-module: building an engine, its parity gate and its promotion into the cache are one transaction
from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import __version__, _tensorrt
from ..engine import (
    BuildOptions,
    EngineSidecar,
    ShapeProfile,
    build_lock,
    cached_engine_path,
    check_tensor_limits,
    engine_cache_key,
    format_shape,
    gpu_identity,
    read_sidecar,
    resolve_profile,
    sidecar_path,
    timing_cache_path,
    unique_temp_path,
    write_sidecar,
)
from ..errors import InputError, SRDeployError
from ..parity import ParityReport
from ..util.files import check_local_path, file_sha256
from ..util.log import Progress as Echo
from ..util.log import to_stderr
from .ort_backend import OnnxRuntimeBackend
from .trt_backend import TensorRTBackend

# --------------------------------------------------------------------------- fp16 ONNX


@dataclass
class Fp16Onnx:
    """The fp16 graph fed to a strongly typed network."""

    path: Path
    fp16_tensors: int
    block_list: list[str]
    converted: bool  # False when the input graph already held fp16 tensors


def prepare_fp16_onnx(
    onnx_path: str | Path,
    output: str | Path,
    calibration: Sequence[np.ndarray] | None = None,
    extra_block_list: Sequence[str] = (),
    echo: Echo = to_stderr,
) -> Fp16Onnx:
    """Write the fp16 ONNX that the strongly typed route builds from, and check it really is fp16.

    A graph that already holds fp16 tensors is used as is. Otherwise it is converted with
    `sr_deploy.onnx_graph.convert_to_fp16` (onnxconverter-common, float32 inputs/outputs kept),
    keeping in fp32 the nodes whose activations exceed the fp16 range on `calibration`
    (float32 RGB [0, 1] batches, default: `parity_inputs()`, real Set5 crops when present)
    plus `extra_block_list`.

    Raises SRDeployError when the result holds no fp16 tensor: TensorRT 11 would silently
    build a float32 engine from it.
    """
    import onnx

    from ..onnx_graph import calibrate_fp16_block_list, convert_to_fp16, count_fp16_tensors
    from ..parity import parity_inputs

    src, dst = Path(onnx_path), Path(output)
    existing = count_fp16_tensors(onnx.load(str(src)))
    if existing > 0:
        echo(f"fp16: {src} already holds {existing} fp16 tensors; building from it as is")
        return Fp16Onnx(src, existing, list(extra_block_list), converted=False)
    inputs = list(calibration) if calibration is not None else parity_inputs()
    block = sorted(set(calibrate_fp16_block_list(str(src), inputs)) | set(extra_block_list))
    if block:
        echo(
            f"fp16: keeping {len(block)} node(s) in fp32 (activations beyond the fp16 range on the "
            f"calibration images): {', '.join(block[:8])}{' ...' if len(block) > 8 else ''}"
        )
    tmp = unique_temp_path(dst, suffix=".onnx")
    try:
        convert_to_fp16(str(src), output=str(tmp), block_list=block or None)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    count = count_fp16_tensors(onnx.load(str(dst)))
    if count == 0:
        raise SRDeployError(
            f"{dst}: the fp16 conversion produced no fp16 tensors; TensorRT 11 would build a "
            "float32 engine from it. Use --fp32, or check the ONNX graph"
        )
    echo(f"fp16: {dst} holds {count} fp16 tensors (float32 input and output kept)")
    return Fp16Onnx(dst, count, block, converted=True)


# --------------------------------------------------------------------------- build


@dataclass
class BuildResult:
    engine_path: Path
    sidecar: EngineSidecar
    parity: ParityReport | None = None  # None when not checked
    reused: bool = False


@dataclass
class _Target:
    """The TensorRT and GPU an engine is built for, and the precision route there."""

    trt: ModuleType
    version: str
    plan: _tensorrt.PrecisionPlan
    gpu_name: str
    compute_capability: str


def _target(precision: str, strongly_typed: bool, device: str) -> _Target:
    trt = _tensorrt.import_tensorrt()
    _tensorrt.require_cuda(device)
    version = _tensorrt.tensorrt_version(trt)
    plan = _tensorrt.plan_precision(_tensorrt.parse_version(version), precision, strongly_typed)
    gpu_name, cc = gpu_identity(device)
    return _Target(trt, version, plan, gpu_name, cc)


def _onnx_scale(onnx_path: Path) -> int:
    from ..util.onnx_facts import read_onnx_metadata

    meta = read_onnx_metadata(onnx_path) or {}
    for key in ("scale", "sr_deploy.scale"):
        if key in meta:
            try:
                return int(meta[key])
            except (TypeError, ValueError):
                pass
    raise InputError(f"{onnx_path}: no sr_deploy.scale in the ONNX metadata; export it with sr-deploy export")


def _onnx_nodes(onnx_path: Path) -> list[tuple[str, str]]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [(n.name, n.op_type) for n in model.graph.node]


def _check_onnx_path(onnx_path: str | Path) -> Path:
    path = check_local_path(onnx_path)
    if path.suffix.lower() != ".onnx":
        raise InputError(f"{path}: expected an .onnx file (export one with sr-deploy export)")
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    return path


def _check_options(precision: str, workspace_gib: float, opt_level: int | None) -> BuildOptions:
    if opt_level is not None and not 0 <= int(opt_level) <= 5:
        raise InputError(f"--opt-level {opt_level}: expected 0 to 5")
    if workspace_gib <= 0:
        raise InputError(f"--workspace {workspace_gib}: expected a positive number of GiB")
    if precision not in ("fp32", "fp16", "bf16"):
        raise InputError(f"unknown precision {precision!r}: expected fp32, fp16 or bf16")
    return BuildOptions(int(workspace_gib * 2**30), None if opt_level is None else int(opt_level), __version__)


# long: its 18 options take a line each after `ruff format`; the body itself is 70 lines
def build_engine(
    onnx_path: str | Path,
    output: str | Path | None = None,
    *,
    precision: str = "fp16",
    profile: ShapeProfile | None = None,
    workspace_gib: float = 4.0,
    opt_level: int | None = None,
    timing_cache: str | Path | None = None,
    fallback_static: bool = True,
    strongly_typed: bool = False,
    verbose: bool = False,
    check_parity: bool = True,
    calibration: Sequence[np.ndarray] | None = None,
    fix_overflow: bool = True,
    device: str = "cuda",
    echo: Echo = to_stderr,
) -> BuildResult:
    """Build `onnx_path` into a TensorRT engine at `output` (default: beside it, .engine),
    with its sidecar JSON, after a parity check against ONNX Runtime float32 on real images.

    Args:
        precision: fp16 | bf16 | fp32 (see the module docstring for the route per version).
        profile: the input's min/opt/max shapes (default 1x3x64x64 / 1x3x270x480 / 4x3x540x960).
        workspace_gib: builder workspace memory pool limit.
        opt_level: builder optimization level 0-5 (None: TensorRT's default, 3).
        timing_cache: path of the timing cache, loaded when present and saved after the build
            (default: `timing-<TensorRT version>-<GPU>-sm<cc>.cache` beside the engine).
        fallback_static: when the dynamic build fails, retry once with the opt shape static.
        strongly_typed: TensorRT 10.12+: use the fp16-ONNX strongly typed route instead of
            BuilderFlag.FP16 (always the route on 11).
        check_parity: False (`--no-parity`) promotes the engine unchecked (sidecar parity "skipped").
        calibration: float32 RGB [0, 1] batches for the fp16 block list and the parity check
            (default `parity_inputs()`: Set5 crops when present).
        fix_overflow: when fp16 parity fails (NaN/Inf or PSNR < 50 dB), rebuild once keeping
            the offending layers in fp32 (strongly typed route) instead of only suggesting it.

    Raises: InputError (bad arguments, NotInstalledError without TensorRT/CUDA, exit 2),
        SRDeployError (parse/build/parity failure, exit 1; no engine is left at `output`).
    """
    src = _check_onnx_path(onnx_path)
    options = _check_options(precision, workspace_gib, opt_level)
    profile = profile or resolve_profile()
    engine_path = check_local_path(output) if output is not None else src.with_suffix(".engine")
    if engine_path.resolve() == src.resolve():
        raise InputError(f"{engine_path}: the engine would overwrite the ONNX input")

    from ..onnx_graph import count_fp16_tensors

    source_fp16 = count_fp16_tensors(src)
    if precision == "fp32" and source_fp16:
        raise InputError(
            f"{src}: an fp16 graph ({source_fp16} fp16 tensors) cannot give a float32 engine; "
            "export a float32 ONNX for --fp32"
        )
    scale = _onnx_scale(src)
    check_tensor_limits(profile, scale, src)  # a shape no engine can hold is said before TensorRT is needed
    target = _target(precision, strongly_typed, device)
    if source_fp16:
        echo(f"note: {src} is already an fp16 graph; the parity reference is that graph on ONNX Runtime CPU")
    for note in target.plan.notes:
        echo(f"TensorRT {target.version}: {note}")

    engine_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path = (
        Path(timing_cache)
        if timing_cache is not None
        else timing_cache_path(engine_path.parent, target.version, target.gpu_name, target.compute_capability)
    )
    log_path = engine_path.with_name(engine_path.name + ".build.log")
    log_path.write_text(f"sr-deploy {__version__} build-engine {src} -> {engine_path}\n", encoding="utf-8")
    job = _BuildJob(
        src,
        engine_path,
        precision,
        profile,
        options,
        target,
        scale,
        cache_path,
        log_path,
        verbose,
        fallback_static,
        list(calibration) if calibration is not None else None,
        device,
        echo,
    )
    return job.run(check_parity, fix_overflow)


@dataclass
class _BuildJob:
    """One `build_engine` call after its arguments were checked: build, check, promote."""

    src: Path
    engine_path: Path
    precision: str
    profile: ShapeProfile
    options: BuildOptions
    target: _Target
    scale: int
    cache_path: Path
    log_path: Path
    verbose: bool
    fallback_static: bool
    inputs: list[np.ndarray] | None
    device: str
    echo: Echo

    def run(self, check_parity: bool, fix_overflow: bool) -> BuildResult:
        plan = self.target.plan
        block_extra: list[str] = []
        for attempt in (1, 2):
            fp16 = self._fp16_source(block_extra)
            tmp, sidecar = self._build_to_temporary(fp16)
            try:
                if not check_parity:
                    sidecar.parity = "skipped"
                    return BuildResult(self._promote(tmp, sidecar), sidecar)
                report = engine_parity(self.src, tmp, self.precision, self.inputs, self.device)
                self.echo(report.table())
                if report.passed:
                    sidecar.parity, sidecar.parity_summary = "passed", report.summary()
                    return BuildResult(self._promote(tmp, sidecar), sidecar, report)
            finally:
                tmp.unlink(missing_ok=True)
                sidecar_path(tmp).unlink(missing_ok=True)
            more = self._stricter_block_list(fp16) if attempt == 1 and fix_overflow and plan.needs_fp16_onnx else []
            if not more:
                raise SRDeployError(
                    parity_failure_message(self.engine_path, self.precision, plan.route, report.summary())
                )
            self.echo(
                f"{self.engine_path}: parity failed ({report.summary()}), likely fp16 overflow; rebuilding "
                f"once with {len(more)} more node(s) kept in fp32: {', '.join(more[:8])}"
            )
            block_extra = more
        raise AssertionError("unreachable")

    def _fp16_source(self, block_extra: list[str]) -> Fp16Onnx | None:
        if self.target.plan.needs_fp16_onnx:
            fp16_path = self.engine_path.with_name(self.engine_path.stem + ".fp16.onnx")
            return prepare_fp16_onnx(self.src, fp16_path, self.inputs, block_extra, self.echo)
        if self.precision == "fp16":
            self.echo(f"fp16: {self.src} is float32; TensorRT 10 picks fp16 kernels under BuilderFlag.FP16")
        return None

    def _build_to_temporary(self, fp16: Fp16Onnx | None) -> tuple[Path, EngineSidecar]:
        """Build, write the engine and its sidecar under a unique temporary name beside the output."""
        build_src = fp16.path if fp16 else self.src
        started = time.perf_counter()
        data, used_profile, fell_back = _build_with_fallback(
            self.target.trt,
            build_src,
            self.target.plan,
            self.profile,
            self.options,
            self.cache_path,
            self.log_path,
            self.verbose,
            self.fallback_static,
            self.echo,
        )
        seconds = time.perf_counter() - started
        sidecar = EngineSidecar(
            onnx_sha256=file_sha256(self.src),
            tensorrt_version=self.target.version,
            gpu_name=self.target.gpu_name,
            compute_capability=self.target.compute_capability,
            profile=used_profile.as_dict(),
            precision=self.precision,
            route=self.target.plan.route,
            scale=self.scale,
            onnx_path=str(self.src),
            built_onnx_sha256=file_sha256(build_src),
            fp16_tensors=fp16.fp16_tensors if fp16 else 0,
            fp32_block_list=fp16.block_list if fp16 else [],
            build_seconds=round(seconds, 3),
            built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            build_log=str(self.log_path),
            timing_cache=str(self.cache_path),
            static_fallback=fell_back,
            workspace_bytes=self.options.workspace_bytes,
            opt_level=self.options.opt_level,
            sr_deploy_version=self.options.sr_deploy_version,
        )
        tmp = unique_temp_path(self.engine_path, suffix=".engine")
        tmp.write_bytes(data)
        write_sidecar(tmp, sidecar)
        self.echo(
            f"built {len(data) / 2**20:.1f} MiB ({used_profile}, {self.precision} via "
            f"{self.target.plan.route}) in {seconds:.1f} s"
        )
        return tmp, sidecar

    def _promote(self, tmp: Path, sidecar: EngineSidecar) -> Path:
        """Rename the checked engine into place, then write its final sidecar."""
        os.replace(tmp, self.engine_path)
        write_sidecar(self.engine_path, sidecar)
        self.echo(f"wrote {self.engine_path} (parity {sidecar.parity})")
        return self.engine_path

    def _stricter_block_list(self, fp16: Fp16Onnx | None) -> list[str]:
        from ..onnx_graph import FP16_MAX_RELATIVE_ERROR, FP16_SAFE_MAX, calibrate_fp16_block_list
        from ..parity import parity_inputs

        # Stricter than the first calibration: TensorRT's fp16 kernels accumulate in fp16 too,
        # so keep back nodes within 8x of the first threshold as well.
        stricter = calibrate_fp16_block_list(
            str(self.src),
            self.inputs or parity_inputs(),
            safe_max=FP16_SAFE_MAX / 8,
            max_relative_error=FP16_MAX_RELATIVE_ERROR / 2,
        )
        return sorted(set(stricter) - set(fp16.block_list if fp16 else []))


def parity_failure_message(engine_path: Path, precision: str, route: str, summary: str) -> str:
    """The one line for a failed parity check: the likely cause and what to try for this
    precision and route (only options that exist for it: --strongly-typed is fp16 only)."""
    if precision == "fp32":
        return (
            f"{engine_path}: float32 parity with ONNX Runtime failed ({summary}); no engine written. "
            "Check the ONNX graph with sr-deploy export --check"
        )
    cause = (
        f"{engine_path}: parity with ONNX Runtime float32 failed ({summary}); no engine written. Likely cause: "
        f"{precision} overflow or rounding -- activations beyond the {precision} range become Inf/NaN or lose "
        "precision."
    )
    if precision == "bf16":
        return f"{cause} Try: --fp16 or --fp32."
    hint = (
        "rebuild with --strongly-typed (TensorRT 10.12+) so the overflowing nodes are kept in fp32, "
        if route == "flag"
        else ""
    )
    return f"{cause} Try: {hint}or --fp32."


def _build_with_fallback(
    trt: ModuleType,
    build_src: Path,
    plan: _tensorrt.PrecisionPlan,
    profile: ShapeProfile,
    options: BuildOptions,
    cache_path: Path,
    log_path: Path,
    verbose: bool,
    fallback_static: bool,
    echo: Echo,
) -> tuple[bytes, ShapeProfile, bool]:
    """Build once; if a dynamic build fails and `fallback_static`, retry once with the opt shape
    static (saying so). Parser errors are not retried."""

    def request(p: ShapeProfile) -> _tensorrt.BuildRequest:
        return _tensorrt.BuildRequest(
            onnx_path=build_src,
            onnx_nodes=_onnx_nodes(build_src),
            plan=plan,
            min_shape=p.min,
            opt_shape=p.opt,
            max_shape=p.max,
            workspace_bytes=options.workspace_bytes,
            opt_level=options.opt_level,
            timing_cache=cache_path,
            log_path=log_path,
            verbose=verbose,
        )

    try:
        return _tensorrt.build_serialized_engine(trt, request(profile), echo), profile, False
    except _tensorrt.BuildFailed as exc:
        if profile.is_static or not fallback_static:
            raise
        static = ShapeProfile.static(profile.opt)
        echo(
            f"{exc}; retrying once with a static shape {format_shape(profile.opt)} (the opt shape; larger "
            "inputs will be tiled). Use --no-fallback-static to fail instead."
        )
        return _tensorrt.build_serialized_engine(trt, request(static), echo), static, True


def engine_parity(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str,
    inputs: Sequence[np.ndarray] | None = None,
    device: str = "cuda",
) -> ParityReport:
    """Parity of the engine against ONNX Runtime float32 on the CPU (the reference) with the
    export thresholds (`sr_deploy.parity.check_thresholds`). Inputs larger than the engine's
    profile max are cropped to fit."""
    from ..parity import check_thresholds, parity, parity_inputs

    batches = list(inputs) if inputs is not None else parity_inputs()
    with (
        TensorRTBackend(engine_path, device=device) as candidate,
        OnnxRuntimeBackend(Path(onnx_path), device="cpu", precision="fp32") as reference,
    ):
        hi = candidate.max_shape  # larger crops are cut to the profile max; smaller ones the backend pads
        assert hi is not None  # an engine always has a profile max
        fitted = [np.ascontiguousarray(x[: hi[0], :, : hi[1], : hi[2]]) for x in batches]
        report = parity(reference, candidate, fitted)
    check_thresholds(report, precision)
    return report


# --------------------------------------------------------------------------- engine cache


def _reusable(path: Path, key: str, profile: ShapeProfile, check_parity: bool) -> bool:
    """Is the cached engine at `path` the one `key` asks for, and did it pass its parity check?"""
    if not path.is_file():
        return False
    try:
        sidecar = read_sidecar(path)
    except InputError:
        return False
    if sidecar is None or sidecar.parity not in (("passed",) if check_parity else ("passed", "skipped")):
        return False
    # A static fallback build answers the dynamic profile it was asked for.
    return key in (sidecar.cache_key(), sidecar.cache_key(profile.as_dict()) if sidecar.static_fallback else "")


def ensure_engine(
    onnx_path: str | Path,
    precision: str = "fp16",
    *,
    profile: ShapeProfile | None = None,
    cache_dir: str | Path | None = None,
    device: str = "cuda",
    strongly_typed: bool = False,
    workspace_gib: float = 4.0,
    opt_level: int | None = None,
    check_parity: bool = True,
    echo: Echo = to_stderr,
    **build_options: Any,
) -> Path:
    """The engine for `onnx_path` from the engine cache, building it on first use.

    The cache key covers the ONNX sha256, TensorRT version, GPU name and compute capability,
    profile, precision and route, workspace, optimisation level and sr-deploy version, so
    `sr-deploy upscale --backend tensorrt model.onnx` builds once per machine and reuses the
    engine afterwards. Only an engine whose parity check passed is reused. Two processes asking
    for the same entry build it once: the second waits on the entry's lock, then reuses it. The
    timing cache sits beside the engines, one per TensorRT version and GPU."""
    src = _check_onnx_path(onnx_path)
    options = _check_options(precision, workspace_gib, opt_level)
    target = _target(precision, strongly_typed, device)
    profile = profile or resolve_profile()
    key = engine_cache_key(
        file_sha256(src),
        target.version,
        target.gpu_name,
        target.compute_capability,
        profile,
        precision,
        target.plan.route,
        options,
    )
    path = cached_engine_path(src, key, precision, cache_dir)
    if _reusable(path, key, profile, check_parity):
        echo(f"engine cache: reusing {path}")
        return path
    with build_lock(path):
        if _reusable(path, key, profile, check_parity):  # another process built it while we waited
            echo(f"engine cache: reusing {path} (built by another process meanwhile)")
            return path
        echo(
            f"engine cache: building {path} (first use of {src.name} with TensorRT {target.version} on "
            f"{target.gpu_name})"
        )
        timing = timing_cache_path(path.parent, target.version, target.gpu_name, target.compute_capability)
        build_engine(
            src,
            path,
            precision=precision,
            profile=profile,
            device=device,
            strongly_typed=strongly_typed,
            workspace_gib=workspace_gib,
            opt_level=opt_level,
            timing_cache=timing,
            check_parity=check_parity,
            echo=echo,
            **build_options,
        )
    return path


def load_tensorrt_from_onnx(
    onnx_path: str | Path, device: str = "cuda", precision: str = "fp16", cuda_graph: bool = False, **build_options: Any
) -> TensorRTBackend:
    """`sr-deploy upscale --backend tensorrt model.onnx`: the engine from the engine cache (built
    on first use, `ensure_engine`) and a `TensorRTBackend` running it."""
    engine = ensure_engine(onnx_path, precision, device=device, **build_options)
    return TensorRTBackend(engine, device=device, cuda_graph=cuda_graph)
