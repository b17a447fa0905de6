"""Learning-rate schedules of the robust-training references, as optax schedules.

Every schedule maps optax's ``count`` (updates already applied: 0 for the first step) to
the learning rate of that update, built from plain numbers (``total_steps``,
``steps_per_epoch``); ``optim.schedule`` names one (``arjax.training.optim``).

* ``"constant"``, ``"cosine"`` (``optax.cosine_decay_schedule`` over the run),
  ``"warmup_cosine"`` (``optax.warmup_cosine_decay_schedule``: linear warm-up, then a
  cosine over the remaining steps).
* ``"piecewise"``: the rate times ``decay_factor`` at each milestone
  (:func:`piecewise_constant`), the step decay of the TRADES, MART, MMA and IMA reference
  code and of Rice et al.'s robust-overfitting code. Milestones are fractions of training
  (``milestones``, default ``(0.5, 0.75)``: Rice, Wong & Kolter 2020,
  locuslab/robust_overfitting ``train_cifar.py --lr-schedule piecewise``; Wong et al.'s
  ``multistep``) or epochs (``milestone_epochs``, e.g. TRADES' ``(74, 89, 99)``, see
  :func:`milestone_steps`).
* ``"cyclic"``: the triangle of fast adversarial training (:func:`cyclic`): linear from
  0 to the peak at ``peak_fraction`` of training, then linear to 0 at the end. Default
  ``peak_fraction=0.5``: Wong, Rice & Kolter (2020), locuslab/fast_adversarial
  ``CIFAR10/train_fgsm.py`` (``CyclicLR(base_lr=0, step_size_up=step_size_down=
  lr_steps / 2)``), also de Jorge et al.'s N-FGSM ``train.py`` on CIFAR; 0.4 is
  robust_overfitting's ``superconverge`` / AWP's ``cyclic`` and N-FGSM's SVHN schedule.

``warmup_steps > 0`` prepends a linear warm-up to any schedule but ``"warmup_cosine"``
(which has its own) with :func:`with_warmup`.
"""

import math
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import optax

from arjax.types import Array

DEFAULT_MILESTONES = (0.5, 0.75)  # Rice et al.'s piecewise: /10 at 50 %, /100 at 75 %
DEFAULT_DECAY_FACTOR = 0.1
DEFAULT_PEAK_FRACTION = 0.5  # Wong et al.'s CyclicLR on CIFAR-10


def milestone_steps(
    *,
    total_steps: int,
    fractions: Sequence[float] = (),
    epochs: Sequence[int] = (),
    steps_per_epoch: int | None = None,
) -> tuple[int, ...]:
    """The update indices at which a piecewise schedule decays.

    A fraction ``f`` decays from the first update ``s >= f * total_steps`` (PyTorch's
    ``MultiStepLR(milestones=[f * lr_steps])`` stepped per update, as Wong et al.'s
    ``multistep``; Rice et al.'s code, which evaluates its schedule at
    ``epoch + (i + 1) / len(batches)``, decays one update earlier). An epoch ``e`` decays
    from the first update of the 0-based epoch ``e``, i.e. after ``e`` completed epochs
    (``MultiStepLR`` stepped per epoch); the TRADES code's ``if epoch >= 75`` with 1-based
    epochs is ``e = 74``.

    Args:
      total_steps: updates in the run.
      fractions: milestones in ``(0, 1)``, increasing.
      epochs: milestones in epochs ``>= 1``, increasing (instead of ``fractions``).
      steps_per_epoch: updates per epoch, needed for ``epochs``.

    Returns:
      The update indices, increasing.

    Raises:
      ValueError: both or bad milestones, or ``epochs`` without ``steps_per_epoch``; the
        message starts with the option's name (``milestones``, ``milestone_epochs``).
    """
    if fractions and epochs:
        raise ValueError(
            f"milestones={tuple(fractions)} and milestone_epochs={tuple(epochs)} are both "
            "set; give the milestones as fractions of training or in epochs, not both"
        )
    if epochs:
        ok = all(not isinstance(e, bool) and isinstance(e, int) and e >= 1 for e in epochs)
        if not ok or any(b <= a for a, b in zip(epochs, epochs[1:], strict=False)):
            raise ValueError(f"milestone_epochs={tuple(epochs)}; valid: increasing ints >= 1")
        if steps_per_epoch is None or steps_per_epoch < 1:
            raise ValueError(
                f"milestone_epochs need the steps per epoch, got {steps_per_epoch}; give "
                "milestones as fractions of training instead"
            )
        return tuple(e * steps_per_epoch for e in epochs)
    ok = all(isinstance(f, int | float) and 0 < f < 1 for f in fractions)
    if not ok or any(b <= a for a, b in zip(fractions, fractions[1:], strict=False)):
        raise ValueError(f"milestones={tuple(fractions)}; valid: increasing fractions in (0, 1)")
    # round() first: 0.3 * 10 is 3.0000000000000004 in floating point, not above 3
    return tuple(math.ceil(round(f * total_steps, 9)) for f in fractions)


def piecewise_constant(
    learning_rate: float, boundaries: Sequence[int], decay_factor: float = DEFAULT_DECAY_FACTOR
) -> optax.Schedule:
    """``learning_rate * decay_factor ** #{b in boundaries: count >= b}``.

    Args:
      learning_rate: the rate before the first boundary.
      boundaries: update indices (from :func:`milestone_steps`), increasing; equal
        boundaries would collapse in optax's dict, so they must differ.
      decay_factor: the factor per boundary, ``> 0``.

    Returns:
      An ``optax.Schedule`` (``optax.piecewise_constant_schedule``).
    """
    if any(b <= a for a, b in zip(boundaries, boundaries[1:], strict=False)):
        raise ValueError(f"boundaries must increase strictly, got {tuple(boundaries)}")
    if not 0 < decay_factor <= 1:
        raise ValueError(f"decay_factor={decay_factor!r}; valid: (0, 1]")
    scales = {int(b): float(decay_factor) for b in boundaries}
    return optax.piecewise_constant_schedule(learning_rate, scales)


def cyclic(
    peak_value: float, total_steps: int, peak_fraction: float = DEFAULT_PEAK_FRACTION
) -> optax.Schedule:
    """The triangular one-cycle of fast adversarial training (Wong, Rice & Kolter 2020).

    ``lr(s) = peak * s / (p T)`` for ``s <= p T``, ``peak * (T - s) / ((1 - p) T)`` up to
    ``T``, 0 after: PyTorch's ``CyclicLR(base_lr=0, max_lr=peak, step_size_up=p T,
    step_size_down=(1 - p) T)`` stepped after every update, as their code does (so the
    first update has rate 0). The peak sits at the real-valued step ``p T``.

    Args:
      peak_value: the maximum rate (their 0.2).
      total_steps: ``T``, updates in the run, ``>= 1``.
      peak_fraction: ``p`` in ``(0, 1)``.

    Returns:
      An ``optax.Schedule``.
    """
    if not 0 < peak_fraction < 1:
        raise ValueError(f"peak_fraction={peak_fraction!r}; valid: (0, 1)")
    total = float(max(total_steps, 1))
    xs = jnp.asarray([0.0, peak_fraction * total, total], jnp.float32)
    ys = jnp.asarray([0.0, peak_value, 0.0], jnp.float32)

    def schedule(count: Array) -> Array:
        return jnp.interp(jnp.asarray(count, jnp.float32), xs, ys)

    return schedule


def with_warmup(
    schedule: optax.Schedule, warmup_steps: int, init_value: float = 0.0
) -> optax.Schedule:
    """``schedule`` after a linear warm-up over its first ``warmup_steps`` updates.

    For ``count < warmup_steps`` the rate rises linearly from ``init_value`` (at count 0)
    towards ``schedule(warmup_steps)``; from ``warmup_steps`` on it is ``schedule(count)``
    itself, unshifted, so milestones keep their places (a warm-up in the style of Goyal
    et al. 2017, "Accurate, large minibatch SGD", §2.2 gradual warm-up).

    Args:
      schedule: any ``optax.Schedule``.
      warmup_steps: ``>= 0``; 0 returns ``schedule`` unchanged.
      init_value: the rate of the first update.

    Returns:
      An ``optax.Schedule``.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps == 0:
        return schedule

    def warmed(count: Array) -> Array:
        target = schedule(warmup_steps)
        ramp = init_value + (target - init_value) * (jnp.asarray(count, jnp.float32) / warmup_steps)
        return jnp.where(count < warmup_steps, ramp, schedule(count))

    return warmed


def _constant(learning_rate: float, *, total_steps: int, steps_per_epoch=None):
    del total_steps, steps_per_epoch
    return optax.constant_schedule(learning_rate)


def _cosine(learning_rate: float, *, total_steps: int, steps_per_epoch=None):
    del steps_per_epoch
    return optax.cosine_decay_schedule(learning_rate, max(total_steps, 1))


def _warmup_cosine(learning_rate: float, *, total_steps: int, steps_per_epoch=None, warmup_steps=0):
    del steps_per_epoch
    decay_steps = max(total_steps, warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, decay_steps)


def _piecewise(
    learning_rate: float,
    *,
    total_steps: int,
    steps_per_epoch: int | None = None,
    milestones: Sequence[float] = (),
    milestone_epochs: Sequence[int] = (),
    decay_factor: float = DEFAULT_DECAY_FACTOR,
):
    """Empty ``milestones`` and ``milestone_epochs`` mean ``DEFAULT_MILESTONES``."""
    milestones, milestone_epochs = tuple(milestones or ()), tuple(milestone_epochs or ())
    if not milestones and not milestone_epochs:
        milestones = DEFAULT_MILESTONES
    boundaries = milestone_steps(
        total_steps=total_steps,
        fractions=milestones,
        epochs=milestone_epochs,
        steps_per_epoch=steps_per_epoch,
    )
    return piecewise_constant(learning_rate, boundaries, decay_factor)


def _cyclic(
    learning_rate: float,
    *,
    total_steps: int,
    steps_per_epoch=None,
    peak_fraction: float = DEFAULT_PEAK_FRACTION,
):
    del steps_per_epoch
    return cyclic(learning_rate, total_steps, peak_fraction)


# name -> builder(learning_rate, *, total_steps, steps_per_epoch, **its options)
LR_SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
    "constant": _constant,
    "cosine": _cosine,
    "warmup_cosine": _warmup_cosine,
    "piecewise": _piecewise,
    "cyclic": _cyclic,
}
# options each builder reads besides the learning rate and the step counts
LR_SCHEDULE_OPTIONS: dict[str, tuple[str, ...]] = {
    "constant": (),
    "cosine": (),
    "warmup_cosine": (),  # its warm-up is lr_schedule's warmup_steps
    "piecewise": ("milestones", "milestone_epochs", "decay_factor"),
    "cyclic": ("peak_fraction",),
}


def lr_schedule(
    name: str,
    learning_rate: float,
    *,
    total_steps: int,
    steps_per_epoch: int | None = None,
    warmup_steps: int = 0,
    **options,
) -> optax.Schedule:
    """The schedule ``name`` (a key of ``LR_SCHEDULES``), with an optional linear warm-up.

    Args:
      name: the schedule.
      learning_rate: its base (peak) rate.
      total_steps: updates in the run.
      steps_per_epoch: updates per epoch (epoch milestones need it).
      warmup_steps: linear warm-up length (:func:`with_warmup`; ``"warmup_cosine"``
        uses it as its own warm-up).
      **options: the schedule's own options (``LR_SCHEDULE_OPTIONS[name]``).

    Returns:
      An ``optax.Schedule``.

    Raises:
      ValueError: an unknown name or option (naming the valid ones), or a bad option
        value (the message starts with the option's name).
    """
    if name not in LR_SCHEDULES:
        valid = ", ".join(LR_SCHEDULES)
        raise ValueError(f"schedule={name!r} is unknown; valid choices: {valid}")
    unknown = sorted(set(options) - set(LR_SCHEDULE_OPTIONS[name]))
    if unknown:
        valid = ", ".join(LR_SCHEDULE_OPTIONS[name]) or "none"
        raise ValueError(f"LR schedule {name!r} has no options {unknown}; valid: {valid}")
    steps = dict(total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    if name == "warmup_cosine":
        return LR_SCHEDULES[name](learning_rate, **steps, warmup_steps=warmup_steps)
    return with_warmup(LR_SCHEDULES[name](learning_rate, **steps, **options), warmup_steps)
