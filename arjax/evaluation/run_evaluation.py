"""The final evaluation of one trained run: metrics, plots and its JSON file.

One function, :func:`evaluate_run`, serves both the training loop (after the
last step, on the best or final state) and ``python -m arjax.evaluate`` (on a
restored checkpoint), so a run evaluated later gives the numbers training
reported. It writes, in the run directory: the result JSON, ``roc_curves.png``
(clean and every attack; one panel per class for multi-label data),
``training_curves.png``, ``decision_boundary.png`` for 2-D data and
``margin_histogram.png`` for IMA runs.
"""

import logging
import os

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from arjax import compilation
from arjax import data as data_lib
from arjax import margins as margin_table
from arjax.config_lib import ConfigError
from arjax.evaluation import interpret, localization, suite
from arjax.evaluation import report as report_lib
from arjax.models import ModelFns
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
      state: the trained state (params, batch_stats, margins).
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
    threshold = validation_threshold(cfg, dataset, model, state, mesh)
    result, logits = suite.evaluate(
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
    result["threshold"] = threshold
    result.update(seed=seed, split=split, **(info or {}))
    if state.margins is not None:
        values = np.asarray(jax.device_get(state.margins))
        kw = dict(delta=cfg.method.delta, eps_max=cfg.method.eps_max)
        result["margins"] = margin_table.statistics(values, **kw)
        report_lib.plot_histogram(
            values,
            os.path.join(run_dir, "margin_histogram.png"),
            title=f"IMA margins (median {result['margins']['median']:.3f})",
            xlabel=f"margin ({cfg.method.norm})",
        )
    title = f"{cfg.get('name', '') or cfg.method.name}, seed {seed}, {split} split"
    if cfg.eval.get("localization", True) and getattr(dataset.splits[split], "boxes", None):
        result["localization"] = localize(
            model, state, dataset.splits[split], run_dir, title, seed=seed
        )
    plot_roc(result, logits, arrays["label"], os.path.join(run_dir, "roc_curves.png"), title)
    _plots_for_run(dataset, model, state, run_dir, arrays, title)
    report_lib.write_json(os.path.join(run_dir, filename), result)
    return result


def localize(
    model: ModelFns, state: TrainState, source, run_dir: str, title: str, *, seed: int
) -> dict:
    """CAM localisation of the split's annotated images (Khakzar et al. §3.3).

    Writes ``localization.png`` (accuracy vs T(IoU) per class, random-box
    baseline dashed) and ``cam_grid.png`` (image, CAM, saliency, boxes) to
    ``run_dir`` and logs the table. Networks without a GAP + linear head
    (VGG16, the IMA CNNs) get ``{"skipped": reason}`` instead.

    Args:
      model: the model's pure functions.
      state: the trained state.
      source: the evaluated split (an ``ImageFileSource`` or view with ``boxes``).
      run_dir: where the plots go.
      title: plot title.
      seed: the run's seed (fold assignment of the threshold search).

    Returns:
      ``localization.localization_report``'s dict, or ``{"skipped": reason}``.
    """
    try:
        interpret.cam_head(nnx.merge(model.graphdef, state.params, state.batch_stats, copy=True))
    except ValueError as e:
        log.info("no CAM localisation: %s", e)
        return {"skipped": str(e)}
    report = localization.localization_report(
        model, state.params, state.batch_stats, source, seed=seed
    )
    log.info("CAM localisation (%s):\n%s", title, localization.localization_table(report))
    localization.plot_localization({title: report}, os.path.join(run_dir, "localization.png"))
    interpret.save_box_grid(
        os.path.join(run_dir, "cam_grid.png"), model, state.params, state.batch_stats, source
    )
    return report


def plot_roc(result: dict, logits: dict, labels: np.ndarray, path: str, title: str) -> None:
    """``roc_curves.png``: clean and every attack, with the threshold's operating points."""
    scores = {name: suite.task_scores(z, labels) for name, z in logits.items()}
    if scores["clean"] is None:
        return  # softmax over K > 2 classes: no ROC curve
    sections = {"clean": result["clean"], **result["attacks"]}
    if labels.ndim == 1:
        panels = {"binary": {name: (s, labels) for name, s in scores.items()}}
        points = {"binary": {n: _point(m) for n, m in sections.items() if "sensitivity" in m}}
    else:
        panels, points = {}, {}
        for c in range(labels.shape[1]):
            panel = f"class {c}"
            panels[panel] = {name: (s[:, c], labels[:, c]) for name, s in scores.items()}
            points[panel] = {
                n: _point(m, c) for n, m in sections.items() if "sensitivity_per_class" in m
            }
    report_lib.plot_roc_curves(panels, path, title=title, operating_points=points)


def _point(metrics: dict, c: int | None = None) -> tuple[float, float]:
    """(1 - specificity, sensitivity) of a section, overall or of class ``c``."""
    if c is None:
        return 1 - metrics["specificity"], metrics["sensitivity"]
    return 1 - metrics["specificity_per_class"][c], metrics["sensitivity_per_class"][c]


def _plots_for_run(dataset, model, state, run_dir, arrays, title) -> None:
    """Training curves, and the decision boundary for 2-D data."""
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    records = report_lib.read_jsonl(metrics_path) if os.path.exists(metrics_path) else []
    if records:
        report_lib.plot_training_curves(records, os.path.join(run_dir, "training_curves.png"))
    if tuple(dataset.input_shape) == (2,):
        f = compilation.jit(model.logits_fn(state.params, state.batch_stats))

        def prob(points):
            logits = np.asarray(f(np.asarray(points, np.float32)))
            return suite.task_scores(logits, np.zeros(len(points), np.int32))

        report_lib.plot_decision_boundary(
            prob,
            arrays["image"],
            arrays["label"],
            os.path.join(run_dir, "decision_boundary.png"),
            title=title,
        )


def run_scalars(result: dict) -> dict[str, float]:
    """Flat ``{"clean/accuracy": ..., "adversarial/auc": ..., "<attack>/auc": ...}`` of a run.

    ``adversarial/*`` is the first attack (ARFL's adversarial metric); every
    attack also appears under its own name. Lists (per-class values) are left out.
    """
    sections = {k: result.get(k, {}) for k in ("clean", "adversarial")}
    sections.update(result.get("attacks", {}))
    out = {}
    for section, values in sections.items():
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                if key not in ("eps", "num_steps"):
                    out[f"{section}/{key}"] = float(value)
    for key in ("robust_curve", "robust_curve_l2"):
        if key in result:
            out[f"{key}/area"] = float(result[key]["area"])
    loc = result.get("localization", {}).get("mean")
    if loc:
        for t, acc in zip(result["localization"]["ious"], loc["accuracy"], strict=True):
            out[f"localization/accuracy@{t:g}"] = float(acc)
    if "margins" in result:
        out["margins/median"] = result["margins"]["median"]
        out["margins/mean"] = result["margins"]["mean"]
    return out
