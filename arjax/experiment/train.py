"""The one imperative host loop: data, compiled steps, logging, checkpoints, report.

``run(config, workdir)`` trains every cross-validation fold (``config.folds``)
and seed (``config.seeds``), one run directory each (see
``arjax.experiment.workdir.run_directory``),
evaluates, and writes the report with mean (std) over all runs. Each run
follows ``train.schedule`` (one phase, or clean then adversarial, with early
stopping; ``arjax.training.schedule``). Restarting the same command resumes
each run in its latest phase from its latest checkpoint; a finished run is not
retrained. SIGTERM/SIGINT save a checkpoint and return.
"""

import dataclasses
import logging
import os

import jax
import ml_collections
import tqdm

from arjax import compilation_cache, faults, methods, parallel
from arjax import data as data_lib
from arjax.config_lib import ConfigError, check_choice, check_range
from arjax.data import folds as folds_lib
from arjax.evaluation import report as report_lib
from arjax.evaluation import suite
from arjax.experiment import setup, stacked, summary
from arjax.experiment import workdir as workdir_lib
from arjax.experiment.evaluate import evaluate_trained
from arjax.experiment.phase_loop import NonFiniteLossError, PhaseLoop, Preempted
from arjax.models import CONV_IMPLS, DTYPES, MODELS, ModelFns
from arjax.training import optim, schedule
from arjax.training.checkpoint import BestCheckpoint, Checkpointer, PreemptionFlag

log = logging.getLogger("arjax")


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks every section of an experiment config before any compute.

    Raises:
      ConfigError: naming the field and the valid choices or range.
    """
    check_choice(cfg, "data.name", data_lib.DATASETS)
    check_choice(cfg, "model.name", MODELS)
    if "conv_impl" in cfg.model:
        check_choice(cfg, "model.conv_impl", CONV_IMPLS)
    if "dtype" in cfg.model:
        check_choice(cfg, "model.dtype", DTYPES)
    methods.validate(cfg)
    optim.validate(cfg)
    suite.validate(cfg)
    schedule.validate(cfg)
    stacked.validate(cfg)
    folds_lib.validate(cfg)
    for field in ("batch_size", "num_epochs", "steps_per_call"):
        check_range(cfg, f"train.{field}", 1, integer=True)
    for field in ("log_every", "eval_every", "checkpoint_every", "num_workers", "prefetch"):
        check_range(cfg, f"train.{field}", 0, integer=True)
    check_range(cfg, "eval.max_examples", 0, integer=True)
    try:
        compilation_cache.cache_directory(cfg.train.get("compilation_cache", "auto"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.train.select_best not in ("", "val/loss"):
        raise ConfigError(
            f"unknown train.select_best {cfg.train.select_best!r}; valid choices: '', 'val/loss'"
        )
    if cfg.train.select_best and not cfg.train.eval_every:
        raise ConfigError("train.select_best needs train.eval_every > 0 (validation evaluations)")
    try:
        devices = parallel.make_mesh(cfg.train.get("num_devices", 0)).size
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.train.batch_size % devices:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} must be divisible by the {devices} "
            "devices (or set train.num_devices)"
        )
    seeds = cfg.seeds if isinstance(cfg.seeds, tuple | list) else (cfg.seeds,)
    if not len(seeds) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"seeds={cfg.seeds!r} must be a non-empty tuple of integers, e.g. (0, 1)")


@dataclasses.dataclass
class _PhaseOutcome:
    """A phase's final state (its best, when selection is on), last step and best tracker."""

    state: object
    step: int
    best: BestCheckpoint


def train_seed(
    cfg: ml_collections.ConfigDict,
    seed: int,
    workdir: str,
    dataset: data_lib.DatasetSplits,
    *,
    preempted: PreemptionFlag,
    progress: bool = True,
) -> dict:
    """Trains (or resumes) one seed in ``workdir`` and returns its evaluation.

    The phases come from ``train.schedule`` (``arjax.training.schedule``):
    one, or Khakzar's clean phase then adversarial fine-tuning from the best
    clean state. A restart resumes the latest phase with a checkpoint; a
    finished run (``result.json``) is not retrained.

    Args:
      cfg: the validated experiment config.
      seed: model initialisation / shuffling / attack seed of this run.
      workdir: this run's directory.
      dataset: the loaded splits.
      preempted: set by SIGTERM; the loop then saves and raises ``Preempted``.
      progress: show a progress bar.

    Returns:
      the evaluation dict of the final state (also written to ``result.json``).
    """
    finished = setup.finished_result(workdir)
    if finished is not None:
        return finished
    tcfg = cfg.train
    mesh = parallel.make_mesh(tcfg.get("num_devices", 0))  # validate() checked the batch
    model, params, batch_stats = setup.make_model(cfg, dataset, seed)
    phases = schedule.plan(cfg, workdir)
    start = schedule.resume_index(phases)
    for i, phase in enumerate(phases[start:], start):
        outcome = _train_phase(
            cfg,
            phase,
            seed,
            dataset,
            model,
            (params, batch_stats),
            mesh,
            init_from=tcfg.get("init_from", "") if i == 0 else "",
            preempted=preempted,
            progress=progress,
            label=f"seed {seed}" + (f" {phase.name}" if len(phases) > 1 else ""),
        )
        # The next phase starts from this one's best parameters and statistics.
        params, batch_stats = outcome.state.params, outcome.state.batch_stats
    state, step, best = outcome.state, outcome.step, outcome.best

    info = {"steps": step}
    if best.enabled:
        info["selected_step"] = best.step if best.step is not None else step
    return evaluate_trained(cfg, dataset, model, state, workdir, seed=seed, mesh=mesh, info=info)


def _train_phase(
    cfg: ml_collections.ConfigDict,
    phase: schedule.Phase,
    seed: int,
    dataset: data_lib.DatasetSplits,
    model: ModelFns,
    init: tuple,
    mesh: jax.sharding.Mesh,
    *,
    init_from: str,
    preempted: PreemptionFlag,
    progress: bool,
    label: str,
) -> _PhaseOutcome:
    """Trains (or resumes, or just restores a finished) ``phase``.

    Args:
      cfg: the validated experiment config (``train``, ``optim``, ``eval``).
      phase: the phase (its method, length, patience and directories).
      seed: the run's seed.
      dataset: the loaded splits.
      model: the ``ModelFns`` from ``build_model``.
      init: ``(params, batch_stats)`` a fresh phase starts from.
      mesh: the device mesh.
      init_from: another run's workdir to take parameters from ("" for none).
      preempted: set by SIGTERM; the loop then saves and raises ``Preempted``.
      progress: show a progress bar.
      label: the progress bar's description.

    Returns:
      the phase's outcome; its state is the best one when ``train.select_best`` is on.
    """
    tcfg = cfg.train
    state, tx = setup.initial_state(
        cfg, dataset, *init, seed, mesh, method=phase.method, num_epochs=phase.num_epochs
    )
    ckpt = Checkpointer(phase.checkpoint_dir, tcfg.get("max_checkpoints", 2))
    restored = ckpt.restore_newest_good(state)
    if restored is not None:
        state = restored
        log.info("resumed %s from step %d", phase.checkpoint_dir, int(state.step))
    elif init_from:
        state = setup.init_from(init_from, state, seed)
    loop = PhaseLoop(cfg, [phase], [seed], dataset, model, mesh, [ckpt], int(state.step))
    bar = tqdm.tqdm(
        total=loop.total, initial=int(state.step), disable=not progress, unit="step", desc=label
    )
    try:
        state = loop.run(state, tx, bar, preempted)
        if loop.best.enabled and loop.best.step is not None:
            state = loop.best.restore(state)
            log.info("%s: the best checkpoint is step %d", phase.name, loop.best.step)
    finally:
        bar.close()
        loop.close()
    if phase.directory != phase.run_dir:  # phase 1 of two: its own curves
        records = report_lib.read_jsonl(os.path.join(phase.directory, "metrics.jsonl"))
        if records:
            path = os.path.join(phase.directory, "training_curves.png")
            report_lib.plot_training_curves(records, path)
    schedule.record(phase, loop.summaries[0])
    return _PhaseOutcome(state, loop.step, loop.best)


def run(cfg: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict | None:
    """Runs an experiment end to end (all folds and seeds) and writes its report.

    Args:
      cfg: experiment config (validated here, before any compute).
      workdir: output directory; an existing run there is resumed.
      progress: show progress bars.

    Returns:
      the report dict, or None when the run was preempted (a checkpoint was
      saved; rerun the same command to continue).

    Raises:
      ConfigError: a bad field or unreadable data, before any compute.
    """
    cfg = cfg.copy_and_resolve_references()
    methods.resolve(cfg)
    validate(cfg)
    finished = workdir_lib.read_only_report(workdir, cfg)
    if finished is not None:
        return finished
    workdir_lib.make_workdir(workdir)
    try:
        compilation_cache.enable(cfg.train.get("compilation_cache", "auto"), workdir)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    with workdir_lib.WorkdirLock(workdir):
        return _run_locked(cfg, workdir, progress)


def _run_locked(cfg: ml_collections.ConfigDict, workdir: str, progress: bool) -> dict | None:
    """:func:`run` once the config is valid and this process holds the workdir."""
    datasets = setup.load_folds(cfg)
    # Only now: a run that failed its checks must not block the corrected retry.
    workdir_lib.check_config(workdir, cfg)
    num_folds = int(cfg.get("folds", 0))
    seeds = tuple(int(s) for s in cfg.seeds)
    preempted = PreemptionFlag()
    results = []
    try:
        for fold, dataset in enumerate(datasets):
            run_dirs = [
                workdir_lib.run_directory(workdir, fold if num_folds else None, seed, len(seeds))
                for seed in seeds
            ]
            if cfg.train.get("vmap_seeds", False):
                fold_results = stacked.train_seeds(
                    cfg, seeds, run_dirs, dataset, preempted=preempted, progress=progress
                )
            else:
                fold_results = [
                    train_seed(cfg, seed, run_dir, dataset, preempted=preempted, progress=progress)
                    for seed, run_dir in zip(seeds, run_dirs, strict=True)
                ]
            for run_dir, result in zip(run_dirs, fold_results, strict=True):
                if num_folds:
                    result["fold"] = fold
                phases = schedule.read_summary(run_dir)
                if phases is not None:
                    result["schedule"] = phases
                results.append(result)
    except Preempted as e:
        log.warning("%s; rerun the same command to resume", e)
        return None
    finally:
        preempted.close()
    report = summary.experiment_report(cfg, results)
    faults.point("report")
    report_lib.write_json(os.path.join(workdir, "report.json"), report)
    for key, suffix in (("robust_curve", ""), ("robust_curve_l2", "_l2")):
        if key in results[0]:
            norm = results[0][key]["norm"]
            report_lib.plot_accuracy_vs_eps(
                {cfg.method.name: summary.curve_with_std(results, key)},
                os.path.join(workdir, f"accuracy_vs_eps{suffix}.png"),
                title=f"{cfg.get('name', '')} ({norm})",
            )
    return report


__all__ = ["NonFiniteLossError", "Preempted", "run", "train_seed", "validate"]
