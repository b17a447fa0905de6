"""Evaluating a finished workdir without retraining (``python -m arjax.evaluate``).

A workdir has ``config.json`` at its top; its run directories are the workdir
itself or directories below it (``seed_<s>``, ``fold_<k>``,
``fold_<k>/seed_<s>``): any directory holding ``checkpoints/`` (the
``best/`` copy inside a run is not a run). For each run this rebuilds the
dataset and model from ``config.json``, restores parameters and batch
statistics (the best-validation-loss checkpoint when present, else the
latest), runs :func:`arjax.evaluation.run_evaluation.evaluate_run` and writes
``<run>/eval.json`` plus plots; the workdir's ``eval.json`` then holds the
mean (std) over runs. A run whose ``eval.json`` was made with the same
evaluation settings and checkpoint is not evaluated again, so an interrupted
evaluation resumes where it stopped.
"""

import json
import logging
import os
import re

import jax
import ml_collections
import tqdm

from arjax import data as data_lib
from arjax import margins as margin_table
from arjax import methods
from arjax.config_lib import ConfigError
from arjax.data import folds as folds_lib
from arjax.evaluation import report as report_lib
from arjax.evaluation import suite
from arjax.evaluation.metrics import aggregate, mean_std
from arjax.evaluation.run_evaluation import evaluate_run, run_scalars
from arjax.models import build_model
from arjax.training import optim, parallel
from arjax.training.checkpoint import Checkpointer
from arjax.training.state import TrainState, create_train_state

log = logging.getLogger("arjax")

CHECKPOINTS = ("auto", "best", "latest")
_SKIP = ("checkpoints", "best", "phase1")


def _tuples(value):
    """JSON lists back to the tuples configs use (so overrides type-check)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved experiment config a workdir was trained with (``config.json``).

    Raises:
      ConfigError: naming the missing or unreadable file.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{path} not found: {workdir!r} is not an arjax workdir")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(_tuples(json.load(f)))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e


def find_run_dirs(workdir: str) -> list[str]:
    """Run directories at or below ``workdir`` (those holding ``checkpoints/``), sorted."""
    runs = []
    for root, dirs, _ in os.walk(workdir):
        if "checkpoints" in dirs:
            runs.append(root)
        dirs[:] = sorted(d for d in dirs if d not in _SKIP)
    return sorted(runs, key=lambda r: os.path.relpath(r, workdir))


def _relative(run_dir: str, workdir: str) -> str:
    rel = os.path.relpath(run_dir, workdir)
    return "" if rel == "." else rel


def run_seed(cfg: ml_collections.ConfigDict, workdir: str, run_dir: str) -> int:
    """A run's seed: its ``result.json``, else a ``seed_<s>`` path part, else the only seed."""
    result = os.path.join(run_dir, "result.json")
    if os.path.isfile(result):
        with open(result) as f:
            seed = json.load(f).get("seed")
        if seed is not None:
            return int(seed)
    for part in reversed(_relative(run_dir, workdir).split(os.sep)):
        if m := re.fullmatch(r"seed_(\d+)", part):
            return int(m.group(1))
    if len(cfg.seeds) == 1:
        return int(cfg.seeds[0])
    raise ConfigError(f"cannot tell the seed of run {run_dir!r} (seeds {tuple(cfg.seeds)})")


def dataset_for_run(
    datasets: list[data_lib.DatasetSplits], workdir: str, run_dir: str
) -> data_lib.DatasetSplits:
    """The splits a run was trained on.

    Args:
      datasets: ``arjax.data.folds.fold_datasets`` of the workdir's config: one
        dataset without cross-validation, else one per fold.
      workdir: the training workdir.
      run_dir: a run directory below it; ``fold_<k>`` in its path picks fold k.

    Raises:
      ConfigError: a ``fold_<k>`` path with no such fold in the config, or a
        cross-validated workdir's run outside any ``fold_<k>``.
    """
    parts = _relative(run_dir, workdir).split(os.sep)
    folds = [int(m.group(1)) for p in parts if (m := re.fullmatch(r"fold_(\d+)", p))]
    if not folds:
        if len(datasets) != 1:
            raise ConfigError(f"run {run_dir!r} is not inside a fold_<k> directory")
        return datasets[0]
    if len(datasets) == 1 or folds[-1] >= len(datasets):
        raise ConfigError(
            f"run {run_dir!r} is fold {folds[-1]}, but the config has folds={len(datasets)}"
            if len(datasets) > 1
            else f"run {run_dir!r} is a fold, but the config has no folds"
        )
    return datasets[folds[-1]]


def restore_state(
    cfg: ml_collections.ConfigDict,
    dataset: data_lib.DatasetSplits,
    run_dir: str,
    seed: int,
    mesh: jax.sharding.Mesh,
    which: str = "auto",
):
    """The model and a run's trained state, built as the training loop builds it.

    Args:
      cfg: the run's config.
      dataset: its splits (input shape, classes, train size for the margin table).
      run_dir: the run directory.
      seed: the run's seed.
      mesh: device mesh (state replicated on it).
      which: ``"best"`` (``best/checkpoints``), ``"latest"`` (``checkpoints``) or
        ``"auto"`` (best when present, else latest).

    Returns:
      ``(model, state, {"checkpoint": "best" | "latest", "steps": step})``.

    Raises:
      ConfigError: when the requested checkpoint does not exist or does not match.
    """
    if which not in CHECKPOINTS:
        raise ConfigError(f"unknown checkpoint {which!r}; valid choices: {', '.join(CHECKPOINTS)}")
    candidates = {"best": os.path.join(run_dir, "best", "checkpoints")}
    candidates["latest"] = os.path.join(run_dir, "checkpoints")
    order = ("best", "latest") if which == "auto" else (which,)
    model, params, batch_stats = build_model(
        cfg.model, dataset.input_shape, dataset.num_classes, seed
    )
    n_train = data_lib.split_length(dataset.splits["train"])
    total = data_lib.steps_per_epoch(n_train, cfg.train.batch_size) * cfg.train.num_epochs
    tx = optim.make_optimizer(cfg.optim, total, params)
    table = None
    if methods.METHODS[cfg.method.name].uses_margins:
        table = margin_table.init_margins(n_train, cfg.method.delta)
    like = parallel.put_replicated(
        create_train_state(params, batch_stats, tx, seed, margins=table), mesh
    )
    for kind in order:
        if not os.path.isdir(candidates[kind]):
            continue
        ckpt = Checkpointer(candidates[kind])
        try:
            step = ckpt.latest_step()
            if step is None:
                continue
            state: TrainState = ckpt.restore_matching(like, f"{candidates[kind]} (config.json)")
        finally:
            ckpt.close()
        return model, state, {"checkpoint": kind, "steps": int(step)}
    raise ConfigError(f"run {run_dir!r} has no {' or '.join(order)} checkpoint to evaluate")


def _up_to_date(path: str, settings: dict) -> dict | None:
    """The stored evaluation when it was made with these settings (config, checkpoint...)."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        old = json.load(f)
    settings = json.loads(json.dumps(settings))
    return old if all(old.get(k) == v for k, v in settings.items()) else None


def evaluate_workdir(
    workdir: str,
    *,
    overrides: dict | None = None,
    which: str = "auto",
    curves: bool = True,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Evaluates every run of a workdir and writes the per-run and top ``eval.json``.

    Args:
      workdir: a training workdir (``config.json`` at its top).
      overrides: ``eval`` fields to change, e.g. ``{"attacks": ("pgd:linf:0.01:100",)}``.
      which: checkpoint to evaluate (see :func:`restore_state`).
      curves: compute the robust-accuracy curves as well.
      force: evaluate again even when a run's ``eval.json`` is up to date.
      progress: show a progress bar over runs.

    Returns:
      the workdir summary: ``{"runs": [...], "per_run": [scalars...], "summary":
      {metric: mean/std/n}, ...}`` (also ``<workdir>/eval.json``).

    Raises:
      ConfigError: bad overrides, missing files or checkpoints, before any attack runs.
    """
    if not os.path.isdir(workdir):
        raise ConfigError(f"workdir {workdir!r} does not exist")
    cfg = load_config(workdir)
    with cfg.unlocked():
        for key, value in (overrides or {}).items():
            if key not in cfg.eval:
                valid = ", ".join(sorted(cfg.eval))
                raise ConfigError(f"unknown eval field {key!r}; valid: {valid}")
            cfg.eval[key] = value
    suite.validate(cfg)
    run_dirs = find_run_dirs(workdir)
    if not run_dirs:
        raise ConfigError(f"{workdir!r} holds no run (no checkpoints/ directory at or below it)")
    seeds = {run: run_seed(cfg, workdir, run) for run in run_dirs}
    cv = cfg.get("cv", None) or {}
    try:
        datasets = folds_lib.fold_datasets(
            cfg.data,
            int(cfg.get("folds", 0)),
            mode=cv.get("mode", "kfold"),
            holdout=cv.get("holdout", "val"),
        )
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    mesh = parallel.make_mesh(cfg.train.get("num_devices", 0))
    eval_cfg = cfg.eval.to_dict()
    results = []
    for run in tqdm.tqdm(run_dirs, disable=not progress, unit="run", desc="evaluate"):
        data = dataset_for_run(datasets, workdir, run)
        model, state, info = restore_state(cfg, data, run, seeds[run], mesh, which)
        path = os.path.join(run, "eval.json")
        log.info("%s: %s checkpoint, step %d", run, *info.values())
        info.update(eval_config=eval_cfg, curves=curves, run=_relative(run, workdir))
        result = None if force else _up_to_date(path, info)
        if result is None:
            result = evaluate_run(
                cfg, data, model, state, run, seed=seeds[run], mesh=mesh, info=info,
                filename="eval.json", curves=curves,
            )  # fmt: skip
        else:
            log.info("%s is up to date", path)
        results.append(result)
    summary = summarize(cfg, results)
    plot_attack_grid(results, workdir, cfg.get("name", "") or cfg.method.name)
    top = os.path.join(workdir, "eval.json")
    if run_dirs == [workdir]:
        summary = {**results[0], **summary}
    report_lib.write_json(top, summary)
    return summary


def summarize(cfg: ml_collections.ConfigDict, results: list[dict]) -> dict:
    """Mean (std) over a workdir's runs of every scalar metric, with the per-run values."""
    per_run = [run_scalars(r) for r in results]
    return {
        "name": cfg.get("name", ""),
        "method": cfg.method.name,
        "runs": [r.get("run", "") for r in results],
        "per_run": per_run,
        "summary": aggregate(per_run),
    }


def plot_attack_grid(results: list[dict], workdir: str, title: str) -> list[str]:
    """``attacks_<metric>_<norm>.png``: metric vs eps per attack, mean (std) over runs.

    One figure per norm and metric (accuracy, and AUC when the task has one);
    eps 0 is the clean value. Written only when some attack has several radii.

    Returns:
      the paths written.
    """
    specs = list(results[0].get("attacks", {}).values())
    groups: dict[tuple, list[dict]] = {}
    for spec in specs:
        groups.setdefault((spec["norm"], spec["attack"], spec["num_steps"]), []).append(spec)
    if all(len(g) < 2 for g in groups.values()):
        return []
    paths = []
    for metric in ("accuracy", "auc"):
        for norm in sorted({k[0] for k in groups}):
            curves = {}
            for (g_norm, attack, steps), members in groups.items():
                if g_norm != norm or any(metric not in m for m in members):
                    continue
                members = sorted(members, key=lambda m: m["eps"])
                per_run = [
                    [r["clean"][metric]] + [r["attacks"][m["name"]][metric] for m in members]
                    for r in results
                ]
                stats = mean_std(per_run)
                eps = [0.0] + [m["eps"] for m in members]
                label = f"{attack}{steps if attack == 'pgd' else ''}"
                curves[label] = (eps, stats["mean"], stats["std"] if len(results) > 1 else None)
            if curves:
                path = os.path.join(workdir, f"attacks_{metric}_{norm}.png")
                report_lib.plot_accuracy_vs_eps(
                    curves, path, title=f"{title} ({norm}, {len(results)} runs)", ylabel=metric
                )
                paths.append(path)
    return paths
