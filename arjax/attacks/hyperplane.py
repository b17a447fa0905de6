"""The smallest lp step onto a hyperplane inside a box: FAB's projection (Croce & Hein 2020).

FAB (Croce & Hein 2020, arXiv 1907.02044) replaces the classifier by its linearisation at the
current iterate and moves onto the closest linearised decision hyperplane, staying inside
the data box. :func:`hyperplane_step` solves that subproblem exactly, for a batch,
per example:

    minimise ||d||_p  subject to  c + <w, d> = 0  and  lo <= t + d <= hi,

where ``c`` is the (linearised) value of the boundary function at ``t`` and ``w`` its
gradient. Orient the problem so that ``|c|`` has to be removed: coordinate ``i`` can
lower ``sign(c) <w, d>`` by at most ``a_i * room_i``, with ``a_i = |w_i|`` and ``room_i``
the distance from ``t_i`` to the bound it moves towards. Then (KKT of each problem):

* l2: ``m_i = min(lambda * a_i, room_i)`` (a clipped multiple of ``w``);
* l-inf: ``m_i = min(lambda, room_i)`` (every coordinate moves by the same amount, up to
  its room);
* l1: coordinates are used greedily in decreasing ``a_i`` (the most progress per unit of
  l1 norm first), each to its room, the last one partially;

with ``lambda`` the smallest value that removes ``|c|``. The progress ``h(lambda)`` is
piecewise linear and nondecreasing with breakpoints where coordinates saturate, so one sort
of the breakpoints, cumulative sums and the first crossing give ``lambda`` exactly
(the reference code, ``fab_projections.py`` of github.com/fra31/auto-attack, finds the
same crossing by bisection over the sorted breakpoints). Where even saturating every
coordinate cannot remove ``|c|`` (the hyperplane misses the box) the step saturates every
coordinate, i.e. goes to the box corner closest to the hyperplane, as the reference does.
Without bounds every room is infinite and the closed forms follow:
``d = -c w / ||w||_2^2`` (l2), ``-c sign(w) / ||w||_1`` (l-inf), ``-c / w_k e_k`` with
``k = argmax |w_k|`` (l1).
"""

import jax.numpy as jnp

from arjax.attacks.geometry import LP_NORMS, check_norm_name
from arjax.types import Array


def _rooms(t: Array, u: Array, bounds: tuple[float, float] | None) -> Array:
    """How far each coordinate may move in the direction ``-sign(u)`` (``[B, D]``, >= 0)."""
    if bounds is None:
        return jnp.full_like(t, jnp.inf)
    lo, hi = bounds
    return jnp.maximum(jnp.where(u > 0, t - lo, hi - t), 0.0)


def _exclusive_cumsum(v: Array) -> Array:
    """``sum_{j < k} v_j`` along axis 1 (no ``inf - inf`` where entries are infinite)."""
    return jnp.pad(jnp.cumsum(v, axis=1)[:, :-1], ((0, 0), (1, 0)))


def _crossing_lambda(a: Array, kappa: Array, room: Array, need: Array) -> Array:
    """The smallest ``lambda`` with ``sum_i a_i min(lambda kappa_i, room_i) >= need``.

    Args:
      a: ``[B, D]`` progress per unit of movement, ``>= 0``.
      kappa: ``[B, D]`` movement per unit of ``lambda`` (``a`` for l2, 1 for l-inf); 0
        where ``a`` is 0.
      room: ``[B, D]`` saturation of each coordinate (may be ``inf``).
      need: ``[B]`` progress to make, ``>= 0``.

    Returns:
      ``[B, 1]``; meaningful where the box allows ``need`` (checked by the caller).
    """
    active = a > 0
    kappa_safe = jnp.where(active, kappa, 1.0)
    breaks = jnp.where(active, room / kappa_safe, jnp.inf)
    order = jnp.argsort(breaks, axis=1)

    def sort(v):
        return jnp.take_along_axis(v, order, axis=1)

    breaks_s = sort(breaks)
    saturated = sort(jnp.where(active, a * room, 0.0))  # progress of a saturated coordinate
    slope = sort(a * kappa)  # progress per unit lambda while unsaturated
    before = _exclusive_cumsum(saturated)  # the coordinates sorted before k, saturated
    after = jnp.flip(jnp.cumsum(jnp.flip(slope, 1), axis=1), 1)  # k and the ones after it
    finite = jnp.isfinite(breaks_s)
    progress_at_break = before + jnp.where(finite, breaks_s, 0.0) * after
    crosses = finite & (progress_at_break >= need[:, None])
    k = jnp.argmax(crosses, axis=1)[:, None]  # first crossing (0 when none is finite)
    base = jnp.take_along_axis(before, k, axis=1)
    rate = jnp.take_along_axis(after, k, axis=1)
    return (need[:, None] - base) / jnp.where(rate > 0, rate, 1.0)


def _l1_amounts(a: Array, room: Array, need: Array) -> Array:
    """Greedy l1 solution: largest ``a`` first, each to its room, the last partially."""
    active = a > 0
    order = jnp.argsort(-a, axis=1)
    rank = jnp.argsort(order, axis=1)
    a_s = jnp.take_along_axis(a, order, axis=1)
    room_s = jnp.take_along_axis(room, order, axis=1)
    saturated = jnp.where(a_s > 0, a_s * room_s, 0.0)
    before_all = _exclusive_cumsum(saturated)
    k = jnp.argmax(before_all + saturated >= need[:, None], axis=1)[:, None]
    before = jnp.take_along_axis(before_all, k, axis=1)
    a_k = jnp.take_along_axis(a_s, k, axis=1)
    partial = (need[:, None] - before) / jnp.where(a_k > 0, a_k, 1.0)
    amounts = jnp.where(rank < k, room, jnp.where(rank == k, partial, 0.0))
    return jnp.where(active, amounts, 0.0)


def hyperplane_step(
    t: Array, w: Array, c: Array, norm: str, bounds: tuple[float, float] | None
) -> Array:
    """The minimal-norm ``d`` with ``c + <w, d> = 0`` and ``t + d`` inside the bounds.

    Args:
      t: float ``[B, D]`` points (inside the bounds).
      w: float ``[B, D]`` hyperplane normals (gradients of the boundary function).
      c: float ``[B]`` value of the linearised boundary function at ``t``.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``: the norm minimised.
      bounds: ``(lo, hi)`` box of every coordinate, or None (no box).

    Returns:
      ``d`` float ``[B, D]``: zero where ``c == 0`` or ``w == 0``; where the hyperplane
      misses the box, the step to the box corner that gets closest to it (every
      coordinate with ``w_i != 0`` moved as far as the box allows).
    """
    check_norm_name(norm, LP_NORMS)
    sign = jnp.where(c >= 0, 1.0, -1.0).astype(w.dtype)
    u = sign[:, None] * w  # oriented normal: <u, d> must fall by need
    need = jnp.abs(c)
    a = jnp.abs(u)
    room = _rooms(t, u, bounds)
    feasible = jnp.sum(jnp.where(a > 0, a * room, 0.0), axis=1) >= need
    if norm == "l1":
        amounts = _l1_amounts(a, room, need)
    else:
        kappa = a if norm == "l2" else jnp.where(a > 0, 1.0, 0.0).astype(a.dtype)
        lam = _crossing_lambda(a, kappa, room, need)
        amounts = jnp.where(a > 0, jnp.minimum(lam * kappa, room), 0.0)
    amounts = jnp.where(feasible[:, None], amounts, jnp.where(a > 0, room, 0.0))
    return -jnp.sign(u) * amounts
