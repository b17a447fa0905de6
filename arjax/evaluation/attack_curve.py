"""Robust accuracy vs radius under one registered attack (APGD, AutoAttack, Square, ...).

:func:`arjax.evaluation.robustness.robust_accuracy` is the IMA paper's curve: PGD with
each of several losses at every radius, worst case per sample. A reviewer-grade curve
runs the attack the robustness claim is made with (AutoAttack, Croce & Hein 2020, arXiv
2003.01690) at every radius instead; :func:`attack_predictions` does that for any
:class:`~arjax.attacks.AttackSpec` through :func:`arjax.attacks.run_attack`
(``attack_predictions(...).curve(mask)`` is the :class:`RobustCurve`).

Monotone by construction: the attack is run once per radius, independently, and an
example counts as robust at ``eps`` only when it survived the attack at ``eps`` *and at
every smaller radius of the grid* (an adversarial input found inside a smaller ball is
inside the larger one too, so this is still a sound lower bound on the attacker's
success, and the curve never rises with ``eps``). The independent per-radius accuracies
are kept next to it (``per_loss[spec.attack]``): where they rise with ``eps`` the attack
missed adversarials it found at a smaller radius, the ``monotone_in_eps`` symptom of
:mod:`arjax.evaluation.masking`.

Efficiency and keys are those of :mod:`arjax.evaluation.robustness`: one executable per
spec (the radius is traced), fixed-size chunks, radius ``i`` chunk ``c`` attacked with
``fold_in(fold_in(key, i), c)``.
"""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from arjax.attacks.registry import AttackSpec
from arjax.evaluation.robustness import (
    RobustPredictions,
    _check,
    _chunk,
    _chunks,
    _gather,
    _jitted,
    curve_radii,
)
from arjax.types import LogitsFn, PRNGKey


def attack_predictions(
    logits_fn: LogitsFn,
    x: Any,
    y: Any,
    key: PRNGKey,
    spec: AttackSpec,
    *,
    eps: Sequence[float],
    bounds: tuple[float, float] | None = (0.0, 1.0),
    batch_size: int = 512,
) -> RobustPredictions:
    """Per-sample robustness at each radius under ``spec``'s attack, monotone in eps.

    Args:
      logits_fn: images ``[B, ...]`` -> logits ``[B, K]``, ``[B]`` or ``[B, C]`` (eval
        mode); a :class:`jax.tree_util.Partial` reuses compiled code across parameters.
      x: float ``[N, ...]`` inputs.
      y: labels ``[N]`` or multi-hot ``[N, C]``.
      key: PRNG key.
      spec: the attack (its ``eps`` is ignored: every radius of ``eps`` is run).
      eps: radii ``E`` (>= 0) in ``spec.norm``, any order; 0 means no attack. An ``[N]``
        array reads as per-sample radii and is refused (see ``robustness.curve_radii``).
      bounds: data range or None.
      batch_size: chunk size.

    Returns:
      :class:`RobustPredictions`: ``correct`` bool ``[E, N]`` is the robustness at the
      radius and every smaller one of the grid; ``per_loss[spec.attack]`` is the
      independent per-radius result (clean-correct and not flipped at that radius).
    """
    n = _check(x, y, spec.norm, batch_size, spec.num_steps)
    eps = curve_radii(eps, n)
    if not eps or min(eps) < 0:
        raise ValueError(f"eps must be a non-empty sequence of radii >= 0; got {eps}.")
    jitted = _jitted(logits_fn)
    size, starts = _chunks(n, batch_size)
    xs = [_chunk(x, s, size) for s in starts]
    ys = [_chunk(y, s, size) for s in starts]
    pairs = list(zip(xs, ys, strict=True))
    clean = _gather([jitted["clean"](xc, yc) for xc, yc in pairs], n)
    traced = spec.with_eps(0.0)  # the radius is traced: one executable for every eps
    raw = np.zeros((len(eps), n), dtype=bool)
    for i, e in enumerate(eps):
        if e == 0.0:
            raw[i] = clean
            continue
        k = jax.random.fold_in(key, i)
        e_arr, step_arr = np.float32(e), np.float32(spec.step_for(e))
        outs = [
            jitted["correct"](xc, yc, k, c, e_arr, step_arr, spec=traced, bounds=bounds)
            for c, (xc, yc) in enumerate(pairs)
        ]
        raw[i] = clean & _gather(outs, n)
    correct = raw.copy()
    order = np.argsort(np.asarray(eps), kind="stable")
    for prev, cur in zip(order, order[1:], strict=False):
        correct[cur] &= correct[prev]
    return RobustPredictions(
        eps=eps, correct=correct, per_loss={spec.attack: raw}, clean=clean, norm=spec.norm
    )
