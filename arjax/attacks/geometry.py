"""Geometry of the threat model: l-inf, l2 and l1 balls around each example.

Every function works per example on ``[B, ...]`` arrays. Radii and step sizes may be a
python float, a 0-d array or a per-sample ``[B]`` array; :func:`per_sample` broadcasts them
against the trailing dimensions of the input.

``NORMS`` are the norms of the fixed-radius attacks (PGD, APGD, Square, BPGD) and of the
training methods; ``LP_NORMS`` adds l1, which the minimum-norm attacks (FAB, FMN) measure
and :func:`lp_norm`, :func:`dual_norm`, :func:`random_init` and :func:`project` handle.
"""

import math

import jax
import jax.numpy as jnp

from arjax.types import Array, PRNGKey, Radius

NORMS = ("linf", "l2")
LP_NORMS = ("linf", "l2", "l1")


def check_norm_name(norm: str, choices: tuple[str, ...] = NORMS) -> None:
    """Raise a ValueError listing the valid choices unless ``norm`` is in ``choices``."""
    if norm not in choices:
        raise ValueError(f"unknown norm {norm!r}; valid choices: {', '.join(choices)}.")


def per_sample(value: Radius, x: Array) -> Array:
    """Broadcast a scalar or per-sample ``[B]`` value against ``x`` of shape ``[B, ...]``.

    Args:
      value: python float, 0-d array, ``[B]`` array (may be traced), or an array already
        shaped ``[B, 1, ..., 1]`` (returned as is, so the call is idempotent).
      x: ``[B, ...]`` array whose batch size and dtype the result follows.

    Returns:
      ``value`` in ``x.dtype``, shaped ``[]`` (scalar) or ``[B, 1, ..., 1]``.

    Raises:
      ValueError: if ``value`` is neither a scalar nor shaped ``[B]``.
    """
    value = jnp.asarray(value, dtype=x.dtype)
    broadcast_shape = x.shape[:1] + (1,) * (x.ndim - 1)
    if value.ndim == 0 or value.shape == broadcast_shape:
        return value
    if value.shape != x.shape[:1]:
        raise ValueError(
            f"a per-sample radius / step size must be a scalar or shaped [B] = "
            f"{x.shape[:1]}; got shape {value.shape}."
        )
    return value.reshape(broadcast_shape)


def _feature_axes(x: Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def lp_norm(delta: Array, norm: str) -> Array:
    """Per-example norm of a perturbation.

    Args:
      delta: float ``[B, ...]``.
      norm: ``"linf"`` (max absolute entry), ``"l2"`` (Euclidean norm of the flattened
        example) or ``"l1"`` (sum of absolute entries).

    Returns:
      float ``[B]``.
    """
    check_norm_name(norm, LP_NORMS)
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "l1":
        return jnp.sum(jnp.abs(flat), axis=1)
    return jnp.linalg.norm(flat, ord=jnp.inf if norm == "linf" else 2, axis=1)


DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}  # q with 1/p + 1/q = 1


def dual_norm(v: Array, norm: str) -> Array:
    """Per-example norm dual to ``norm``: ``sup_{||d||_p <= 1} <v, d>``.

    Hölder: the l-inf ball's dual is l1, l2's is l2, l1's is l-inf, so a linear function
    ``f(x) = <w, x> + b`` is at lp-distance ``|f(x)| / dual_norm(w, p)`` from its zero set.

    Args:
      v: float ``[B, ...]`` (e.g. input gradients).
      norm: the primal norm, one of ``LP_NORMS``.

    Returns:
      float ``[B]``.
    """
    check_norm_name(norm, LP_NORMS)
    return lp_norm(v, DUAL[norm])


def _robust_l2_normalize(v: Array) -> Array:
    """``v / ||v||_2`` per example; 0 where ``v`` is 0; no underflow for tiny ``v``.

    Dividing by the per-example max-abs entry first puts the largest entry at 1, so the
    squared sum cannot underflow even for gradients of 1e-30 (confident models).
    """
    axes = _feature_axes(v)
    scale = jnp.max(jnp.abs(v), axis=axes, keepdims=True)
    v = v / jnp.where(scale > 0, scale, 1.0)
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))
    return v / jnp.where(norm > 0, norm, 1.0)


def random_init(key: PRNGKey, x: Array, eps: Radius, norm: str) -> Array:
    """A random perturbation uniformly distributed in the ball of radius ``eps``.

    l-inf: ``U(-eps, eps)`` per entry (Madry et al. 2018 random start). l2: uniform in the
    d-dimensional l2 ball, ``d = prod(x.shape[1:])``: a gaussian direction normalised to
    unit length, times the radius ``eps * u^(1/d)`` with ``u ~ U(0, 1)``. l1: the same
    radius times ``v / ||v||_1`` with ``v`` i.i.d. Laplace, which is distributed by the cone
    measure of the l1 sphere (Schechtman & Zinn 1990), so the point is uniform in the ball.

    Args:
      key: PRNG key.
      x: float ``[B, ...]`` clean inputs (only shape and dtype are used).
      eps: radius, python float or ``[B]``.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.

    Returns:
      ``delta`` shaped like ``x``, inside the ball (not clipped to any bounds).
    """
    check_norm_name(norm, LP_NORMS)
    eps_b = per_sample(eps, x)
    if norm == "linf":
        return eps_b * jax.random.uniform(key, x.shape, x.dtype, minval=-1.0, maxval=1.0)
    key_dir, key_radius = jax.random.split(key)
    if norm == "l1":
        v = jax.random.laplace(key_dir, x.shape, x.dtype)
        length = jnp.sum(jnp.abs(v), axis=_feature_axes(x), keepdims=True)
        direction = v / jnp.where(length > 0, length, 1.0)
    else:
        direction = _robust_l2_normalize(jax.random.normal(key_dir, x.shape, x.dtype))
    dim = math.prod(x.shape[1:])
    u = jax.random.uniform(key_radius, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
    return eps_b * u ** (1.0 / dim) * direction


def step_direction(grad: Array, norm: str) -> Array:
    """Steepest-ascent direction of unit norm for a gradient, per example.

    Args:
      grad: float ``[B, ...]`` input gradient.
      norm: ``"linf"`` -> ``sign(grad)``; ``"l2"`` -> ``grad / ||grad||_2`` per example
        (0 where the gradient is 0, and exact for tiny gradients).

    Returns:
      float array shaped like ``grad``.
    """
    check_norm_name(norm)
    if norm == "linf":
        return jnp.sign(grad)
    return _robust_l2_normalize(grad)


def project(delta: Array, eps: Radius, norm: str) -> Array:
    """Euclidean projection of each example's perturbation onto its ball of radius ``eps``.

    Args:
      delta: float ``[B, ...]``.
      eps: radius, python float or ``[B]`` (``>= 0``; ``inf`` leaves ``delta`` as is).
      norm: ``"linf"`` (clip entries to ``[-eps, eps]``), ``"l2"`` (rescale examples
        whose norm exceeds eps to norm eps) or ``"l1"`` (:func:`project_l1`).

    Returns:
      float array shaped like ``delta``.
    """
    check_norm_name(norm, LP_NORMS)
    eps_b = per_sample(eps, delta)
    if norm == "linf":
        return jnp.clip(delta, -eps_b, eps_b)
    if norm == "l1":
        return project_l1(delta, eps_b)
    norm_b = jnp.sqrt(jnp.sum(jnp.square(delta), axis=_feature_axes(delta), keepdims=True))
    factor = jnp.minimum(1.0, eps_b / jnp.where(norm_b > 0, norm_b, 1.0))
    return delta * factor


def project_l1(delta: Array, eps: Radius) -> Array:
    """Euclidean projection onto the l1 ball of radius ``eps`` (Duchi et al. 2008, Fig. 1).

    Per example: if ``||v||_1 <= eps`` it is ``v``; else ``sign(v) * max(|v| - theta, 0)``
    where, with ``mu`` the sorted ``|v|`` (largest first), ``rho`` is the largest ``j`` with
    ``mu_j > (sum_{i <= j} mu_i - eps) / j`` and ``theta = (sum_{i <= rho} mu_i - eps) / rho``.
    One sort per example (``O(d log d)``), no loop.

    Args:
      delta: float ``[B, ...]``.
      eps: radius, python float, ``[B]`` or ``[B, 1, ..., 1]`` (``>= 0``; ``inf`` allowed).

    Returns:
      float array shaped like ``delta``, with ``||.||_1 <= eps`` per example.
    """
    b = delta.shape[0]
    flat = delta.reshape(b, -1)
    radius = jnp.broadcast_to(jnp.reshape(per_sample(eps, delta), (-1, 1)), (b, 1))
    length = jnp.sum(jnp.abs(flat), axis=1, keepdims=True)
    inside = length <= radius
    radius = jnp.where(inside, 0.0, radius)  # finite on the branch that is not kept
    mu = -jnp.sort(-jnp.abs(flat), axis=1)
    cums = jnp.cumsum(mu, axis=1)
    j = jnp.arange(1, flat.shape[1] + 1, dtype=flat.dtype)
    rho = jnp.max(jnp.where(mu * j > cums - radius, j, 1.0), axis=1, keepdims=True)
    at_rho = jnp.take_along_axis(cums, rho.astype(jnp.int32) - 1, axis=1)
    theta = (at_rho - radius) / rho
    shrunk = jnp.sign(flat) * jnp.maximum(jnp.abs(flat) - theta, 0.0)
    return jnp.where(inside, flat, shrunk).reshape(delta.shape)


def clip_to_bounds(x_adv: Array, bounds: tuple[float, float] | None) -> Array:
    """Clip inputs to the valid data range.

    Args:
      x_adv: float ``[B, ...]``.
      bounds: ``(lo, hi)``, e.g. ``(0.0, 1.0)`` for images, or None for no clipping
        (two-moons points are not in ``[0, 1]``).

    Returns:
      ``x_adv`` clipped elementwise, or unchanged when ``bounds`` is None.
    """
    if bounds is None:
        return x_adv
    lo, hi = bounds
    return jnp.clip(x_adv, lo, hi)
