"""Scalars of a run, the experiment report over runs, and the one table formatter.

``arjax-train`` prints :func:`format_report`, ``arjax-evaluate`` prints
:func:`format_eval` and ``arjax-compare`` the ARFL-style tables of
:mod:`arjax.experiment.compare`; all three lay their rows out with
:func:`format_table` (plain aligned text, or Markdown for ``comparison.md``).
"""

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from arjax.evaluation.metrics import aggregate, format_mean_std

log = logging.getLogger("arjax")


def run_scalars(result: Mapping[str, Any]) -> dict[str, float]:
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
                if key not in ("eps", "num_steps", "alpha", "restarts"):
                    out[f"{section}/{key}"] = float(value)
    for key in ("robust_curve", "robust_curve_l2"):
        if key in result:
            out[f"{key}/area"] = float(result[key]["area"])
            for area in ("area_tvdi", "area_adi"):  # segmentation runs
                if area in result[key]:
                    out[f"{key}/{area}"] = float(result[key][area])
    loc = result.get("localization", {}).get("mean")
    if loc:
        for t, acc in zip(result["localization"]["ious"], loc["accuracy"], strict=True):
            out[f"localization/accuracy@{t:g}"] = float(acc)
    if "margins" in result:
        out["margins/median"] = result["margins"]["median"]
        out["margins/mean"] = result["margins"]["mean"]
    return out


def curve_with_std(
    results: Sequence[Mapping[str, Any]], key: str = "robust_curve", value: str = "accuracy"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(eps [E], mean [E], std [E] or None)`` of a robust curve's ``value`` over runs.

    ``value`` is ``"accuracy"``, or ``"tvdi"`` / ``"adi"`` for segmentation runs.
    """
    eps = np.asarray(results[0][key]["eps"], float)
    accs = np.asarray([r[key][value] for r in results], float)
    std = accs.std(0, ddof=1) if len(results) > 1 else None
    return (eps, accs.mean(0), std)


def masking_warnings(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """``"<run> <attack>: gradient masking? ..."``, one per failed check of every run.

    Reads each result's ``masking_checks`` (see :func:`arjax.evaluation.suite.masking_checks`).
    """
    lines = []
    for r in results:
        run = r.get("run") or f"seed {r.get('seed', '?')}"
        if "fold" in r:
            run += f" fold {r['fold']}"
        for attack, section in r.get("masking_checks", {}).items():
            lines += [f"{run} {attack}: {w}" for w in section["warnings"]]
    return lines


def experiment_report(cfg: ml_collections.ConfigDict, results: list[dict]) -> dict:
    """The experiment report: per-run results and mean (std) over all folds and seeds.

    ``masking_warnings`` lists every failed gradient-masking check of every run.
    """
    summary = aggregate([run_scalars(r) for r in results])
    clean = summary.get("clean/accuracy", {}).get("mean", math.nan)
    adv = summary.get("adversarial/accuracy", {}).get("mean", math.nan)
    return {
        "name": cfg.get("name", ""),
        "method": cfg.method.name,
        "seeds": list(dict.fromkeys(r["seed"] for r in results)),
        "folds": list(dict.fromkeys(r["fold"] for r in results if "fold" in r)),
        "summary": summary,
        "mean_accuracy": (clean + adv) / 2,
        "masking_warnings": masking_warnings(results),
        "runs": results,
    }


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str = "",
    markdown: bool = False,
) -> str:
    """Lays out a table: first column left-aligned, the others right-aligned.

    Args:
      header: column names (``""`` for an unnamed first column).
      rows: one sequence of cell strings per row, as long as ``header``.
      title: a line printed above the table.
      markdown: a GitHub Markdown table instead of aligned text.

    Returns:
      the table as one string (no trailing newline).
    """
    lines = [title] if title else []
    if markdown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|---" * len(header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [str(row[0]).ljust(widths[0] + 2)]
        cells += [str(c).rjust(max(w, 12) + 2) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


def _is_percent(key: str) -> bool:
    return "loss" not in key and not key.startswith(("margins/", "robust_curve"))


def cell(stats: Mapping[str, Any], key: str) -> str:
    """``"95.2 (0.4) %"`` for fractions, ``"0.123 (0.004)"`` for losses and margins."""
    if _is_percent(key):
        return format_mean_std(stats, digits=1, scale=100.0) + " %"
    return format_mean_std(stats, digits=3)


def format_report(report: Mapping[str, Any]) -> str:
    """The training report's mean (std) numbers, one metric per row (``arjax-train``)."""
    title = f"{report['name'] or report['method']}  seeds={report['seeds']}"
    # ``adversarial/*`` repeats the first attack's own rows; print it once.
    first = (report.get("runs") or [{}])[0].get("adversarial", {}).get("name")
    if first:
        title += f"  adversarial={first}"
    rows = [
        [key, cell(stats, key)]
        for key, stats in report["summary"].items()
        if not (first and key.startswith(f"{first}/"))
    ]
    rows.append(["mean of clean/adv accuracy", f"{100 * report['mean_accuracy']:.1f} %"])
    return _with_warnings(format_table(["metric", "mean (std)"], rows, title=title), report)


def _with_warnings(table: str, report: Mapping[str, Any]) -> str:
    """The table, then a ``WARNING`` line per failed gradient-masking check."""
    lines = [f"WARNING {w}" for w in report.get("masking_warnings", ())]
    return "\n".join([table, *lines])


def format_eval(summary: Mapping[str, Any]) -> str:
    """Mean (std) in percent of the clean and per-attack metrics (``arjax-evaluate``)."""
    stats = summary["summary"]
    names = ["clean"] + sorted({k.split("/")[0] for k in stats} - {"clean", "adversarial"})
    columns = [
        c
        for c in ("accuracy", "auc", "sensitivity", "specificity", "tvdi", "adi")
        if any(f"{n}/{c}" in stats for n in names)
    ]
    rows = [
        [n] + [format_mean_std(stats[f"{n}/{c}"], scale=100.0) if f"{n}/{c}" in stats else "-"
               for c in columns]
        for n in names
        if any(f"{n}/{c}" in stats for c in columns)
    ]  # fmt: skip
    title = f"{summary['name'] or summary['method']}: {len(summary['runs'])} run(s), % mean (std)"
    return _with_warnings(format_table(["condition", *columns], rows, title=title), summary)


def diverged(losses: list[float], what: str) -> bool:
    """Warns when the logged loss ended far above where it started (finite, but diverged).

    An Adam run at too high a learning rate can end at loss 1e27 and chance
    accuracy without a NaN; "far above" is ten times the first logged loss and
    more than one nat higher.
    """
    if len(losses) < 2 or not (losses[-1] > 10 * losses[0] and losses[-1] > losses[0] + 1):
        return False
    log.warning(
        "%s: the training loss rose from %.4g to %.4g: the run diverged; lower "
        "optim.learning_rate",
        what, losses[0], losses[-1],
    )  # fmt: skip
    return True
