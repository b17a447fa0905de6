"""Khakzar's two-phase schedule and early stopping: phase switch, best choice, resume."""

import json

import jax
import numpy as np
import pytest
from helpers import preempt_after_save, tiny_config

from arjax.config_lib import ConfigError
from arjax.experiment import phase_loop
from arjax.experiment import phases as schedule
from arjax.experiment import train as loop
from arjax.experiment.presets import method_config
from arjax.models import build_model
from arjax.training import checkpoint, optim
from arjax.training.state import create_train_state

# Scripted validation losses by (phase folder, step); eval_every = 4.
PHASE1 = {4: 1.0, 8: 0.3, 12: 0.5, 16: 0.4, 20: 0.2, 24: 0.1}  # best 8, stops at 16
PHASE2 = {4: 0.9, 8: 0.6, 12: 0.5, 16: 0.7, 20: 0.8, 24: 0.1}  # best 12, stops at 20


def two_phase_config():
    c = tiny_config(
        phases="two_phase",
        best=dict(metric="val/loss", mode="min", patience=2),
        phase1_max_epochs=6,
        num_epochs=6,
        eval_every=4,
        checkpoint_every=4,
        log_every=4,
        steps_per_call=2,
        num_devices=1,
    )
    c.data.sizes = dict(train=256, val=64, test=64)
    c.method = method_config("adversarial", r=0.5, attack="fgsm", eps=0.05)
    c.eval.update(batch_size=64, num_steps=2, eps=(0.0, 0.1), losses=("ce",))
    return c


def restore(path, cfg):
    """A phase-1 (clean, Adam) checkpoint of the tiny model."""
    _, params, stats = build_model(cfg.model, (2,), 2, seed=0)
    like = create_train_state(params, stats, optim.make_optimizer(cfg.optim, 24), seed=0)
    saved = checkpoint.Checkpointer(str(path))
    state = saved.restore(like)
    saved.close()
    return state


def scripted_validation(monkeypatch):
    """Replaces the validation loss by the scripted sequences (accuracy stays real)."""
    real = phase_loop.PhaseLoop._evaluate

    def fake(self, name, state, mesh, key):
        values = real(self, name, state, mesh, key)
        table = PHASE1 if self.phase.name == "clean" else PHASE2
        values["loss"] = table[int(state.step)]
        return values

    original_train_phase = loop._train_phase
    starts = {}

    def train_phase(runs, phases, model, inits, **kw):
        starts[phases[0].name] = jax.device_get(inits[0])  # (params, batch_stats) it starts from
        return original_train_phase(runs, phases, model, inits, **kw)

    monkeypatch.setattr(phase_loop.PhaseLoop, "_evaluate", fake)
    monkeypatch.setattr(loop, "_train_phase", train_phase)
    return starts


def test_should_stop_on_a_scripted_sequence():
    losses = [1.0, 0.3, 0.5, 0.4, 0.2]
    best_step, best, stopped = None, np.inf, None
    for i, value in enumerate(losses, 1):
        step = 4 * i
        if value < best:
            best_step, best = step, value
        if schedule.should_stop(step, best_step, patience=2, eval_every=4):
            stopped = step
            break
    assert (stopped, best_step) == (16, 8)
    assert not schedule.should_stop(100, 8, patience=0, eval_every=4)  # 0: never stops
    assert not schedule.should_stop(16, None, patience=1, eval_every=4)


def test_two_phase_switches_at_patience_and_keeps_phase2_best(tmp_path, monkeypatch):
    cfg = two_phase_config()
    starts = scripted_validation(monkeypatch)
    report = loop.run(cfg, str(tmp_path / "a"), progress=False)
    phases = json.loads((tmp_path / "a" / "schedule.json").read_text())["phases"]
    assert (phases["clean"]["steps"], phases["clean"]["best_step"]) == (16, 8)
    assert phases["clean"]["early_stopped"] and phases["clean"]["method"] == "standard"
    assert (phases["adversarial"]["steps"], phases["adversarial"]["best_step"]) == (20, 12)
    # The final model is phase 2's best (0.5), not phase 1's lower 0.3.
    run = report["runs"][0]
    assert run["selected_step"] == 12 and run["steps"] == 20
    # Phase 2 started from phase 1's best checkpoint (step 8), not its last (16).
    best1 = restore(tmp_path / "a" / "phase1" / "best" / "checkpoints", cfg)
    last1 = restore(tmp_path / "a" / "phase1" / "state", cfg)
    assert (int(best1.step), int(last1.step)) == (8, 16)
    started = jax.tree.leaves(starts["adversarial"][0])
    jax.tree.map(np.testing.assert_array_equal, started, jax.tree.leaves(best1.params))
    assert not all(
        np.array_equal(x, y) for x, y in zip(started, jax.tree.leaves(last1.params), strict=True)
    )

    # Interrupted in phase 2 (at its first checkpoint) and restarted: phase 1 is not
    # retrained, phase 2 continues, and the final metrics are the same.
    b = tmp_path / "b"
    preempt_after_save(monkeypatch, b / "checkpoints")
    assert loop.run(cfg, str(b), progress=False) is None
    saved = checkpoint.Checkpointer(str(b / "checkpoints"))
    assert saved.latest_step() == 4
    saved.close()
    monkeypatch.undo()
    scripted_validation(monkeypatch)
    phase1_lines = (b / "phase1" / "metrics.jsonl").read_text()
    resumed = loop.run(cfg, str(b), progress=False)
    assert (b / "phase1" / "metrics.jsonl").read_text() == phase1_lines
    steps2 = [json.loads(x)["step"] for x in open(b / "metrics.jsonl")]
    assert steps2 == [s for s in range(4, 21, 4) for _ in "tv"]  # train + val record, once each
    a_num = {k: v["mean"] for k, v in report["summary"].items()}
    b_num = {k: v["mean"] for k, v in resumed["summary"].items()}
    assert a_num.keys() == b_num.keys()
    for key in a_num:
        assert b_num[key] == pytest.approx(a_num[key], rel=1e-6, abs=1e-7), key
    assert resumed["runs"][0]["selected_step"] == 12


@pytest.mark.parametrize(
    "train,method,expect",
    [
        (dict(phases="three"), None, "unknown train.phases 'three'; valid choices: single"),
        # the older names still work: train.schedule, train.patience, train.select_best
        (dict(schedule="three"), None, "unknown train.phases 'three'; valid choices: single"),
        (dict(patience=-1), None, r"train.best.patience=-1 must be an integer >= 0"),
        (dict(phases="two_phase", eval_every=4), None, "needs train.best.metric"),
        (dict(best=dict(patience=2), eval_every=4), None, "train.best.patience > 0 needs"),
        (
            dict(phases="two_phase", best=dict(metric="val/loss"), eval_every=4),
            "standard",
            "must be another method than 'standard'",
        ),
        (dict(phases="two_phase", phase1_max_epochs=0), None, "train.phase1_max_epochs=0"),
        (dict(best=dict(metric="val/acc"), eval_every=4), None, "evaluator 'test' reports"),
        (dict(best=dict(metric="val/loss", mode="up"), eval_every=4), None, "train.best.mode"),
        (dict(best=dict(metric="val/loss"), eval_every=0), None, "set evals.test.every"),
    ],
)
def test_bad_schedule_fields_are_named(tmp_path, train, method, expect):
    cfg = tiny_config(**train)
    if method:
        cfg.method = method_config(method)
    with pytest.raises(ConfigError, match=expect):
        loop.run(cfg, str(tmp_path), progress=False)
