"""AutoAttack driver and gradient-masking checks on the fixed tiny models of attack_models."""

import jax
import numpy as np
import pytest
from attack_models import NUM_WRONG, B, D, labels, model, norms

from arjax import attacks, losses
from arjax.attacks.ensemble import autoattack_members
from arjax.evaluation.autoattack_eval import AutoAttackResult, autoattack
from arjax.evaluation.masking import gradient_masking_checks, masking_warnings

KEY = jax.random.PRNGKey(0)
SMALL = dict(num_steps=6, num_targets=2, num_queries=60)


def _x(seed=0):
    return np.random.default_rng(seed).uniform(size=(B, D)).astype(np.float32)


def _check_consistent(res: AutoAttackResult, f, x, y, eps, norm):
    assert np.isfinite(res.x_adv).all()
    assert np.all(norms(res.x_adv - x, norm) <= np.broadcast_to(eps, (B,)) + 1e-5)
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0
    correct_adv = np.asarray(losses.predictions_correct(f(res.x_adv), y))
    prev = res.clean_correct
    for name in res.attacks:  # masks only shrink, and say who broke whom
        now = res.robust[name]
        assert now.dtype == bool and now.shape == (B,) and not np.any(now & ~prev)
        np.testing.assert_array_equal(res.broken_by == name, prev & ~now)
        prev = now
    np.testing.assert_array_equal(res.final_robust, correct_adv & res.clean_correct)
    robust = res.final_robust
    np.testing.assert_array_equal(
        res.x_adv[robust | ~res.clean_correct], x[robust | ~res.clean_correct]
    )
    assert res.robust_accuracy == pytest.approx(robust.mean())
    np.testing.assert_array_equal(res.broken_by == "clean", ~res.clean_correct)
    np.testing.assert_array_equal(res.broken_by == "", robust)


@pytest.mark.parametrize("head", ["binary", "binary1", "softmax2", "softmax3", "multilabel"])
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.3)])
def test_ensemble_never_crashes_and_is_consistent(head, norm, eps):
    """K = 1 ([B] and [B, 1] logits), K = 2, 3 and multi-hot labels (exact match)."""
    f, x = model(head), _x(1)
    y = labels(head, x)
    res = autoattack(f, x, y, KEY, eps, norm, **SMALL)
    assert res.attacks == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert res.clean_accuracy == pytest.approx(1 - NUM_WRONG / B)
    assert res.robust_accuracy < res.clean_accuracy
    _check_consistent(res, f, x, y, eps, norm)
    print(head, norm, res.accuracy_after())


@pytest.mark.parametrize("head", ["softmax5", "multilabel"])
def test_ensemble_at_least_as_strong_as_each_part(head):
    """Each member alone (same key as in the ensemble) leaves a superset robust."""
    f, x = model(head), _x(2)
    y = labels(head, x)
    eps, norm = 0.05, "linf"
    members = autoattack_members("standard", num_steps=10, num_targets=3, num_queries=100)
    res = autoattack(f, x, y, KEY, eps, norm, members=members)
    pgd = jax.jit(lambda x, y, k: attacks.pgd(f, x, y, k, eps=eps, num_steps=10))(x, y, KEY)
    acc = {"pgd": float(np.mean(losses.predictions_correct(f(pgd), y)))}
    for i, member in enumerate(members):
        alone = jax.jit(
            lambda x, y, k, m=member: m.run(f, x, y, k, eps=eps, norm=norm, bounds=(0.0, 1.0))
        )(x, y, jax.random.fold_in(KEY, i))
        robust_alone = np.asarray(losses.predictions_correct(f(alone), y)) & res.clean_correct
        assert not np.any(res.final_robust & ~robust_alone), member.name
        acc[member.name] = float(robust_alone.mean())
    acc["autoattack"] = res.robust_accuracy
    print(head, acc)
    assert res.robust_accuracy <= min(acc.values())


def test_per_sample_eps_and_fast_version():
    f, x = model("softmax3"), _x(3)
    y = labels("softmax3", x)
    eps = np.linspace(0.0, 0.2, B).astype(np.float32)
    res = autoattack(f, x, y, KEY, eps, "linf", version="fast", num_steps=6)
    assert res.attacks == ("apgd-ce", "apgd-t")
    _check_consistent(res, f, x, y, eps, "linf")
    np.testing.assert_array_equal(res.x_adv[0], x[0])
    assert res.broken_by[0] in ("", "clean")
    # the jittable ensemble of the registry agrees with the host driver (same keys)
    members = autoattack_members("fast", num_steps=6)
    x_j, robust_j = jax.jit(
        lambda x, y, k, e: attacks.autoattack_adversarial(
            f, x, y, k, eps=e, norm="linf", members=members
        )
    )(x, y, KEY, eps)
    np.testing.assert_array_equal(np.asarray(robust_j)[-1], res.final_robust)
    np.testing.assert_allclose(np.asarray(x_j), res.x_adv)


def test_unknown_version():
    with pytest.raises(ValueError, match="valid choices: standard, standard-margin, rand, fast"):
        autoattack_members("plus")


def _masking(transform, norm="linf", eps=0.1):
    f = model("softmax3", transform)
    x = _x(4)
    y = labels("softmax3", x)
    return gradient_masking_checks(
        f, x, y, KEY, norm=norm, eps=eps, num_steps=10, num_queries=300, tolerance=0.07
    )


def test_plain_model_passes_masking_checks():
    checks = _masking("none")
    print({c.name: c.detail for c in checks})
    assert [c.name for c in checks] == [
        "monotone_in_eps",
        "large_eps_breaks_all",
        "black_box_not_stronger",
        "more_iterations_not_stronger",
    ]
    assert all(c.passed for c in checks), masking_warnings(checks)
    assert masking_warnings(checks) == []


@pytest.mark.parametrize("transform", ["round", "stop"])
def test_masked_gradients_are_flagged(transform):
    checks = _masking(transform)
    print(transform, {c.name: c.detail for c in checks})
    failed = {c.name for c in checks if not c.passed}
    assert {"large_eps_breaks_all", "black_box_not_stronger"} <= failed
    warnings = masking_warnings(checks)
    assert len(warnings) == len(failed) and all("gradient masking?" in w for w in warnings)
