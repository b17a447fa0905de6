"""Single-step attacks of fast adversarial training: FGSM-RS and N-FGSM.

* ``fgsm_rs`` (Wong, Rice & Kolter 2020, "Fast is better than free"):
  ``delta ~ U(-eps, eps)`` clipped so that ``x + delta`` lies in the data bounds, one
  signed gradient step of ``alpha * eps`` with ``alpha = 1.25``, projected back onto the
  eps-ball and the bounds. This is PGD with one step and a random start
  (:func:`arjax.attacks.pgd`), as their code writes it (locuslab/fast_adversarial
  ``CIFAR10/train_fgsm.py``: ``--alpha 10`` for ``--epsilon 8``, i.e. 1.25 eps; Rice et
  al.'s ``train_cifar.py --fgsm-alpha 1.25``).
* ``n_fgsm`` (de Jorge et al. 2022, "Make some noise: reliable and efficient single-step
  adversarial training"): noise ``eta ~ U(-k eps, k eps)`` with
  ``k = noise_scale = 2``, clipped so that ``x + eta`` lies in the bounds, one signed
  gradient step of ``alpha * eps`` with ``alpha = 1`` from ``x + eta``, clipped to the
  bounds and *not* projected back onto the eps-ball, so ``||delta||_inf`` may reach
  ``(k + alpha) eps = 3 eps``. As pdejorge/N-FGSM ``train.py`` (``--unif 2``, ``--alpha``
  equal to ``--epsilon``, ``--clip -1``: no projection; the noise and the result are
  clamped to the image range).

Both are l-inf methods in their papers; ``norm="l2"`` runs the same steps in the l2
geometry of ``geometry.py`` (a start uniform in the l2 ball, a normalised-gradient step),
an extension. Registered as ``"fgsm_rs"`` and ``"n_fgsm"`` (one step each, any objective of
``LOSSES``), so ``method.attack`` and ``eval.attacks`` can name them; their defaults
(``alpha`` 1.25 and 1.0, ``noise_scale`` 2) are :class:`AttackDef` defaults that a
spec's own fields override.
"""

import jax
import jax.numpy as jnp

from arjax.attacks.geometry import clip_to_bounds, per_sample, random_init, step_direction
from arjax.attacks.objectives import LOSSES
from arjax.attacks.pgd import check_attack_args, checked_logits_fn, objective_grad_fn, pgd
from arjax.attacks.registry import AttackDef, register_attack
from arjax.types import Array, LogitsFn, PRNGKey, Radius

FGSM_RS_ALPHA = 1.25  # Wong et al. 2020: alpha = 1.25 eps
N_FGSM_ALPHA = 1.0  # de Jorge et al. 2022: alpha = eps
N_FGSM_NOISE = 2.0  # de Jorge et al. 2022: k = 2


def fgsm_rs(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: PRNGKey,
    *,
    eps: Radius,
    step_size: Radius | None = None,
    norm: str = "linf",
    loss: str = "ce",
    bounds: tuple[float, float] | None = (0.0, 1.0),
    random_start: bool = True,
) -> Array:
    """FGSM with a random start (Wong, Rice & Kolter 2020), see the module docstring.

    Args:
      logits_fn: images ``[B, ...]`` -> logits (see :func:`arjax.attacks.pgd`).
      x: float ``[B, ...]`` clean inputs.
      y: labels ``[B]`` or multi-hot ``[B, C]``.
      key: PRNG key of the random start.
      eps: radius; python float or per-sample ``[B]`` (may be traced).
      step_size: the step, default ``1.25 * eps``; same shapes as ``eps``.
      norm: ``"linf"`` (the paper's) or ``"l2"``.
      loss: a name in ``LOSSES``.
      bounds: ``(lo, hi)`` or None.
      random_start: False starts at ``x`` (their ``--delta-init zero`` ablation).

    Returns:
      ``x_adv`` shaped like ``x``, inside the eps-ball and the bounds, gradients stopped.
    """
    if step_size is None:
        step_size = FGSM_RS_ALPHA * jnp.asarray(eps)
    return pgd(
        logits_fn, x, y, key, eps=eps, step_size=step_size, num_steps=1, norm=norm, loss=loss,
        random_start=random_start, bounds=bounds,
    )  # fmt: skip


def n_fgsm(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: PRNGKey,
    *,
    eps: Radius,
    step_size: Radius | None = None,
    noise_scale: float = N_FGSM_NOISE,
    norm: str = "linf",
    loss: str = "ce",
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> Array:
    """N-FGSM (de Jorge et al. 2022): a larger noisy start and an unprojected step.

    ``x_adv = clip(x + eta + step_size * sign(grad L(x + eta)))`` with
    ``eta = clip(x + U(-k eps, k eps)) - x`` (l-inf; l2: ``eta`` uniform in the l2 ball of
    radius ``k eps`` and a normalised-gradient step). No projection onto the eps-ball.

    Args:
      logits_fn: images ``[B, ...]`` -> logits (see :func:`arjax.attacks.pgd`).
      x: float ``[B, ...]`` clean inputs.
      y: labels ``[B]`` or multi-hot ``[B, C]``.
      key: PRNG key of the noise.
      eps: radius; python float or per-sample ``[B]`` (may be traced).
      step_size: the step, default ``eps``; same shapes as ``eps``.
      noise_scale: k >= 0, the noise radius as a multiple of ``eps`` (0: no noise).
      norm: ``"linf"`` (the paper's) or ``"l2"``.
      loss: a name in ``LOSSES``.
      bounds: ``(lo, hi)`` or None.

    Returns:
      ``x_adv`` shaped like ``x``, in the bounds (``||x_adv - x|| <= (k + alpha) eps``),
      gradients stopped.
    """
    check_attack_args(norm, loss, 1, True, key, name="n_fgsm")
    if noise_scale < 0:
        raise ValueError(f"n_fgsm noise_scale must be >= 0, got {noise_scale}")
    x = jax.lax.stop_gradient(jnp.asarray(x))
    eps_b = per_sample(eps, x)
    step_b = eps_b if step_size is None else per_sample(step_size, x)
    eta = clip_to_bounds(x + random_init(key, x, noise_scale * eps_b, norm), bounds) - x
    grad, _ = objective_grad_fn(checked_logits_fn(logits_fn), y, loss)(x + eta)
    x_adv = clip_to_bounds(x + eta + step_b * step_direction(grad, norm), bounds)
    return jax.lax.stop_gradient(x_adv)


def _run_fgsm_rs(spec, logits_fn, x, y, key, *, eps, step_size, bounds):
    """FGSM-RS with the spec's step (``alpha * eps``, alpha 1.25 by default)."""
    return fgsm_rs(
        logits_fn, x, y, key, eps=eps, step_size=step_size, norm=spec.norm, loss=spec.loss,
        bounds=bounds, random_start=spec.random_start,
    )  # fmt: skip


def _run_n_fgsm(spec, logits_fn, x, y, key, *, eps, step_size, bounds):
    """N-FGSM with the spec's step (``alpha * eps``, alpha 1) and ``noise_scale`` (2).

    ``random_start=False`` in the spec means no noise (``noise_scale`` 0).
    """
    noise_scale = spec.noise_scale if spec.random_start else 0.0
    return n_fgsm(
        logits_fn, x, y, key, eps=eps, step_size=step_size, noise_scale=noise_scale,
        norm=spec.norm, loss=spec.loss, bounds=bounds,
    )  # fmt: skip


register_attack(
    "fgsm_rs",
    AttackDef(
        _run_fgsm_rs,
        LOSSES,
        fixed_steps=1,
        doc="FGSM from a random start, step 1.25 eps, projected (Wong et al. 2020)",
        defaults={"alpha": FGSM_RS_ALPHA},
    ),
)
register_attack(
    "n_fgsm",
    AttackDef(
        _run_n_fgsm,
        LOSSES,
        fixed_steps=1,
        doc="N-FGSM: noise U(-2 eps, 2 eps), step eps, no projection (de Jorge et al. 2022)",
        defaults={"alpha": N_FGSM_ALPHA, "noise_scale": N_FGSM_NOISE},
    ),
)
