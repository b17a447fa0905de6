"""The imperative host loop of one training phase: batches in, compiled calls, records out.

One :class:`PhaseLoop` trains one run, or ``S`` runs stacked into one vmapped
state (``train.vmap_seeds``, :mod:`arjax.experiment.stacked`): the same calls, with
per-run streams, records, checkpoints and non-finite checks.

Host/device overlap (``train.prefetch = depth > 0``): a background thread reads,
stacks and transfers the batches of the next ``depth`` calls
(:class:`arjax.data.prefetch.Prefetcher`), and the metrics of call ``i`` are
fetched only after call ``i + 1`` is dispatched, so on an accelerator the device
queue never runs dry while Python logs. A non-finite loss is therefore seen one
call late, but it names the step it happened at, and no checkpoint is written
before it is checked: the pending metrics are read before every checkpoint,
evaluation, preemption stop and the phase's end. ``depth = 0`` is the synchronous
loop (read, put, run, fetch).
"""

import functools
import os
import time

import jax
import numpy as np
import tqdm

from arjax import data as data_lib
from arjax import distributed, faults, methods, parallel
from arjax.data.prefetch import Prefetcher
from arjax.data.streaming import BatchStream
from arjax.evaluation.evaluators import Evaluator, key_for
from arjax.experiment import phases as phases_lib
from arjax.experiment import summary
from arjax.experiment import workdir as workdir_lib
from arjax.experiment.evals import BestPolicy
from arjax.experiment.final_eval import EVAL_KEY_TAG
from arjax.training.checkpoint import BestCheckpoint, PreemptionFlag
from arjax.training.state import TrainState
from arjax.training.state_pass import StatePass
from arjax.training.step import compile_multi_step

_INTERVALS = ("log_every", "checkpoint_every")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class Preempted(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The run received SIGTERM/SIGINT and saved a checkpoint."""


def _boundary(step: int, every: int, total: int) -> int:
    """The next step > ``step`` that is a multiple of ``every`` (or ``total``)."""
    if every <= 0:
        return total
    return min(total, (step // every + 1) * every)


def _due(step: int, every: int, total: int) -> bool:
    """A record is due at multiples of ``every`` (> 0) and at the last step."""
    return bool(every) and (step % every == 0 or step == total)


def run_slice(state: TrainState, i: int) -> TrainState:
    """Run ``i``'s state out of a stacked (``[S, ...]``) state."""
    return jax.tree.map(lambda a: a[i], state)


class PhaseLoop:
    """One phase of one run, or of ``len(phases)`` stacked runs (``stacked=True``).

    Args:
      cfg: the validated experiment config.
      phases: the phase of each run (one per seed when stacked).
      seeds: the runs' seeds, in the stacking order.
      dataset: the loaded splits.
      model: the model's pure functions.
      mesh: the training mesh.
      ckpts: each run's checkpointer.
      start: the step the phase continues from.
      evaluators: the run's evaluators by name (``config.evals``).
      policy: the best-checkpoint policy (``train.best``).
      stacked: the state has a leading run axis.
    """

    def __init__(
        self, cfg, phases, seeds, dataset, model, mesh, ckpts, start, *,
        evaluators: dict[str, Evaluator], policy: BestPolicy, stacked: bool = False,
    ):  # fmt: skip
        self.cfg, self.phases, self.seeds, self.dataset = cfg, phases, tuple(seeds), dataset
        self.phase = phases[0]
        self.model, self.mesh, self.ckpts, self.stacked = model, mesh, ckpts, stacked
        self.evaluators, self.policy = evaluators, policy
        train = dataset.splits["train"]
        self.spe = data_lib.steps_per_epoch(data_lib.split_length(train), cfg.train.batch_size)
        self.total = self.spe * self.phase.num_epochs
        self.writers = [
            workdir_lib.MetricsWriter(os.path.join(p.directory, "metrics.jsonl"), resume_step=start)
            for p in phases
        ]
        self.bests = [BestCheckpoint(p.directory, policy.metric, policy.mode) for p in phases]
        self.best = self.bests[0]
        self.streams: list[BatchStream] = []
        self.feed: Prefetcher | None = None
        self.step = 0
        self.summaries: list[dict] = []
        self.losses: list[list[float]] = [[] for _ in phases]  # logged mean training losses
        self._clock = (time.perf_counter(), 0)

    def finished(self) -> bool:
        """The phase has run its steps or stopped early (patience)."""
        return self.step >= self.total or phases_lib.should_stop(
            self.step, self.best.step, self.policy.patience, self.policy.every
        )

    def _calls(self, step: int, state_pass: StatePass):
        """``(start, stop, device batches, valid)`` of every call from ``step`` to the end."""
        tcfg, k = self.cfg.train, self.cfg.train.steps_per_call
        sharding = parallel.batch_sharding(self.mesh, leading_axes=3 if self.stacked else 2)
        while step < self.total:
            stop = min(
                step + k,
                *(_boundary(step, tcfg[f], self.total) for f in _INTERVALS),
                *(_boundary(step, ev.every, self.total) for ev in self.evaluators.values()),
                state_pass.next_boundary(step, self.total),
            )
            n = stop - step
            runs = []
            for stream in self.streams:
                host = [stream.next() for _ in range(n)]
                host += host[-1:] * (k - n)
                runs.append(jax.tree.map(lambda *a: np.stack(a), *host))
            batches = jax.tree.map(lambda *a: np.stack(a), *runs) if self.stacked else runs[0]
            yield step, stop, parallel.put_batch(batches, sharding), np.arange(k) < n
            step = stop

    def run(self, state: TrainState, tx, bar: tqdm.tqdm, preempted: PreemptionFlag) -> TrainState:
        """Trains from ``state`` to the phase's end; returns the last state (checkpointed)."""
        tcfg, phase = self.cfg.train, self.phase
        self.step = int(np.asarray(state.step).reshape(-1)[0])
        depth = int(tcfg.get("prefetch", 0))
        if not self.finished():
            method, ctx = phase.method, methods.Context(self.model, self.dataset.bounds)
            loss_fn = methods.make_loss(method, self.model, self.dataset.bounds)
            multi_step = compile_multi_step(loss_fn, tx, self.mesh, stacked=self.stacked)
            refresh = functools.partial(method.refresh_state, ctx)
            state_pass = StatePass(
                refresh if method.refreshes_state else None, self.dataset.splits["train"],
                batch_size=tcfg.batch_size, mesh=self.mesh, steps_per_epoch=self.spe,
                batches_per_call=tcfg.steps_per_call,
            )  # fmt: skip
            for seed in self.seeds:
                ds = data_lib.train_dataset(
                    self.dataset.splits["train"],
                    batch_size=tcfg.batch_size,
                    seed=seed,
                    num_epochs=phase.num_epochs,
                    process_index=jax.process_index(),
                    process_count=jax.process_count(),
                )
                self.streams.append(BatchStream(ds, self.step, tcfg.get("num_workers", 0)))
            self.feed = Prefetcher(self._calls(self.step, state_pass), depth)
        self._clock = (time.perf_counter(), 0)
        pending = None
        while not self.finished():
            start, stop, batches, valid = self.feed.next()
            state, metrics = multi_step(state, batches, valid)
            faults.point("step")
            self.step = stop
            state = state_pass.after_steps(state, stop)  # e.g. IMA's Alg. 2 after an epoch
            bar.update(stop - start)
            if pending is not None:
                self._record(*pending, bar)
            pending = (start, stop, metrics)
            checkpoint = bool(tcfg.checkpoint_every) and stop % tcfg.checkpoint_every == 0
            due = [n for n, ev in self.evaluators.items() if _due(stop, ev.every, self.total)]
            if depth == 0 or checkpoint or due or stop >= self.total:
                self._record(*pending, bar)
                pending = None
            if due:
                self._validate(state, due)
            if checkpoint:
                self._save(state, wait=False)
            if distributed.any_process(bool(preempted)):
                if pending is not None:
                    self._record(*pending, bar)
                self._save(state)
                where = ", ".join(p.directory for p in self.phases)
                signal = getattr(preempted, "signal", "SIGTERM (another process)")
                raise Preempted(f"{signal}: saved step {self.step} in {where}")
        if pending is not None:
            self._record(*pending, bar)
        self._save(state)
        self.summaries = [
            dict(
                max_steps=self.total,
                steps=self.step,
                early_stopped=self.step < self.total,
                best_step=best.step,
                **self._best_summary(best),
                diverged=summary.diverged(losses, f"{phase.name} (seed {seed})"),
            )
            for seed, best, losses in zip(self.seeds, self.bests, self.losses, strict=True)
        ]
        return state

    def _record(self, start: int, stop: int, metrics: dict, bar: tqdm.tqdm) -> None:
        """Fetches one call's metrics; stops on a non-finite loss; writes the due records."""
        n = stop - start
        host = {key: np.asarray(v) for key, v in jax.device_get(metrics).items()}
        if not self.stacked:
            host = {key: v[None] for key, v in host.items()}
        for i, seed in enumerate(self.seeds):
            loss = host["loss"][i, :n]
            bad = ~np.isfinite(loss)
            if bad.any():
                first = start + int(np.argmax(bad)) + 1
                raise NonFiniteLossError(
                    f"non-finite loss {loss[bad][0]} at step {first} "
                    f"(method {self.phase.method.name!r}, seed {seed}); last checkpoint: "
                    f"{self.ckpts[i].latest_step()}. Lower optim.learning_rate or check the data."
                )
        t_last, n_since = self._clock
        n_since += n
        if not _due(stop, self.cfg.train.log_every, self.total):
            self._clock = (t_last, n_since)
            return
        now = time.perf_counter()
        rate = n_since * self.cfg.train.batch_size / max(now - t_last, 1e-9)
        for i, writer in enumerate(self.writers):
            means = {f"train/{key}": float(np.mean(v[i, :n])) for key, v in host.items()}
            record = {"step": stop, "epoch": stop / self.spe, **means, "examples_per_s": rate}
            writer.write(record)
            self.losses[i].append(means["train/loss"])
        bar.set_postfix(loss=f"{means['train/loss']:.4f}", ex_s=f"{rate:,.0f}")
        self._clock = (now, 0)

    def _states(self, state: TrainState) -> list[TrainState]:
        """Each run's state (the state itself when not stacked)."""
        if not self.stacked:
            return [state]
        return [run_slice(state, i) for i in range(len(self.seeds))]

    def _save(self, state: TrainState, *, wait: bool = True) -> None:
        """Checkpoints every run's state; ``wait``: until the files are written."""
        for ckpt, run_state in zip(self.ckpts, self._states(state), strict=True):
            ckpt.save(run_state)
        for ckpt in self.ckpts if wait else ():
            ckpt.wait()

    def _best_summary(self, best: BestCheckpoint) -> dict:
        """The best checkpoint's value for ``schedule.json`` (None before any).

        ``best_val_loss`` for no policy and for the lowest validation loss (the name runs
        always had), else ``best_metric`` and ``best_value``.
        """
        value = best.value if best.step is not None else None
        policy = self.policy
        if not policy.enabled or (policy.key == "loss" and policy.mode == "min"):
            return {"best_val_loss": value}
        return {"best_metric": policy.metric, "best_value": value}

    def _evaluate(self, name: str, state: TrainState, mesh, key) -> dict:
        """Evaluator ``name``'s metrics of one run's (localised) ``state``."""
        ev = self.evaluators[name]
        return ev(
            self.model, state.params, state.batch_stats, self.dataset.splits[ev.split],
            mesh=mesh, key=key, bounds=self.dataset.bounds,
        )  # fmt: skip

    def _validate(self, state: TrainState, due: list[str]) -> None:
        """The due evaluators on each run's state: records, and the best-state offer."""
        mesh = parallel.evaluation_mesh(self.mesh)
        runs = zip(self.seeds, self._states(state), self.writers, self.bests, strict=True)
        for seed, run_state, writer, best in runs:
            # a multi-process run's state spans every process's devices: localise it
            local = parallel.localize(run_state, mesh)
            base = jax.random.fold_in(jax.random.key(seed), EVAL_KEY_TAG)
            record = {"step": self.step}
            for name in due:
                values = self._evaluate(name, local, mesh, key_for(base, name, self.step))
                record.update({f"{name}/{k}": v for k, v in values.items()})
                if name == self.policy.evaluator:
                    best.offer(run_state, values, self.step)
            writer.write(record)

    def close(self) -> None:
        """Stops the prefetch thread; closes the checkpointers and the batch streams."""
        if self.feed is not None:
            self.feed.close()
        for ckpt in self.ckpts:
            ckpt.close()
        for stream in self.streams:
            stream.close()
        for best in self.bests:
            best.close()
