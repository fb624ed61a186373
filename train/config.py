"""Recipe configs: YAML files in `train/configs/`, overridden by ``--set dotted.key=value``.

A config is a plain nested dict. Every recipe file holds every key (no hidden defaults elsewhere),
so the YAML is the full description of a run; the trainer copies the resolved config into
RUN_DIR/config.yaml, which `--resume` reads back.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

from sr_deploy.errors import InputError
from sr_deploy.util.text import first_line

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
RECIPES = ("srresnet", "srgan", "esrgan_psnr", "esrgan", "realesrnet", "realesrgan")


def recipe_path(recipe: str) -> Path:
    """The bundled YAML file of `recipe` (one of `RECIPES`)."""
    if recipe not in RECIPES:
        raise InputError(f"{recipe}: unknown recipe; expected one of {', '.join(RECIPES)}")
    return CONFIG_DIR / f"{recipe}.yaml"


def _yaml():
    """PyYAML, imported on first use so that ``python -m train --help`` works without the
    `train` extra; InputError naming the extra when it is missing."""
    try:
        import yaml
    except ModuleNotFoundError:
        raise InputError("PyYAML is not installed: pip install 'sr-deploy[train]' to train") from None
    return yaml


# What YAML 1.1 leaves a string but YAML 1.2 (and everyone typing a command line) reads as a
# float: an exponent without a dot in the mantissa ("1e-4", "5E3").
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


@functools.cache
def _loader() -> type:
    """PyYAML's SafeLoader with `_EXPONENT_FLOAT` resolved as a float (made once)."""
    yaml = _yaml()

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))
    return Loader


def _parse_yaml(text: str) -> Any:
    """`yaml.safe_load` with `_EXPONENT_FLOAT` read as a float, at any depth."""
    return _yaml().load(text, Loader=_loader())  # a SafeLoader subclass: no arbitrary objects


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a nested dict; InputError names the file on failure."""
    yaml = _yaml()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such config file")
    try:
        data = _parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({first_line(exc, limit=160)})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of settings at the top level")
    return data


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `config` with each ``dotted.key=value`` applied; the value is parsed as YAML
    (``8`` -> int, ``false`` -> bool, ``[1, 2]`` -> list, ``null`` -> None, else a string), and
    ``1e-4`` is a float, also inside a list (YAML 1.1 wants ``1.0e-4``; nobody types that).

    A key whose parent section does not exist is an InputError (catches typos such as
    ``modle.num_blocks``); a new leaf inside an existing section is set here, and
    `train.schema.validate_config` then refuses it unless the section knows it (``model.*`` is
    open-ended: the generator's constructor arguments).
    """
    yaml = _yaml()
    out = copy.deepcopy(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item}: expected key=value, e.g. --set model.num_blocks=8")
        try:
            value = _parse_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                known = (
                    ", ".join(sorted(k for k, v in node.items() if isinstance(v, dict)))
                    if isinstance(node, dict)
                    else ""
                )
                where = ".".join(parts[: depth + 1])
                raise InputError(f"--set {item}: no config section {where!r} (sections: {known})")
            node = node[part]
        if len(parts) == 1 and parts[0] not in out:
            raise InputError(f"--set {item}: no top-level setting {key!r} (settings: {', '.join(sorted(out))})")
        node[parts[-1]] = value
    return out


def changed_settings(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{"dotted.key": (old value, new value)}`` for every leaf that differs between two configs
    (a resumed run's config.yaml and the one it goes on with), in `new`'s order; a missing leaf
    reads None."""
    changes: dict[str, tuple[Any, Any]] = {}
    for key in dict.fromkeys([*new, *old]):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes |= changed_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            changes[f"{prefix}{key}"] = (a, b)
    return changes


def get(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """`config["a"]["b"]` for ``"a.b"``, or `default` where a part is missing or None."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            return default
        node = node[part]
    return node
