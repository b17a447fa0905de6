"""``train.vmap_seeds``: all seeds in one vmapped state equal the sequential runs."""

import json

import numpy as np
import pytest
from helpers import preempt_after_save, tiny_config

from arjax.config_lib import ConfigError
from arjax.experiment import train as loop
from arjax.training import checkpoint


def _records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_vmapped_seeds_equal_sequential_runs_and_resume(tmp_path, monkeypatch):
    cfg = tiny_config()
    cfg.seeds = (0, 1)
    sequential = loop.run(cfg, str(tmp_path / "seq"), progress=False)

    cfg.train.vmap_seeds = True
    preempt_after_save(monkeypatch)  # SIGTERM right after the first checkpoint
    assert loop.run(cfg, str(tmp_path / "vmap"), progress=False) is None
    for seed in (0, 1):  # every seed saved the same step
        saved = checkpoint.Checkpointer(str(tmp_path / "vmap" / f"seed_{seed}" / "checkpoints"))
        assert saved.latest_step() == cfg.train.checkpoint_every
        saved.close()
    monkeypatch.undo()
    vmapped = loop.run(cfg, str(tmp_path / "vmap"), progress=False)

    assert [r["seed"] for r in vmapped["runs"]] == [0, 1]
    for seq_run, vm_run in zip(sequential["runs"], vmapped["runs"], strict=True):
        for key in ("clean", "adversarial"):
            for metric, value in seq_run[key].items():
                if isinstance(value, float):
                    assert vm_run[key][metric] == pytest.approx(value, rel=1e-5, abs=1e-6)
        assert vm_run["robust_curve"]["accuracy"] == pytest.approx(
            seq_run["robust_curve"]["accuracy"], abs=1e-6
        )
    # the seeds differ from each other (own init, shuffle, attack keys)...
    losses = {}
    for seed in (0, 1):
        seq = _records(tmp_path / "seq" / f"seed_{seed}" / "metrics.jsonl")
        vm = _records(tmp_path / "vmap" / f"seed_{seed}" / "metrics.jsonl")
        # ... and each keeps its own records: the same steps, the same losses
        assert [r["step"] for r in vm] == [r["step"] for r in seq]
        a = np.array([r["train/loss"] for r in seq if "train/loss" in r])
        b = np.array([r["train/loss"] for r in vm if "train/loss" in r])
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        losses[seed] = a
    assert not np.allclose(losses[0], losses[1])
    assert vmapped["summary"].keys() == sequential["summary"].keys()


def test_vmapped_seeds_refuse_per_seed_stopping():
    cfg = tiny_config()
    cfg.train.vmap_seeds = True
    cfg.train.select_best = "val/loss"
    with pytest.raises(ConfigError, match="train.vmap_seeds=True cannot be combined with "
                       "train.best.metric='val/loss'"):  # fmt: skip
        loop.run(cfg, "/nonexistent/never-made", progress=False)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_non_finite_loss_names_its_step_with_overlap(tmp_path, monkeypatch, prefetch):
    """The loss turns NaN on the batch of step 6 (call 4..8); the loop, which reads a
    call's metrics only after dispatching the next one, still names step 6 and saves
    no checkpoint of the broken state."""
    import jax.numpy as jnp

    from arjax import data as data_lib
    from arjax import methods
    from arjax.experiment import setup

    cfg = tiny_config(prefetch=prefetch)
    train = setup.load_folds(cfg)[0].splits["train"]
    batches = data_lib.train_dataset(train, batch_size=64, seed=0, num_epochs=1)
    poison = int(batches[5]["index"][0])  # in the batch of step 6 (0-based 5) only, in epoch 1
    assert all(poison not in batches[s]["index"] for s in range(5))

    make_loss = methods.make_loss

    def poisoned(*args, **kwargs):
        loss_fn = make_loss(*args, **kwargs)

        def loss(params, batch_stats, batch, state, key):
            value, aux = loss_fn(params, batch_stats, batch, state, key)
            hit = jnp.any(batch["index"] == poison)
            return jnp.where(hit, jnp.nan, value), aux

        return loss

    monkeypatch.setattr(methods, "make_loss", poisoned)
    with pytest.raises(loop.NonFiniteLossError, match=r"nan at step 6 \(method 'arfl', seed 0\)"):
        loop.run(cfg, str(tmp_path), progress=False)
    assert checkpoint.Checkpointer(str(tmp_path / "checkpoints")).latest_step() is None
    steps = [r["step"] for r in _records(tmp_path / "metrics.jsonl")]
    assert steps == [4]  # the records before the NaN, none after
