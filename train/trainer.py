"""The training loop shared by every recipe (SRResNet, SRGAN, ESRGAN PSNR pre-training, ESRGAN).

What a recipe changes is only configuration (see `train/configs/*.yaml`): the generator, which
losses are on and their weights, whether a discriminator is trained (and which adversarial
loss), the schedule and the EMA. One iteration is:

1. generator step: SR = G(LR); loss = w_pix * pixel + w_percep * VGG + w_adv * adversarial
   (the discriminator frozen); Adam step; scheduler step; EMA update;
2. discriminator step(s), when there is a discriminator: k updates on (HR, SR.detach()).

A run directory holds: config.yaml (the resolved config), train.log (log lines), loss.csv,
val.csv and val.png (the validation curve), model_latest.pt / model_best.pt (generator checkpoints
in sr-deploy format, loadable by `sr_deploy.models.load_model`) and state_latest.pt (everything
`--resume` needs). Every file is written to a temporary name and renamed.

Validation and its records live in `train.validation`; RNG state, EMA, the stop-on-signal flag
and atomic saving in `train.state`.
"""

# long-module: the one training loop every recipe shares; validation and state plumbing already live in validation.py and state.py
from __future__ import annotations

import contextlib
import copy
import math
import platform
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sr_deploy.errors import InputError
from sr_deploy.models import ARCHITECTURES, load_checkpoint, save_checkpoint
from sr_deploy.perceptual import LPIPS
from sr_deploy.util.files import OutputBusy, exclusive_output
from sr_deploy.util.text import first_line

from .config import changed_settings, load_config
from .data import (
    DEGRADATIONS,
    DegradationSpec,
    RandomPatches,
    load_image_cache,
    load_validation_set,
    make_loader,
)
from .discriminators import build_discriminator
from .losses import (
    PerceptualLoss,
    artifact_map,
    discriminator_loss,
    generator_adversarial_loss,
    perceptual_layers,
    pixel_criterion,
)
from .schema import validate_config
from .state import EMA, StopOnSignal, atomic_torch_save, rng_state, set_rng_state, write_text_atomically
from .validation import (
    LossLog,
    bicubic_baseline,
    plot_curve,
    plot_missing_note,
    read_val_history,
    validate,
    write_csv,
)

STATE_FILE = "state_latest.pt"
CONFIG_FILE = "config.yaml"

Log = Callable[[str], None]


@dataclass
class TrainResult:
    """What a call to `train` did: the iteration it stopped at, the signal that stopped it
    (None when it ran to the end), the last and best validation scores."""

    run_dir: Path
    iteration: int
    interrupted_by: int | None = None
    last_val: dict[str, float] | None = None
    best_val: dict[str, float] | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def hardware_description(device: torch.device) -> str:
    """One line naming the device the run used (GPU name, or CPU model and threads)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def build_generator(model_cfg: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The generator named by ``model.arch`` with the other ``model.*`` keys as constructor
    arguments; returns it and those arguments (the checkpoint's `config`)."""
    kwargs = {k: v for k, v in model_cfg.items() if k != "arch"}
    arch = model_cfg.get("arch")
    if arch not in ARCHITECTURES:
        raise InputError(f"model.arch {arch!r}: expected one of {', '.join(sorted(ARCHITECTURES))}")
    try:
        return ARCHITECTURES[arch](**kwargs), kwargs
    except (TypeError, ValueError) as exc:
        raise InputError(f"model: bad {arch} arguments {kwargs}: {exc}") from exc


def _resolve_milestones(milestones: list[float], iterations: int) -> list[int]:
    """Milestones below 1 are fractions of the run (so a shortened run keeps the recipe's shape)."""
    return sorted(int(round(m * iterations)) if 0 < m < 1 else int(m) for m in milestones)


def adam_settings(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Adam's keyword arguments (lr, betas, weight_decay) for the generator and the discriminator:
    the discriminator's rate and betas default to the generator's; it has no weight decay."""
    train_cfg, disc_cfg = config["train"], config.get("discriminator") or {}
    generator = {
        "lr": float(train_cfg["lr"]),
        "betas": tuple(train_cfg["betas"]),
        "weight_decay": float(train_cfg.get("weight_decay") or 0.0),
    }
    discriminator = {
        "lr": float(disc_cfg.get("lr", train_cfg["lr"])),
        "betas": tuple(disc_cfg.get("betas", train_cfg["betas"])),
        "weight_decay": 0.0,
    }
    return generator, discriminator


# The settings whose change on a resume re-plans the learning-rate schedules.
SCHEDULE_SETTINGS = frozenset(
    {"train.lr", "train.schedule", "train.milestones", "train.gamma", "train.min_lr", "discriminator.lr"}
)


def make_scheduler(optimizer: torch.optim.Optimizer, train_cfg: dict[str, Any], iterations: int):
    kind = train_cfg.get("schedule") or "none"
    if kind == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _it: 1.0)
    if kind == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer,
            _resolve_milestones(train_cfg.get("milestones") or [], iterations),
            gamma=float(train_cfg["gamma"]),
        )
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, iterations), eta_min=float(train_cfg.get("min_lr") or 0.0)
        )
    raise InputError(f"train.schedule {kind!r}: expected none, multistep or cosine")


class Trainer:
    """Builds everything a recipe needs from its config, checking the inputs first (every
    InputError happens before the first iteration), then runs the loop."""

    def __init__(
        self,
        config: dict[str, Any],
        data_dir: str | Path,
        val_dir: str | Path | None,
        run_dir: str | Path,
        device: str | None = None,
        resume: bool = False,
        perceptual_weights: str | Path | None = None,
        allow_unknown_weights: bool = False,
        from_scratch: bool = False,
        progress: bool = True,
        vgg_weights: str | Path | None = None,
    ) -> None:
        perceptual_weights = perceptual_weights if perceptual_weights is not None else vgg_weights
        self.config = config
        self.data_dir = Path(data_dir)
        self.val_dir = Path(val_dir) if val_dir is not None else None
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA GPU is available to torch on this machine")
        state_path = self.run_dir / STATE_FILE
        if resume and not state_path.is_file():
            raise InputError(f"{state_path}: no training state to resume from")
        if not resume and state_path.is_file():
            raise InputError(
                f"{self.run_dir}: already holds a run (state_latest.pt); pass --resume or choose another --out"
            )

        c = config
        self.recipe = str(c.get("recipe", "custom"))
        self.seed = int(c.get("seed") or 0)
        self.iterations = int(c["train"]["iterations"])
        self.batch_size = int(c["data"]["batch_size"])
        self.crop_size = int(c["data"]["crop_size"])

        # Seed first: the initial weights of generator and discriminator come from torch's RNG.
        torch.manual_seed(self.seed)
        random.seed(self.seed)
        np.random.seed(self.seed % (2**32))

        self._build_generator(resume, from_scratch)
        self._build_losses_and_discriminator(perceptual_weights, allow_unknown_weights)
        self._load_data()
        self._build_optimisers()

        self.iteration = 0
        self.wall_time = 0.0
        self.best: dict[str, float] | None = None
        self.bicubic: dict[str, float] | None = None
        self.history: list[dict[str, float]] = []
        if resume:
            self._load_state(state_path)

    # ---------------------------------------------------------------- building
    def _build_generator(self, resume: bool, from_scratch: bool) -> None:
        """The generator, from the init checkpoint's architecture and weights when one is given."""
        c = self.config
        init = c.get("init")
        self.init_note = ""
        init_model = None
        gan = bool((c.get("losses") or {}).get("adversarial"))
        if gan and not init and not resume and not from_scratch:
            raise InputError(
                f"{self.recipe}: a GAN recipe starts from a trained PSNR-oriented generator; set "
                "--set init=PATH (or init=default), or pass --from-scratch to start from random weights"
            )
        if init and not resume:
            loaded = load_checkpoint(init)
            c["model"] = {"arch": loaded.arch, **loaded.config}
            init_model = loaded.model
            self.init_note = f"; generator initialised from {init} (its architecture replaces model.*)"
        self.generator, self.model_kwargs = build_generator(c["model"])
        self.scale = int(getattr(self.generator, "scale", c["model"].get("scale", 4)))
        if init_model is not None:
            self.generator.load_state_dict(init_model.state_dict())
        if self.crop_size % self.scale:
            raise InputError(f"data.crop_size {self.crop_size} is not a multiple of the scale {self.scale}")

    def _build_losses_and_discriminator(
        self, perceptual_weights: str | Path | None, allow_unknown_weights: bool
    ) -> None:
        """Losses, LPIPS for validation and the discriminator: the VGG / LPIPS weights are found
        (or refused) here, before any data work."""
        c = self.config
        losses = c.get("losses") or {}
        self.pixel = losses.get("pixel")
        self.pixel_fn = pixel_criterion(self.pixel["type"]) if self.pixel else None
        self.percep_cfg = losses.get("perceptual")
        self.perceptual = None
        self.feature_network = None  # the file behind the perceptual loss, else the LPIPS loss's
        self.lpips_loss_network = None  # the file behind the LPIPS loss
        if self.percep_cfg:
            p = self.percep_cfg
            self.perceptual = PerceptualLoss(
                perceptual_layers(p),
                network=str(p.get("network", "vgg19")),
                criterion=p.get("criterion", "mse"),
                rescale=float(p.get("rescale", 1.0)),
                weights=perceptual_weights,
                allow_unknown=allow_unknown_weights,
            ).to(self.device)
            self.feature_network = self.perceptual.source
        # A folder given for the perceptual weights holds the LPIPS ones too; a single file does not.
        lpips_dir = perceptual_weights if perceptual_weights and Path(perceptual_weights).is_dir() else None
        # LPIPS as a training loss (Zhang et al. 2018 propose it as one): its learnt per-channel
        # weights on unit-normalised features are the perceptual distance the validation scores.
        self.lpips_loss_cfg = losses.get("lpips")
        self.lpips_loss = None
        if self.lpips_loss_cfg:
            if not isinstance(self.lpips_loss_cfg, dict):
                raise InputError(f"losses.lpips {self.lpips_loss_cfg!r}: expected {{network: vgg, weight: 1.0}}")
            self.lpips_loss = LPIPS(str(self.lpips_loss_cfg.get("network", "vgg")), lpips_dir).to(self.device)
            self.lpips_loss_network = self.lpips_loss.source.describe()
            self.feature_network = self.feature_network or self.lpips_loss_network
        # GAN runs are judged (and their best checkpoint chosen) by LPIPS-Alex on the validation set.
        self.lpips = None
        if self.val_dir is not None and (c.get("val") or {}).get("lpips"):
            self.lpips = LPIPS("alex", lpips_dir).to(self.device)
        self.adv_cfg = losses.get("adversarial")
        # LDL's artifact loss compares the generator with its EMA copy (train.ema_decay must be set).
        self.artifact_cfg = losses.get("artifact")
        if self.artifact_cfg and not (c.get("train") or {}).get("ema_decay"):
            raise InputError("config: losses.artifact needs train.ema_decay (it compares the generator with its EMA)")
        disc_cfg = c.get("discriminator")
        if bool(self.adv_cfg) != bool(disc_cfg):
            raise InputError("config: losses.adversarial and discriminator must be set together (or both null)")
        self.discriminator = None
        if disc_cfg:
            self.discriminator = build_discriminator(
                disc_cfg["arch"], self.crop_size, int(disc_cfg.get("num_features", 64))
            ).to(self.device)
        if not (self.pixel or self.perceptual or self.lpips_loss or self.adv_cfg):
            raise InputError(
                "config: no loss is enabled (losses.pixel / perceptual / lpips / adversarial are all null)"
            )

    def _load_data(self) -> None:
        """Training images (every one decoded once, sizes checked against the crop), the
        validation set and the random-patch dataset."""
        c, data_cfg = self.config, self.config["data"]
        self.train_files, self.train_images = load_image_cache(
            self.data_dir,
            min_size=self.crop_size,
            max_images=data_cfg.get("max_images"),
            what="data",
            progress=self.progress,
        )
        self.valset = None
        if self.val_dir is not None:
            self.valset = load_validation_set(
                self.val_dir, self.scale, c["val"].get("max_images"), self.progress, c["val"].get("degrade")
            )
        self.dataset = RandomPatches(
            self.train_images,
            self.crop_size,
            DegradationSpec(
                self.scale,
                data_cfg["degradation"],
                float(data_cfg.get("blur_sigma", 1.5)),
                bool(data_cfg.get("quantize_lr", True)),
                c.get("degradation_real"),
                bool(data_cfg.get("usm_gt", False)),
            ),
            bool(data_cfg.get("augment", True)),
            self.seed,
        )
        if data_cfg["degradation"] not in DEGRADATIONS:
            raise InputError(f"data.degradation {data_cfg['degradation']!r}: expected one of {', '.join(DEGRADATIONS)}")

    def _build_optimisers(self) -> None:
        """Optimisers, schedulers, AMP (autocast dtype and loss scalers) and the EMA."""
        train_cfg = self.config["train"]
        adam_g, adam_d = adam_settings(self.config)
        self.generator.to(self.device).train()
        self.opt_g = torch.optim.Adam(self.generator.parameters(), **adam_g)
        self.sched_g = make_scheduler(self.opt_g, train_cfg, self.iterations)
        self.opt_d = self.sched_d = None
        if self.discriminator is not None:
            self.opt_d = torch.optim.Adam(self.discriminator.parameters(), **adam_d)
            self.sched_d = make_scheduler(self.opt_d, train_cfg, self.iterations)
        # train.amp: true = fp16 autocast on CUDA (with loss scaling), nothing on the CPU;
        # "bf16" = bf16 autocast on either device (CPUs with AVX512-BF16 / AMX run it faster).
        amp = train_cfg.get("amp", True)
        self.amp_dtype = (
            torch.bfloat16 if amp == "bf16" else (torch.float16 if amp and self.device.type == "cuda" else None)
        )
        self.amp = self.amp_dtype is torch.float16
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=self.amp)
        decay = train_cfg.get("ema_decay")
        self.ema = EMA(self.generator, float(decay)) if decay else None
        self.grad_clip = train_cfg.get("grad_clip")

    # ---------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "planned_iterations": self.iterations,
            "config": self.config,
            "generator": self.generator.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema else None,
            "discriminator": self.discriminator.state_dict() if self.discriminator is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d else None,
            "sched_d": self.sched_d.state_dict() if self.sched_d else None,
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "rng": rng_state(),
            "best": self.best,
            "bicubic": self.bicubic,
            "wall_time": self.wall_time,
        }

    def _load_state(self, path: Path) -> None:
        if path.stat().st_size == 0:
            raise InputError(f"{path}: empty file, not a training state")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"{path}: unreadable training state ({first_line(exc, limit=120)})") from exc
        needed = ("iteration", "generator", "opt_g", "scaler_g", "scaler_d", "rng")
        if not isinstance(state, dict) or not all(key in state for key in needed):
            raise InputError(f"{path}: not a training state (expected the keys {', '.join(needed)})")
        saved_config = self.run_dir / CONFIG_FILE
        changes = changed_settings(load_config(saved_config), self.config) if saved_config.is_file() else {}
        self.changes_note = (
            f"; settings changed: {', '.join(f'{key} {old!r} -> {new!r}' for key, (old, new) in changes.items())}"
            if changes
            else ""
        )
        planned = int(state.get("planned_iterations", self.iterations))
        # The optimiser's state brings back the learning rate it was built with: a --set that
        # changes the rate or its schedule would be ignored without a re-plan (which builds the
        # schedules afresh: a saved schedule of another kind would not even load).
        replan = planned != self.iterations or not SCHEDULE_SETTINGS.isdisjoint(changes)
        try:
            self.generator.load_state_dict(state["generator"])
            if self.ema:
                self.ema.model.load_state_dict(state["ema"])
            if self.discriminator is not None:
                self.discriminator.load_state_dict(state["discriminator"])  # float16 in a slimmed state: cast
                if state["opt_d"] is not None:  # None in a slimmed state (train.state.slim_state): fresh moments
                    self.opt_d.load_state_dict(state["opt_d"])
                if not replan:
                    self.sched_d.load_state_dict(state["sched_d"])
                    if state["opt_d"] is None:  # the fresh optimiser has the base rate, not the schedule's
                        for group, lr in zip(self.opt_d.param_groups, self.sched_d.get_last_lr(), strict=True):
                            group["lr"] = lr
            self.opt_g.load_state_dict(state["opt_g"])
            if not replan:
                self.sched_g.load_state_dict(state["sched_g"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise InputError(f"{path}: does not fit this run's config ({first_line(exc, limit=160)})") from exc
        self._apply_optimiser_settings()
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        if replan:
            self._replan_schedules(planned)
        self.best = state.get("best")
        self.bicubic = state.get("bicubic")
        self.wall_time = float(state.get("wall_time", 0.0))
        self.history = read_val_history(self.run_dir / "val.csv", self.iteration)

    def _replan_schedules(self, planned: int) -> None:
        """`--resume --iters N` with N other than the saved run's plan, or a new learning rate or
        schedule: rebuild the learning-rate schedules from the config for N (base rates, cosine
        period, fractional milestones) and advance them to the current iteration, so the run ends
        its schedule at N instead of where the old plan ended."""
        train_cfg = self.config["train"]
        adam_g, adam_d = adam_settings(self.config)
        pairs = [(self.opt_g, "sched_g", adam_g["lr"])]
        if self.opt_d is not None:
            pairs.append((self.opt_d, "sched_d", adam_d["lr"]))
        for opt, attr, lr in pairs:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] = lr
            sched = make_scheduler(opt, train_cfg, self.iterations)
            with warnings.catch_warnings():  # stepping a fresh schedule forward, no optimizer step is due
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(self.iteration):
                    sched.step()
            setattr(self, attr, sched)
        plan = (
            f"from {planned} to {self.iterations} iterations" if planned != self.iterations else "for the new settings"
        )
        self.replan_note = f"; learning-rate schedule re-planned {plan} (lr now {self.opt_g.param_groups[0]['lr']:.3g})"

    def _apply_optimiser_settings(self) -> None:
        """Adam's betas and weight decay from the config: the optimiser's saved state brings back
        the ones it was built with, and a resume's --set must win (the rates are the schedules')."""
        adam_g, adam_d = adam_settings(self.config)
        for opt, settings in ((self.opt_g, adam_g), (self.opt_d, adam_d)):
            if opt is None:  # no discriminator
                continue
            for group in opt.param_groups:
                group.update(betas=settings["betas"], weight_decay=settings["weight_decay"])

    def save_state(self) -> Path:
        path = self.run_dir / STATE_FILE
        atomic_torch_save(self._state(), path)
        return path

    def eval_model(self) -> nn.Module:
        """The generator that validation and checkpoints use: the EMA copy when there is one."""
        return self.ema.model if self.ema else self.generator

    def save_model(self, name: str) -> Path:
        meta = {
            "recipe": self.recipe,
            "iterations": self.iteration,
            "data": str(self.data_dir),
            "num_train_images": len(self.train_images),
            "crop_size": self.crop_size,
            "batch_size": self.batch_size,
            "degradation": self.config["data"]["degradation"],
            "ema_decay": self.ema.decay if self.ema else None,
            "val_dataset": str(self.val_dir) if self.val_dir else None,
            "val": self.history[-1] if self.history else None,
            "best_val": self.best,
            "bicubic_val": self.bicubic,
            "wall_time_s": round(self.wall_time, 1),
            "hardware": hardware_description(self.device),
            "feature_network": self.feature_network,
            "lpips_loss_network": self.lpips_loss_network,
            "train_config": self.config,
        }
        model = copy.deepcopy(self.eval_model()).cpu().eval()
        return save_checkpoint(self.run_dir / name, model, self.model_kwargs, meta)

    # ---------------------------------------------------------------- loop
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()

    def _generator_step(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts: dict[str, torch.Tensor] = {}
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)
        with self._autocast():
            sr = self.generator(lr)
            if self.pixel_fn is not None:
                parts["pixel"] = float(self.pixel["weight"]) * self.pixel_fn(sr.float(), hr)
            if self.perceptual is not None:
                parts["percep"] = float(self.percep_cfg["weight"]) * self.perceptual(sr, hr)
            if self.lpips_loss is not None:
                # fp32 even under fp16 autocast: LPIPS unit-normalises features with an eps of 1e-10
                # (zero in fp16) and their squared norms can pass fp16's 65504.
                with torch.autocast(self.device.type, enabled=False):
                    distance = self.lpips_loss(sr.float(), hr.float()).mean()
                parts["lpips"] = float(self.lpips_loss_cfg.get("weight", 1.0)) * distance
            if self.artifact_cfg and self.ema is not None:
                with torch.no_grad():
                    sr_ema = self.ema.model(lr)
                weight = artifact_map(hr, sr.float(), sr_ema.float(), int(self.artifact_cfg.get("kernel", 7)))
                parts["artifact"] = float(self.artifact_cfg["weight"]) * nn.functional.l1_loss(
                    weight * sr.float(), weight * hr
                )
            if self.discriminator is not None:
                kind = self.adv_cfg["type"]
                fake_logits = self.discriminator(sr)
                real_logits = self.discriminator(hr).detach() if kind == "ragan" else None
                parts["adv"] = float(self.adv_cfg["weight"]) * generator_adversarial_loss(
                    kind, real_logits, fake_logits
                )
        loss = sum(v.float() for v in parts.values())
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(loss).backward()
        if self.grad_clip:
            self.scaler_g.unscale_(self.opt_g)
            nn.utils.clip_grad_norm_(self.generator.parameters(), float(self.grad_clip))
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self.lr_used = self.opt_g.param_groups[0]["lr"]  # logged: the lr of this step, not the next
        self.sched_g.step()
        if self.ema:
            self.ema.update(self.generator)
        if len(parts) > 1:
            parts["total"] = loss
        return sr.detach(), parts

    def _discriminator_step(self, hr: torch.Tensor, sr: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self.discriminator is not None and self.opt_d is not None
        self.discriminator.requires_grad_(True)
        kind = self.adv_cfg["type"]
        for _ in range(int(self.config["discriminator"].get("steps", 1))):
            with self._autocast():
                real_logits = self.discriminator(hr)
                fake_logits = self.discriminator(sr)
                loss = discriminator_loss(kind, real_logits, fake_logits)
            self.opt_d.zero_grad(set_to_none=True)
            self.scaler_d.scale(loss).backward()
            self.scaler_d.step(self.opt_d)
            self.scaler_d.update()
        self.sched_d.step()
        return {
            "d_loss": loss.detach().float(),
            "d_real": torch.sigmoid(real_logits.detach().float()).mean(),
            "d_fake": torch.sigmoid(fake_logits.detach().float()).mean(),
        }

    def _validate_and_record(self, log) -> dict[str, float] | None:
        if self.valset is None:
            return None
        t0 = time.perf_counter()
        scores = validate(self.eval_model(), self.valset, self.scale, self.device, self.lpips)
        row = {
            "iteration": self.iteration,
            **scores,
            "lr": self.opt_g.param_groups[0]["lr"],
            "wall_time_s": round(self.wall_time, 1),
        }
        self.history = [h for h in self.history if h["iteration"] < self.iteration] + [row]
        columns = ["iteration", "psnr", "ssim", *(["lpips"] if self.lpips is not None else []), "lr", "wall_time_s"]
        write_csv(self.run_dir / "val.csv", self.history, columns)
        plot_curve(
            self.run_dir,
            self.history,
            self.bicubic,
            f"{self.recipe} x{self.scale} on {self.val_dir.name}" if self.val_dir else self.recipe,
        )
        # The best checkpoint: lowest LPIPS for perceptual (GAN) runs, highest PSNR otherwise.
        if "lpips" in scores:
            improved = self.best is None or scores["lpips"] < self.best.get("lpips", math.inf)
        else:
            improved = self.best is None or scores["psnr"] > self.best["psnr"]
        if improved:
            self.best = {"iteration": self.iteration, **scores}
            self.save_model("model_best.pt")
        lpips_text = f"  LPIPS {scores['lpips']:.4f}" if "lpips" in scores else ""
        log(
            f"val it {self.iteration}: PSNR {scores['psnr']:.3f} dB  SSIM {scores['ssim']:.4f}{lpips_text}"
            f"{'  (best)' if improved else ''}  [{time.perf_counter() - t0:.1f} s]"
        )
        return scores

    def _open_log(self) -> tuple[Log, IO[str]]:
        """Write config.yaml, open train.log; the returned `log` writes a line to the file
        (time-stamped) and to stdout."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        import yaml

        write_text_atomically(self.run_dir / CONFIG_FILE, yaml.safe_dump(self.config, sort_keys=False))
        log_file = open(self.run_dir / "train.log", "a")

        def log(line: str) -> None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log_file.write(f"{stamp} {line}\n")
            log_file.flush()
            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()  # visible at once when stdout is a file (background runs)

        return log, log_file

    def _log_start(self, log: Log, start: int) -> None:
        """The run's first log line, and the bicubic reference scores (computed once per run)."""
        weights = {"perceptual features": self.feature_network}
        if self.lpips_loss_network is not self.feature_network:  # named once when it is the same file
            weights["LPIPS loss"] = self.lpips_loss_network
        log(
            f"{'resume' if start else 'start'} {self.recipe}: {type(self.generator).__name__}({self.model_kwargs}) "
            f"on {hardware_description(self.device)}; {len(self.train_images)} training images from {self.data_dir}; "
            f"crop {self.crop_size}, batch {self.batch_size}, iterations {start}->{self.iterations}"
            f"{f', autocast {self.amp_dtype}' if self.amp_dtype is not None else ''}{self.init_note}"
            f"{getattr(self, 'replan_note', '')}{getattr(self, 'changes_note', '')}"
            + "".join(
                f"; {role}: {network['release']} (sha256 {network['sha256'][:12]})"
                for role, network in weights.items()
                if network
            )
        )
        note = plot_missing_note() if self.valset is not None else None
        if note:
            log(note)
        if self.valset is not None and self.bicubic is None:
            self.bicubic = bicubic_baseline(self.valset, self.scale, self.lpips)
            lpips_text = f"  LPIPS {self.bicubic['lpips']:.4f}" if "lpips" in self.bicubic else ""
            log(
                f"val bicubic: PSNR {self.bicubic['psnr']:.3f} dB  SSIM {self.bicubic['ssim']:.4f}{lpips_text} "
                f"on {len(self.valset.hr)} images of {self.val_dir}"
            )

    def _finish(self, signum: int | None, result: TrainResult, log: Log, val_every: int, ckpt_every: int) -> None:
        """End of the loop: a last validation and save when the run is complete (or the state
        when a signal stopped it between checkpoints), and the closing log line."""
        result.interrupted_by = signum
        if signum is None and self.valset is not None and self.iteration % val_every:
            result.last_val = self._validate_and_record(log)
        if signum is None or self.iteration % ckpt_every:
            self.save_model("model_latest.pt")
            self.save_state()
        if signum is not None:
            log(
                f"stopped by signal {signum} at iteration {self.iteration}; state saved to "
                f"{self.run_dir / STATE_FILE}; continue with --resume"
            )
        else:
            log(
                f"done: {self.iteration} iterations, {self.wall_time:.0f} s"
                + (
                    f"; best val PSNR {self.best['psnr']:.3f} dB"
                    + (f", LPIPS {self.best['lpips']:.4f}" if "lpips" in self.best else "")
                    + f" at it {int(self.best['iteration'])}"
                    if self.best
                    else ""
                )
            )

    def run(self) -> TrainResult:
        """Train from `self.iteration` to `train.iterations`; on SIGINT / SIGTERM save the state
        and return early (`interrupted_by` set)."""
        log, log_file = self._open_log()
        c = self.config
        start = self.iteration
        self._log_start(log, start)
        workers = int(c["data"].get("workers") or 0)
        batches = iter(make_loader(self.dataset, self.batch_size, start, workers, self.device.type == "cuda"))
        log_every = max(1, int(c["log"]["every"]))
        val_every = max(1, int(c["val"]["every"]))
        ckpt_every = max(1, int(c["checkpoint"]["every"]))
        window = LossLog(self.run_dir / "loss.csv", start)
        t_last = time.perf_counter()
        result = TrainResult(self.run_dir, start)
        bar = tqdm(
            total=self.iterations,
            initial=start,
            desc=self.recipe,
            unit="it",
            file=sys.stderr,
            disable=not self.progress,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            dynamic_ncols=True,
        )
        try:
            with StopOnSignal() as stop:
                while self.iteration < self.iterations and stop.signum is None:
                    lr_img, hr = next(batches)
                    lr_img = lr_img.to(self.device, non_blocking=True)
                    hr = hr.to(self.device, non_blocking=True)
                    sr, parts = self._generator_step(lr_img, hr)
                    if self.discriminator is not None:
                        parts.update(self._discriminator_step(hr, sr))
                    self.iteration += 1
                    now = time.perf_counter()
                    self.wall_time += now - t_last
                    t_last = now
                    bar.update(1)
                    window.add(parts)
                    it = self.iteration
                    if it % log_every == 0 or it == self.iterations:
                        window.flush(it, self.iterations, self.lr_used, log)
                    if it % val_every == 0:
                        result.last_val = self._validate_and_record(log)
                        window.restart_timer()  # validation time is not training speed
                        t_last = time.perf_counter()
                    if it % ckpt_every == 0:
                        self.save_model("model_latest.pt")
                        self.save_state()
                        t_last = time.perf_counter()
                self._finish(stop.signum, result, log, val_every, ckpt_every)
        finally:
            bar.close()
            window.close()
            log_file.close()
            del batches  # shuts the DataLoader workers down
        result.iteration = self.iteration
        result.best_val = self.best
        result.history = list(self.history)
        return result


def check_run_folder(run_dir: str | Path, data_dir: str | Path, val_dir: str | Path | None) -> None:
    """InputError unless `run_dir` can be a run folder: not a file, and neither the --data or
    --val folder nor inside one (the run's files there would be read as images: val.png becomes a
    training or benchmark image). Paths are compared resolved (symbolic links, ``..``)."""
    out = Path(run_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{run_dir}: the --out path is a file, not a run folder")
    resolved = out.resolve()
    for option, folder in (("--data", data_dir), ("--val", val_dir)):
        if folder is None:
            continue
        source = Path(folder).resolve()
        if resolved == source or source in resolved.parents:
            where = "is" if resolved == source else "is inside"
            raise InputError(
                f"{run_dir}: the --out folder {where} the {option} folder {folder}; the run's files would be "
                "read as images there: choose another --out"
            )


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run folder's lock (`sr_deploy.util.files.exclusive_output`: flock on a hidden
    ``.NAME.lock`` beside it, dropped by the kernel if the process dies) for the whole run, so two
    runs on one --out never both proceed: the second is an InputError at once. Folders made only
    to hold the lock file are removed again when the run made nothing in them."""
    folder = Path(run_dir).resolve()
    made = [p for p in [folder.parent, *folder.parent.parents] if not p.exists()]
    try:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(exclusive_output(folder))
            except OutputBusy:
                raise InputError(
                    f"{run_dir}: another run is using it; wait for that run to end, or choose another --out"
                ) from None
            except OSError as exc:
                raise InputError(f"{run_dir}: cannot lock the run folder ({exc.strerror or exc})") from None
            yield
    finally:
        if not folder.exists():
            for parent in made:  # deepest first
                with contextlib.suppress(OSError):
                    parent.rmdir()


def train(
    config: dict[str, Any], data_dir: str | Path, val_dir: str | Path | None, run_dir: str | Path, **options: Any
) -> TrainResult:
    """Check every input, then train; see `Trainer` for the options (device, resume,
    perceptual_weights, allow_unknown_weights, from_scratch, progress). The run folder is locked
    for the whole run (`run_lock`)."""
    validate_config(config)
    check_run_folder(run_dir, data_dir, val_dir)
    with run_lock(run_dir):
        return Trainer(config, data_dir, val_dir, run_dir, **options).run()
