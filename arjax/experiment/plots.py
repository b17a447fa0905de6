"""The plots of a run and of a workdir (files next to the JSON results).

Per run: ``roc_curves.png`` (clean and every attack, with the operating points;
one panel per class for multi-label data), ``training_curves.png``,
``decision_boundary.png`` for 2-D data, and for networks with a GAP + linear
head ``localization.png`` / ``cam_grid.png`` (Khakzar et al. §3.3). Per
workdir: ``attacks_<metric>_<norm>.png`` over the attack grid.
"""

import logging
import os

import numpy as np
from flax import nnx

from arjax import compilation
from arjax.evaluation import interpret, localization, suite
from arjax.evaluation import report as report_lib
from arjax.evaluation.metrics import mean_std
from arjax.models import ModelFns
from arjax.training.state import TrainState

log = logging.getLogger("arjax")


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
        interpret.cam_kernel(nnx.merge(model.graphdef, state.params, state.batch_stats, copy=True))
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


def run_plots(dataset, model, state, run_dir, arrays, title) -> None:
    """``training_curves.png``, and ``decision_boundary.png`` for 2-D data."""
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
