"""IMA margin table: Alg. 2 rules on a hand-built batch, scatter locality, bounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax import margins
from arjax.training.state import gather_rows, scatter_rows

DELTA, EPS_MAX = 0.01, 0.3


def test_each_rule_of_algorithm_2():
    current = jnp.array([0.10, 0.10, 0.10, 0.295, 0.05, 0.10])
    correct = jnp.array([False, True, True, True, True, True])
    crossed = jnp.array([True, True, False, False, True, True])
    distance = jnp.array([0.02, 0.04, 0.0, 0.0, 0.001, 0.5])
    new = margins.update(current, correct, crossed, distance, delta=DELTA, eps_max=EPS_MAX)
    want = [
        DELTA,  # misclassified -> re-initialise to delta (even though "crossed")
        0.04,  # crossed -> distance (shrink)
        0.11,  # not crossed -> expand by delta
        EPS_MAX,  # expansion clipped at eps_max
        DELTA,  # distance below delta clipped up to delta
        EPS_MAX,  # distance above eps_max clipped down
    ]
    np.testing.assert_allclose(new, want, rtol=1e-6)


def test_code_options_running_average_and_no_reset():
    current = jnp.array([0.10, 0.10, 0.10])
    correct = jnp.array([False, True, True])
    crossed = jnp.array([False, True, False])
    distance = jnp.array([0.0, 0.04, 0.0])
    new = margins.update(
        current,
        correct,
        crossed,
        distance,
        delta=DELTA,
        eps_max=EPS_MAX,
        momentum=0.5,
        reset_misclassified=False,
    )
    np.testing.assert_allclose(new, [0.10, 0.07, 0.105], rtol=1e-6)


def test_scatter_touches_only_the_batch_indices():
    table = {"margins": jnp.full((100,), DELTA, jnp.float32)}
    index = jnp.array([3, 97, 42, 0])
    values = {"margins": jnp.array([0.2, 0.3, 0.15, 0.05])}
    new = jax.jit(scatter_rows)(table, index, values)
    changed = np.flatnonzero(np.asarray(new["margins"]) != np.asarray(table["margins"]))
    assert sorted(changed.tolist()) == [0, 3, 42, 97]
    np.testing.assert_allclose(gather_rows(new, index)["margins"], values["margins"])
    assert new["margins"].dtype == jnp.float32
    valid = jnp.array([True, False, True, True])  # a padding row writes nothing
    padded = scatter_rows(table, index, values, valid)["margins"]
    assert float(padded[97]) == pytest.approx(DELTA) and float(padded[3]) == pytest.approx(0.2)
    assert gather_rows(None, index) is None and scatter_rows(None, index, None) is None


def test_repeated_updates_stay_in_range():
    rng = np.random.default_rng(0)
    table = jnp.full((50,), DELTA, jnp.float32)
    for _ in range(40):
        index = jnp.asarray(rng.choice(50, 10, replace=False))
        cur = table[index]
        new = margins.update(
            cur,
            jnp.asarray(rng.random(10) > 0.2),
            jnp.asarray(rng.random(10) > 0.5),
            jnp.asarray(rng.random(10) * 0.6),
            delta=DELTA,
            eps_max=EPS_MAX,
        )
        table = table.at[index].set(new)
    t = np.asarray(table)
    assert t.min() >= DELTA - 1e-7 and t.max() <= EPS_MAX + 1e-7


def test_statistics_and_suggested_eps():
    values = np.array([0.01] * 2 + [0.1] * 5 + [0.3] * 3)
    s = margins.statistics(values, delta=0.01, eps_max=0.3)
    assert s["median"] == s["suggested_eps"] == 0.1
    assert s["fraction_at_floor"] == 0.2
    assert s["fraction_at_eps_max"] == 0.3
