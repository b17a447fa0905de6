"""Configs written for older arjax, read as today's: one place for renamed fields.

A config file a user wrote, and a workdir's ``config.json``, may use fields that were
renamed or folded into others since. :func:`migrate` rewrites them before anything
reads the config (``arjax-train``, ``arjax-evaluate``, ``arjax.load_run``, and the
comparison of a resumed run's config with its workdir's), so older configs and workdirs
keep working and the run's ``config.json`` is written in today's fields:

* ``train.select_best`` / ``train.patience`` -> ``train.best.metric`` / ``.patience``
  (``train.best`` keeps the best checkpoint by any evaluator's metric, either way);
* ``train.schedule`` -> ``train.phases`` (``"single"`` or ``"two_phase"``; "schedule"
  now means only the learning-rate schedule, ``optim.schedule``);
* no ``evals`` section -> ``evals = {}`` (the default classification evaluator).

The method section's older attack fields are read by ``arjax.methods.from_config``.
Nothing here imports jax.
"""

from typing import Any

import ml_collections

from arjax.config_lib import ConfigError

# Old field -> (today's field, what to write with ``--config.<today's>=...``).
RENAMED_FIELDS: dict[str, str] = {
    "train.select_best": "train.best.metric",
    "train.patience": "train.best.patience",
    "train.schedule": "train.phases",
}
BEST_DEFAULTS = {"metric": "", "mode": "min", "patience": 0}


def _move(old: str, new: str, value: Any, current: Any, default: Any) -> Any:
    """The value of ``new`` once the older field ``old`` (holding ``value``) is read into it.

    Raises:
      ConfigError: both are set, to different values.
    """
    if current != default and current != value:
        raise ConfigError(
            f"{old}={value!r} is the older name of {new}, which is set too ({current!r}); "
            f"keep only {new}"
        )
    return value


def migrate_dict(config: dict[str, Any]) -> dict[str, Any]:
    """A config as a plain dict (``config.json``), in today's fields; a new dict.

    Raises:
      ConfigError: an older field and its new name are both set, to different values.
    """
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    train = out.setdefault("train", {})
    best = {**BEST_DEFAULTS, **dict(train.get("best", {}) or {})}
    if "select_best" in train:
        metric = train.pop("select_best")
        best["metric"] = _move("train.select_best", "train.best.metric", metric, best["metric"], "")
    if "patience" in train:
        patience = train.pop("patience")
        best["patience"] = _move(
            "train.patience", "train.best.patience", patience, best["patience"], 0
        )
    train["best"] = best
    if "schedule" in train:
        phases = train.pop("schedule")
        current = train.get("phases", "single")
        train["phases"] = _move("train.schedule", "train.phases", phases, current, "single")
    train.setdefault("phases", "single")
    out.setdefault("evals", {})
    return out


def migrate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """An experiment config in today's fields (a new, unlocked ConfigDict)."""
    return ml_collections.ConfigDict(migrate_dict(cfg.to_dict()))
