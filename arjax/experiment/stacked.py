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

Supported with the single-phase schedule, without ``train.select_best``,
``train.patience``, ``train.init_from`` or the epoch-wise margin pass
(``margin_update="epoch"``); :func:`validate` names the field otherwise.
"""

import logging

import jax
import jax.numpy as jnp
import ml_collections
import tqdm

from arjax import data as data_lib
from arjax import parallel
from arjax.config_lib import ConfigError
from arjax.experiment import setup
from arjax.experiment.evaluate import evaluate_trained
from arjax.experiment.phase_loop import PhaseLoop, run_slice
from arjax.training import schedule
from arjax.training.checkpoint import Checkpointer, PreemptionFlag
from arjax.training.state import TrainState

log = logging.getLogger("arjax")


def validate(cfg: ml_collections.ConfigDict) -> None:
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
        "train.schedule": cfg.train.get("schedule", "single") != "single",
        "train.select_best": bool(cfg.train.get("select_best", "")),
        "train.patience": bool(cfg.train.get("patience", 0)),
        "train.init_from": bool(cfg.train.get("init_from", "")),
        "method.margin_update": cfg.method.get("margin_update", "batch") == "epoch",
    }
    for field, bad in conflicts.items():
        if bad:
            raise ConfigError(
                f"train.vmap_seeds=True cannot be combined with {field}={_get(cfg, field)!r} "
                "(each seed would stop or restart on its own); set train.vmap_seeds=False"
            )


def _get(cfg: ml_collections.ConfigDict, dotted: str):
    section, _, name = dotted.partition(".")
    return cfg[section][name]


def _stack(states: list[TrainState], mesh: jax.sharding.Mesh) -> TrainState:
    """``[S, ...]`` leaves from ``S`` states, replicated on ``mesh``."""
    stack = jax.jit(lambda *s: jax.tree.map(lambda *a: jnp.stack(a), *s))
    return parallel.put_replicated(stack(*states), mesh)


def _restore(ckpts: list[Checkpointer], likes: list[TrainState]) -> list[TrainState] | None:
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


def train_seeds(
    cfg: ml_collections.ConfigDict,
    seeds: tuple[int, ...],
    run_dirs: list[str],
    dataset: data_lib.DatasetSplits,
    *,
    preempted: PreemptionFlag,
    progress: bool = True,
) -> list[dict]:
    """Trains (or resumes) ``seeds`` as one stacked state; returns each seed's evaluation.

    Args:
      cfg: the validated experiment config (``train.vmap_seeds=True``).
      seeds: the seeds, one run each.
      run_dirs: each seed's run directory.
      dataset: the loaded splits.
      preempted: set by SIGTERM; the loop then saves every seed and raises ``Preempted``.
      progress: show a progress bar.

    Returns:
      the seeds' evaluation dicts, in ``seeds`` order (each also in its ``result.json``).
    """
    done = [setup.finished_result(d) for d in run_dirs]  # also creates the directories
    if all(r is not None for r in done):
        return done
    tcfg = cfg.train
    mesh = parallel.make_mesh(tcfg.get("num_devices", 0))
    phases = [schedule.plan(cfg, d)[0] for d in run_dirs]
    model, likes, tx = None, [], None
    for seed in seeds:
        model, params, batch_stats = setup.make_model(cfg, dataset, seed)
        state, tx = setup.initial_state(cfg, dataset, params, batch_stats, seed, mesh)
        likes.append(state)
    max_keep = tcfg.get("max_checkpoints", 2)
    ckpts = [Checkpointer(p.checkpoint_dir, max_keep) for p in phases]
    restored = _restore(ckpts, likes)
    if restored is not None:
        log.info("resumed seeds %s from step %d", seeds, int(restored[0].step))
    state = _stack(restored or likes, mesh)
    start = int(jax.device_get(state.step)[0])
    loop = PhaseLoop(cfg, phases, seeds, dataset, model, mesh, ckpts, start, stacked=True)
    label = f"seeds {', '.join(map(str, seeds))} (vmapped)"
    bar = tqdm.tqdm(total=loop.total, initial=start, disable=not progress, unit="step", desc=label)
    try:
        state = loop.run(state, tx, bar, preempted)
    finally:
        bar.close()
        loop.close()
    results = []
    for i, (seed, run_dir, phase) in enumerate(zip(seeds, run_dirs, phases, strict=True)):
        if done[i] is not None:
            results.append(done[i])
            continue
        schedule.record(phase, loop.summaries[i])
        result = evaluate_trained(
            cfg, dataset, model, run_slice(state, i), run_dir, seed=seed, mesh=mesh,
            info={"steps": loop.step},
        )  # fmt: skip
        results.append(result)
    return results
