"""The one imperative host loop: data, compiled steps, logging, checkpoints, report.

``run(config, workdir)`` trains every cross-validation fold (``config.folds``)
and seed (``config.seeds``), one run directory each (see
``arjax.experiment.workdir.run_directory``),
evaluates, and writes the report with mean (std) over all runs. Each run
follows ``train.phases`` (one phase, or clean then adversarial, with early
stopping; ``arjax.experiment.phases``). Restarting the same command resumes
each run in its latest phase from its latest checkpoint; a finished run is not
retrained. SIGTERM/SIGINT save a checkpoint and return.

One setup path serves the runs trained one after another and the seeds stacked into one
vmapped state (``train.vmap_seeds``, :mod:`arjax.experiment.stacked`): :func:`train_runs`.
"""

import dataclasses
import logging
import os
from collections.abc import Sequence

import jax
import ml_collections
import tqdm

from arjax import compilation_cache, faults, parallel
from arjax import data as data_lib
from arjax.config_lib import ConfigError, check_choice, check_range
from arjax.data import folds as folds_lib
from arjax.evaluation import report as report_lib
from arjax.evaluation import suite
from arjax.experiment import evals as evals_lib
from arjax.experiment import phases as phases_lib
from arjax.experiment import setup, stacked, summary
from arjax.experiment import workdir as workdir_lib
from arjax.experiment.final_eval import evaluate_trained
from arjax.experiment.migrate import migrate
from arjax.experiment.phase_loop import NonFiniteLossError, PhaseLoop, Preempted, run_slice
from arjax.models import CONV_IMPLS, DTYPES, MODELS
from arjax.training import optim
from arjax.training.checkpoint import Checkpointer, PreemptionFlag

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
    method = setup.build_method(cfg)
    optim.validate(cfg)
    suite.validate(cfg)
    phases_lib.validate(cfg, method)
    stacked.validate(cfg, method)
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
class _Runs:
    """What :func:`train_runs` builds once: the runs' model, evaluators and best policy."""

    cfg: ml_collections.ConfigDict
    seeds: tuple[int, ...]
    run_dirs: list[str]
    dataset: data_lib.DatasetSplits
    mesh: jax.sharding.Mesh
    stacked: bool
    evaluators: dict
    policy: evals_lib.BestPolicy


def train_runs(
    cfg: ml_collections.ConfigDict,
    seeds: Sequence[int],
    run_dirs: list[str],
    dataset: data_lib.DatasetSplits,
    *,
    stacked_runs: bool = False,
    preempted: PreemptionFlag,
    progress: bool = True,
) -> list[dict]:
    """Trains (or resumes) ``seeds`` and returns each run's evaluation (``result.json``).

    The phases come from ``train.phases`` (``arjax.experiment.phases``): one, or
    Khakzar's clean phase then adversarial fine-tuning from the best clean state. A
    restart resumes the latest phase with a checkpoint; a finished run (``result.json``)
    is not retrained. With ``stacked_runs`` the seeds train as one vmapped state
    (``train.vmap_seeds``, one phase; a restart restores every seed at the newest step
    all of them saved); else there is one seed.

    Args:
      cfg: the validated experiment config.
      seeds: the runs' seeds (model initialisation, data order, attack randomness).
      run_dirs: each run's directory.
      dataset: the loaded splits.
      stacked_runs: train the seeds as one stacked state.
      preempted: set by SIGTERM; the loop then saves and raises ``Preempted``.
      progress: show a progress bar.
    """
    done = [setup.finished_result(d) for d in run_dirs]  # also creates the directories
    if all(r is not None for r in done):
        return done
    mesh = parallel.make_mesh(cfg.train.get("num_devices", 0))  # validate() checked the batch
    evaluators, policy = evals_lib.build(cfg, dataset.splits)
    runs = _Runs(cfg, tuple(seeds), run_dirs, dataset, mesh, stacked_runs, evaluators, policy)
    method = setup.build_method(cfg)
    plans = [phases_lib.plan(cfg, method, d) for d in run_dirs]
    built = [setup.make_model(cfg, dataset, seed) for seed in seeds]
    model = built[0][0]
    for _, params, batch_stats in built:
        method.check_model(model, params, batch_stats)
    inits = [(params, batch_stats) for _, params, batch_stats in built]
    start = phases_lib.resume_index(plans[0])
    for i in range(start, len(plans[0])):
        states, loop = _train_phase(
            runs, [plan[i] for plan in plans], model, inits, first=i == 0, preempted=preempted,
            progress=progress, label=_label(seeds, stacked_runs, plans[0], i),
        )  # fmt: skip
        inits = [(s.params, s.batch_stats) for s in states]  # the next phase starts here
        for j, (plan, phase_summary) in enumerate(zip(plans, loop.summaries, strict=True)):
            if done[j] is None:
                phases_lib.record(plan[i], phase_summary)
    results = []
    for j, (seed, run_dir) in enumerate(zip(seeds, run_dirs, strict=True)):
        if done[j] is not None:
            results.append(done[j])
            continue
        info = {"steps": loop.step}
        best = loop.bests[j]
        if best.enabled:
            info["selected_step"] = best.step if best.step is not None else loop.step
        result = evaluate_trained(
            cfg, dataset, model, states[j], run_dir, seed=seed, mesh=mesh, info=info
        )
        results.append(result)
    return results


def _label(seeds, stacked_runs: bool, plan: list, i: int) -> str:
    """The progress bar's description: ``seed 0 adversarial``, ``seeds 0, 1 (vmapped)``."""
    if stacked_runs:
        return f"seeds {', '.join(map(str, seeds))} (vmapped)"
    return f"seed {seeds[0]}" + (f" {plan[i].name}" if len(plan) > 1 else "")


def _train_phase(runs: _Runs, phases, model, inits, *, first, preempted, progress, label):
    """Trains (or resumes, or just restores a finished) one phase of every run.

    Returns:
      ``(states, loop)``: each run's final state (its best one when ``train.best`` keeps
      one) and the phase's loop (steps, best trackers, summaries).
    """
    cfg, mesh = runs.cfg, runs.mesh
    likes, tx = [], None
    for seed, phase, init in zip(runs.seeds, phases, inits, strict=True):
        state, tx = setup.initial_state(
            cfg, runs.dataset, *init, seed, mesh, method=phase.method, num_epochs=phase.num_epochs
        )
        likes.append(state)
    max_keep = cfg.train.get("max_checkpoints", 2)
    ckpts = [Checkpointer(p.checkpoint_dir, max_keep) for p in phases]
    if runs.stacked:
        restored = stacked.restore_common(ckpts, likes)
    else:
        restored = [ckpts[0].restore_newest_good(likes[0])]
        restored = None if restored[0] is None else restored
    if restored is not None:
        log.info("resumed %s from step %d", phases[0].checkpoint_dir, int(restored[0].step))
    init_from = cfg.train.get("init_from", "") if first else ""
    states = restored or likes
    if restored is None and init_from:
        states = [
            setup.init_from(init_from, s, seed) for s, seed in zip(states, runs.seeds, strict=True)
        ]
    state = stacked.stack(states, mesh) if runs.stacked else states[0]
    start = int(jax.device_get(state.step).reshape(-1)[0])
    loop = PhaseLoop(
        cfg, phases, runs.seeds, runs.dataset, model, mesh, ckpts, start,
        evaluators=runs.evaluators, policy=runs.policy, stacked=runs.stacked,
    )  # fmt: skip
    bar = tqdm.tqdm(total=loop.total, initial=start, disable=not progress, unit="step", desc=label)
    try:
        state = loop.run(state, tx, bar, preempted)
        states = [run_slice(state, j) for j in range(len(runs.seeds))] if runs.stacked else [state]
        for j, best in enumerate(loop.bests):
            if best.enabled and best.step is not None:
                states[j] = best.restore(states[j])
                log.info("%s: the best checkpoint is step %d", phases[j].name, best.step)
    finally:
        bar.close()
        loop.close()
    for phase in phases:
        if phase.directory != phase.run_dir:  # phase 1 of two: its own curves
            records = report_lib.read_jsonl(os.path.join(phase.directory, "metrics.jsonl"))
            if records:
                path = os.path.join(phase.directory, "training_curves.png")
                report_lib.plot_training_curves(records, path)
    return states, loop


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
    cfg = migrate(cfg.copy_and_resolve_references())
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
    evals_lib.build(cfg, datasets[0].splits)  # evaluators and best metric, before compute
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
            kw = dict(preempted=preempted, progress=progress)
            if cfg.train.get("vmap_seeds", False):
                fold_results = train_runs(cfg, seeds, run_dirs, dataset, stacked_runs=True, **kw)
            else:
                fold_results = [
                    train_runs(cfg, [seed], [run_dir], dataset, **kw)[0]
                    for seed, run_dir in zip(seeds, run_dirs, strict=True)
                ]
            for run_dir, result in zip(run_dirs, fold_results, strict=True):
                if num_folds:
                    result["fold"] = fold
                phases = phases_lib.read_summary(run_dir)
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


__all__ = ["NonFiniteLossError", "Preempted", "run", "train_runs", "validate"]
