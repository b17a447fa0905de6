"""Evaluating trained runs: the final evaluation of one run, and of a whole workdir.

:func:`evaluate_run` serves both the training loop (after the last step, on the
best or final state) and ``arjax-evaluate`` (on a restored checkpoint), so a run
evaluated later gives the numbers training reported. It writes, in the run
directory, the result JSON and the plots of :mod:`arjax.experiment.plots`.

:func:`evaluate_workdir` (``arjax-evaluate --workdir W``) rebuilds each run's
dataset, model and state from ``config.json`` (:mod:`arjax.experiment.setup`),
restores its best (else latest) checkpoint, runs :func:`evaluate_run` and writes
``<run>/eval.json``; the workdir's ``eval.json`` then holds the mean (std) over
runs. A run whose ``eval.json`` was made with the same evaluation settings and
checkpoint is not evaluated again, so an interrupted evaluation resumes.
"""

import json
import logging
import os

import jax
import ml_collections
import numpy as np
import tqdm
from jax.sharding import Mesh

from arjax import data as data_lib
from arjax import faults, parallel
from arjax import margins as margin_table
from arjax.config_lib import ConfigError
from arjax.evaluation import report as report_lib
from arjax.evaluation import segmentation as seg_eval
from arjax.evaluation import suite
from arjax.evaluation.metrics import aggregate
from arjax.experiment import plots, presets, setup
from arjax.experiment import workdir as workdir_lib
from arjax.experiment.summary import masking_warnings, run_scalars
from arjax.models import ModelFns
from arjax.models.torch_bridge import export_run_weights
from arjax.training.state import TrainState

log = logging.getLogger("arjax")

EVAL_KEY_TAG = 0x5EED


def eval_split(cfg: ml_collections.ConfigDict, dataset: data_lib.DatasetSplits) -> str:
    """``eval.split``, checked against the dataset's splits.

    Raises:
      ConfigError: naming ``eval.split`` and the valid choices.
    """
    split = cfg.eval.get("split", "test")
    if split not in dataset.splits:
        raise ConfigError(
            f"unknown eval.split {split!r} for data.name {dataset.name!r}; valid choices: "
            f"{', '.join(sorted(dataset.splits))}"
        )
    return split


def validation_threshold(
    cfg: ml_collections.ConfigDict,
    dataset: data_lib.DatasetSplits,
    model: ModelFns,
    state: TrainState,
    mesh: Mesh,
) -> dict:
    """The operating point: Youden's J on the clean ``eval.threshold_split`` predictions.

    Returns:
      ``{"value": float | [C] | None, "split": name or None, "rule": ...}``;
      ``value`` is None for softmax over K > 2 classes, 0.5 (rule ``"default"``)
      when the dataset has no such split.
    """
    split = cfg.eval.get("threshold_split", "val")
    if split not in dataset.splits:
        log.warning("no %r split to choose the threshold on; using 0.5", split)
        labels = data_lib.split_labels(dataset.splits[eval_split(cfg, dataset)])
        value = 0.5 if dataset.num_classes <= 2 else None
        if labels.ndim == 2:
            value = [0.5] * labels.shape[1]
        return {"value": value, "split": None, "rule": "default"}
    source = dataset.splits[split]
    logits, labels = suite.predict_split(
        model, state, source, batch_size=cfg.eval.batch_size, mesh=mesh
    )
    return {"value": suite.choose_threshold(logits, labels), "split": split, "rule": "youden"}


def evaluate_run(
    cfg: ml_collections.ConfigDict,
    dataset: data_lib.DatasetSplits,
    model: ModelFns,
    state: TrainState,
    run_dir: str,
    *,
    seed: int,
    mesh: Mesh,
    info: dict | None = None,
    filename: str = "result.json",
    curves: bool = True,
) -> dict:
    """Evaluates one trained state on ``eval.split`` and writes the run's files.

    Attack keys are ``fold_in(key(seed), 0x5EED)``, so the same state and
    config give the same numbers in the loop and in ``arjax.evaluate``.

    Args:
      cfg: the validated experiment config (its ``eval`` section says what to run).
      dataset: the loaded splits.
      model: the model's pure functions.
      state: the trained state (params, batch_stats, method state).
      run_dir: the run directory the files go to.
      seed: the run's seed.
      mesh: device mesh.
      info: extra fields for the result (steps, selected checkpoint, ...).
      filename: the result JSON's name (``result.json`` in training,
        ``eval.json`` from the CLI).
      curves: compute the robust-accuracy curves.

    Returns:
      the result dict (also written to ``run_dir/filename``).
    """
    split = eval_split(cfg, dataset)
    key = jax.random.fold_in(jax.random.key(seed), EVAL_KEY_TAG)
    arrays = data_lib.split_arrays(dataset.splits[split], cfg.eval.get("max_examples", 0))
    title = f"{cfg.get('name', '') or cfg.method.name}, seed {seed}, {split} split"
    if dataset.task == "segmentation":
        return _evaluate_segmentation(
            cfg, dataset, state, run_dir, arrays, key, model=model, mesh=mesh, title=title,
            result_info=dict(seed=seed, split=split, **(info or {})), filename=filename,
            curves=curves,
        )  # fmt: skip
    threshold = validation_threshold(cfg, dataset, model, state, mesh)
    result, logits = suite.evaluate_split(
        model,
        state.params,
        state.batch_stats,
        arrays,
        cfg.eval,
        dataset.bounds,
        key,
        mesh,
        threshold=threshold["value"],
        curves=curves,
    )
    faults.point("evaluate")
    result["threshold"] = threshold
    result.update(seed=seed, split=split, **(info or {}))
    for attack, section in result.get("masking_checks", {}).items():
        for line in section["warnings"]:
            log.warning("%s, %s: %s", run_dir, attack, line)
    _margin_report(cfg, state, run_dir, result)
    if cfg.eval.get("localization", True) and getattr(dataset.splits[split], "boxes", None):
        result["localization"] = plots.localize(
            model, state, dataset.splits[split], run_dir, title, seed=seed
        )
    plots.plot_roc(result, logits, arrays["label"], os.path.join(run_dir, "roc_curves.png"), title)
    plots.run_plots(dataset, model, state, run_dir, arrays, title)
    report_lib.write_json(os.path.join(run_dir, filename), result)
    return result


def _margin_report(cfg, state: TrainState, run_dir: str, result: dict) -> None:
    """``result["margins"]`` and ``margin_histogram.png`` when the method keeps margins."""
    method = setup.build_method(cfg)
    if method.margin_range is None or state.method_state is None:
        return
    values = np.asarray(jax.device_get(state.method_state["margins"]))
    floor, ceiling = method.margin_range
    result["margins"] = margin_table.statistics(values, delta=floor, eps_max=ceiling)
    report_lib.plot_histogram(
        values,
        os.path.join(run_dir, "margin_histogram.png"),
        title=f"{method.name.upper()} margins (median {result['margins']['median']:.3f})",
        xlabel=f"margin ({method.norm})",
    )


def _evaluate_segmentation(
    cfg, dataset, state, run_dir, arrays, key, *, model, mesh, title, result_info, filename,
    curves,
) -> dict:  # fmt: skip
    """:func:`evaluate_run` of a segmentation run (:mod:`arjax.evaluation.segmentation`).

    Writes the result JSON, ``segmentation_grid.png`` (image / mask / prediction /
    attacked prediction), the Dice-vs-noise curves ``dice_vs_eps[_l2].png`` (TVDI, ADI
    and the fraction with Dice >= ``eval.dice_threshold``) and the margin histogram.
    """
    threshold = float(cfg.eval.get("dice_threshold", seg_eval.seg.DICE_THRESHOLD))
    result, pictures = seg_eval.evaluate_split(
        model, state.params, state.batch_stats, arrays, cfg.eval, dataset.bounds, key, mesh,
        dice_threshold=threshold, curves=curves,
    )  # fmt: skip
    faults.point("evaluate")
    result.update(task="segmentation", **result_info)
    _margin_report(cfg, state, run_dir, result)
    seg_eval.plot_segmentation_grid(
        pictures, os.path.join(run_dir, "segmentation_grid.png"),
        f"{title}; attacked: {cfg.eval.norm} eps {cfg.eval.adv_eps:g}",
    )  # fmt: skip
    for key_name, suffix in (("robust_curve", ""), ("robust_curve_l2", "_l2")):
        if key_name in result:
            c = result[key_name]
            report_lib.plot_accuracy_vs_eps(
                {
                    "TVDI (Eq. 9)": (c["eps"], c["tvdi"]),
                    "ADI (Eq. 10)": (c["eps"], c["adi"]),
                    f"Dice >= {threshold:g}": (c["eps"], c["accuracy"]),
                },
                os.path.join(run_dir, f"dice_vs_eps{suffix}.png"),
                title=f"{title} ({c['norm']})",
                ylabel="Dice / fraction",
            )
    report_lib.write_json(os.path.join(run_dir, filename), result)
    return result


def evaluate_trained(cfg, dataset, model, state, run_dir, *, seed, mesh, info) -> dict:
    """:func:`evaluate_run` of a trained state into ``result.json``, on this process's mesh.

    In a multi-process run every process evaluates the same state on its own
    devices (``parallel.evaluation_mesh``) and only process 0 writes the files. A
    PyTorch model's weights are written first as ``state_dict.safetensors``.
    """
    eval_mesh = parallel.evaluation_mesh(mesh)
    local = parallel.localize(state, eval_mesh)
    if jax.process_index() == 0 and export_run_weights(
        model, local.params, local.batch_stats, run_dir
    ):
        log.info("PyTorch state_dict written to %s", run_dir)
    return evaluate_run(
        cfg, dataset, model, local, run_dir, seed=seed, mesh=eval_mesh, info=info,
        filename="result.json",
    )  # fmt: skip


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
      which: checkpoint to evaluate (see :func:`arjax.experiment.setup.restore_state`).
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
    cfg = workdir_lib.load_config(workdir)
    with cfg.unlocked():
        for key, value in presets.base_config().eval.items():
            if key not in cfg.eval:  # a workdir trained before the field existed
                cfg.eval[key] = value
        for key, value in (overrides or {}).items():
            if key not in cfg.eval:
                valid = ", ".join(sorted(cfg.eval))
                raise ConfigError(f"unknown eval field {key!r}; valid: {valid}")
            cfg.eval[key] = value
    suite.validate(cfg)
    run_dirs = workdir_lib.find_run_dirs(workdir)
    if not run_dirs:
        raise ConfigError(f"{workdir!r} holds no run (no checkpoints/ directory at or below it)")
    seeds = {run: workdir_lib.run_seed(cfg, workdir, run) for run in run_dirs}
    datasets = setup.load_folds(cfg)
    mesh = parallel.make_mesh(cfg.train.get("num_devices", 0))
    eval_cfg = cfg.eval.to_dict()
    results = []
    for run in tqdm.tqdm(run_dirs, disable=not progress, unit="run", desc="evaluate"):
        data = workdir_lib.dataset_for_run(datasets, workdir, run)
        model, state, info = setup.restore_state(cfg, data, run, seeds[run], mesh, which)
        path = os.path.join(run, "eval.json")
        log.info("%s: %s checkpoint, step %d", run, *info.values())
        info.update(eval_config=eval_cfg, curves=curves, run=workdir_lib.relative(run, workdir))
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
    plots.plot_attack_grid(results, workdir, cfg.get("name", "") or cfg.method.name)
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
        "masking_warnings": masking_warnings(results),
    }
