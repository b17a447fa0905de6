"""Paper settings pinned where the code once differed from the papers (issue: fidelity)."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax import attacks

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def config(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def test_arfl_mammography_attacks_at_test_with_eps2_1e4_and_the_training_step_rule():
    c = config("mammo_arfl", "dual_arfl")
    assert c.method.eps == 0.01 and c.method.num_steps == 7  # eps_1, PGD-7
    assert c.eval.adv_eps == 1e-4 and c.eval.num_steps == 7  # eps_2 (§4.1)
    assert c.eval.alpha == c.method.alpha == 2.5
    assert 1e-4 in c.eval.eps


def test_ima_covid_ce_uses_adamw_and_the_grid_reaches_0_3_with_the_noise_test():
    ce, ima = config("covid_ct_ima", "ce"), config("covid_ct_ima", "ima")
    assert (ce.optim.name, ce.optim.weight_decay) == ("adamw", 0.01)
    assert (ima.optim.name, ima.optim.weight_decay) == ("adam", 0.0)
    assert max(ima.eval.eps) == 0.3
    assert "noise:linf:0.05" in ima.eval.attacks


def test_khakzar_fgsm_differentiates_the_training_loss():
    c = config("chestxray14_khakzar", "fgsm0.001")
    assert c.method.cls_loss == c.method.attack_loss == "weighted_bce"


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
