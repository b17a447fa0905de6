"""Every experiment config's smoke variant runs end to end on built-in data and resumes."""

import importlib.util
import json
import os

import pytest
from report_pins import check_report

from arjax.experiment import train as loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = [
    "moons_ima.py:smoke",
    "moons_ima.py:mma0.2,smoke",
    "moons_ima.py:trades6,smoke",
    "fashion_mnist_ima.py:smoke",
    "synthetic_lesions.py:smoke",
    "chestxray14_khakzar.py:smoke",
    "covid_ct_ima.py:smoke",
    "mammo_arfl.py:smoke",
    "moons_arfl.py:smoke",
    "moons_arfl.py:trades,smoke",
    "moons_arfl.py:mirst,smoke",
    "moons_arfl.py:dsbn,smoke",
    "mammo_arfl.py:trades,smoke",
    "mammo_arfl.py:mirst,smoke",
    "mammo_arfl.py:dsbn,smoke",
    # segmentation_ima.py:smoke runs (and resumes) in tests/experiment/test_segmentation_run.py
]


def load(spec):
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", path))
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("spec", SMOKE)
def test_smoke_variant_runs_and_resumes(spec, tmp_path):
    cfg = load(spec)
    cfg.train.num_devices = 1  # one device: the 8-device step is covered in test_training
    if cfg.data.name in ("synthetic_lesions", "synthetic_segmentation"):
        cfg.data.root = str(tmp_path / "data")
    report = loop.run(cfg, str(tmp_path / "run"), progress=False)
    assert (tmp_path / "run" / "report.json").exists()
    assert (tmp_path / "run" / "accuracy_vs_eps.png").stat().st_size > 0
    check_report(spec, report)  # the numbers of the code before the redesign
    summary = report["summary"]
    assert 0.0 <= summary["clean/accuracy"]["mean"] <= 1.0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().count("\n")
    # The same command again: the finished run is resumed, not retrained.
    again = loop.run(cfg, str(tmp_path / "run"), progress=False)
    assert again["summary"] == json.loads(json.dumps(summary))
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == lines


@pytest.mark.parametrize(
    "spec,expect",
    [
        ("moons_ima.py:adv", "unknown variant 'adv'"),
        ("moons_ima.py:mmax", "unknown variant 'mmax'; valid: ce, ima, adv<eps>"),
        ("svhn_ima.py:trades_6", r"unknown variant 'trades_6'.*trades\[<beta>\].*mma\[<d_max>\]"),
        ("chestxray14_khakzar.py:fgsm0.2", "unknown eps 0.2"),
        ("mammo_arfl.py:r0.3", "unknown variant 'r0.3'"),
        ("mammo_arfl.py:mma", "valid: standard, .*, dsbn, trades, mirst"),
        ("moons_arfl.py:dsbn,tiny", "unknown modifier 'tiny'"),
        ("segmentation_ima.py:advx", r"unknown variant 'advx'; valid: ce, adv<eps>"),
        ("segmentation_ima.py:ima,liver", "unknown data 'liver'.*valid: synthetic, smoke, heart"),
    ],
)
def test_unknown_variants_list_the_valid_ones(spec, expect):
    with pytest.raises(ValueError, match=expect):
        load(spec)


@pytest.mark.parametrize(
    "path", ["moons_ima.py", "fashion_mnist_ima.py", "svhn_ima.py", "covid_ct_ima.py"]
)
def test_ima_configs_have_the_baseline_variants(path):
    from arjax import methods

    for variant, name, field, value in [
        ("trades1", "trades", "beta", 1.0),
        ("trades6", "trades", "beta", 6.0),
        ("trades", "trades", "beta", 6.0),
        ("mma0.1", "mma", "d_max", 0.1),
        ("mma", "mma", "d_max", 0.3),
    ]:
        for arg in (variant, f"{variant},smoke"):
            cfg = load(f"{path}:{arg}")
            assert (cfg.method.name, cfg.method[field]) == (name, value), arg
            method = methods.from_config(cfg.method, num_epochs=cfg.train.num_epochs)
            steps = method.attack.num_steps if name == "trades" else method.num_steps
            assert steps == (20 if "," not in arg or "moons" in path else 3)
        if name == "trades":  # the IMA paper's setting: eps 0.3 with the 20-PGD's step
            assert (method.attack.eps, method.attack.alpha) == (0.3, 4.0)


def test_real_data_configs_fail_fast_without_data(tmp_path):
    cfg = load("chestxray14_khakzar.py:clean")
    with pytest.raises(loop.ConfigError, match="data.root"):
        loop.run(cfg, str(tmp_path), progress=False)
