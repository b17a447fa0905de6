"""Named evaluators during training and the best-checkpoint policy (``config.evals``,
``train.best``): robust early stopping keeps the step with the best robust accuracy."""

import json

import numpy as np
import pytest
from helpers import tiny_config

from arjax.config_lib import ConfigError
from arjax.experiment import evals
from arjax.experiment import train as loop
from arjax.training import checkpoint


def robust_config(mode="max"):
    cfg = tiny_config(num_epochs=4, eval_every=4, checkpoint_every=8, num_devices=1)
    cfg.data.sizes = dict(train=512, val=128, test=128)
    cfg.evals = {
        "val": {"type": "classification", "split": "val"},
        "val_pgd": {"type": "robust", "split": "val", "attacks": ("pgd:linf:0.1:3",),
                    "max_examples": 64},
    }  # fmt: skip
    cfg.train.best = dict(metric="val_pgd/accuracy", mode=mode, patience=0)
    return cfg


@pytest.mark.parametrize("mode", ["max", "min"])
def test_robust_early_stopping_keeps_the_best_robust_validation_step(tmp_path, mode):
    report = loop.run(robust_config(mode), str(tmp_path), progress=False)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    evals_ = [r for r in records if "val_pgd/accuracy" in r]
    assert [r["step"] for r in evals_] == list(range(4, 33, 4))
    for r in evals_:  # both evaluators wrote their metrics in the same record
        assert {"val/loss", "val/accuracy", "val_pgd/clean_accuracy"} <= set(r)
        assert r["val_pgd/accuracy"] <= r["val_pgd/clean_accuracy"]
        assert r["val_pgd/accuracy"] == r["val_pgd/pgd3_linf_0.1/accuracy"]  # one attack
    values = np.array([r["val_pgd/accuracy"] for r in evals_])
    best = int(np.argmax(values) if mode == "max" else np.argmin(values))  # ties: the first
    want = evals_[best]["step"]
    assert report["runs"][0]["selected_step"] == want
    meta = json.loads((tmp_path / "best" / "best.json").read_text())
    assert (meta["step"], meta["value"]) == (want, pytest.approx(values[best]))
    kept = checkpoint.Checkpointer(str(tmp_path / "best" / "checkpoints"))
    assert kept.latest_step() == want
    kept.close()
    assert len(set(values.round(6))) > 1  # the choice was not a tie everywhere


def build(cfg, splits=("train", "val", "test")):
    return evals.build(cfg, splits)


def test_default_evaluator_is_named_after_its_split():
    cfg = tiny_config()
    evaluators, policy = build(cfg, ("train", "test"))
    assert list(evaluators) == ["test"] and evaluators["test"].every == cfg.train.eval_every
    assert not policy.enabled
    cfg.train.best = dict(metric="val/loss", mode="min", patience=2)  # an older run's spelling
    _, policy = build(cfg, ("train", "test"))
    assert (policy.metric, policy.mode, policy.patience) == ("test/loss", "min", 2)


@pytest.mark.parametrize(
    "section,best,expect",
    [
        ({"a": {"type": "robustt"}}, {}, "unknown evals.a.type 'robustt'.*did you mean 'robust'"),
        ({"a": {"type": "robust", "atacks": ()}}, {}, "unknown field evals.a.atacks.*attacks"),
        ({"a": {"type": "robust", "attacks": ("pgd:linf:0.1:x",)}}, {}, "evals.a.attacks"),
        ({"a": {"type": "classification", "split": "dev"}}, {}, "unknown evals.a.split 'dev'"),
        ({"a": {"type": "classification", "every": -1}}, {}, "evals.a.every=-1"),
        ({}, {"metric": "val_pgd/accuracy"}, "names no evaluator's metric; valid: val/<metric>"),
        ({"a": {"type": "robust"}}, {"metric": "a/auc"}, "evaluator 'a' reports accuracy"),
    ],
)
def test_bad_evaluators_and_best_metrics_name_the_field(section, best, expect):
    cfg = tiny_config()
    cfg.evals = section
    cfg.train.best.update(best)
    with pytest.raises(ConfigError, match=expect):
        build(cfg)
