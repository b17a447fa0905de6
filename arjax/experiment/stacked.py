"""All seeds of a run in one compiled program (``train.vmap_seeds=True``).

The papers' protocols are many small runs: ARFL's Table 1 is 6 rows x 5 seeds of
a 2-10-10-1 MLP for 5000 epochs (Hao et al. §4.1), each alone too small to keep
a CPU, let alone an accelerator, busy. With ``train.vmap_seeds`` the seeds of a
fold are stacked into one :class:`~arjax.training.state.TrainState` with a
leading ``[S]`` axis and trained by ``jax.vmap`` of the one-run step
(``compile_multi_step(..., stacked=True)``): one dispatch per call for all seeds.

Each seed keeps what it has when trained alone: its initialisation
(``build_model(..., seed)``), base key (attack / noise / dropout randomness), data
shuffle (``train_dataset(seed=seed)``), run directory, ``metrics.jsonl``,
checkpoints, ``result.json`` and report row; the numbers equal the sequential
runs' up to float rounding. A restart restores every seed at the newest step all
of them saved, and a finished seed is not evaluated again.

Supported with a single phase, without a best checkpoint (``train.best.metric``),
``train.init_from`` or a per-epoch method-state pass (IMA's ``margin_update="epoch"``);
:func:`validate` names the field otherwise. Evaluators run on every seed. The setup and
the loop are the sequential runs' (:func:`arjax.experiment.train.train_runs`); this
module holds what only the stacked layout needs.
"""

import logging

import jax
import jax.numpy as jnp
import ml_collections

from arjax import parallel
from arjax.config_lib import ConfigError
from arjax.methods import Method
from arjax.training.checkpoint import Checkpointer
from arjax.training.state import TrainState

log = logging.getLogger("arjax")


def validate(cfg: ml_collections.ConfigDict, method: Method) -> None:
    """Checks ``train.vmap_seeds`` against the features a stacked run cannot have.

    Raises:
      ConfigError: naming ``train.vmap_seeds`` and the conflicting field.
    """
    flag = cfg.train.get("vmap_seeds", False)
    if not isinstance(flag, bool):
        raise ConfigError(f"train.vmap_seeds={flag!r} must be True or False")
    if not flag:
        return
    conflicts = {
        "train.phases": cfg.train.get("phases", "single") != "single",
        "train.best.metric": bool(cfg.train.best.get("metric", "")),
        "train.init_from": bool(cfg.train.get("init_from", "")),
        "method.margin_update": method.refreshes_state,
    }
    for field, bad in conflicts.items():
        if bad:
            raise ConfigError(
                f"train.vmap_seeds=True cannot be combined with {field}={_get(cfg, field)!r} "
                "(each seed would stop or restart on its own); set train.vmap_seeds=False"
            )


def _get(cfg: ml_collections.ConfigDict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def stack(states: list[TrainState], mesh: jax.sharding.Mesh) -> TrainState:
    """``[S, ...]`` leaves from ``S`` states, replicated on ``mesh``."""
    stack = jax.jit(lambda *s: jax.tree.map(lambda *a: jnp.stack(a), *s))
    return parallel.put_replicated(stack(*states), mesh)


def restore_common(ckpts: list[Checkpointer], likes: list[TrainState]) -> list[TrainState] | None:
    """Every seed at the newest step all of them saved; None when none saved any.

    Raises:
      ConfigError: some seeds have checkpoints and no step is common to all.
    """
    steps = [set(c.manager.all_steps()) for c in ckpts]
    if not any(steps):
        return None
    common = set.intersection(*steps)
    if not common:
        raise ConfigError(
            f"train.vmap_seeds: the seeds' checkpoints share no step ({ckpts[0].directory}: "
            f"{sorted(steps[0])}, ...); delete the run directories or set train.vmap_seeds=False"
        )
    step = max(common)
    return [c.restore(like, step) for c, like in zip(ckpts, likes, strict=True)]
