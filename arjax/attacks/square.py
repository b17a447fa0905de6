"""Square Attack (Andriushchenko et al. 2020, arXiv 1912.00049), l-inf and l2.

A score-based (black-box) random search: it only evaluates the logits, never a gradient, so
it is the ensemble's check against gradient masking. Each query changes one random square
window of the current perturbation (Algorithm 1; l-inf updates Algorithm 2, l2 updates
Algorithm 3 with the pseudo-Gaussian pattern of Sec. 3) and keeps the change when the
margin loss improves. The window's area is a fraction ``p`` of the image, halved on the
paper's schedule (:func:`square_p`).

Inputs are ``[B, H, W, C]`` images (``[B, H, W]`` are read with one channel) or ``[B, D]``
vectors; vectors are treated as a ``D x 1`` image whose "squares" are runs of
``round(p * D)`` consecutive features. All examples share one fixed-shape batch; windows
are masks with per-example random positions, so the loop is jittable with static query
count and traced (per-sample) ``eps``.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from arjax.attacks.geometry import check_norm_name, clip_to_bounds, per_sample, project
from arjax.attacks.objectives import worst_label_margin
from arjax.attacks.pgd import checked_logits_fn
from arjax.attacks.registry import AttackDef, register_attack
from arjax.losses.classification import predictions_correct
from arjax.types import Array, LogitsFn, PRNGKey, Radius

P_INIT = 0.8  # AutoAttack's p_init for both norms (the paper tunes 0.05 / 0.1 on ImageNet)
_P_BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p(i: Array, num_queries: int, p_init: float = P_INIT) -> Array:
    """The fraction of the image a window covers at iteration ``i`` (the paper's schedule).

    The schedule of the paper for a 10,000-query budget, rescaled to ``num_queries``:
    ``p_init`` for the first 10 iterations, then halved after iterations 10, 50, 200, 500,
    1000, 2000, 4000, 6000 and 8000.

    Args:
      i: iteration index (int, may be traced).
      num_queries: the budget N (static).
      p_init: the initial fraction.

    Returns:
      float32 scalar ``p``.
    """
    it = jnp.floor(jnp.asarray(i, jnp.float32) * (10000.0 / max(num_queries, 1)))
    halvings = jnp.searchsorted(jnp.asarray(_P_BOUNDS, jnp.float32), it, side="left")
    return p_init / jnp.exp2(halvings.astype(jnp.float32))


def _as_image(x: Array) -> Array:
    if x.ndim == 2:
        return x[:, :, None, None]
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 4:
        return x
    raise ValueError(f"square attack takes [B, D], [B, H, W] or [B, H, W, C]; got {x.shape}.")


def _rand_int(key: PRNGKey, high: Array, shape: tuple[int, ...]) -> Array:
    """Uniform integers in ``[0, high]`` (``high`` may be a traced int)."""
    u = jax.random.uniform(key, shape)
    return jnp.minimum(jnp.floor(u * (high + 1)), high).astype(jnp.int32)


def _window(img_shape, vh, vw, sh, sw) -> Array:
    """A bool ``[B, H, W, 1]`` mask: rows ``[vh, vh + sh)`` x cols ``[vw, vw + sw)`` per example."""
    _, h, w, _ = img_shape
    rows = jnp.arange(h)[None, :, None, None]
    cols = jnp.arange(w)[None, None, :, None]
    return (rows >= vh) & (rows < vh + sh) & (cols >= vw) & (cols < vw + sw)


def _spatial_norm(v: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2), keepdims=True))


def _unit(v: Array, axes: tuple[int, ...]) -> Array:
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))
    return v / jnp.where(norm > 0, norm, 1.0)


def _pseudo_gaussian(lr: Array, lc: Array, sh: Array, sw: Array, inside: Array, table: Array):
    """The l2 pattern eta (Sec. 3) on an ``sh x sw`` window, unit l2 norm per example.

    The window is split in two halves along its rows; each half carries the sum over
    concentric rectangles ``n = d, ..., M - 1`` of ``1 / (n + 1)^2`` (``d`` the Chebyshev
    distance to the half's centre, ``M`` its number of rings), each half is scaled to unit
    norm, the upper half counts +, the lower -, and the whole has unit norm.

    Args:
      lr: int row offsets inside the window, ``[B, H, W, 1]``.
      lc: int column offsets inside the window, ``[B, H, W, 1]``.
      sh: window height (int, broadcastable to ``[B, 1, 1, 1]``).
      sw: window width (same shapes).
      inside: bool ``[B, H, W, 1]``, the window.
      table: ``table[n] = sum_{k < n} 1 / (k + 1)^2``.

    Returns:
      float32 ``[B, H, W, 1]``, zero outside the window.
    """
    half = sh // 2
    top = lr < half
    hx = jnp.where(top, half, sh - half)
    lr2 = jnp.where(top, lr, lr - half)
    dist = jnp.maximum(jnp.abs(lr2 - hx // 2), jnp.abs(lc - sw // 2))
    rings = jnp.maximum(hx // 2 + 1, sw // 2 + 1)
    last = table.shape[0] - 1
    value = jnp.take(table, jnp.clip(rings, 0, last)) - jnp.take(table, jnp.clip(dist, 0, last))
    value = jnp.where(inside, value, 0.0)
    upper = _unit(jnp.where(top, value, 0.0), (1, 2, 3))
    lower = _unit(jnp.where(top, 0.0, value), (1, 2, 3))
    return _unit(upper - lower, (1, 2, 3))


def _margin_and_correct(logits_fn, x_img, y):
    logits = logits_fn(x_img)
    return worst_label_margin(logits, y), predictions_correct(logits, y)


def _square_once(logits_fn, x, y, key, eps_b, *, num_queries, norm, p_init, bounds):
    """Algorithm 1 from one random initialisation; ``x`` is ``[B, H, W, C]``."""
    b, h, w, c = x.shape
    vector = w == 1
    table = jnp.asarray(
        np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, max(h, w) + 2) ** 2)]), jnp.float32
    )
    rows = jnp.arange(h)[None, :, None, None]
    cols = jnp.arange(w)[None, None, :, None]

    def to_ball(delta):
        if norm == "l2":  # Algorithm 3: every proposal has norm eps before the clipping
            delta = eps_b * _unit(delta, (1, 2, 3))
        return clip_to_bounds(x + project(delta, eps_b, norm), bounds)

    k_init, k_loop = jax.random.split(key)
    if norm == "linf":
        # vertical stripes of +-eps (Sec. 3): one sign per column and channel; a vector
        # gets one sign per feature.
        sign_shape = (b, h, 1, c) if vector else (b, 1, w, c)
        signs = jax.random.rademacher(k_init, sign_shape, x.dtype)
        x_best = to_ball(eps_b * jnp.broadcast_to(signs, x.shape))
    else:
        # a grid of pseudo-Gaussian squares of side h // 5 with random signs (Sec. 3)
        g = max(h // 5, 1)
        gw = 1 if vector else max(w // 5, 1)
        nh, nw = h // g, w // gw
        r0, c0 = rows - (h - g * nh) // 2, cols - (w - gw * nw) // 2
        inside = (r0 >= 0) & (r0 < g * nh) & (c0 >= 0) & (c0 < gw * nw)
        pattern = _pseudo_gaussian(
            r0 % g,
            c0 % gw,
            jnp.int32(g),
            jnp.int32(gw),
            jnp.broadcast_to(inside, (b, h, w, 1)),
            table,
        )
        cell_sign = jax.random.rademacher(k_init, (b, nh, nw, c), x.dtype)
        cell = jnp.clip(r0 // g, 0, nh - 1) * nw + jnp.clip(c0 // gw, 0, nw - 1)
        flat_sign = cell_sign.reshape(b, nh * nw, c)
        per_pixel = jnp.take_along_axis(
            flat_sign, jnp.broadcast_to(cell.reshape(1, h * w, 1), (b, h * w, 1)), axis=1
        ).reshape(b, h, w, c)
        x_best = to_ball(pattern * per_pixel)
    margin_best, correct_best = _margin_and_correct(logits_fn, x_best, y)
    bshape = (b, 1, 1, 1)

    def window_size(i):
        p = square_p(i, num_queries, p_init)
        if vector:
            s = jnp.round(p * h).astype(jnp.int32)
            if norm == "linf":
                return jnp.clip(s, 1, max(h - 1, 1)), jnp.int32(1)
            return jnp.clip(s, min(2, h), h), jnp.int32(1)
        s = jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32)
        if norm == "linf":
            s = jnp.clip(s, 1, max(min(h, w) - 1, 1))
        else:  # at least 3, odd, inside the image
            s = jnp.maximum(s, 3)
            s = jnp.minimum(s + (1 - s % 2), min(h, w))
        return s, s

    def body(i, carry):
        x_best, margin_best, correct_best = carry
        keys = jax.random.split(jax.random.fold_in(k_loop, i), 6)
        sh, sw = window_size(i)
        vh = _rand_int(keys[0], h - sh, bshape)
        vw = _rand_int(keys[1], w - sw, bshape)
        win = _window(x.shape, vh, vw, sh, sw)
        delta = x_best - x
        sign = jax.random.rademacher(keys[2], (b, 1, 1, c), x.dtype)
        if norm == "linf":  # Algorithm 2: the window gets +-eps per channel
            proposal = jnp.where(win, delta + 2.0 * eps_b * sign, delta)
        else:  # Algorithm 3: move mass from window 2 into window 1 (pseudo-Gaussian)
            vh2 = _rand_int(keys[3], h - sh, bshape)
            vw2 = _rand_int(keys[4], w - sw, bshape)
            win2 = _window(x.shape, vh2, vw2, sh, sw)
            flip = jax.random.bernoulli(keys[5], 0.5, bshape) & jnp.bool_(not vector)
            lr, lc = rows - vh, cols - vw
            eta = jnp.where(
                flip,
                _pseudo_gaussian(lc, lr, sw, sh, win, table),
                _pseudo_gaussian(lr, lc, sh, sw, win, table),
            )
            old = jnp.where(win, delta, 0.0)
            new = eta * sign + old / (1e-12 + _spatial_norm(old))
            norm_img = jnp.sqrt(jnp.sum(jnp.square(delta), axis=(1, 2, 3), keepdims=True))
            union = jnp.where(win | win2, delta, 0.0)
            norm_union_sq = jnp.sum(jnp.square(union), axis=(1, 2, 3), keepdims=True)
            budget = jnp.sqrt(jnp.maximum(eps_b**2 - norm_img**2, 0.0) / c + norm_union_sq)
            new = new / (1e-12 + _spatial_norm(new)) * budget
            proposal = jnp.where(win, new, jnp.where(win2, 0.0, delta))
        x_new = to_ball(proposal)
        margin_new, correct_new = _margin_and_correct(logits_fn, x_new, y)
        accept = correct_best & ((margin_new > margin_best) | ~correct_new)
        return (
            jnp.where(accept.reshape(bshape), x_new, x_best),
            jnp.where(accept, margin_new, margin_best),
            jnp.where(accept, correct_new, correct_best),
        )

    x_best, margin_best, correct_best = lax.fori_loop(
        0, num_queries, body, (x_best, margin_best, correct_best)
    )
    return x_best, ~correct_best, margin_best


def square(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: PRNGKey,
    *,
    eps: Radius,
    num_queries: int = 5000,
    norm: str = "linf",
    restarts: int = 1,
    p_init: float = P_INIT,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> Array:
    """Square Attack (Andriushchenko et al. 2020, arXiv 1912.00049, Algorithm 1).

    Maximises the margin :func:`arjax.attacks.objectives.worst_label_margin` (the paper's
    margin loss ``max_{j != y} z_j - z_y``; ``-(2y - 1) z`` for one logit; the worst
    label's margin for multi-hot labels) by random search over square-shaped updates,
    using one forward pass per query and no gradient. An example stops changing once it is
    misclassified (:func:`arjax.losses.predictions_correct` False).

    Args:
      logits_fn: inputs shaped like ``x`` -> logits ``[B, K]``, ``[B]`` or ``[B, C]``.
      x: float ``[B, H, W, C]``, ``[B, H, W]`` or ``[B, D]`` clean inputs, inside bounds.
      y: labels ``[B]`` or multi-hot ``[B, C]``.
      key: PRNG key.
      eps: radius; python float or per-sample ``[B]`` (may be traced).
      num_queries: iterations (one query each, plus one for the initialisation; static).
      norm: ``"linf"`` or ``"l2"`` (static).
      restarts: independent runs (static); each example keeps the first that broke it,
        else the one with the largest margin.
      p_init: initial window fraction of :func:`square_p`.
      bounds: data range ``(lo, hi)`` or None.

    Returns:
      ``x_adv`` shaped like ``x``, inside the ball and the bounds, gradients stopped.
    """
    check_norm_name(norm)
    for name, value, low in (("num_queries", num_queries, 0), ("restarts", restarts, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be a python int >= {low}; got {value!r}.")
    logits_fn = checked_logits_fn(logits_fn)
    x = lax.stop_gradient(jnp.asarray(x))
    y = jnp.asarray(y)
    shape = x.shape
    img = _as_image(x)
    eps_b = per_sample(eps, img)

    def f(z):
        return logits_fn(z.reshape(shape))

    def run(r, best):
        x_b, broken_b, margin_b = best
        x_r, broken_r, margin_r = _square_once(
            f,
            img,
            y,
            jax.random.fold_in(key, r),
            eps_b,
            num_queries=num_queries,
            norm=norm,
            p_init=p_init,
            bounds=bounds,
        )
        take = ~broken_b & (broken_r | (margin_r > margin_b))
        return (
            jnp.where(take.reshape(-1, 1, 1, 1), x_r, x_b),
            broken_b | broken_r,
            jnp.where(take, margin_r, margin_b),
        )

    init = (img, jnp.zeros(shape[:1], bool), jnp.full(shape[:1], -jnp.inf, x.dtype))
    x_adv, _, _ = lax.fori_loop(0, restarts, run, init)
    return lax.stop_gradient(x_adv.reshape(shape))


def _run_square(spec, logits_fn, x, y, key, *, eps, step_size, bounds):
    """Square Attack (Andriushchenko et al. 2020) with ``spec.num_steps`` queries."""
    del step_size
    return square(
        logits_fn,
        x,
        y,
        key,
        eps=eps,
        num_queries=spec.num_steps,
        norm=spec.norm,
        restarts=spec.restarts,
        bounds=bounds,
    )


register_attack(
    "square",
    AttackDef(
        _run_square,
        ("margin",),
        gradient_free=True,
        doc="Square Attack, score-based random search; steps = queries",
    ),
)
