"""Weight averaging: an exponential moving average (EMA) of the parameters, pure functions.

Gowal et al. (2020, "Uncovering the limits of adversarial training against norm-bounded
adversarial examples") and Rebuffi et al. (2021, "Fixing data augmentation to improve
adversarial robustness") evaluate an EMA of the weights; its reproduction in PyTorch,
imrahulr/adversarial_robustness_pytorch ``gowal21uncovering/utils/watrain.py``
(``ema_update``, run after every optimiser step), is the reference here::

    decay_t = 0                                        if t < warmup_steps
              min(decay, (1 + d) / (10 + d)),  d = t - warmup_steps   otherwise
    ema <- decay_t * ema + (1 - decay_t) * params

with ``t`` the global step counted after the update (1 for the first), ``decay`` 0.995
(``train-wa.py --tau``) and ``warmup_steps`` 2.5 % of the run's updates in their trainer
(0 by default here). The ``(1 + d) / (10 + d)`` ramp is TensorFlow's
``tf.train.ExponentialMovingAverage(num_updates=...)`` rule: the average forgets its
initial value quickly (``decay_t = 0.1`` at ``d = 0``) and reaches ``decay`` at
``d = (10 decay - 1) / (1 - decay)`` (1790 for 0.995). Before ``warmup_steps`` the
average simply tracks the parameters.

Only the parameters are averaged: the reference copies the live model's batch-norm
running statistics into the averaged model (``update_bn``) rather than averaging them.
The state integration (``TrainState``, checkpoints, ``val_ema`` evaluation) is the
caller's.
"""

import jax
import jax.numpy as jnp
import optax

from arjax.types import Array, PyTree

DEFAULT_DECAY = 0.995  # Gowal et al. 2020 / imrahulr's train-wa.py --tau


def ema_decay(
    step: Array | int, decay: float = DEFAULT_DECAY, *, warmup_steps: float = 0, ramp: bool = True
) -> Array:
    """The decay of the EMA update after optimiser step ``step`` (module docstring).

    Args:
      step: int, the number of optimiser updates applied so far, this one included (1 at
        the first update; ``TrainState.step`` after the step). May be traced.
      decay: the asymptotic decay in ``[0, 1)``.
      warmup_steps: updates before averaging starts (the average equals the parameters
        until then).
      ramp: use ``min(decay, (1 + d) / (10 + d))``; False gives the constant ``decay``
        from ``warmup_steps`` on.

    Returns:
      float32 scalar ``decay_t`` in ``[0, decay]``.
    """
    if not 0 <= decay < 1:
        raise ValueError(f"EMA decay must lie in [0, 1), got {decay!r}")
    d = jnp.asarray(step, jnp.float32) - warmup_steps
    value = jnp.asarray(decay, jnp.float32)
    if ramp:
        d_pos = jnp.maximum(d, 0.0)  # (1 + d) / (10 + d) only where it is used
        value = jnp.minimum(value, (1.0 + d_pos) / (10.0 + d_pos))
    return jnp.where(d >= 0, value, 0.0)


def ema_init(params: PyTree) -> PyTree:
    """The average before the first update: a copy of the parameters (same dtypes).

    The reference starts from ``copy.deepcopy(model)``; with the ramp (``decay_t = 0.1``
    at the first update) or a warm-up the starting value is forgotten quickly anyway.
    """
    return jax.tree.map(jnp.array, params)


def ema_update(
    ema_params: PyTree,
    params: PyTree,
    step: Array | int,
    decay: float = DEFAULT_DECAY,
    *,
    warmup_steps: float = 0,
    ramp: bool = True,
) -> PyTree:
    """``decay_t * ema + (1 - decay_t) * params`` leaf by leaf (Polyak averaging).

    Computed by ``optax.incremental_update`` in at least float32 and cast back, so each
    leaf keeps the dtype of ``ema_params``. Pure and jittable.

    Args:
      ema_params: the current average, a pytree like ``params``.
      params: the parameters after optimiser step ``step``.
      step: see :func:`ema_decay` (1 at the first update).
      decay: see :func:`ema_decay`.
      warmup_steps: see :func:`ema_decay`.
      ramp: see :func:`ema_decay`.

    Returns:
      The new average, same structure and dtypes as ``ema_params``.
    """
    decay_t = ema_decay(step, decay, warmup_steps=warmup_steps, ramp=ramp)
    new = optax.incremental_update(params, ema_params, 1.0 - decay_t)
    return jax.tree.map(lambda n, old: n.astype(old.dtype), new, ema_params)
