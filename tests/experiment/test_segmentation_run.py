"""``configs/segmentation_ima.py:smoke`` end to end: trains, resumes, re-evaluates and compares;
bad segmentation config values and data files fail before any compute."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from report_pins import check_report
from test_configs import load

from arjax import compare as compare_cli
from arjax.config_lib import ConfigError
from arjax.experiment import final_eval as evaluate_lib
from arjax.experiment import train as loop


def _smoke(tmp_path):
    cfg = load("segmentation_ima.py:smoke")
    cfg.train.num_devices = 1
    cfg.data.root = str(tmp_path / "data")
    return cfg


def test_smoke_trains_resumes_evaluates_and_compares(tmp_path):
    cfg = _smoke(tmp_path)
    run = str(tmp_path / "run")
    report = loop.run(cfg, run, progress=False)
    check_report("segmentation_ima.py:smoke", report)  # the numbers before the redesign
    for name in ("report.json", "accuracy_vs_eps.png", "segmentation_grid.png",
                 "dice_vs_eps.png", "margin_histogram.png"):  # fmt: skip
        assert os.path.getsize(os.path.join(run, name)) > 0, name
    result = json.load(open(os.path.join(run, "result.json")))
    assert result["task"] == "segmentation"
    for section in ("clean", "adversarial"):
        for metric in ("accuracy", "tvdi", "adi"):
            assert 0.0 <= result[section][metric] <= 1.0
    curve = result["robust_curve"]
    assert curve["eps"] == [0.0, 0.5] and curve["adi"][0] == result["clean"]["adi"]
    # worst case over the losses per sample: no better than either loss alone
    for loss, adi in curve["per_loss"].items():
        assert np.all(np.asarray(curve["adi"]) <= np.asarray(adi) + 1e-9), loss
    assert result["margins"]["min"] >= cfg.method.eps_max / cfg.train.num_epochs - 1e-6
    lines = open(os.path.join(run, "metrics.jsonl")).read().count("\n")
    again = loop.run(cfg, run, progress=False)
    assert again["summary"] == json.loads(json.dumps(report["summary"]))
    assert open(os.path.join(run, "metrics.jsonl")).read().count("\n") == lines
    # arjax-evaluate restores the checkpoint and gets the training loop's numbers
    evaluated = evaluate_lib.evaluate_workdir(run, progress=False)
    for metric in ("tvdi", "adi", "accuracy"):
        assert evaluated["adversarial"][metric] == pytest.approx(result["adversarial"][metric])
    # arjax-compare draws the ADI curves of segmentation runs
    out = str(tmp_path / "cmp")
    compare_cli.main(["--metric=adi", "--labels=a,b", f"--out={out}", run, run])
    table = json.load(open(os.path.join(out, "comparison.json")))
    assert table["rows"]["a"]["standard"]["mean"] == pytest.approx(result["clean"]["adi"])
    assert table["curves"]["a"]["accuracy"] == pytest.approx(curve["adi"])
    assert os.path.getsize(os.path.join(out, "accuracy_vs_eps.png")) > 0


def test_bad_values_and_files_fail_before_compute(tmp_path):
    cfg = _smoke(tmp_path)
    cfg.method.dice_threshold = 1.5
    with pytest.raises(ConfigError, match=r"method\.dice_threshold"):
        loop.run(cfg, str(tmp_path / "a"), progress=False)
    cfg = _smoke(tmp_path)
    cfg.model.widths = (4, 8, 8, 8, 8, 8)  # 16x16 images cannot be halved 5 times
    with pytest.raises(ConfigError, match=r"not divisible by 32.*model\.widths"):
        loop.run(cfg, str(tmp_path / "b"), progress=False)
    root = tmp_path / "folder" / "train"
    for sub in ("images", "masks"):
        os.makedirs(root / sub)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "images" / "x.png")
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(root / "masks" / "x.png")
    cfg = _smoke(tmp_path)
    cfg.data = dict(name="segmentation_folder", root=str(tmp_path / "folder"))
    cfg.train.batch_size = 1
    with pytest.raises(ConfigError, match=r"masks/x\.png: mask values \[7\]"):
        loop.run(cfg, str(tmp_path / "c"), progress=False)
