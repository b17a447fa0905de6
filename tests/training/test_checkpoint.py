"""Best-validation-loss checkpoint: choice on a scripted loss sequence, resume of the record."""

import jax.numpy as jnp
import ml_collections
import optax

from arjax.models import build_model
from arjax.training.checkpoint import BestCheckpoint
from arjax.training.state import create_train_state

MODEL = ml_collections.ConfigDict(dict(name="mlp", hidden=(4,), layer_norm=()))


def state_at(step):
    _, params, stats = build_model(MODEL, (2,), 2, seed=step)
    return create_train_state(params, stats, optax.sgd(0.1), seed=0).replace(
        step=jnp.asarray(step, jnp.int32)
    )


def test_keeps_the_lowest_validation_loss_and_survives_restart(tmp_path):
    best = BestCheckpoint(str(tmp_path), "val/loss")
    saved = [best.offer(state_at(s), {"loss": v}, s) for s, v in [(1, 0.5), (2, 0.4), (3, 0.6)]]
    assert saved == [True, True, False]
    assert best.step == 2 and best.value == 0.4
    best.close()

    again = BestCheckpoint(str(tmp_path), "val/loss")  # a resumed run
    assert again.step == 2 and again.value == 0.4
    assert not again.offer(state_at(4), {"loss": 0.45}, 4)
    restored = again.restore(state_at(0))
    assert int(restored.step) == 2
    want = state_at(2).params["head"]["kernel"][...]
    assert jnp.array_equal(restored.params["head"]["kernel"][...], want)
    again.close()


def test_disabled_when_no_metric(tmp_path):
    best = BestCheckpoint(str(tmp_path), "")
    assert not best.offer(state_at(1), {"loss": 0.1}, 1)
    assert not (tmp_path / "best").exists()
