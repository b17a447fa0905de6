"""The one imperative host loop: data, compiled steps, logging, checkpoints, report.

``run(config, workdir)`` trains every cross-validation fold (``config.folds``)
and seed (``config.seeds``), one run directory each (see ``run_directory``),
evaluates, and writes the report with mean (std) over all runs. Each run
follows ``train.schedule`` (one phase, or clean then adversarial, with early
stopping; ``arjax.training.schedule``). Restarting the same command resumes
each run in its latest phase from its latest checkpoint; a finished run is not
retrained. SIGTERM/SIGINT save a checkpoint and return.
"""

import dataclasses
import json
import logging
import math
import os
import time

import jax
import ml_collections
import numpy as np
import tqdm

from arjax import data as data_lib
from arjax import margins as margin_table
from arjax import methods
from arjax.config_lib import ConfigError, check_choice, check_range, to_json
from arjax.data import folds as folds_lib
from arjax.data.streaming import BatchStream
from arjax.evaluation import report as report_lib
from arjax.evaluation import suite
from arjax.evaluation.metrics import aggregate
from arjax.evaluation.run_evaluation import evaluate_run, run_scalars
from arjax.models import CONV_IMPLS, MODELS, build_model
from arjax.training import optim, parallel, schedule
from arjax.training.checkpoint import BestCheckpoint, Checkpointer, PreemptionFlag
from arjax.training.state import create_train_state
from arjax.training.step import compile_multi_step

log = logging.getLogger("arjax")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class Preempted(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The run received SIGTERM/SIGINT and saved a checkpoint."""


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks every section of an experiment config before any compute.

    Raises:
      ConfigError: naming the field and the valid choices or range.
    """
    check_choice(cfg, "data.name", data_lib.DATASETS)
    check_choice(cfg, "model.name", MODELS)
    if "conv_impl" in cfg.model:
        check_choice(cfg, "model.conv_impl", CONV_IMPLS)
    methods.validate(cfg)
    optim.validate(cfg)
    suite.validate(cfg)
    schedule.validate(cfg)
    folds_lib.validate(cfg)
    for field in ("batch_size", "num_epochs", "steps_per_call"):
        check_range(cfg, f"train.{field}", 1, integer=True)
    for field in ("log_every", "eval_every", "checkpoint_every", "num_workers"):
        check_range(cfg, f"train.{field}", 0, integer=True)
    check_range(cfg, "eval.max_examples", 0, integer=True)
    if cfg.train.select_best not in ("", "val/loss"):
        raise ConfigError(
            f"unknown train.select_best {cfg.train.select_best!r}; valid choices: '', 'val/loss'"
        )
    if cfg.train.select_best and not cfg.train.eval_every:
        raise ConfigError("train.select_best needs train.eval_every > 0 (validation evaluations)")
    if not len(cfg.seeds):
        raise ConfigError("seeds is empty; give at least one seed, e.g. seeds=(0,)")


@dataclasses.dataclass
class _Writer:
    """Append-only ``metrics.jsonl``; readers keep the last record per (kind, step)."""

    path: str

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")


def _check_workdir_config(workdir: str, cfg: ml_collections.ConfigDict) -> None:
    """Writes ``config.json``; refuses to resume a run made with another config."""
    path = os.path.join(workdir, "config.json")
    text = to_json(cfg)
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if old != text:
            old_flat = _flatten(json.loads(old))
            new_flat = _flatten(json.loads(text))
            keys = old_flat.keys() | new_flat.keys()
            diff = sorted(k for k in keys if old_flat.get(k) != new_flat.get(k))
            raise ConfigError(
                f"{path} holds a run with a different config (fields {diff[:6]}); "
                "use another --workdir or delete that one"
            )
        return
    with open(path, "w") as f:
        f.write(text)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _boundary(step: int, every: int, total: int) -> int:
    """The next step > ``step`` that is a multiple of ``every`` (or ``total``)."""
    if every <= 0:
        return total
    return min(total, (step // every + 1) * every)


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
    os.makedirs(workdir, exist_ok=True)
    result_path = os.path.join(workdir, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    tcfg = cfg.train
    mesh = parallel.make_mesh(tcfg.get("num_devices", 0))
    if tcfg.batch_size % mesh.size:
        raise ConfigError(
            f"train.batch_size={tcfg.batch_size} must be divisible by the {mesh.size} devices"
        )
    try:
        model, params, batch_stats = build_model(
            cfg.model, dataset.input_shape, dataset.num_classes, seed
        )
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
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
    return evaluate_run(
        cfg, dataset, model, state, workdir, seed=seed, mesh=mesh, info=info, filename="result.json"
    )


def _train_phase(
    cfg: ml_collections.ConfigDict,
    phase: schedule.Phase,
    seed: int,
    dataset: data_lib.DatasetSplits,
    model,
    init: tuple,
    mesh,
    *,
    init_from: str,
    preempted: PreemptionFlag,
    progress: bool,
    label: str,
) -> _PhaseOutcome:
    """Trains (or resumes, or just restores a finished) ``phase``: the host loop.

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
    train = dataset.splits["train"]
    spe = data_lib.steps_per_epoch(data_lib.split_length(train), tcfg.batch_size)
    total = spe * phase.num_epochs
    params, batch_stats = init
    tx = optim.make_optimizer(cfg.optim, total, params)
    uses_margins = methods.METHODS[phase.method.name].uses_margins
    table = (
        margin_table.init_margins(data_lib.split_length(train), phase.method.delta)
        if uses_margins
        else None
    )
    state = parallel.put_replicated(
        create_train_state(params, batch_stats, tx, seed, margins=table), mesh
    )
    ckpt = Checkpointer(phase.checkpoint_dir, tcfg.get("max_checkpoints", 2))
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state)
        log.info("resumed %s from step %d", phase.checkpoint_dir, ckpt.latest_step())
    elif init_from:
        state = _init_from(init_from, state, seed)
    step = int(state.step)
    writer = _Writer(os.path.join(phase.directory, "metrics.jsonl"))
    best = BestCheckpoint(phase.directory, tcfg.get("select_best", ""))

    def finished() -> bool:
        return step >= total or schedule.should_stop(
            step, best.step, phase.patience, tcfg.eval_every
        )

    stream = None
    bar = tqdm.tqdm(total=total, initial=step, disable=not progress, unit="step", desc=label)
    try:
        if not finished():
            loss_fn = methods.make_loss(phase.method, model, dataset.bounds)
            multi_step = compile_multi_step(loss_fn, tx, mesh)
            ds = data_lib.train_dataset(
                train,
                batch_size=tcfg.batch_size,
                seed=seed,
                num_epochs=phase.num_epochs,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
            stream = BatchStream(ds, step, tcfg.get("num_workers", 0))
        k = tcfg.steps_per_call
        stacked = parallel.batch_sharding(mesh, leading_axes=2)
        t_last, n_since = time.perf_counter(), 0
        while not finished():
            stop = min(
                step + k,
                _boundary(step, tcfg.log_every, total),
                _boundary(step, tcfg.eval_every, total),
                _boundary(step, tcfg.checkpoint_every, total),
            )
            n = stop - step
            host = [stream.next() for _ in range(n)]
            host += host[-1:] * (k - n)
            batches = jax.tree.map(lambda *a: np.stack(a), *host)
            valid = np.arange(k) < n
            state, m = multi_step(state, parallel.put_batch(batches, stacked), valid)
            m = {key: np.asarray(v)[:n] for key, v in jax.device_get(m).items()}
            bad = ~np.isfinite(m["loss"])
            if bad.any():
                first = step + int(np.argmax(bad)) + 1
                raise NonFiniteLossError(
                    f"non-finite loss {m['loss'][bad][0]} at step {first} "
                    f"(method {phase.method.name!r}, seed {seed}); last checkpoint: "
                    f"{ckpt.latest_step()}. Lower optim.learning_rate or check the data."
                )
            step = stop
            n_since += n
            bar.update(n)
            if tcfg.log_every and (step % tcfg.log_every == 0 or step == total):
                now = time.perf_counter()
                rate = n_since * tcfg.batch_size / max(now - t_last, 1e-9)
                means = {f"train/{key}": float(np.mean(v)) for key, v in m.items()}
                writer.write({"step": step, "epoch": step / spe, **means, "examples_per_s": rate})
                bar.set_postfix(loss=f"{means['train/loss']:.4f}", ex_s=f"{rate:,.0f}")
                t_last, n_since = now, 0
            if tcfg.eval_every and (step % tcfg.eval_every == 0 or step == total):
                split = "val" if "val" in dataset.splits else "test"
                ev = _validation_metrics(cfg, dataset, split, model, state, mesh)
                writer.write({"step": step, **{f"{split}/{k_}": v for k_, v in ev.items()}})
                best.offer(state, ev, step)
            if tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0:
                ckpt.save(state)
            if preempted:
                ckpt.save(state)
                ckpt.wait()
                raise Preempted(f"{preempted.signal}: saved step {step} in {phase.directory}")
        ckpt.save(state)
        ckpt.wait()
        summary = dict(
            max_steps=total,
            steps=step,
            early_stopped=step < total,
            best_step=best.step,
            best_val_loss=best.value if best.step is not None else None,
        )
        if best.enabled and best.step is not None:
            state = best.restore(state)
            log.info("%s: the best checkpoint is step %d", phase.name, best.step)
    finally:
        bar.close()
        ckpt.close()
        if stream is not None:
            stream.close()
        best.close()
    if phase.directory != phase.run_dir:  # phase 1 of two: its own curves
        records = report_lib.read_jsonl(os.path.join(phase.directory, "metrics.jsonl"))
        if records:
            path = os.path.join(phase.directory, "training_curves.png")
            report_lib.plot_training_curves(records, path)
    schedule.record(phase, summary)
    return _PhaseOutcome(state, step, best)


def _validation_metrics(cfg, dataset, split, model, state, mesh) -> dict:
    """Classification metrics (loss, accuracy, ...) of ``state`` on ``split``."""
    source = dataset.splits[split]
    logits, labels = suite.predict_split(
        model, state, source, batch_size=cfg.eval.batch_size, mesh=mesh
    )
    return suite.classification_metrics(logits, labels)


def _init_from(run_dir: str, state, seed: int):
    """Parameters and batch statistics of another run (its best, else latest, checkpoint).

    ``train.init_from``: fine-tune from another experiment's run (e.g. a
    clean model shared by several adversarial runs; ``train.schedule =
    "two_phase"`` does Khakzar's clean-then-adversarial schedule in one run).
    Step, optimiser state and margins start fresh.
    """
    if not os.path.isdir(run_dir):
        raise ConfigError(f"train.init_from={run_dir!r} is not a run directory")
    seed_dir = os.path.join(run_dir, f"seed_{seed}")
    run_dir = seed_dir if os.path.isdir(seed_dir) else run_dir
    for sub in ("best/checkpoints", "checkpoints"):
        path = os.path.join(run_dir, sub)
        if os.path.isdir(path):
            source = Checkpointer(path)
            if source.latest_step() is not None:
                try:
                    other = source.restore_matching(state, f"train.init_from={run_dir!r}")
                finally:
                    source.close()
                log.info("initialised from %s (step %s)", path, int(other.step))
                return state.replace(params=other.params, batch_stats=other.batch_stats)
            source.close()
    raise ConfigError(f"train.init_from={run_dir!r} holds no checkpoint")


def run(cfg: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict | None:
    """Runs an experiment end to end (all seeds) and writes its report.

    Args:
      cfg: experiment config (validated here, before any compute).
      workdir: output directory; an existing run there is resumed.
      progress: show progress bars.

    Returns:
      the report dict, or None when the run was preempted (a checkpoint was
      saved; rerun the same command to continue).
    """
    cfg = cfg.copy_and_resolve_references()
    methods.resolve(cfg)
    validate(cfg)
    os.makedirs(workdir, exist_ok=True)
    _check_workdir_config(workdir, cfg)
    num_folds = int(cfg.get("folds", 0))
    cv = cfg.get("cv", None) or {}
    try:
        datasets = folds_lib.fold_datasets(
            cfg.data,
            num_folds,
            mode=cv.get("mode", "kfold"),
            holdout=cv.get("holdout", "val"),
        )
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    for fold, dataset in enumerate(datasets):
        n_train = data_lib.split_length(dataset.splits["train"])
        if n_train < cfg.train.batch_size:
            where = f" in fold {fold} of folds={num_folds}" if num_folds else ""
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} exceeds the {n_train} training "
                f"examples{where}"
            )
    seeds = tuple(int(s) for s in cfg.seeds)
    preempted = PreemptionFlag()
    results = []
    try:
        for fold, dataset in enumerate(datasets):
            for seed in seeds:
                run_dir = run_directory(workdir, fold if num_folds else None, seed, len(seeds))
                result = train_seed(
                    cfg, seed, run_dir, dataset, preempted=preempted, progress=progress
                )
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
    report = _report(cfg, results)
    report_lib.write_json(os.path.join(workdir, "report.json"), report)
    for key, suffix in (("robust_curve", ""), ("robust_curve_l2", "_l2")):
        if key in results[0]:
            norm = results[0][key]["norm"]
            report_lib.plot_accuracy_vs_eps(
                {cfg.method.name: _curve_with_std(results, key)},
                os.path.join(workdir, f"accuracy_vs_eps{suffix}.png"),
                title=f"{cfg.get('name', '')} ({norm})",
            )
    return report


def run_directory(workdir: str, fold: int | None, seed: int, num_seeds: int) -> str:
    """Where one run lives: ``<workdir>[/fold_<k>][/seed_<s>]``.

    The fold level exists when cross-validating (``fold`` is not None), the
    seed level when there are several seeds; one fold and one seed train in
    ``workdir`` itself.
    """
    out = workdir if fold is None else os.path.join(workdir, f"fold_{fold}")
    return out if num_seeds == 1 else os.path.join(out, f"seed_{seed}")


_scalars = run_scalars


def _curve_with_std(results: list[dict], key: str = "robust_curve"):
    eps = np.asarray(results[0][key]["eps"], float)
    accs = np.asarray([r[key]["accuracy"] for r in results], float)
    std = accs.std(0, ddof=1) if len(results) > 1 else None
    return (eps, accs.mean(0), std)


def _report(cfg: ml_collections.ConfigDict, results: list[dict]) -> dict:
    """The experiment report: per-run results and mean (std) over all folds and seeds."""
    summary = aggregate([_scalars(r) for r in results])
    clean = summary.get("clean/accuracy", {}).get("mean", math.nan)
    adv = summary.get("adversarial/accuracy", {}).get("mean", math.nan)
    return {
        "name": cfg.get("name", ""),
        "method": cfg.method.name,
        "seeds": list(dict.fromkeys(r["seed"] for r in results)),
        "folds": list(dict.fromkeys(r["fold"] for r in results if "fold" in r)),
        "summary": summary,
        "mean_accuracy": (clean + adv) / 2,
        "runs": results,
    }
