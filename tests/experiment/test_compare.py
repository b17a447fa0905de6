"""``python -m arjax.compare`` on hand-written result files: table, p-values, bad arguments."""

import json

import numpy as np
import pytest
import scipy.stats

from arjax import compare
from arjax.evaluation.report import write_json

AUCS = {  # per-fold (clean AUC, PGD AUC) of three methods
    "standard": ([0.69, 0.70, 0.68, 0.71, 0.67], [0.58, 0.59, 0.57, 0.60, 0.56]),
    "dual_arfl": ([0.70, 0.69, 0.71, 0.68, 0.72], [0.68, 0.67, 0.69, 0.66, 0.70]),
    "madry": ([0.62, 0.60, 0.63], [0.57, 0.55, 0.58]),
}


def _result(clean, adv):
    """One run as the training loop / evaluate_run writes it (the fields compare reads)."""
    attack = {"name": "pgd7_linf_0.01", "attack": "pgd", "eps": 0.01, "auc": adv, "accuracy": 0.6}
    return {
        "clean": {"accuracy": 0.7, "auc": clean, "auc_per_class": [clean]},
        "attacks": {"pgd7_linf_0.01": attack},
        "adversarial": attack,
        "seed": 0,
    }


@pytest.fixture
def workdirs(tmp_path):
    """standard: a training report.json; dual_arfl: an evaluate eval.json; madry: a file."""
    (tmp_path / "standard").mkdir()
    runs = [_result(c, a) for c, a in zip(*AUCS["standard"], strict=True)]
    write_json(tmp_path / "standard" / "report.json", {"name": "ce", "runs": runs})
    (tmp_path / "dual_arfl").mkdir()
    per_run = [
        {"clean/auc": c, "adversarial/auc": a, "pgd7_linf_0.01/auc": a, "clean/accuracy": 0.7}
        | {"adversarial/accuracy": 0.6, "pgd7_linf_0.01/accuracy": 0.6}
        for c, a in zip(*AUCS["dual_arfl"], strict=True)
    ]
    write_json(tmp_path / "dual_arfl" / "eval.json", {"name": "", "per_run": per_run})
    runs = [_result(c, a) for c, a in zip(*AUCS["madry"], strict=True)]
    write_json(tmp_path / "madry.json", {"name": "madry", "runs": runs})
    return [str(tmp_path / "standard"), str(tmp_path / "dual_arfl"), str(tmp_path / "madry.json")]


def test_compare_table_and_p_values(workdirs, tmp_path, capsys):
    out_dir = tmp_path / "out"
    compare.main([*workdirs, "--labels=A,F,C", f"--out={out_dir}"])
    printed = capsys.readouterr().out
    assert "| Method | n | Standard AUC | Adversarial AUC | Mean AUC |" in printed
    assert "| A | 5 | 69.0 (1.6) | 58.0 (1.6) | 63.5 (1.6) |" in printed  # ARFL Table 2 style
    assert "| C | 3 | 61.7 (1.5) | 56.7 (1.5) | 59.2 (1.5) |" in printed
    result = json.loads((out_dir / "comparison.json").read_text())
    pairs = {(p["a"], p["b"]): p for p in result["pvalues"]}
    assert set(pairs) == {("A", "F"), ("A", "C"), ("F", "C")}
    names = {"A": "standard", "F": "dual_arfl", "C": "madry"}
    for (a, b), p in pairs.items():
        for col, idx in (("standard", 0), ("adversarial", 1)):
            ref = scipy.stats.mannwhitneyu(
                AUCS[names[a]][idx], AUCS[names[b]][idx], alternative="two-sided"
            )
            assert p[col] == pytest.approx(ref.pvalue)
        mean_a = np.add(*AUCS[names[a]]) / 2
        mean_b = np.add(*AUCS[names[b]]) / 2
        want = scipy.stats.mannwhitneyu(mean_a, mean_b, alternative="two-sided").pvalue
        assert p["mean"] == pytest.approx(want)
    assert pairs[("A", "F")]["adversarial"] < 0.05  # every F fold beats every A fold
    assert (out_dir / "comparison.png").stat().st_size > 0
    assert "| A | F |" in (out_dir / "comparison.md").read_text()
    # another attack column and the accuracy metric; default labels from names / paths
    res = compare.main(
        [*workdirs[:2], "--attack=pgd7_linf_0.01", "--metric=accuracy", f"--out={out_dir}"]
    )
    assert list(res["rows"]) == ["standard", "dual_arfl"]  # names "ce" and "" -> path parts
    assert res["rows"]["standard"]["adversarial"]["mean"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    "args,expect",
    [
        (["--metric=f1"], "flag --metric=f1: value should be one of"),
        (["--attack=cw"], "flag --attack: unknown 'cw'; valid choices: adversarial, pgd7"),
        (["--labels=A,B"], "flag --labels: 2 names for 3 methods"),
        (["MISSING"], "does not exist"),
    ],
)
def test_compare_bad_arguments_exit_2(workdirs, tmp_path, capsys, args, expect):
    args = [a.replace("MISSING", str(tmp_path / "nope")) for a in args]
    with pytest.raises(SystemExit) as exit_:
        compare.main([*workdirs, *args, f"--out={tmp_path / 'out'}"])
    assert exit_.value.code == 2
    assert expect in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


EPS = [0.0, 0.1, 0.2, 0.3]
CURVES = {  # per-run robust accuracies of three IMA-Moons-style methods
    "ce": [[0.95, 0.7, 0.3, 0.1], [0.93, 0.6, 0.2, 0.1]],
    "mma": [[0.92, 0.85, 0.5, 0.2]],
    "ima": [[0.94, 0.9, 0.7, 0.4], [0.92, 0.8, 0.6, 0.4], [0.93, 0.85, 0.65, 0.4]],
}


def _curve_run(acc, run=""):
    run_result = _result(acc[0], acc[1])
    run_result["robust_curve"] = {"eps": EPS, "accuracy": acc, "area": float(np.mean(acc))}
    return run_result | ({"run": run} if run else {})


@pytest.fixture
def curve_workdirs(tmp_path):
    """ce: training report.json; mma: one-run eval.json; ima: eval.json naming 3 run dirs."""
    ce, mma, ima = (tmp_path / name for name in CURVES)
    runs = [_curve_run(a) for a in CURVES["ce"]]
    write_json(ce / "report.json", {"name": "moons_ima:ce", "runs": runs})
    one = _curve_run(CURVES["mma"][0])
    write_json(mma / "eval.json", {**one, "name": "moons_ima:mma", "per_run": [_flat(one)]})
    names = [f"seed_{i}" for i in range(3)]
    for name, acc in zip(names, CURVES["ima"], strict=True):
        write_json(ima / name / "eval.json", _curve_run(acc, name))
    per_run = [_flat(_curve_run(a)) for a in CURVES["ima"]]
    write_json(ima / "eval.json", {"name": "moons_ima:ima", "runs": names, "per_run": per_run})
    return [str(ce), str(mma), str(ima)]


def _flat(run_result):
    from arjax.experiment.summary import run_scalars

    return run_scalars(run_result)


def test_compare_overlays_one_curve_per_method(curve_workdirs, tmp_path, monkeypatch):
    from arjax.evaluation import report

    figures = {}
    save = report._save

    def keep(fig, path):
        figures[str(path).rsplit("/", 1)[-1]] = [len(ax.containers) for ax in fig.axes]
        return save(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    out = tmp_path / "out"
    compare.main([*curve_workdirs, f"--out={out}"])
    assert (out / "accuracy_vs_eps.png").stat().st_size > 0
    assert figures["accuracy_vs_eps.png"] == [3]  # one error-bar line per method
    curves = json.loads((out / "comparison.json").read_text())["curves"]
    assert list(curves) == ["moons_ima:ce", "moons_ima:mma", "moons_ima:ima"]
    for name, runs in CURVES.items():
        got = curves[f"moons_ima:{name}"]
        assert got["eps"] == EPS
        np.testing.assert_allclose(got["accuracy"], np.mean(runs, axis=0))
        if len(runs) == 1:
            assert got["std"] is None
        else:
            np.testing.assert_allclose(got["std"], np.std(runs, axis=0, ddof=1))


def test_compare_without_curves_writes_no_overlay(workdirs, tmp_path):
    compare.main([*workdirs, f"--out={tmp_path / 'out'}"])
    assert not (tmp_path / "out" / "accuracy_vs_eps.png").exists()
    assert "curves" not in json.loads((tmp_path / "out" / "comparison.json").read_text())
