"""``python -m arjax.evaluate`` on a tiny trained workdir: same numbers, no retraining."""

import json
import os

import pytest
from helpers import tiny_config

from arjax import cli, evaluate
from arjax.experiment import final_eval as workdir_eval
from arjax.experiment import train as loop
from arjax.experiment import workdir as workdir_lib
from arjax.experiment.presets import method_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two seeds of a 4-step two-moons run with a val split and best-checkpoint selection."""
    cfg = tiny_config(num_epochs=1, eval_every=2, checkpoint_every=4, select_best="val/loss")
    cfg.data.sizes = dict(train=256, val=128, test=128)
    cfg.train.steps_per_call = 2
    cfg.train.num_devices = 1  # compiles faster; sharding is tested elsewhere
    cfg.seeds = (0, 1)
    cfg.method = method_config("standard")
    cfg.eval.eps = (0.0, 0.2)
    cfg.eval.losses = ("ce",)
    cfg.eval.num_steps = 3
    path = tmp_path_factory.mktemp("run")
    loop.run(cfg, str(path), progress=False)
    return path


def _snapshot(path):
    """Checkpoint steps and training logs: evaluation must not change them."""
    out = {}
    for run in ("seed_0", "seed_1"):
        out[run] = sorted(os.listdir(path / run / "checkpoints"))
        out[run + "/metrics"] = (path / run / "metrics.jsonl").read_bytes()
    return out


def test_evaluate_reproduces_training_numbers_without_retraining(trained):
    before = _snapshot(trained)
    runs = workdir_lib.find_run_dirs(str(trained))
    assert [os.path.relpath(r, trained) for r in runs] == ["seed_0", "seed_1"]  # not best/
    summary = workdir_eval.evaluate_workdir(str(trained), progress=False)
    assert _snapshot(trained) == before
    for run in ("seed_0", "seed_1"):
        ev = json.loads((trained / run / "eval.json").read_text())
        res = json.loads((trained / run / "result.json").read_text())
        assert ev["checkpoint"] == "best" and ev["steps"] == res["selected_step"]
        assert ev["clean"] == res["clean"]  # same state, same code, same attack keys
        assert ev["adversarial"] == res["adversarial"]
        assert ev["robust_curve"] == res["robust_curve"]
        assert ev["threshold"]["split"] == "val" and ev["threshold"]["rule"] == "youden"
        assert 0 <= ev["clean"]["sensitivity"] <= 1 and 0 <= ev["clean"]["specificity"] <= 1
        assert (trained / run / "roc_curves.png").stat().st_size > 0
    top = json.loads((trained / "eval.json").read_text())
    acc = [r["clean/accuracy"] for r in top["per_run"]]
    assert top["summary"]["clean/accuracy"]["n"] == 2
    assert top["summary"]["clean/accuracy"]["mean"] == pytest.approx(sum(acc) / 2)
    assert summary["runs"] == ["seed_0", "seed_1"]
    # a second call finds every run up to date and rewrites nothing per run
    stamps = [os.stat(trained / r / "eval.json").st_mtime_ns for r in ("seed_0", "seed_1")]
    workdir_eval.evaluate_workdir(str(trained), progress=False)
    assert stamps == [os.stat(trained / r / "eval.json").st_mtime_ns for r in ("seed_0", "seed_1")]


def test_cli_attack_grid_on_the_latest_checkpoint(trained, capsys):
    evaluate.main(
        [
            f"--workdir={trained}",
            "--attack=fgsm,pgd",
            "--eps=0.1,0.2",
            "--steps=2",
            "--checkpoint=latest",
            "--nocurves",
            "--noprogress",
        ]
    )
    printed = capsys.readouterr().out
    names = ["fgsm_linf_0.1", "fgsm_linf_0.2", "pgd2_linf_0.1", "pgd2_linf_0.2"]
    for name in ["clean", *names]:
        assert name in printed
    ev = json.loads((trained / "seed_1" / "eval.json").read_text())
    assert list(ev["attacks"]) == names and ev["adversarial"]["name"] == names[0]
    assert ev["attacks"]["pgd2_linf_0.2"]["eps"] == 0.2
    assert ev["eval_config"]["attacks"] == [
        "fgsm:linf:0.1:2",
        "fgsm:linf:0.2:2",
        "pgd:linf:0.1:2",
        "pgd:linf:0.2:2",
    ]
    assert ev["checkpoint"] == "latest" and ev["steps"] == 4
    assert "robust_curve" not in ev
    assert ev["attacks"]["pgd2_linf_0.2"]["accuracy"] <= ev["clean"]["accuracy"]
    top = json.loads((trained / "eval.json").read_text())
    assert top["summary"]["pgd2_linf_0.2/auc"]["n"] == 2
    assert (trained / "attacks_accuracy_linf.png").stat().st_size > 0  # metric vs eps

    # flags not given keep the config's attack: FGSM at adv_eps 0.2 here
    def flags(*args):
        return cli.parse(evaluate.PROG, "", [f"--workdir={trained}", *args], evaluate.define_flags)[
            0
        ]

    assert evaluate.eval_overrides(flags()) == {}
    args = flags("--norm=l2", "--steps=5")
    assert evaluate.eval_overrides(args) == {"num_steps": 5, "attacks": ("fgsm:l2:0.2:5",)}


@pytest.mark.parametrize(
    "args,expect",
    [
        (["--attack=cw"], "flag --attack: unknown 'cw'; valid choices: apgd-ce, apgd-dlr, apgd-t"),
        (["--norm=l1"], "flag --norm: unknown 'l1'; valid choices: linf, l2"),
        (["--eps=x"], "flag --eps: eps 'x' in --eps is not a number"),
        (["--checkpoint=old"], "flag --checkpoint=old: value should be one of"),
        (["--steps=0"], "flag --steps=0: 0 is not a positive integer"),
        (["--workdir=/no/such/dir"], "flag --workdir: '/no/such/dir' is not a directory"),
    ],
)
def test_cli_bad_arguments_exit_2(tmp_path, capsys, args, expect):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main([f"--workdir={tmp_path}", *args])
    assert exit_.value.code == 2
    assert expect in capsys.readouterr().err
    assert not (tmp_path / "eval.json").exists()


def test_cli_workdir_without_config_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main([f"--workdir={tmp_path}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "config.json not found" in err and err.startswith("arjax-evaluate: error:")
    assert len(err.strip().splitlines()) == 1  # one line, no traceback


def test_cli_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--help"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    for flag in ("workdir", "attack", "norm", "eps", "steps", "split", "checkpoint", "nocurves"):
        assert f"--{flag}" in printed or f"--[no]{flag[2:]}" in printed, flag
