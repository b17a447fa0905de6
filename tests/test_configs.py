"""Every experiment config's smoke variant runs end to end on built-in data and resumes."""

import importlib.util
import json
import os

import pytest

from arjax.experiment import train as loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = [
    "moons_ima.py:smoke",
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
    if cfg.data.name == "synthetic_lesions":
        cfg.data.root = str(tmp_path / "data")
    report = loop.run(cfg, str(tmp_path / "run"), progress=False)
    assert (tmp_path / "run" / "report.json").exists()
    assert (tmp_path / "run" / "accuracy_vs_eps.png").stat().st_size > 0
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
        ("chestxray14_khakzar.py:fgsm0.2", "unknown eps 0.2"),
        ("mammo_arfl.py:r0.3", "unknown variant 'r0.3'"),
        ("mammo_arfl.py:mma", "valid: standard, .*, dsbn, trades, mirst"),
        ("moons_arfl.py:dsbn,tiny", "unknown modifier 'tiny'"),
    ],
)
def test_unknown_variants_list_the_valid_ones(spec, expect):
    with pytest.raises(ValueError, match=expect):
        load(spec)


def test_real_data_configs_fail_fast_without_data(tmp_path):
    cfg = load("chestxray14_khakzar.py:clean")
    with pytest.raises(loop.ConfigError, match="data.root"):
        loop.run(cfg, str(tmp_path), progress=False)
