"""MMA (Ding et al. 2020) against its equation on a linear classifier with analytic margins.

For one binary logit ``z = x . w + b`` the L-inf distance from ``x`` to the decision
boundary is ``|z| / ||w||_1``, reached along ``-s sign(w)`` (``s = 2y - 1``), which is
where PGD on the logit margin ends (a corner of the ball). So every sample's shortest
successful perturbation, whether inside its previous margin or beyond it (AN-PGD's ray
extension), is known in closed form, and the loss at it is ``CE(z = 0) = log 2``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import linear_model, tiny_config

from arjax import attacks, methods
from arjax.config_lib import ConfigError
from arjax.experiment import train as loop
from arjax.experiment.presets import base_config, method_config
from arjax.training.state import create_train_state
from arjax.training.step import make_train_step

W = np.array([1.0, -2.0])  # ||w||_1 = 3
B = 0.1
D_MAX, RADIUS = 0.3, 0.1  # hinge; every sample's previous margin
FLOOR, CEILING = 0.2 * D_MAX, 1.05 * D_MAX  # eps_min = 0 -> 0.2 d_max; search to 1.05 d_max
# (label, signed distance s * z / ||w||_1): negative = misclassified at x.
CASES = [
    (1, 0.05),  # crosses inside its margin 0.1; its new margin is floored at 0.06
    (1, 0.2),  # found beyond the margin by the ray extension, below d_max: trained on
    (0, 0.15),  # the same for the other class
    (1, 0.31),  # found, but its margin is past d_max: no adversarial loss (hinge)
    (0, 0.5),  # never flipped within 1.05 d_max: no adversarial loss, margin = ceiling
    (1, -0.2),  # misclassified: clean loss, margin back to the floor
]


def _batch():
    rng = np.random.default_rng(0)
    y = np.array([c[0] for c in CASES])
    s = 2.0 * y - 1.0
    z = s * np.array([c[1] for c in CASES]) * np.abs(W).sum()
    t = rng.normal(size=len(CASES))
    x = np.stack([z - B + 2 * t, t], axis=-1)  # x . w + b = z
    return x.astype(np.float32), y.astype(np.int32), z


def _by_hand(c):
    """The MMA loss and new margins of CASES, from the equation (no arjax code)."""
    _, y, z = _batch()
    s = 2.0 * y - 1.0
    ce = np.log1p(np.exp(-s * z))  # binary CE at x
    d = np.array([case[1] for case in CASES])
    correct = d > 0
    found = correct & (d <= CEILING)
    hinged = found & (d < D_MAX)
    mma = (np.sum(np.where(hinged, np.log(2.0), 0.0)) + np.sum(ce[~correct])) / len(CASES)
    new = np.where(correct, np.where(found, d, CEILING), FLOOR)
    return c * ce.mean() + (1 - c) * mma, np.clip(new, FLOOR, CEILING), hinged.mean()


def _loss(**fields):
    model, params, stats = linear_model(W, B)
    cfg = method_config("mma", d_max=D_MAX, num_bisections=30, **fields)
    return methods.make_loss(cfg, model, None), params, stats


@pytest.mark.parametrize("c", [1.0 / 3.0, 0.0, 1.0])
def test_loss_and_margins_match_the_equation(c):
    loss_fn, params, stats = _loss(clean_loss_coeff=c)
    x, y, _ = _batch()
    batch = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
    state = {"margins": jnp.full(6, RADIUS)}
    value, out = jax.jit(loss_fn)(params, stats, batch, state, jax.random.key(0))
    want, margins, hinged = _by_hand(c)
    np.testing.assert_allclose(float(value), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.state["margins"]), margins, atol=1e-5)
    assert float(out.metrics["hinged"]) == pytest.approx(hinged)


def test_ray_extension_finds_the_boundary_beyond_the_ball():
    # BPGD alone stays in the ball: only the sample at distance 0.05 crosses radius 0.1.
    model, params, stats = linear_model(W, B)
    f = model.logits_fn(params, stats, train=False)
    x, y, _ = _batch()
    kw = dict(eps=RADIUS, num_bisections=30, loss="margin", bracket="clean_to_last")
    inside = attacks.bpgd(f, x, y, jax.random.key(0), bounds=None, **kw)
    ext = attacks.bpgd(f, x, y, jax.random.key(0), bounds=None, extend_to=CEILING, **kw)
    d = np.array([case[1] for case in CASES])
    np.testing.assert_array_equal(np.asarray(inside.crossed), (d < RADIUS))
    np.testing.assert_array_equal(np.asarray(ext.crossed), d < CEILING)
    found = (d > 0) & (d < CEILING)
    np.testing.assert_allclose(np.asarray(ext.distance)[found], d[found], atol=1e-5)
    # the points found lie on the boundary z = 0
    np.testing.assert_allclose(np.asarray(f(ext.images))[found], 0.0, atol=1e-4)


def test_train_step_updates_the_batch_margins_only():
    loss_fn, params, stats = _loss()
    tx = optax.sgd(0.0)  # margins only: the parameters stay where the margins are analytic
    # Every entry distinct; the batch's six all hold the margin RADIUS.
    table = np.linspace(0.07, 0.2, 20).astype(np.float32)
    index = np.array([3, 17, 5, 0, 11, 8], np.int32)
    table[index] = RADIUS
    state = create_train_state(params, stats, tx, 0, method_state={"margins": jnp.asarray(table)})
    x, y, _ = _batch()
    batch = {"image": jnp.asarray(x), "label": jnp.asarray(y), "index": jnp.asarray(index)}
    new_state, _ = jax.jit(make_train_step(loss_fn, tx))(state, batch)
    new = np.asarray(new_state.method_state["margins"])
    _, want, _ = _by_hand(1.0 / 3.0)
    np.testing.assert_allclose(new[index], want, atol=1e-5)
    untouched = np.setdiff1d(np.arange(20), index)
    np.testing.assert_array_equal(new[untouched], table[untouched])


def test_table_starts_at_the_floor():
    method = methods.MMA(d_max=0.2)
    assert method.margin_range == pytest.approx((0.04, 0.21))
    np.testing.assert_allclose(method.init_state(3)["margins"], [0.04] * 3)
    assert methods.MMA(d_max=0.2, eps_min=0.05).margin_range == pytest.approx((0.05, 0.21))


@pytest.mark.parametrize(
    "fields,expect",
    [
        ({"d_max": 0.0}, "method.d_max=0.0 is out of range; valid: (0.0, inf]"),
        ({"d_max": -0.1}, "method.d_max=-0.1 is out of range"),
        ({"clean_loss_coeff": 1.5}, "method.clean_loss_coeff=1.5 is out of range"),
        ({"eps_min": 0.5}, "method.eps_min=0.5 is out of range; valid: [0.0, 0.3]"),
        ({"search_scale": 0.9}, "method.search_scale=0.9 is out of range"),
        ({"attack_loss": "kl"}, "unknown method.attack_loss 'kl'; valid choices: ce, margin"),
        (
            {"bracket": "last"},
            "method.bracket 'last'; valid choices: clean_to_last, clean_to_last_wrong, recorded",
        ),
    ],
)
def test_bad_fields_fail_naming_them(fields, expect):
    cfg = base_config()
    cfg.method = method_config("mma", **fields)
    with pytest.raises(ConfigError) as info:
        methods.from_config(cfg.method)
    assert expect in str(info.value)


def test_run_with_bad_d_max_fails_before_compute(tmp_path):
    cfg = tiny_config()
    cfg.method = method_config("mma", d_max=0.0)
    with pytest.raises(ConfigError, match=r"method.d_max=0.0 is out of range"):
        loop.run(cfg, str(tmp_path), progress=False)
    assert not (tmp_path / "checkpoints").exists()
