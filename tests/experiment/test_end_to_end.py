"""End to end on tiny two-moons runs: outputs, resume, preemption, bad configs."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import preempt_after_save, tiny_config

from arjax.experiment import setup
from arjax.experiment import train as loop
from arjax.experiment.presets import method_config
from arjax.training import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def flat_numbers(report):
    return {k: v["mean"] for k, v in report["summary"].items()}


def test_run_writes_report_plots_and_checkpoint(tmp_path):
    report = loop.run(tiny_config(), str(tmp_path), progress=False)
    for name in (
        "report.json",
        "config.json",
        "metrics.jsonl",
        "decision_boundary.png",
        "accuracy_vs_eps.png",
        "training_curves.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert os.listdir(tmp_path / "checkpoints")
    with open(tmp_path / "report.json") as f:
        on_disk = json.load(f)
    assert on_disk["summary"] == report["summary"]
    s = flat_numbers(report)
    assert 0.5 < s["clean/accuracy"] <= 1.0  # learned something in 32 steps
    assert s["adversarial/accuracy"] <= s["clean/accuracy"]
    curve = report["runs"][0]["robust_curve"]
    assert curve["accuracy"][0] == pytest.approx(s["clean/accuracy"])
    assert np.all(np.diff(curve["accuracy"]) <= 1e-9)  # robust accuracy falls with eps


@pytest.mark.parametrize("method", ["arfl", "ima", "mma"])
def test_interrupted_run_resumes_to_the_same_metrics(tmp_path, monkeypatch, method):
    cfg = tiny_config()
    if method in ("ima", "mma"):
        cfg.method = method_config(method, num_steps=5, num_bisections=4)
        cfg.model.num_outputs = 2
    straight = loop.run(cfg, str(tmp_path / "a"), progress=False)

    # Interrupt run b right after its first checkpoint, as SIGTERM would.
    preempt_after_save(monkeypatch)
    assert loop.run(cfg, str(tmp_path / "b"), progress=False) is None
    saved = checkpoint.Checkpointer(str(tmp_path / "b" / "checkpoints"))
    assert saved.latest_step() == cfg.train.checkpoint_every
    saved.close()
    assert not (tmp_path / "b" / "report.json").exists()

    monkeypatch.undo()
    resumed = loop.run(cfg, str(tmp_path / "b"), progress=False)
    a, b = flat_numbers(straight), flat_numbers(resumed)
    assert a.keys() == b.keys()
    if method in ("ima", "mma"):
        assert "margins/median" in a
        assert (tmp_path / "b" / "margin_histogram.png").stat().st_size > 0
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), key


def test_resume_with_a_different_config_is_refused(tmp_path):
    loop.run(tiny_config(num_epochs=1), str(tmp_path), progress=False)
    with pytest.raises(loop.ConfigError, match="different config.*train.num_epochs"):
        loop.run(tiny_config(num_epochs=2), str(tmp_path), progress=False)


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    cfg = tiny_config()
    cfg.optim.name = "sgd"
    cfg.optim.learning_rate = 1e30
    with pytest.raises(loop.NonFiniteLossError, match=r"at step \d+ \(method 'arfl'"):
        loop.run(cfg, str(tmp_path), progress=False)


def launch(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "arjax.launch", "--noprogress", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


@pytest.mark.parametrize(
    "override,expect",
    [
        (
            "--config.method.name=madry",
            "valid choices: adversarial, arfl, dsbn, ima, mart, mirst, mma, noise, standard, "
            "trades",
        ),
        (
            "--config.model.name=resnet",
            "unknown model.name 'resnet'; valid choices: cam_cnn, densenet121, "
            "densenet121_truncated, ima_cnn, mlp, preact_resnet18, resnet18",
        ),
        (
            "--config.data.name=mnist",
            "unknown data.name 'mnist'; valid choices: chestxray14, covid_ct, csv_manifest, "
            "moons, msd, segmentation_folder, synthetic_images, synthetic_lesions, "
            "synthetic_segmentation, tfds",
        ),
        ("--config.optim.name=lion", "valid choices: adam, adamw, sgd"),
        ("--config.method.r=2.0", "method.r=2.0 is out of range"),
    ],
)
def test_cli_rejects_bad_config_before_compute(tmp_path, override, expect):
    t0 = time.perf_counter()
    out = launch("--config=configs/quickstart.py", f"--workdir={tmp_path}", override)
    assert out.returncode != 0
    assert expect in out.stderr
    assert not (tmp_path / "checkpoints").exists()  # failed before any training
    del t0


def test_cli_sigterm_saves_and_exits_zero(tmp_path):
    args = [
        sys.executable,
        "-m",
        "arjax.launch",
        "--noprogress",
        "--config=configs/quickstart.py",
        f"--workdir={tmp_path}",
        "--config.train.num_epochs=100000",
        "--config.train.checkpoint_every=31",
    ]
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ckpts = tmp_path / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (
        ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir())
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "preempted" in out
    steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert steps and steps[-1] < 100000 * 31


def test_init_from_takes_another_runs_parameters(tmp_path):
    import jax

    from arjax.models import build_model
    from arjax.training import optim
    from arjax.training.state import create_train_state

    cfg = tiny_config(num_epochs=1)
    loop.run(cfg, str(tmp_path / "phase1"), progress=False)
    saved = checkpoint.Checkpointer(str(tmp_path / "phase1" / "checkpoints"))
    _, params, stats = build_model(cfg.model, (2,), 2, seed=0)
    fresh = create_train_state(params, stats, optim.make_optimizer(cfg.optim, 8), seed=0)
    trained = saved.restore(fresh)
    saved.close()
    started = setup.init_from(str(tmp_path / "phase1"), fresh, seed=0)
    assert int(started.step) == 0
    jax.tree.map(np.testing.assert_array_equal, started.params, trained.params)
    with pytest.raises(loop.ConfigError, match="not a run directory"):
        setup.init_from(str(tmp_path / "nope"), fresh, seed=0)


@pytest.mark.parametrize(
    "args,expect",
    [
        (["--config=configs/quickstart.py", "--config.train.batchsize=3"], "batch_size"),
        (["--config=configs/nope.py"], "no such file 'configs/nope.py'"),
        (["--config=configs/quickstart.py", "--config.seeds=abc"], "seeds=('abc',) must be"),
        (["--config=configs/quickstart.py", "--nosuchflag"], "nosuchflag"),
    ],
)
def test_cli_user_errors_are_one_line_exit_2(tmp_path, capsys, monkeypatch, args, expect):
    """In-process ``main(argv)``: a user error is one line and status 2, no traceback."""
    from arjax import launch

    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_:
        launch.main([*args, f"--workdir={tmp_path / 'w'}", "--noprogress"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("arjax-train: error:") and expect in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "w" / "config.json").exists()
