"""The one imperative host loop: data, compiled steps, logging, checkpoints, report.

``run(config, workdir)`` trains every seed in ``config.seeds`` (one run
directory each when there are several), evaluates, and writes the report.
Restarting the same command resumes each seed from its latest checkpoint; a
finished seed is not retrained. SIGTERM/SIGINT save a checkpoint and return.
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
from arjax.data.streaming import BatchStream
from arjax.evaluation import report as report_lib
from arjax.evaluation import suite
from arjax.evaluation.metrics import aggregate
from arjax.evaluation.run_evaluation import evaluate_run, run_scalars
from arjax.models import MODELS, build_model
from arjax.training import optim, parallel
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
    methods.validate(cfg)
    optim.validate(cfg)
    suite.validate(cfg)
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
    tcfg = cfg.train
    mesh = parallel.make_mesh(tcfg.get("num_devices", 0))
    train = dataset.splits["train"]
    if tcfg.batch_size % mesh.size:
        raise ConfigError(
            f"train.batch_size={tcfg.batch_size} must be divisible by the {mesh.size} devices"
        )
    spe = data_lib.steps_per_epoch(data_lib.split_length(train), tcfg.batch_size)
    total = spe * tcfg.num_epochs
    try:
        model, params, batch_stats = build_model(
            cfg.model, dataset.input_shape, dataset.num_classes, seed
        )
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    tx = optim.make_optimizer(cfg.optim, total, params)
    uses_margins = methods.METHODS[cfg.method.name].uses_margins
    table = (
        margin_table.init_margins(data_lib.split_length(train), cfg.method.delta)
        if uses_margins
        else None
    )
    state = parallel.put_replicated(
        create_train_state(params, batch_stats, tx, seed, margins=table), mesh
    )
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), tcfg.get("max_checkpoints", 2))
    start = ckpt.latest_step()
    if start is not None:
        state = ckpt.restore(state)
        log.info("resumed %s from step %d", workdir, start)
    elif tcfg.get("init_from", ""):
        state = _init_from(tcfg.init_from, state, seed)
    step = int(state.step)
    writer = _Writer(os.path.join(workdir, "metrics.jsonl"))
    if step >= total and os.path.exists(result_path):
        ckpt.close()
        with open(result_path) as f:
            return json.load(f)

    loss_fn = methods.make_loss(cfg.method, model, dataset.bounds)
    multi_step = compile_multi_step(loss_fn, tx, mesh)
    ds = data_lib.train_dataset(
        train,
        batch_size=tcfg.batch_size,
        seed=seed,
        num_epochs=tcfg.num_epochs,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    k = tcfg.steps_per_call
    stream = BatchStream(ds, step, tcfg.get("num_workers", 0))
    best = BestCheckpoint(workdir, tcfg.get("select_best", ""))
    stacked = parallel.batch_sharding(mesh, leading_axes=2)
    bar = tqdm.tqdm(
        total=total, initial=step, disable=not progress, unit="step", desc=f"seed {seed}"
    )
    t_last, n_since = time.perf_counter(), 0
    try:
        while step < total:
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
                    f"(method {cfg.method.name!r}, seed {seed}); last checkpoint: "
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
                logits = suite.predict(
                    model,
                    state.params,
                    state.batch_stats,
                    dataset.splits[split],
                    batch_size=cfg.eval.batch_size,
                    mesh=mesh,
                )
                labels = data_lib.split_labels(dataset.splits[split])
                ev = suite.classification_metrics(logits, labels)
                writer.write({"step": step, **{f"{split}/{k_}": v for k_, v in ev.items()}})
                best.offer(state, ev, step)
            if tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0:
                ckpt.save(state)
            if preempted:
                ckpt.save(state)
                ckpt.wait()
                raise Preempted(f"{preempted.signal}: saved step {step} in {workdir}")
        ckpt.save(state)
        ckpt.wait()
        if best.enabled and best.step is not None:
            state = best.restore(state)
            log.info("final evaluation uses the best checkpoint (step %d)", best.step)
    finally:
        bar.close()
        ckpt.close()
        stream.close()
        best.close()

    info = {"steps": step}
    if best.enabled:
        info["selected_step"] = best.step if best.step is not None else step
    return evaluate_run(
        cfg, dataset, model, state, workdir, seed=seed, mesh=mesh, info=info, filename="result.json"
    )


def _init_from(run_dir: str, state, seed: int):
    """Parameters and batch statistics of another run (its best, else latest, checkpoint).

    The two-phase schedule of Khakzar et al. (§3.2: clean training to
    convergence, then adversarial fine-tuning) as two runs: phase 2 names
    phase 1's workdir in ``train.init_from``. Step, optimiser state and
    margins start fresh.
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
                    other = source.restore(state)
                except Exception as e:  # structure mismatch: other optimiser or model
                    raise ConfigError(
                        f"train.init_from={run_dir!r}: its checkpoint does not match this "
                        f"model/optimiser ({type(e).__name__}: {str(e)[:200]})"
                    ) from e
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
    try:
        dataset = data_lib.load_dataset(cfg.data)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    seeds = tuple(int(s) for s in cfg.seeds)
    preempted = PreemptionFlag()
    results = []
    try:
        for seed in seeds:
            run_dir = workdir if len(seeds) == 1 else os.path.join(workdir, f"seed_{seed}")
            results.append(
                train_seed(cfg, seed, run_dir, dataset, preempted=preempted, progress=progress)
            )
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


_scalars = run_scalars


def _curve_with_std(results: list[dict], key: str = "robust_curve"):
    eps = np.asarray(results[0][key]["eps"], float)
    accs = np.asarray([r[key]["accuracy"] for r in results], float)
    std = accs.std(0, ddof=1) if len(results) > 1 else None
    return (eps, accs.mean(0), std)


def _report(cfg: ml_collections.ConfigDict, results: list[dict]) -> dict:
    """The experiment report: per-seed results and mean (std) over seeds."""
    summary = aggregate([_scalars(r) for r in results])
    clean = summary.get("clean/accuracy", {}).get("mean", math.nan)
    adv = summary.get("adversarial/accuracy", {}).get("mean", math.nan)
    return {
        "name": cfg.get("name", ""),
        "method": cfg.method.name,
        "seeds": [r["seed"] for r in results],
        "summary": summary,
        "mean_accuracy": (clean + adv) / 2,
        "runs": results,
    }
