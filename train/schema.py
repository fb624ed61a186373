"""What a training config may hold: every section, every key, its type and range.

`validate_config` runs before any training starts and before any file is written, so a typo
(``--set train.lrr=1e-4``), a value of the wrong type (``train.lr=abc``) or out of range
(``data.batch_size=0``, ``model.num_blocks=-3``) and a config without a required key are one
line (InputError, exit 2) instead of a traceback from deep inside torch, or a setting silently
ignored. The known keys are those of the recipes in `train/configs/` (and of the committed runs
under `train/runs/`); ``model.*`` is open-ended (the generator's constructor arguments, checked
when it is built), and ``degradation_real.*`` holds the keys of `train.degradations.DEFAULTS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from sr_deploy.errors import InputError

# A check returns None when the value is fine, else what was expected ("an integer >= 1").
Check = Callable[[Any], "str | None"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(low: int, nullable: bool = False) -> Check:
    expected = f"an integer >= {low}" + (" or null" if nullable else "")

    def check(value: Any) -> str | None:
        if value is None and nullable:
            return None
        return None if _is_int(value) and value >= low else expected

    return check


def number(
    low: float = -math.inf,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
    nullable: bool = False,
) -> Check:
    parts = []
    if low > -math.inf:
        parts.append(f"{'>' if open_low else '>='} {low:g}")
    if high < math.inf:
        parts.append(f"{'<' if open_high else '<='} {high:g}")
    expected = "a finite number" + (f" {' and '.join(parts)}" if parts else "") + (" or null" if nullable else "")

    def check(value: Any) -> str | None:
        if value is None and nullable:
            return None
        if not _is_number(value):
            return expected
        above = value > low if open_low else value >= low
        below = value < high if open_high else value <= high
        return None if above and below else expected

    return check


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def one_of(*choices: Any, nullable: bool = False) -> Check:
    expected = "one of " + ", ".join(str(c) for c in choices) + (" (or null)" if nullable else "")

    def check(value: Any) -> str | None:
        if value is None and nullable:
            return None
        return None if isinstance(value, (str, bool)) and value in choices else expected

    return check


def text(nullable: bool = False) -> Check:
    expected = "a string" + (" or null" if nullable else "")

    def check(value: Any) -> str | None:
        if value is None and nullable:
            return None
        return None if isinstance(value, str) and value.strip() else expected

    return check


def betas(value: Any) -> str | None:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(b) and 0 <= b < 1 for b in value)
    return None if ok else "two numbers in [0, 1), e.g. [0.9, 0.999]"


def numbers(low: float = 0.0) -> Check:
    def check(value: Any) -> str | None:
        if value is None:
            return None
        ok = isinstance(value, (list, tuple)) and all(_is_number(v) and v >= low for v in value)
        return None if ok else f"a list of numbers >= {low:g}"

    return check


def amp(value: Any) -> str | None:
    return None if isinstance(value, bool) or value == "bf16" else "true, false or bf16"


def layer_weights(value: Any) -> str | None:
    if value is None:
        return None
    ok = isinstance(value, dict) and value and all(isinstance(k, str) and _is_number(v) for k, v in value.items())
    return None if ok else "a mapping of layer name to weight, e.g. {conv5_3: 1.0}"


def degrade_spec(value: Any) -> str | None:
    """``val.degrade``: null or an `sr-deploy eval --degrade` spec (checked by its parser)."""
    if value is None:
        return None
    if not isinstance(value, str):
        return "an eval --degrade spec such as jpeg=40, or null"
    from sr_deploy.degrade import parse_degradation

    try:
        parse_degradation(value)
    except InputError as exc:
        return f"an eval --degrade spec such as jpeg=40 ({exc})"
    return None


WEIGHT = number(0.0)
# Kept equal to train.data.DEGRADATIONS and train.discriminators.DISCRIMINATORS (a test checks),
# so that checking a config does not import torch.
DEGRADATIONS = ("bicubic", "gaussian", "realesrgan")
DISCRIMINATORS = ("srgan", "vgg", "unet")

# section -> key -> (check, required). Sections whose value may be null are in NULLABLE_SECTIONS.
SECTIONS: dict[str, dict[str, tuple[Check, bool]]] = {
    "data": {
        "crop_size": (integer(1), True),
        "degradation": (one_of(*DEGRADATIONS), True),
        "blur_sigma": (number(0.0, open_low=True), False),
        "quantize_lr": (boolean, False),
        "usm_gt": (boolean, False),
        "augment": (boolean, False),
        "batch_size": (integer(1), True),
        "workers": (integer(0, nullable=True), False),
        "max_images": (integer(1, nullable=True), False),
    },
    "train": {
        "iterations": (integer(1), True),
        "lr": (number(0.0, open_low=True), True),
        "betas": (betas, True),
        "weight_decay": (number(0.0, nullable=True), False),
        "schedule": (one_of("none", "multistep", "cosine", nullable=True), False),
        "milestones": (numbers(0.0), False),
        "gamma": (number(0.0, open_low=True), False),
        "min_lr": (number(0.0, nullable=True), False),
        "ema_decay": (number(0.0, 1.0, open_high=True, nullable=True), False),
        "amp": (amp, False),
        "grad_clip": (number(0.0, open_low=True, nullable=True), False),
    },
    "discriminator": {
        "arch": (one_of(*DISCRIMINATORS), True),
        "num_features": (integer(1), False),
        "lr": (number(0.0, open_low=True), False),
        "betas": (betas, False),
        "steps": (integer(1), False),
    },
    "val": {
        "every": (integer(1), True),
        "max_images": (integer(1, nullable=True), False),
        "degrade": (degrade_spec, False),
        "lpips": (boolean, False),
    },
    "log": {"every": (integer(1), True)},
    "checkpoint": {"every": (integer(1), True)},
}
NULLABLE_SECTIONS = frozenset({"discriminator", "degradation_real"})

# losses.NAME: null, or a mapping of these keys; `example` is what the error message shows.
LOSSES: dict[str, tuple[dict[str, tuple[Check, bool]], str]] = {
    "pixel": ({"type": (one_of("mse", "l1"), True), "weight": (WEIGHT, True)}, "{type: l1, weight: 1.0}"),
    "perceptual": (
        {
            "network": (text(), False),
            "layers": (layer_weights, False),
            "layer": (text(), False),
            "before_activation": (boolean, False),
            "criterion": (one_of("mse", "l1"), False),
            "rescale": (number(0.0, open_low=True), False),
            "weight": (WEIGHT, True),
        },
        "{network: vgg16, layers: {conv5_3: 1.0}, criterion: l1, rescale: 1.0, weight: 1.0}",
    ),
    "adversarial": ({"type": (one_of("gan", "ragan"), True), "weight": (WEIGHT, True)}, "{type: gan, weight: 0.1}"),
    "artifact": ({"weight": (WEIGHT, True), "kernel": (integer(1), False)}, "{weight: 1.0, kernel: 7}"),
    "lpips": ({"network": (text(), False), "weight": (WEIGHT, False)}, "{network: vgg, weight: 1.0}"),
}

# The model's constructor arguments that every architecture reads as counts.
MODEL_COUNTS = ("scale", "num_blocks", "num_features", "growth_channels")

TOP_LEVEL = ("recipe", "seed", "init", "model", *SECTIONS, "losses", "degradation_real")
REQUIRED_SECTIONS = ("model", "data", "train", "losses", "val", "log", "checkpoint")


def _listing(keys: Any) -> str:
    return ", ".join(sorted(keys))


class _Checker:
    """Collects the first problem, naming where the bad value came from: the --set (or --iters...)
    option that gave it when `origins` knows the key, else the config file."""

    def __init__(self, source: str, origins: dict[str, str]) -> None:
        self.source = source
        self.origins = origins

    def where(self, key: str) -> str:
        for prefix in (key, *(key.rsplit(".", n)[0] for n in range(1, key.count(".") + 1))):
            if prefix in self.origins:
                return self.origins[prefix]
        return self.source

    def fail(self, key: str, message: str) -> None:
        raise InputError(f"{self.where(key)}: {message}")

    def value(self, key: str, value: Any, check: Check) -> None:
        expected = check(value)
        if expected is not None:
            self.fail(key, f"{key} {value!r}: expected {expected}")

    def mapping(self, name: str, node: dict[str, Any], keys: dict[str, tuple[Check, bool]]) -> None:
        unknown = [k for k in node if k not in keys]
        if unknown:
            key = f"{name}.{unknown[0]}"
            self.fail(key, f"no setting {key!r} (the settings of {name}: {_listing(keys)})")
        for key, (check, required) in keys.items():
            if key not in node:
                if required:
                    self.fail(
                        f"{name}.{key}", f"{name}.{key} is missing (a config needs every key of the recipe's YAML)"
                    )
                continue
            self.value(f"{name}.{key}", node[key], check)


def validate_config(config: Any, source: str = "config", origins: dict[str, str] | None = None) -> None:
    """InputError (one line) unless `config` is a complete, well-typed training config.

    `source` names where it was read (the YAML file), `origins` maps the dotted keys set on the
    command line to the option that set them (``{"train.lr": "--set train.lr=abc"}``), so that the
    message names what to fix.
    """
    c = _Checker(source, origins or {})
    if not isinstance(config, dict):
        raise InputError(f"{source}: expected a mapping of settings at the top level")
    unknown = [k for k in config if k not in TOP_LEVEL]
    if unknown:
        c.fail(str(unknown[0]), f"no top-level setting {unknown[0]!r} (settings: {_listing(TOP_LEVEL)})")
    for section in REQUIRED_SECTIONS:
        if section not in config:
            c.fail(section, f"section {section!r} is missing (a config needs every section of the recipe's YAML)")
    c.value("recipe", config.get("recipe"), text(nullable=True))
    c.value("seed", config.get("seed"), integer(0, nullable=True))
    c.value("init", config.get("init"), text(nullable=True))
    for section in (*SECTIONS, "losses", "degradation_real", "model"):
        node = config.get(section)
        if node is None and section in NULLABLE_SECTIONS:
            continue
        if not isinstance(node, dict):
            c.fail(section, f"{section} {node!r}: expected a mapping of settings")
    for section, keys in SECTIONS.items():
        if config.get(section) is not None:
            c.mapping(section, config[section], keys)
    _check_model(c, config["model"])
    _check_losses(c, config["losses"])
    _check_degradation_real(c, config.get("degradation_real"))
    train_cfg, data_cfg = config["train"], config["data"]
    if train_cfg.get("schedule") == "multistep" and "gamma" not in train_cfg:
        c.fail("train.gamma", "train.gamma is missing (the multistep schedule needs it)")
    if data_cfg["degradation"] == "realesrgan" and config.get("degradation_real") is None:
        c.fail("data.degradation", "data.degradation realesrgan needs a degradation_real section (see realesrgan.yaml)")


def _check_model(c: _Checker, model: dict[str, Any]) -> None:
    from sr_deploy.models import ARCHITECTURES

    if "arch" not in model:
        c.fail("model.arch", "model.arch is missing")
    c.value("model.arch", model["arch"], one_of(*sorted(ARCHITECTURES)))
    for key in MODEL_COUNTS:
        if key in model:
            c.value(f"model.{key}", model[key], integer(1))


def _check_losses(c: _Checker, losses: dict[str, Any]) -> None:
    unknown = [k for k in losses if k not in LOSSES]
    if unknown:
        key = f"losses.{unknown[0]}"
        c.fail(key, f"no loss {key!r} (the losses: {_listing(LOSSES)})")
    for name, (keys, example) in LOSSES.items():
        node = losses.get(name)
        if node is None:
            continue
        if not isinstance(node, dict):
            c.fail(f"losses.{name}", f"losses.{name} {node!r}: expected {example} or null")
        c.mapping(f"losses.{name}", node, keys)


def _check_degradation_real(c: _Checker, real: dict[str, Any] | None) -> None:
    if real is None:
        return
    from .degradations import DEFAULTS

    unknown = [k for k in real if k not in DEFAULTS]
    if unknown:
        key = f"degradation_real.{unknown[0]}"
        c.fail(key, f"no setting {key!r} (the settings of degradation_real: {_listing(DEFAULTS)})")
    for key, value in real.items():
        default = DEFAULTS[key]
        if isinstance(default, list):
            ok = isinstance(value, list) and len(value) > 0
            if ok and all(_is_number(d) for d in default):
                ok = all(_is_number(v) for v in value)
            if not ok:
                c.fail(f"degradation_real.{key}", f"degradation_real.{key} {value!r}: expected a list like {default}")
        elif key.endswith("_prob"):
            c.value(f"degradation_real.{key}", value, number(0.0, 1.0))
        else:
            c.value(f"degradation_real.{key}", value, number())


def check_recipe(config: dict[str, Any], recipe: str, source: str, resume: bool) -> None:
    """InputError when the config was written for another recipe than the command line's: a
    --config of another recipe, or --resume of a run that another recipe made."""
    saved = config.get("recipe")
    if saved is None or saved == recipe:
        return
    if resume:
        raise InputError(
            f"{source}: this run was made by the {saved} recipe, not {recipe}: "
            f"resume it with python -m train {saved} ... --resume"
        )
    raise InputError(
        f"{source}: recipe: {saved} in the config, but the command line names {recipe}: "
        "name the config's recipe, or change its recipe: line"
    )
