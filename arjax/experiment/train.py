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
import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np
import tqdm

from arjax import data as data_lib
from arjax import faults, methods, parallel
from arjax.config_lib import ConfigError, check_choice, check_range
from arjax.data import folds as folds_lib
from arjax.data.streaming import BatchStream
from arjax.evaluation import report as report_lib
from arjax.evaluation import suite
from arjax.experiment import setup, summary
from arjax.experiment import workdir as workdir_lib
from arjax.experiment.evaluate import evaluate_run
from arjax.models import CONV_IMPLS, MODELS, ModelFns
from arjax.training import optim, schedule
from arjax.training.checkpoint import BestCheckpoint, Checkpointer, PreemptionFlag
from arjax.training.epoch_margins import EpochMargins
from arjax.training.state import TrainState
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
    return evaluate_run(
        cfg, dataset, model, state, workdir, seed=seed, mesh=mesh, info=info, filename="result.json"
    )


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
    loop = _PhaseLoop(cfg, phase, seed, dataset, model, mesh, ckpt, int(state.step))
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
    schedule.record(phase, loop.summary)
    return _PhaseOutcome(state, loop.step, loop.best)


class _PhaseLoop:
    """The imperative host loop of one phase: batches in, compiled steps, records out."""

    def __init__(self, cfg, phase, seed, dataset, model, mesh, ckpt: Checkpointer, start: int):
        self.cfg, self.phase, self.seed, self.dataset = cfg, phase, seed, dataset
        self.model, self.mesh, self.ckpt = model, mesh, ckpt
        train = dataset.splits["train"]
        self.spe = data_lib.steps_per_epoch(data_lib.split_length(train), cfg.train.batch_size)
        self.total = self.spe * phase.num_epochs
        metrics = os.path.join(phase.directory, "metrics.jsonl")
        self.writer = workdir_lib.MetricsWriter(metrics, resume_step=start)
        self.best = BestCheckpoint(phase.directory, cfg.train.get("select_best", ""))
        self.stream: BatchStream | None = None
        self.step = 0
        self.summary: dict = {}
        self.losses: list[float] = []  # the logged mean training losses of this process

    def finished(self) -> bool:
        """The phase has run its steps or stopped early (patience)."""
        return self.step >= self.total or schedule.should_stop(
            self.step, self.best.step, self.phase.patience, self.cfg.train.eval_every
        )

    def run(self, state: TrainState, tx, bar: tqdm.tqdm, preempted: PreemptionFlag) -> TrainState:
        """Trains from ``state`` to the phase's end; returns the last state (checkpointed)."""
        tcfg, phase = self.cfg.train, self.phase
        self.step = int(state.step)
        if not self.finished():
            loss_fn = methods.make_loss(phase.method, self.model, self.dataset.bounds)
            multi_step = compile_multi_step(loss_fn, tx, self.mesh)
            estimate = methods.make_margin_estimate(phase.method, self.model, self.dataset.bounds)
            margin_pass = EpochMargins(
                estimate, self.dataset.splits["train"], batch_size=tcfg.batch_size,
                mesh=self.mesh, steps_per_epoch=self.spe, batches_per_call=tcfg.steps_per_call,
            )  # fmt: skip
            ds = data_lib.train_dataset(
                self.dataset.splits["train"],
                batch_size=tcfg.batch_size,
                seed=self.seed,
                num_epochs=phase.num_epochs,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
            self.stream = BatchStream(ds, self.step, tcfg.get("num_workers", 0))
        t_last, n_since = time.perf_counter(), 0
        while not self.finished():
            stop = min(
                self.step + tcfg.steps_per_call,
                *(_boundary(self.step, tcfg[f], self.total) for f in _INTERVALS),
                margin_pass.next_boundary(self.step, self.total),
            )
            n = stop - self.step
            state, m = self._advance(multi_step, state, n)
            faults.point("step")
            self.step = stop
            state = margin_pass.after_steps(state, stop)  # IMA's Alg. 2 after an epoch
            n_since += n
            bar.update(n)
            if _due(self.step, tcfg.log_every, self.total):
                now = time.perf_counter()
                rate = n_since * tcfg.batch_size / max(now - t_last, 1e-9)
                means = {f"train/{key}": float(np.mean(v)) for key, v in m.items()}
                epoch = self.step / self.spe
                self.writer.write(
                    {"step": self.step, "epoch": epoch, **means, "examples_per_s": rate}
                )
                bar.set_postfix(loss=f"{means['train/loss']:.4f}", ex_s=f"{rate:,.0f}")
                self.losses.append(means["train/loss"])
                t_last, n_since = now, 0
            if _due(self.step, tcfg.eval_every, self.total):
                self._validate(state)
            if tcfg.checkpoint_every and self.step % tcfg.checkpoint_every == 0:
                self.ckpt.save(state)
            if preempted:
                self.ckpt.save(state)
                self.ckpt.wait()
                raise Preempted(f"{preempted.signal}: saved step {self.step} in {phase.directory}")
        self.ckpt.save(state)
        self.ckpt.wait()
        best = self.best
        self.summary = dict(
            max_steps=self.total,
            steps=self.step,
            early_stopped=self.step < self.total,
            best_step=best.step,
            best_val_loss=best.value if best.step is not None else None,
            diverged=summary.diverged(self.losses, f"{phase.name} (seed {self.seed})"),
        )
        return state

    def _advance(self, multi_step, state: TrainState, n: int) -> tuple[TrainState, dict]:
        """``n <= steps_per_call`` steps in one compiled call; per-step metrics ``[n]``."""
        k = self.cfg.train.steps_per_call
        host = [self.stream.next() for _ in range(n)]
        host += host[-1:] * (k - n)
        batches = jax.tree.map(lambda *a: np.stack(a), *host)
        valid = np.arange(k) < n
        stacked = parallel.batch_sharding(self.mesh, leading_axes=2)
        state, m = multi_step(state, parallel.put_batch(batches, stacked), valid)
        m = {key: np.asarray(v)[:n] for key, v in jax.device_get(m).items()}
        bad = ~np.isfinite(m["loss"])
        if bad.any():
            first = self.step + int(np.argmax(bad)) + 1
            raise NonFiniteLossError(
                f"non-finite loss {m['loss'][bad][0]} at step {first} "
                f"(method {self.phase.method.name!r}, seed {self.seed}); last checkpoint: "
                f"{self.ckpt.latest_step()}. Lower optim.learning_rate or check the data."
            )
        return state, m

    def _validate(self, state: TrainState) -> None:
        """Classification metrics on the validation split: a record and the best-state offer."""
        split = "val" if "val" in self.dataset.splits else "test"
        ev = _validation_metrics(self.cfg, self.dataset, split, self.model, state, self.mesh)
        self.writer.write({"step": self.step, **{f"{split}/{k}": v for k, v in ev.items()}})
        self.best.offer(state, ev, self.step)

    def close(self) -> None:
        """Closes the checkpointers and the batch stream."""
        self.ckpt.close()
        if self.stream is not None:
            self.stream.close()
        self.best.close()


def _validation_metrics(cfg, dataset, split, model, state, mesh) -> dict:
    """Classification metrics (loss, accuracy, ...) of ``state`` on ``split``."""
    logits, labels = suite.predict_split(
        model, state, dataset.splits[split], batch_size=cfg.eval.batch_size, mesh=mesh
    )
    return suite.classification_metrics(logits, labels)


_INTERVALS = ("log_every", "eval_every", "checkpoint_every")


def _due(step: int, every: int, total: int) -> bool:
    """A record is due at multiples of ``every`` (> 0) and at the last step."""
    return bool(every) and (step % every == 0 or step == total)


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
            for seed in seeds:
                run_dir = workdir_lib.run_directory(
                    workdir, fold if num_folds else None, seed, len(seeds)
                )
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
