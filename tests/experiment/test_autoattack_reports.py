"""AutoAttack-class rows in the reports: masking checks, curves under AutoAttack, no AUC.

The tiny models are those of attack_models (fixed random MLPs, gradient-masked variants);
the end-to-end test trains a seconds-long two-moons run and evaluates it again.
"""

import dataclasses
import functools
import json
import re

import jax
import numpy as np
import pytest
from attack_models import NUM_WRONG, B, data, labels, model
from helpers import tiny_config

from arjax import evaluate as evaluate_cli
from arjax import losses, parallel
from arjax.attacks import ATTACKS, parse_attack, run_attack
from arjax.config_lib import ConfigError
from arjax.evaluation import report as report_lib
from arjax.evaluation import suite
from arjax.evaluation.attack_curve import attack_predictions
from arjax.experiment import final_eval as workdir_eval
from arjax.experiment import train as loop
from arjax.experiment.presets import base_config, method_config
from arjax.experiment.summary import format_eval, format_report

KEY = jax.random.key(0)
CHECK_NAMES = [
    "monotone_in_eps",
    "large_eps_breaks_all",
    "black_box_not_stronger",
    "more_iterations_not_stronger",
]


@dataclasses.dataclass(frozen=True)
class TinyModel:
    """The ModelFns interface (apply / logits_fn) around an attack_models network."""

    head: str
    transform: str = "none"

    def apply(self, params, batch_stats, x, *, train=False):
        del params, train
        return model(self.head, self.transform)(x), None, batch_stats

    def logits_fn(self, params, batch_stats, *, train=False):
        del params, batch_stats, train
        return model(self.head, self.transform)


def _eval_cfg(**fields):
    cfg = base_config().eval
    cfg.update(batch_size=B, num_steps=6, masking_steps=10, eps=(0.0, 0.05, 0.1, 0.2))
    cfg.update(fields)
    return cfg


def _evaluate(head, transform, cfg, curves=True):
    x = data(4)
    arrays = {"image": x, "label": labels(head, x)}
    mesh = parallel.make_mesh(1)
    m = TinyModel(head, transform)
    return suite.evaluate_split(m, {}, {}, arrays, cfg, (0.0, 1.0), KEY, mesh, curves=curves)


@functools.cache
def _written_masking_report(transform, tmp_dir):
    """The report of one AutoAttack row with masking checks, written and read back."""
    cfg = _eval_cfg(attacks=("autoattack-fast:linf:0.1:6",))
    report, _ = _evaluate("softmax3", transform, cfg, curves=False)
    path = f"{tmp_dir}/{transform}.json"
    report_lib.write_json(path, report)
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("transform", ["stop", "round"])
def test_masked_model_is_flagged_in_the_written_json_and_plain_is_not(transform, tmp_path_factory):
    tmp = str(tmp_path_factory.getbasetemp())
    written = {t: _written_masking_report(t, tmp) for t in ("none", transform)}
    plain = written["none"]["masking_checks"]["autoattack-fast6_linf_0.1"]
    masked = written[transform]["masking_checks"]["autoattack-fast6_linf_0.1"]
    print({t: [(c["name"], c["passed"]) for c in s["checks"]] for t, s in
           (("none", plain), (transform, masked))})  # fmt: skip
    for section in (plain, masked):
        assert [c["name"] for c in section["checks"]] == CHECK_NAMES
        assert section["norm"] == "linf" and section["eps"] == 0.1
        assert section["num_examples"] == B and section["num_steps"] == 10
        assert all(np.isfinite(list(c["detail"].values())).all() for c in section["checks"])
    assert plain["passed"] and plain["warnings"] == []
    failed = {c["name"] for c in masked["checks"] if not c["passed"]}
    assert not masked["passed"] and {"large_eps_breaks_all", "black_box_not_stronger"} <= failed
    assert len(masked["warnings"]) == len(failed)
    assert all(w.startswith("gradient masking? ") for w in masked["warnings"])
    # the unbounded attack leaves the masked model's examples correct, not the plain one's
    large = {c["name"]: c["detail"] for c in masked["checks"]}["large_eps_breaks_all"]
    assert large["robust_acc"] > 0.05
    # the run summary lists them and the printed table ends with one WARNING line each
    result = {**written[transform], "seed": 0, "run": "seed_0"}
    summary = workdir_eval.summarize(base_config(), [result])
    assert summary["masking_warnings"] == [
        f"seed_0 autoattack-fast6_linf_0.1: {w}" for w in masked["warnings"]
    ]
    printed = format_eval(summary).splitlines()
    assert printed[-len(failed) :] == [f"WARNING {w}" for w in summary["masking_warnings"]]


def test_masking_checks_modes_and_shared_radius():
    specs = ("pgd:linf:0.1:3", "apgd-ce:linf:0.1:3", "autoattack-fast:linf:0.1:3")

    def run(mode):
        cfg = _eval_cfg(attacks=specs, masking_checks=mode, masking_examples=B // 2)
        return _evaluate("softmax3", "none", cfg, curves=False)[0]

    assert "masking_checks" not in run("off")
    auto = run("auto")
    assert sorted(auto["masking_checks"]) == ["apgd-ce3_linf_0.1", "autoattack-fast3_linf_0.1"]
    assert auto["masking_checks"]["apgd-ce3_linf_0.1"]["num_examples"] == B // 2
    every = run("all")
    assert sorted(every["masking_checks"]) == sorted(
        ["pgd3_linf_0.1", "apgd-ce3_linf_0.1", "autoattack-fast3_linf_0.1"]
    )
    # one (norm, eps): checked once, the same numbers under every attack name
    sections = list(every["masking_checks"].values())
    assert all(s == sections[0] for s in sections)
    assert sections[0] == auto["masking_checks"]["apgd-ce3_linf_0.1"]


def test_autoattack_curve_is_monotone_and_matches_the_registry_per_radius():
    f, x = model("softmax3"), data(5)
    y = labels("softmax3", x)
    spec = parse_attack("autoattack-fast:linf:0:6", default_steps=6)
    eps = (0.2, 0.0, 0.05, 0.1, 0.02)
    preds = attack_predictions(f, x, y, KEY, spec, eps=eps, batch_size=B)
    order = np.argsort(eps)
    correct, raw = preds.correct[order], preds.per_loss["autoattack-fast"][order]
    assert not np.any(correct[1:] & ~correct[:-1])  # per sample: once broken, broken
    np.testing.assert_array_equal(correct, np.logical_and.accumulate(raw, axis=0))
    np.testing.assert_array_equal(correct[0], preds.clean)  # eps = 0: no attack
    assert preds.clean.mean() == pytest.approx(1 - NUM_WRONG / B)
    attack = jax.jit(lambda x, y, k, e: run_attack(spec, f, x, y, k, eps=e))
    for i, e in enumerate(eps):  # radius i is the registry's attack with key fold_in(key, i)
        if e == 0.0:
            continue
        k = jax.random.fold_in(jax.random.fold_in(KEY, i), 0)
        ok = np.asarray(losses.predictions_correct(f(attack(x, y, k, np.float32(e))), y))
        np.testing.assert_array_equal(ok & preds.clean, preds.per_loss["autoattack-fast"][i])
    curve = preds.curve()
    acc = curve.accuracy[order]
    print(dict(zip(np.asarray(eps)[order], acc, strict=True)))
    assert np.all(np.diff(acc) <= 0) and acc[-1] < acc[0]
    assert np.all(curve.accuracy <= curve.per_loss["autoattack-fast"])
    # chunked (batch 7, last chunk padded) gives the same curve up to the random starts
    chunked = attack_predictions(f, x, y, KEY, spec, eps=eps, batch_size=7).curve().accuracy
    chunked = chunked[order]
    assert np.all(np.diff(chunked) <= 0) and chunked[0] == acc[0]


def test_report_curve_uses_the_configured_attack():
    specs = suite.attack_specs(_eval_cfg(attacks=("pgd:linf:0.1:6", "autoattack:l2:0.5:6")))
    spec = suite.curve_spec(_eval_cfg(), specs, "linf")
    assert (spec.attack, spec.norm, spec.num_steps, spec.eps) == ("autoattack", "linf", 6, 0.0)
    assert suite.curve_spec(_eval_cfg(curve_attack="pgd"), specs, "linf") is None
    assert suite.curve_spec(_eval_cfg(), specs[:1], "linf") is None  # PGD only: IMA's curve
    assert suite.curve_spec(_eval_cfg(curve_attack="apgd-ce"), specs[:1], "l2").attack == "apgd-ce"
    cfg = _eval_cfg(attacks=("autoattack-fast:linf:0.1:6",), masking_checks="off")
    cfg.eps_l2 = (0.0, 0.5, 1.0)
    report, _ = _evaluate("softmax5", "none", cfg)
    for key, norm in (("robust_curve", "linf"), ("robust_curve_l2", "l2")):
        curve = report[key]
        assert curve["attack"]["attack"] == "autoattack-fast" and curve["norm"] == norm
        assert list(curve["per_loss"]) == ["autoattack-fast"]
        assert np.all(np.diff(curve["accuracy"]) <= 0)
        assert curve["accuracy"][0] == report["clean"]["accuracy"]
    # the curve at the row's radius agrees with the row (same attack, steps and radius)
    row = report["attacks"]["autoattack-fast6_linf_0.1"]["accuracy"]
    assert abs(report["robust_curve"]["accuracy"][2] - row) <= 2 / B


@pytest.mark.parametrize("head", ["binary", "multilabel"])
def test_no_auc_for_autoattack_rows(head):
    cfg = _eval_cfg(
        attacks=("apgd-ce:linf:0.1:5", "autoattack-fast:linf:0.1:5"), masking_checks="off"
    )
    report, logits = _evaluate(head, "none", cfg, curves=False)
    apgd, aa = (
        report["attacks"]["apgd-ce5_linf_0.1"],
        report["attacks"]["autoattack-fast5_linf_0.1"],
    )
    assert 0 <= apgd["auc"] <= 1 and "auc" in report["clean"]
    assert not {"auc", "auc_per_class", "auc_skipped_classes"} & set(aa)
    assert aa["auc_omitted"].startswith("AUC omitted") and 0 <= aa["accuracy"] <= 1
    assert "autoattack-fast5_linf_0.1" not in logits and "apgd-ce5_linf_0.1" in logits
    assert aa["accuracy"] <= apgd["accuracy"] + 1 / B
    summary = workdir_eval.summarize(base_config(), [{**report, "seed": 0}])
    assert "autoattack-fast5_linf_0.1/auc" not in summary["summary"]
    row = next(r for r in format_eval(summary).splitlines() if r.startswith("autoattack"))
    assert re.split(r"\s{2,}", row)[2] == "-"  # the auc column
    assert all(not ATTACKS[a].score_calibrated for a in ("autoattack", "autoattack-fast"))
    assert all(ATTACKS[a].score_calibrated for a in ("pgd", "apgd-ce", "square"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("masking_checks", "yes", "unknown eval.masking_checks 'yes'; valid choices: all, auto"),
        ("masking_examples", 0, r"eval.masking_examples=0 is out of range; valid: \[1, inf\]"),
        ("masking_steps", 0, r"eval.masking_steps=0 is out of range; valid: \[1, inf\]"),
        ("curve_attack", "cw", "unknown eval.curve_attack 'cw'; valid choices: apgd-ce"),
    ],
)
def test_bad_fields_fail_before_compute(field, value, message):
    cfg = base_config()
    cfg.eval[field] = value
    with pytest.raises(ConfigError, match=message):
        suite.validate(cfg)


def test_training_report_and_evaluate_cli_carry_the_checks(tmp_path, capsys):
    cfg = tiny_config(num_epochs=1, eval_every=4, checkpoint_every=4)
    cfg.data.sizes = dict(train=256, test=64)
    cfg.train.num_devices = 1
    cfg.method = method_config("standard")
    cfg.eval.update(attacks=("autoattack-fast:linf:0.1:3",), num_steps=3, masking_steps=3)
    cfg.eval.update(masking_examples=32, eps=(0.0, 0.1, 0.3))
    report = loop.run(cfg, str(tmp_path), progress=False)
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["masking_warnings"] == report["masking_warnings"]
    run = written["runs"][0]
    section = run["masking_checks"]["autoattack-fast3_linf_0.1"]
    assert [c["name"] for c in section["checks"]] == CHECK_NAMES
    assert section["num_examples"] == 32 and section["num_steps"] == 3
    assert len(section["warnings"]) == sum(not c["passed"] for c in section["checks"])
    assert run["robust_curve"]["attack"]["attack"] == "autoattack-fast"
    assert np.all(np.diff(run["robust_curve"]["accuracy"]) <= 0)
    assert "auc" not in run["attacks"]["autoattack-fast3_linf_0.1"]
    assert (tmp_path / "accuracy_vs_eps.png").stat().st_size > 0
    if report["masking_warnings"]:
        assert format_report(report).splitlines()[-1].startswith("WARNING ")
    evaluate_cli.main(
        [f"--workdir={tmp_path}", "--attack=apgd-ce", "--eps=0.1", "--steps=3", "--nocurves",
         "--noprogress"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert list(ev["masking_checks"]) == ["apgd-ce3_linf_0.1"]
    assert ev["masking_checks"]["apgd-ce3_linf_0.1"]["checks"][0]["name"] == "monotone_in_eps"
    warned = [line for line in printed.splitlines() if line.startswith("WARNING ")]
    assert warned == [f"WARNING {w}" for w in ev["masking_warnings"]]
    assert all("apgd-ce3_linf_0.1: gradient masking? " in w for w in warned)
    evaluate_cli.main(
        [f"--workdir={tmp_path}", "--attack=apgd-ce", "--eps=0.1", "--steps=3", "--nocurves",
         "--noprogress", "--masking_checks=off"]
    )  # fmt: skip
    assert "masking_checks" not in json.loads((tmp_path / "eval.json").read_text())
