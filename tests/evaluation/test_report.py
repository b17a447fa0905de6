"""Report files and figures: PNGs, JSON round trips, the comparison table."""

import json
import math
import os
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from arjax.config_lib import ConfigError
from arjax.evaluation import (
    RobustCurve,
    plot_accuracy_vs_eps,
    plot_decision_boundary,
    plot_histogram,
    plot_roc_curves,
    plot_training_curves,
)
from arjax.evaluation.report import read_jsonl, write_json
from arjax.experiment import compare as comparison

# --------------------------------------------------------------------------- report


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    predict = lambda p: 1 / (1 + np.exp(-(p[:, 0] + p[:, 1]) * 3))  # noqa: E731
    out = plot_decision_boundary(
        predict,
        x,
        y,
        tmp_path / "a" / "db.png",
        title="moons",
        x_adv=x + 0.1,
        grid_points=50,
        max_points=40,
    )
    assert _is_png(out)
    curve = RobustCurve((0.0, 0.1), np.array([0.9, 0.4]), {"ce": np.array([0.9, 0.5])}, 0.9, "linf")
    out = plot_accuracy_vs_eps(
        {"ima": curve, "ce": ([0.0, 0.1], [0.9, 0.1], [0.01, 0.02]), "adv": ([0, 0.1], [0.8, 0.5])},
        tmp_path / "b" / "acc.png",
        title="robustness",
    )
    assert _is_png(out)
    records = [
        {"step": s, "train/loss": 1.0 / (s + 1), "train/accuracy": s / 10, "lr": 0.1}
        for s in range(10)
    ] + [{"step": 10, "val/accuracy": 0.7, "val/loss": float("nan"), "note": "x"}, {"a": 1}]
    assert _is_png(plot_training_curves(records, tmp_path / "c" / "train.png"))
    assert _is_png(plot_histogram(rng.random(100), tmp_path / "hist.png", title="margins"))
    assert _is_png(plot_training_curves([], tmp_path / "empty.png"))


def test_write_json_round_trips_numpy_values(tmp_path):
    obj = {
        "f32": np.float32(0.25),
        "i64": np.int64(7),
        "arr": np.arange(6, dtype=np.int32).reshape(2, 3),
        "jax": jnp.array([0.5, 1.5]),
        "tuple": (1, 2.5),
        "nan": float("nan"),
        "curve": RobustCurve((0.0, 0.1), np.array([1.0, 0.5]), {}, 1.0, "linf"),
        "nested": {"b": np.bool_(True)},
    }
    path = write_json(tmp_path / "sub" / "report.json", obj)
    back = json.loads(path.read_text())
    assert back["f32"] == 0.25 and back["i64"] == 7
    assert back["arr"] == [[0, 1, 2], [3, 4, 5]] and back["jax"] == [0.5, 1.5]
    assert back["tuple"] == [1, 2.5] and math.isnan(back["nan"]) and back["nested"]["b"] is True
    assert back["curve"]["area"] == pytest.approx(0.75)
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temp file left
    with pytest.raises(TypeError, match="object"):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()


def test_read_jsonl_skips_blank_and_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n\n{"step": 2, "loss": 0.25}\n{"step": 3, "lo')
    with pytest.warns(UserWarning, match="truncated"):
        records = read_jsonl(path)
    assert records == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    path.write_text('{"step": 1}\n{bad\n{"step": 3}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_jsonl(path)
    path.write_text('{"step": 1}\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_jsonl(path) == [{"step": 1}]


def _method(name, clean, adv):
    runs = [
        {"clean/auc": c, "adversarial/auc": a, "clean/accuracy": 0.5, "adversarial/accuracy": 0.25}
        for c, a in zip(clean, adv, strict=True)
    ]
    return {"name": name, "path": f"runs/{name}", "per_run": runs}


def test_comparison_table_and_mann_whitney_match_scipy(tmp_path):
    a = _method("A", [0.70, 0.72, 0.69, 0.71, 0.68], [0.58, 0.60, 0.57, 0.59, 0.61])
    b = _method("B", [0.69, 0.70, 0.68, 0.67, 0.71], [0.67, 0.69, 0.66, 0.68, 0.70])
    c = _method("C", [0.60, 0.62], [0.50, 0.52])
    out = comparison.compare_methods([a, b, c], ["A", "B", "C"])
    assert out["metric"] == "auc"  # every run has an AUC
    row = out["rows"]["A"]
    assert row["standard"]["mean"] == pytest.approx(0.70)
    assert row["standard"]["std"] == pytest.approx(np.std([0.70, 0.72, 0.69, 0.71, 0.68], ddof=1))
    assert row["mean"]["mean"] == pytest.approx((0.70 + 0.59) / 2)  # ARFL's mean AUC
    assert [(p["a"], p["b"]) for p in out["pvalues"]] == [("A", "B"), ("A", "C"), ("B", "C")]
    for p in out["pvalues"]:
        for col in comparison.COLUMNS:
            va, vb = out["values"][p["a"]][col], out["values"][p["b"]][col]
            ref = scipy.stats.mannwhitneyu(va, vb, alternative="two-sided")
            assert p[col] == pytest.approx(ref.pvalue)
    assert out["pvalues"][0]["adversarial"] < 0.05  # B's adversarial AUCs all higher
    table = comparison.format_tables(out)
    assert "| A | 5 | 70.0 (1.6) | 59.0 (1.6) | 64.5 (" in table
    acc = comparison.compare_methods([a, b], ["A", "B"], metric="accuracy")
    assert acc["rows"]["B"]["mean"]["mean"] == pytest.approx(0.375)
    with pytest.raises(ConfigError, match="valid choices: adversarial"):
        comparison.compare_methods([a, b], ["A", "B"], attack="pgd")
    paths = comparison.write_comparison(out, str(tmp_path))
    assert all(os.path.getsize(p) > 0 for p in paths)
    with open(paths[0]) as f:
        assert json.load(f)["pvalues"][1]["b"] == "C"


def test_report_plots_leave_pyplot_and_its_backend_alone(tmp_path):
    # A notebook's inline backend must survive importing arjax, and report plots must not
    # open pyplot figures (they used to force matplotlib.use("Agg") at import time).
    import subprocess
    import sys

    import matplotlib.pyplot as plt

    code = "import matplotlib, arjax.evaluation.report; print(matplotlib.get_backend())"
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().lower() == "svg"
    before = plt.get_fignums()
    assert _is_png(plot_histogram(np.arange(10.0), tmp_path / "h.png", bins=5))
    assert plt.get_fignums() == before


def test_roc_plot_writes_png_with_a_single_valued_panel(tmp_path):
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, size=40)
    panels = {
        "class 0": {"clean": (rng.random(40) + y, y), "fgsm": (rng.random(40), y)},
        "class 1": {"clean": (rng.random(40), np.ones(40))},
    }
    path = plot_roc_curves(panels, tmp_path / "roc.png", operating_points={"class 0": {}})
    assert path.stat().st_size > 0
