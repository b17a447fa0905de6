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


def base_config() -> ml_collections.ConfigDict:
    """Every section an experiment config has, with neutral defaults.

    Config files start from this and change what their experiment needs::

        config = base_config()
        config.method = method_config("arfl", r=0.5, lam=0.5)

    Sections: ``data`` (dataset by name), ``model`` (network by name),
    ``method`` (training method by name, see ``arjax.methods``), ``optim``,
    ``train`` (batching, epochs, logging/eval/checkpoint intervals in steps,
    ``steps_per_call`` steps fused into one compiled call), ``eval`` (final
    evaluation: clean metrics, one attack at ``adv_eps`` for "adversarial
    accuracy", and the robust-accuracy-vs-eps curve).
    """
    from arjax.methods import method_config

    c = ml_collections.ConfigDict()
    c.name = ""
    c.seeds = (0,)
    c.data = dict(name="moons", sizes=dict(train=10000, test=1000), noise=0.2, seed=0)
    c.model = dict(name="mlp", hidden=(10, 10), activation="relu", layer_norm=False, num_outputs=0)
    c.method = method_config("standard")
    c.optim = dict(
        name="adam",
        learning_rate=1e-3,
        momentum=0.9,
        weight_decay=0.0,
        schedule="constant",
        warmup_steps=0,
    )
    c.train = dict(
        batch_size=128,
        num_epochs=10,
        steps_per_call=1,
        log_every=100,
        eval_every=0,
        checkpoint_every=1000,
        max_checkpoints=2,
        num_devices=0,
    )
    c.eval = dict(
        split="test",
        batch_size=1000,
        adv_attack="fgsm",
        adv_eps=0.2,
        num_steps=20,
        norm="linf",
        losses=("ce", "margin"),
        eps=(0.0, 0.05, 0.1, 0.2, 0.3),
        alpha=4.0,
    )
    return c
