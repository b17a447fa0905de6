"""Paper settings pinned where the code once differed from the papers (issue: fidelity)."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax import attacks
from arjax.experiment.presets import method_config

CONFIGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs"
)


def config(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def test_arfl_mammography_attacks_at_test_with_eps2_1e4_and_the_training_step_rule():
    from arjax import methods

    c = config("mammo_arfl", "dual_arfl")
    attack = methods.from_config(c.method).attack
    assert attack.eps == 0.01 and attack.num_steps == 7  # eps_1, PGD-7
    assert c.eval.adv_eps == 1e-4 and c.eval.num_steps == 7  # eps_2 (§4.1)
    assert c.eval.alpha == attack.alpha == 2.5
    assert 1e-4 in c.eval.eps


def test_ima_covid_ce_uses_adamw_and_the_grid_reaches_0_3_with_the_noise_test():
    ce, ima = config("covid_ct_ima", "ce"), config("covid_ct_ima", "ima")
    assert (ce.optim.name, ce.optim.weight_decay) == ("adamw", 0.01)
    assert (ima.optim.name, ima.optim.weight_decay) == ("adam", 0.0)
    assert max(ima.eval.eps) == 0.3
    assert "noise:linf:0.05" in ima.eval.attacks


def test_khakzar_fgsm_differentiates_the_training_loss():
    from arjax import methods

    method = methods.from_config(config("chestxray14_khakzar", "fgsm0.001").method)
    assert method.cls_loss == method.attack.loss == "weighted_bce"


@pytest.mark.parametrize("restarts,expect", [(1, 0.4), (3, 1 - 0.6**3)])
def test_noise_attack_flips_with_the_analytic_probability(restarts, expect):
    """x = 0.49 against the boundary 0.5: U(-0.05, 0.05) crosses it with probability 0.4."""
    n = 4000
    x = jnp.full((n, 1), 0.49)
    y = jnp.zeros(n, jnp.int32)

    def logits_fn(v):
        return jnp.concatenate([0.5 - v, v - 0.5], axis=-1)

    spec = attacks.make_spec("noise", "linf", 0.05, 1, restarts=restarts)
    noisy = attacks.run_attack(spec, logits_fn, x, y, jax.random.key(0), bounds=(0.0, 1.0))
    delta = np.asarray(noisy - x)
    assert np.abs(delta).max() <= 0.05 + 1e-6
    flipped = float(np.mean(np.asarray(noisy[:, 0]) > 0.5))
    assert flipped == pytest.approx(expect, abs=0.03)
    if restarts == 1:  # one draw: the noise itself is uniform on the interval
        assert np.abs(delta).mean() == pytest.approx(0.025, abs=0.002)
        x1 = jnp.full((n, 1), 0.99)
        clipped = attacks.run_attack(spec, logits_fn, x1, y, jax.random.key(1), bounds=(0, 1))
        assert float(clipped.max()) <= 1.0


def test_arfl_l_robust_over_the_logits_reads_the_logits_not_the_features():
    """``method.robust_on="logits"`` (a Table 1 reading): L_robust = -mean sigmoid(|z|)."""
    from helpers import linear_model

    from arjax import methods

    w, b = np.array([1.5, -2.0], np.float32), 0.25
    x = np.array([[0.3, 0.1], [-0.4, 0.2], [0.9, -0.7]], np.float32)
    batch = {"image": jnp.asarray(x), "label": jnp.asarray([1, 0, 1], jnp.int32)}
    model, params, stats = linear_model(w, b)
    robust = {}
    for on in ("features", "logits"):
        cfg = method_config("arfl", r=1.0, lam=0.5, robust_on=on)
        _, (metrics, *_) = methods.make_loss(cfg, model, None)(params, stats, batch, None, None)
        robust[on] = float(metrics["robust_clean"])
    z = x @ w + b
    sig = lambda v: 1 / (1 + np.exp(-np.abs(v)))  # noqa: E731
    np.testing.assert_allclose(robust["logits"], -np.mean(sig(z)), rtol=1e-5)
    np.testing.assert_allclose(robust["features"], -np.mean(sig(x)), rtol=1e-5)


def test_mlp_features_before_the_activation_are_the_pre_relu_values():
    from flax import nnx

    from arjax.models.mlp import MLP

    x = jax.random.normal(jax.random.key(1), (64, 2))
    post = MLP(2, (10, 10), rngs=nnx.Rngs(0))
    pre = MLP(2, (10, 10), features_at="pre_activation", rngs=nnx.Rngs(0))
    (z_post, f_post), (z_pre, f_pre) = post(x), pre(x)
    np.testing.assert_array_equal(z_post, z_pre)  # same network, same logits
    assert float(jnp.min(f_pre)) < 0.0 <= float(jnp.min(f_post))
    np.testing.assert_allclose(jax.nn.relu(f_pre), f_post, rtol=1e-6)
    with pytest.raises(ValueError, match="features_at 'logit'.*post_activation"):
        MLP(2, (4,), features_at="logit", rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "hidden,outputs,features_at",
    [
        ((10, 10), 1, "post_activation"),
        ((10, 10), 1, "pre_activation"),
        ((7,), 3, "post_activation"),
        ((), 1, "post_activation"),
    ],
)
def test_mlp_feature_major_path_equals_the_layer_by_layer_network(hidden, outputs, features_at):
    """The norm-free MLP runs on ``[width, B]`` activations; values and gradients are those
    of ``nnx.Linear`` applied layer by layer on ``[B, width]``, and a module whose head is
    tapped (``features="penultimate"``) takes the batch-major path and still records it."""
    from flax import nnx

    from arjax.models import split_model
    from arjax.models.mlp import MLP

    model = MLP(2, hidden, outputs, features_at=features_at, rngs=nnx.Rngs(3))
    for i, layer in enumerate((*model.hidden, model.head)):  # biases start at zero
        layer.bias.value = jax.random.normal(jax.random.key(10 + i), layer.bias.value.shape)
    x = jax.random.normal(jax.random.key(1), (33, 2))

    def reference(m, x, features_at=features_at):
        h = pre = x
        for layer in m.hidden:
            pre = layer(h)
            h = jax.nn.relu(pre)
        z = m.head(h)
        return (z[:, 0] if outputs == 1 else z), (pre if features_at == "pre_activation" else h)

    (z, f), (z_ref, f_ref) = model(x), reference(model, x)
    assert z.shape == z_ref.shape and f.shape == f_ref.shape == (33, (hidden or (2,))[-1])
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f, f_ref, rtol=1e-5, atol=1e-6)

    def loss(fn, m, x):
        z, f = fn(m, x)
        return jnp.sum(jnp.sin(z)) + jnp.sum(f**2)

    g = jax.grad(lambda x: loss(lambda m, x: m(x), model, x))(x)
    g_ref = jax.grad(lambda x: loss(reference, model, x))(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)

    fns, params, stats = split_model(model, features="penultimate")
    z_tap, f_tap, _ = fns.apply(params, stats, x)
    np.testing.assert_allclose(z_tap, z_ref, rtol=1e-5, atol=1e-6)
    head_input = reference(model, x, "post_activation")[1]
    np.testing.assert_allclose(f_tap, head_input, rtol=1e-5, atol=1e-6)


def test_arfl_rejects_an_unknown_robust_on_naming_the_choices():
    from arjax import methods
    from arjax.config_lib import ConfigError
    from arjax.experiment.presets import base_config

    cfg = base_config()
    cfg.method = method_config("arfl", robust_on="logit")
    with pytest.raises(ConfigError, match=r"method\.robust_on 'logit'.*features, logits"):
        methods.from_config(cfg.method)
