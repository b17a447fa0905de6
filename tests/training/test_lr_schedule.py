"""Learning-rate schedules: milestones, the cyclic triangle, warm-up, and the optim wiring."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from arjax.config_lib import ConfigError
from arjax.training import optim
from arjax.training.lr_schedule import (
    LR_SCHEDULES,
    cyclic,
    lr_schedule,
    milestone_steps,
    piecewise_constant,
    with_warmup,
)


def _values(schedule, steps):
    return np.asarray([float(schedule(s)) for s in steps])


def test_piecewise_fractions_decay_at_the_first_step_past_each_milestone():
    # Rice et al.'s piecewise over 200 steps: 0.1, then /10 from step 100, /100 from 150
    s = lr_schedule("piecewise", 0.1, total_steps=200)
    got = _values(s, [0, 99, 100, 101, 149, 150, 199, 250])
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001], rtol=1e-6)
    # a milestone between steps decays at the next one: 0.5 * 7 = 3.5 -> step 4
    assert milestone_steps(total_steps=7, fractions=(0.5, 0.75)) == (4, 6)
    # 0.3 * 10 is 3.0000000000000004 in floats; the milestone is step 3, not 4
    assert milestone_steps(total_steps=10, fractions=(0.3,)) == (3,)


def test_piecewise_epoch_milestones_and_decay_factor():
    # TRADES: lr 0.1, x0.1 when the 1-based epoch >= 75 and >= 90 -> epochs (74, 89)
    s = lr_schedule(
        "piecewise", 0.1, total_steps=95 * 3, steps_per_epoch=3, milestone_epochs=(74, 89),
        decay_factor=0.5,
    )  # fmt: skip
    got = _values(s, [0, 74 * 3 - 1, 74 * 3, 89 * 3 - 1, 89 * 3])
    np.testing.assert_allclose(got, [0.1, 0.1, 0.05, 0.05, 0.025], rtol=1e-6)
    with pytest.raises(ValueError, match="milestone_epochs need the steps per epoch"):
        lr_schedule("piecewise", 0.1, total_steps=10, milestone_epochs=(5,))
    with pytest.raises(ValueError, match="both set"):
        lr_schedule("piecewise", 0.1, total_steps=10, milestones=(0.5,), milestone_epochs=(5,))
    with pytest.raises(ValueError, match="boundaries must increase"):
        piecewise_constant(0.1, (5, 5))


def test_cyclic_peaks_at_its_fraction_and_ends_at_zero():
    # Wong et al.'s CyclicLR: 0 at the first update, linear to 0.2 at T/2, back to 0 at T
    s = cyclic(0.2, total_steps=10)
    np.testing.assert_allclose(
        _values(s, range(12)), [0, 0.04, 0.08, 0.12, 0.16, 0.2, 0.16, 0.12, 0.08, 0.04, 0, 0],
        atol=1e-7,
    )  # fmt: skip
    # peak_fraction 0.4 (Rice et al.'s superconverge): the peak at step 40 of 100
    s = cyclic(1.0, total_steps=100, peak_fraction=0.4)
    values = _values(s, range(101))
    assert int(np.argmax(values)) == 40 and values[40] == pytest.approx(1.0)
    np.testing.assert_allclose(values[[10, 39, 41, 70]], [0.25, 0.975, 59 / 60, 0.5], rtol=1e-6)
    # a real-valued peak (T = 7, p = 0.5 -> 3.5): both neighbours at 3/3.5 of the peak
    np.testing.assert_allclose(_values(cyclic(1.0, 7), [3, 4]), [3 / 3.5, 3 / 3.5], rtol=1e-6)


def test_warmup_ramps_linearly_into_any_schedule():
    base = lr_schedule("piecewise", 1.0, total_steps=100, milestones=(0.5,))
    s = with_warmup(base, 10)
    np.testing.assert_allclose(_values(s, [0, 1, 5, 9, 10, 49, 50]), [0, 0.1, 0.5, 0.9, 1, 1, 0.1],
                               rtol=1e-6)  # fmt: skip
    # the ramp aims at the wrapped schedule's value where it ends (cyclic: 0.2 at step 10)
    s = lr_schedule("cyclic", 1.0, total_steps=100, warmup_steps=10)
    np.testing.assert_allclose(_values(s, [0, 5, 10, 30]), [0, 0.1, 0.2, 0.6], rtol=1e-6)
    assert with_warmup(base, 0) is base


def test_schedules_are_jittable():
    for name in LR_SCHEDULES:
        s = lr_schedule(name, 0.1, total_steps=20, warmup_steps=3)
        got = jax.jit(s)(jnp.arange(20))
        np.testing.assert_allclose(np.asarray(got), _values(s, range(20)), rtol=1e-5, atol=1e-9)


def _optim(**fields):
    base = dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.0,
                schedule="constant", warmup_steps=0, trainable=())  # fmt: skip
    return ml_collections.ConfigDict({"optim": {**base, **fields}})


def test_the_previous_schedules_are_unchanged():
    # what optim.make_schedule built before the table (the quickstart pin rests on it)
    before = {
        "constant": optax.constant_schedule(0.1),
        "cosine": optax.cosine_decay_schedule(0.1, 30),
        "warmup_cosine": optax.warmup_cosine_decay_schedule(0.0, 0.1, 5, 30),
    }
    for name, old in before.items():
        cfg = _optim(schedule=name, warmup_steps=5 if name == "warmup_cosine" else 0)
        new = optim.make_schedule(cfg.optim, 30)
        np.testing.assert_array_equal(_values(new, range(32)), _values(old, range(32)))


def test_optim_config_builds_the_new_schedules():
    cfg = _optim(schedule="piecewise", milestone_epochs=(2,), decay_factor=0.1)
    optim.validate(cfg)
    s = optim.make_schedule(cfg.optim, total_steps=40, steps_per_epoch=10)
    np.testing.assert_allclose(_values(s, [19, 20]), [0.1, 0.01], rtol=1e-6)
    cfg = _optim(schedule="cyclic", peak_fraction=0.25, warmup_steps=0)
    optim.validate(cfg)
    s = optim.make_schedule(cfg.optim, total_steps=40)
    assert int(np.argmax(_values(s, range(41)))) == 10
    # make_optimizer passes steps_per_epoch on: an SGD step uses the decayed rate
    cfg = _optim(schedule="piecewise", milestone_epochs=(1,), momentum=0.0)
    tx = optim.make_optimizer(cfg.optim, 4, steps_per_epoch=2)
    params = {"w": jnp.ones(())}
    state = tx.init(params)
    steps = []
    for _ in range(3):
        update, state = tx.update({"w": jnp.ones(())}, state, params)
        steps.append(float(-update["w"]))
    np.testing.assert_allclose(steps, [0.1, 0.1, 0.01], rtol=1e-6)


PIECEWISE = dict(schedule="piecewise")
BAD_FIELDS = [
    (dict(schedule="step"), "unknown optim.schedule 'step'; valid choices: constant, cosine"),
    (dict(PIECEWISE, milestones=(0.75, 0.5)), "optim.milestones=\\(0.75, 0.5\\); valid: incr"),
    (dict(PIECEWISE, milestones=(0.5, 1.0)), "optim.milestones=.*valid: increasing fractions in"),
    (dict(PIECEWISE, milestone_epochs=(3, 2.5)), "optim.milestone_epochs=.*valid: increasing ints"),
    (dict(PIECEWISE, milestones=(0.5,), milestone_epochs=(3,)), "optim.milestones=.*both set"),
    (dict(PIECEWISE, decay_factor=0.0), "optim.decay_factor=0.0; valid: \\(0, 1\\]"),
    (dict(schedule="cyclic", peak_fraction=1.0), "optim.peak_fraction=1.0; valid: \\(0, 1\\)"),
]


@pytest.mark.parametrize("fields, match", BAD_FIELDS)
def test_bad_schedule_fields_fail_naming_the_field(fields, match):
    with pytest.raises(ConfigError, match=match):
        optim.validate(_optim(**fields))


def test_epoch_milestones_without_steps_per_epoch_fail_clearly():
    cfg = _optim(schedule="piecewise", milestone_epochs=(2,))
    optim.validate(cfg)  # fine as config; the caller must pass steps_per_epoch
    with pytest.raises(ConfigError, match="optim.milestone_epochs need the steps per epoch"):
        optim.make_optimizer(cfg.optim, 40)
