"""Helpers for experiment configs: validation with messages that list choices.

Configs are data (DESIGN §3.8): ``configs/*.py`` return an
``ml_collections.ConfigDict``; code is chosen by registered name. Everything
here runs before any compilation so that a typo fails in milliseconds.
"""

import json
from collections.abc import Iterable
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config field has an unknown name or an out-of-range value."""


def get_path(cfg: ml_collections.ConfigDict, path: str) -> Any:
    """Returns ``cfg.a.b`` for ``path="a.b"``, or raises ConfigError naming it."""
    node = cfg
    for part in path.split("."):
        if not hasattr(node, "keys") or part not in node:
            raise ConfigError(f"config field {path!r} is missing")
        node = node[part]
    return node


def check_choice(cfg: ml_collections.ConfigDict, path: str, valid: Iterable[str]) -> str:
    """Checks that ``cfg.<path>`` is one of ``valid``."""
    valid = sorted(valid)
    value = get_path(cfg, path)
    if value not in valid:
        raise ConfigError(f"unknown {path} {value!r}; valid choices: {', '.join(map(str, valid))}")
    return value


def check_range(
    cfg: ml_collections.ConfigDict,
    path: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    integer: bool = False,
) -> float:
    """Checks ``lo <= cfg.<path> <= hi`` (``lo < ...`` when ``lo_open``)."""
    value = get_path(cfg, path)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path} must be a number, got {value!r}")
    if integer and int(value) != value:
        raise ConfigError(f"{path} must be an integer, got {value!r}")
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and value > hi
    if too_low or too_high:
        left = "(" if lo_open else "["
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ConfigError(f"{path}={value!r} is out of range; valid: {left}{lo_s}, {hi_s}]")
    return value


def to_json(cfg: ml_collections.ConfigDict) -> str:
    """Serialises a resolved config (tuples become lists)."""
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str)


# Deprecated aliases: the experiment presets moved to ``arjax.experiment.presets`` (the
# bottom layer must not know every method). Resolved only on access, so importing
# config_lib imports nothing above it.
_MOVED = ("base_config", "ima_experiment_method", "ima_image_config", "lesion_smoke")


def __getattr__(name: str) -> Any:
    """``arjax.config_lib.base_config`` & co. with a DeprecationWarning."""
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(
            f"arjax.config_lib.{name} moved to arjax.experiment.presets.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module("arjax.experiment.presets"), name)
    raise AttributeError(f"module 'arjax.config_lib' has no attribute {name!r}")
