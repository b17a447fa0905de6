"""Comparing methods as ARFL's Tables 1-3 do, with Mann-Whitney U p-values.

Hao et al. (ARFL) §4.2: each method is run over five seeds (two-moons,
accuracy) or five folds (mammography, AUC); Tables 1-3 print the standard
(clean) metric, the adversarial metric and their mean as "mean (std)" over
runs, and methods are compared with the two-sided Mann-Whitney U test on the
per-run values. Here a method is a workdir (its ``eval.json`` from
``arjax.evaluate``, else the training ``report.json``) or such a file.

The IMA paper's Figs. 6-9 instead overlay the methods' accuracy-vs-noise curves;
:func:`curve_overlay` gathers each method's robust curve (mean and std over its runs)
and :func:`write_comparison` draws them into one ``accuracy_vs_eps.png``.
"""

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from arjax.config_lib import ConfigError
from arjax.evaluation import report as report_lib
from arjax.evaluation.metrics import format_mean_std, mann_whitney_u, mean_std
from arjax.experiment.summary import curve_with_std, format_table, run_scalars

METRICS = ("auto", "accuracy", "auc", "sensitivity", "specificity", "tvdi", "adi")
# Curve values a result's robust curves hold: accuracy always; segmentation runs also the
# Dice indices (TVDI, Eq. 9; ADI, Eq. 10 of the IMA paper), see arjax.evaluation.segmentation.
CURVE_VALUES = ("accuracy", "tvdi", "adi")
COLUMNS = ("standard", "adversarial", "mean")


def load_method(path: str) -> dict[str, Any]:
    """One method's per-run scalars from a workdir or a result file.

    Args:
      path: a workdir (``eval.json`` preferred, else ``report.json``) or a JSON
        file in either format.

    Returns:
      ``{"name": config name, "path": path, "per_run": [{metric: value}, ...],
      "curves": [run result with its robust curves, ...]}``; ``curves`` lists the runs
      that hold a ``robust_curve`` (possibly none).

    Raises:
      ConfigError: naming the path when it holds neither file or no runs.
    """
    if os.path.isdir(path):
        files = [os.path.join(path, f) for f in ("eval.json", "report.json")]
        found = [f for f in files if os.path.isfile(f)]
        if not found:
            raise ConfigError(f"{path!r} holds neither eval.json nor report.json")
        file = found[0]
    elif os.path.isfile(path):
        file = path
    else:
        raise ConfigError(f"{path!r} does not exist")
    try:
        with open(file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file} is not valid JSON: {e}") from e
    if "per_run" in data:
        per_run = data["per_run"]
    elif "runs" in data and all(isinstance(r, dict) for r in data["runs"]):
        per_run = [run_scalars(r) for r in data["runs"]]
    else:
        raise ConfigError(f"{file} has no per-run results ('per_run' or 'runs')")
    if not per_run:
        raise ConfigError(f"{file} lists no runs")
    return {
        "name": data.get("name", ""),
        "path": path,
        "per_run": per_run,
        "curves": _run_curves(data, os.path.dirname(file)),
    }


def _run_curves(data: Mapping[str, Any], folder: str) -> list[Mapping[str, Any]]:
    """The runs of a result file that hold a ``robust_curve``.

    A training ``report.json`` lists whole runs; a one-run ``eval.json`` holds the curve
    at its top; a many-run ``eval.json`` names its runs' folders, whose own ``eval.json``
    holds each curve.
    """
    if "robust_curve" in data:
        return [data]
    runs = data.get("runs", [])
    if all(isinstance(r, str) for r in runs):
        files = [os.path.join(folder, r, "eval.json") for r in runs]
        runs = []
        for run_file in filter(os.path.isfile, files):
            with open(run_file) as f:
                runs.append(json.load(f))
    return [r for r in runs if isinstance(r, dict) and "robust_curve" in r]


def curve_overlay(
    methods: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    key: str = "robust_curve",
    value: str = "accuracy",
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """One accuracy-vs-eps curve per method, as the IMA paper's Fig. 6 overlays them.

    Args:
      methods: from :func:`load_method`.
      labels: one label per method.
      key: ``"robust_curve"`` (L-inf) or ``"robust_curve_l2"``.
      value: one of ``CURVE_VALUES``: ``"accuracy"``, or a segmentation run's Dice index
        ``"tvdi"`` / ``"adi"`` (IMA's Figs. 10-12).

    Returns:
      ``{label: (eps [E], mean accuracy over runs [E], std [E] or None)}`` for the methods
      whose runs all hold the curve on one eps grid; the others are left out.
    """
    out = {}
    for label, m in zip(labels, methods, strict=True):
        runs = [r for r in m.get("curves", []) if key in r and value in r[key]]
        grids = {tuple(r[key]["eps"]) for r in runs}
        if runs and len(runs) == len(m["per_run"]) and len(grids) == 1:
            out[label] = curve_with_std(runs, key, value)
    return out


def default_labels(methods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Config names when they tell the methods apart, else the paths' last parts."""
    names = [m["name"] for m in methods]
    if all(names) and len(set(names)) == len(names):
        return names
    return [os.path.basename(os.path.normpath(m["path"])) or m["path"] for m in methods]


def attack_sections(methods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Attack names every run of every method has (``adversarial`` is the first attack)."""
    keys = set.intersection(*(set(r) for m in methods for r in m["per_run"]))
    not_attacks = {"clean", "robust_curve", "robust_curve_l2", "margins"}
    return sorted({k.split("/")[0] for k in keys} - not_attacks)


def choose_metric(methods: Sequence[Mapping[str, Any]], metric: str, attack: str) -> str:
    """The metric to tabulate: ``auto`` means AUC when every run has it, else accuracy.

    Raises:
      ConfigError: for an unknown metric or attack, or one some runs lack.
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; valid choices: {', '.join(METRICS)}")
    keys = set.intersection(*(set(r) for m in methods for r in m["per_run"]))
    sections = attack_sections(methods)
    if attack not in sections:
        raise ConfigError(
            f"unknown attack {attack!r} (not in every run); valid choices: {', '.join(sections)}"
        )
    if metric == "auto":
        auc_ok = {"clean/auc", f"{attack}/auc"} <= keys and all(
            np.isfinite(r["clean/auc"]) for m in methods for r in m["per_run"]
        )
        metric = "auc" if auc_ok else "accuracy"
    missing = {f"clean/{metric}", f"{attack}/{metric}"} - keys
    if missing:
        raise ConfigError(f"metric {metric!r} is missing from some runs ({sorted(missing)})")
    return metric


def compare_methods(
    methods: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    *,
    metric: str = "auto",
    attack: str = "adversarial",
) -> dict[str, Any]:
    """ARFL-style table and pairwise Mann-Whitney U tests.

    Args:
      methods: from :func:`load_method`.
      labels: one row label per method.
      metric: one of ``METRICS``.
      attack: section for the adversarial column: ``adversarial`` (the first
        evaluation attack) or an attack name such as ``pgd7_linf_0.01``.

    Returns:
      ``{"metric", "attack", "rows": {label: {column: {mean, std, n}}},
      "values": {label: {column: [per-run]}}, "pvalues": [{"a", "b", column: p}]}``
      with columns ``standard`` (clean), ``adversarial`` and ``mean`` (their
      per-run average, ARFL's "mean accuracy / AUC").
    """
    if len(set(labels)) != len(labels):
        raise ConfigError(f"method labels must differ; got {list(labels)}")
    metric = choose_metric(methods, metric, attack)
    values = {}
    for label, m in zip(labels, methods, strict=True):
        std = np.array([r[f"clean/{metric}"] for r in m["per_run"]], np.float64)
        adv = np.array([r[f"{attack}/{metric}"] for r in m["per_run"]], np.float64)
        values[label] = {"standard": std, "adversarial": adv, "mean": (std + adv) / 2}
    rows = {label: {c: mean_std(v[c]) for c in COLUMNS} for label, v in values.items()}
    pvalues = []
    for a, b in itertools.combinations(labels, 2):
        tests = {c: mann_whitney_u(values[a][c], values[b][c]) for c in COLUMNS}
        pvalues.append({"a": a, "b": b, **{c: t["pvalue"] for c, t in tests.items()}})
        pvalues[-1]["statistic"] = {c: t["statistic"] for c, t in tests.items()}
    return {
        "metric": metric,
        "attack": attack,
        "rows": rows,
        "values": {k: {c: v[c].tolist() for c in COLUMNS} for k, v in values.items()},
        "pvalues": pvalues,
    }


def format_tables(result: Mapping[str, Any]) -> str:
    """Markdown: the mean (std) table in percent and the p-value table."""
    name = "AUC" if result["metric"] == "auc" else result["metric"]
    attack = "" if result["attack"] == "adversarial" else f" ({result['attack']})"
    head = ["Method", "n", f"Standard {name}", f"Adversarial {name}{attack}", f"Mean {name}"]
    rows = [
        [label, str(row["standard"]["n"])]
        + [format_mean_std(row[c], digits=1, scale=100.0) for c in COLUMNS]
        for label, row in result["rows"].items()
    ]
    text = format_table(head, rows, markdown=True)
    if result["pvalues"]:
        rows = [[p["a"], p["b"]] + [f"{p[c]:.4g}" for c in COLUMNS] for p in result["pvalues"]]
        title = "\nMann-Whitney U, two-sided p-values:\n"
        text += "\n" + format_table(["A", "B", *COLUMNS], rows, title=title, markdown=True)
    return text


def write_comparison(
    result: Mapping[str, Any],
    out_dir: str,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] | None = None,
    curve_value: str = "accuracy",
) -> list[str]:
    """Writes ``comparison.json``, ``.md``, ``.png`` (bars) and ``accuracy_vs_eps.png``.

    Args:
      result: from :func:`compare_methods`.
      out_dir: output folder (created).
      curves: from :func:`curve_overlay`; when it holds at least one curve,
        ``accuracy_vs_eps.png`` (one line per method) is written and ``comparison.json``
        gains ``"curves": {label: {"eps", "accuracy", "std"}}``.
      curve_value: what the curves show (``CURVE_VALUES``), for the axis label and title;
        the JSON keeps the key ``"accuracy"`` for the curve's values.

    Returns:
      the paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"comparison.{ext}") for ext in ("json", "md", "png")]
    overlay = {
        label: {"eps": eps, "accuracy": acc, "std": std}
        for label, (eps, acc, std) in (curves or {}).items()
    }
    report_lib.write_json(paths[0], {**result, "curves": overlay} if overlay else result)
    with open(paths[1], "w") as f:
        f.write(format_tables(result) + "\n")
    table = {
        label: {c: (100 * row[c]["mean"], 100 * row[c]["std"]) for c in COLUMNS}
        for label, row in result["rows"].items()
    }
    report_lib.plot_metric_bars(
        table,
        paths[2],
        title=f"{result['metric']}: standard, adversarial ({result['attack']}) and mean over runs",
        ylabel=f"{result['metric']} (%)",
    )
    if curves:
        paths.append(os.path.join(out_dir, "accuracy_vs_eps.png"))
        name = {"accuracy": "robust accuracy", "tvdi": "TVDI", "adi": "ADI"}[curve_value]
        report_lib.plot_accuracy_vs_eps(
            curves,
            paths[-1],
            title=f"{name} vs noise level, mean (std) over runs",
            ylabel=curve_value,
        )
    return paths
