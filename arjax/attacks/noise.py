"""Uniform random noise: the white-noise test of the IMA paper (COVID-19 CT).

Ma et al. (IMA, Introduction and "Evaluation on COVID-19 CT"): "2.75 % of the noisy
samples with uniform white noises on the noise level of 0.05 can cause the DNN model to
make wrong classifications". ``noise:linf:0.05`` draws ``x + U(-eps, eps)`` per pixel,
clipped to the data bounds; ``noise:l2:eps`` draws uniformly in the L2 ball
(:func:`arjax.attacks.geometry.random_init`). Not an attack in the adversarial sense (no
gradient, no query): a noise floor for the adversarial numbers. With ``restarts=R`` a
sample counts as broken when any of R draws flips it.
"""

import jax

from arjax.attacks.geometry import clip_to_bounds, random_init
from arjax.attacks.registry import AttackDef, register_attack
from arjax.attacks.selection import worst_of_restarts
from arjax.types import Array, LogitsFn, PRNGKey, Radius


def uniform_noise(
    key: PRNGKey,
    x: Array,
    *,
    eps: Radius,
    norm: str = "linf",
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> Array:
    """``clip(x + delta)`` with ``delta`` uniform in the ``norm`` ball of radius ``eps``.

    Args:
      key: PRNG key.
      x: float ``[B, ...]`` clean inputs.
      eps: radius, python float or per-sample ``[B]``.
      norm: ``"linf"`` (``U(-eps, eps)`` per entry) or ``"l2"``.
      bounds: ``(lo, hi)`` or None.

    Returns:
      the noisy inputs, shaped like ``x``.
    """
    return clip_to_bounds(x + random_init(key, x, eps, norm), bounds)


def _run_noise(spec, logits_fn: LogitsFn, x, y, key, *, eps, step_size, bounds):
    """``spec.restarts`` noise draws; per sample the first that flips the prediction."""
    del step_size

    def one(k):
        return jax.lax.stop_gradient(uniform_noise(k, x, eps=eps, norm=spec.norm, bounds=bounds))

    return worst_of_restarts(one, logits_fn, x, y, key, spec.restarts)


register_attack(
    "noise",
    AttackDef(
        _run_noise,
        ("ce",),
        fixed_steps=1,
        gradient_free=True,
        doc="uniform random noise in the ball (IMA's white-noise test), restarts = draws",
    ),
)
