"""Robust accuracy vs attack radius: worst case over attack losses and restarts.

IMA (Ma et al., seed 004, "Evaluation"): every noise level is attacked with 100-step
PGD twice, with the cross-entropy and with the margin loss; a test sample is robust
only if it is correct on clean data and neither run flips it. The accuracy-vs-noise
curve and its area summarise a model (DESIGN §4.3, §8).

Efficiency: one jitted function per attack configuration (loss, norm, num_steps,
random_start, bounds) takes the radius and step size as traced values, so a curve
compiles once per loss. Data go through in fixed-size chunks (the last padded by
repeating its final row; padded rows are dropped), all chunks share one executable,
and results stay on the device until the end (no per-chunk host sync). Sharded
inputs keep their sharding under ``jax.jit``. A :class:`jax.tree_util.Partial`
``logits_fn`` (e.g. ``Partial(forward, params)``) passes its arrays as jit arguments:
no constants baked into the program, and new parameters reuse the compiled code; a
plain closure is compiled once per call.

Keys: radius ``i``, loss ``l``, restart ``r``, chunk ``c`` use
``fold_in(fold_in(fold_in(fold_in(key, i), LOSS_TAGS[l]), r), c)``: reproducible for a
given key and ``batch_size`` (only the random starts depend on the chunking).
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from arjax.attacks import LOSSES, NORMS
from arjax.attacks.registry import ATTACKS, AttackSpec, make_spec, run_attack
from arjax.compilation import jit
from arjax.losses import predictions_correct
from arjax.types import Array, LogitsFn, PRNGKey

# A fixed fold-in tag per attack loss, so adding a loss never changes another's draws.
LOSS_TAGS = {name: i for i, name in enumerate(LOSSES)}
_STATIC = ("spec", "bounds")


def _attack(fn, x, y, key, chunk, eps, step_size, *, spec: AttackSpec, bounds):
    """``spec``'s attack on one chunk (through the registry); eps / step_size traced."""
    k = jax.random.fold_in(key, chunk)
    return run_attack(spec, fn, x, y, k, eps=eps, step_size=step_size, bounds=bounds)


def _attack_correct(fn, x, y, key, chunk, eps, step_size, **static):
    """Whether each example of the chunk is still correct after the attack, bool ``[B]``."""
    return predictions_correct(fn(_attack(fn, x, y, key, chunk, eps, step_size, **static)), y)


def _clean_correct(fn, x, y):
    return predictions_correct(fn(x), y)


def _make_jitted(f: Any = None) -> dict[str, Any]:
    """Jitted functions of ``(x, y, ...)`` closing over ``f``, or of ``(fn, x, y, ...)``."""
    pre = () if f is None else (f,)
    return {
        "attack": jit(lambda *a, **k: _attack(*pre, *a, **k), static_argnames=_STATIC),
        "correct": jit(lambda *a, **k: _attack_correct(*pre, *a, **k), static_argnames=_STATIC),
        "clean": jit(lambda *a: _clean_correct(*pre, *a)),
    }


# Shared executables for Partial logits functions (their leaves are jit arguments).
_SHARED = _make_jitted()


def _jitted(logits_fn: LogitsFn) -> dict[str, Any]:
    """Jitted ``attack`` / ``correct`` / ``clean`` functions of ``(x, y, ...)`` for a model.

    A :class:`~jax.tree_util.Partial` goes to the module's shared executables as an
    argument (its arrays are traced; only its function is in the cache key). A plain
    closure is closed over by fresh jitted functions, so the traces and executables
    that hold it (and the arrays it captured) are freed with them after the call.
    """
    if isinstance(logits_fn, Partial):
        return {name: functools.partial(f, logits_fn) for name, f in _SHARED.items()}
    return _make_jitted(logits_fn)


def _chunk(a: Any, start: int, size: int) -> Any:
    """Rows ``[start, start + size)`` of ``a``, padded by repeating the last row."""
    part = a[start : start + size]
    pad = size - part.shape[0]
    if pad == 0:
        return part
    widths = [(0, pad)] + [(0, 0)] * (part.ndim - 1)
    lib = np if isinstance(part, np.ndarray) else jnp
    return lib.pad(part, widths, mode="edge")


def _chunks(n: int, batch_size: int) -> tuple[int, list[int]]:
    size = max(1, min(batch_size, n))
    return size, list(range(0, n, size))


def _gather(outputs: list[Any], n: int) -> np.ndarray:
    return np.concatenate([np.asarray(o) for o in outputs], axis=0)[:n]


def _check(x: Any, y: Any, norm: str, batch_size: int, num_steps: int) -> int:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid choices: {', '.join(NORMS)}.")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a python int >= 1; got {num_steps!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    n = int(x.shape[0])
    if n == 0 or int(y.shape[0]) != n:
        raise ValueError(f"x has {n} examples and y {y.shape[0]}; need the same, >= 1.")
    return n


@dataclasses.dataclass
class RobustCurve:
    """Accuracy vs attack radius.

    Attributes:
      eps: the radii, ``E`` floats.
      accuracy: float ``[E]``, worst case over losses (and restarts) per sample.
      per_loss: ``{loss: float [E]}``, accuracy under each loss alone.
      clean_accuracy: accuracy without attack.
      norm: ``"linf"`` or ``"l2"``.
    """

    eps: tuple[float, ...]
    accuracy: np.ndarray
    per_loss: dict[str, np.ndarray]
    clean_accuracy: float
    norm: str

    def area(self) -> float:
        """Trapezoid area under accuracy vs eps over the eps range (1 is perfect; 1 radius: acc)."""
        eps = np.asarray(self.eps, dtype=np.float64)
        acc = np.asarray(self.accuracy, dtype=np.float64)
        order = np.argsort(eps, kind="stable")
        eps, acc = eps[order], acc[order]
        if eps.size < 2 or eps[-1] <= eps[0]:
            return float(acc.mean())
        return float(np.trapezoid(acc, eps) / (eps[-1] - eps[0]))

    def to_dict(self) -> dict[str, Any]:
        """Plain python containers (lists, floats) for JSON, plus the area."""
        return {
            "eps": [float(e) for e in self.eps],
            "accuracy": [float(a) for a in self.accuracy],
            "per_loss": {k: [float(a) for a in v] for k, v in self.per_loss.items()},
            "clean_accuracy": float(self.clean_accuracy),
            "norm": self.norm,
            "area": self.area(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RobustCurve":
        """Inverse of :meth:`to_dict` (the stored area is recomputed, not read)."""
        return cls(
            eps=tuple(float(e) for e in d["eps"]),
            accuracy=np.asarray(d["accuracy"], dtype=np.float64),
            per_loss={k: np.asarray(v, dtype=np.float64) for k, v in d["per_loss"].items()},
            clean_accuracy=float(d["clean_accuracy"]),
            norm=str(d["norm"]),
        )


@dataclasses.dataclass
class RobustPredictions:
    """Per-sample outcome of :func:`robust_predictions`.

    Attributes:
      eps: the radii, ``E`` floats.
      correct: bool ``[E, N]``, clean-correct and not flipped by any loss/restart.
      per_loss: ``{loss: bool [E, N]}``, clean-correct and not flipped by that loss.
      clean: bool ``[N]``, correct on clean inputs.
      norm: ``"linf"`` or ``"l2"``.
    """

    eps: tuple[float, ...]
    correct: np.ndarray
    per_loss: dict[str, np.ndarray]
    clean: np.ndarray
    norm: str

    def curve(self, mask: Any = None) -> RobustCurve:
        """Mean over (unmasked) samples: the :class:`RobustCurve`.

        Args:
          mask: optional ``[N]`` bool/0-1 weights; masked samples are ignored
            (an all-zero mask gives NaN accuracies).
        """
        w = np.ones(self.clean.shape[0]) if mask is None else np.asarray(mask, np.float64)
        total = float(w.sum())

        def mean(correct: np.ndarray) -> np.ndarray:
            return np.sum(correct * w, axis=-1) / total if total > 0 else np.nan * correct[..., 0]

        return RobustCurve(
            eps=self.eps,
            accuracy=mean(self.correct),
            per_loss={k: mean(v) for k, v in self.per_loss.items()},
            clean_accuracy=float(mean(self.clean)),
            norm=self.norm,
        )


def curve_radii(eps: Any, n: int) -> tuple[float, ...]:
    """The curve's radii ``E`` from ``eps``, refusing values that read as per-sample radii.

    ``eps`` lists the radii of the accuracy curve (one PGD run per radius over all
    samples), never one radius per sample. An array whose length equals the number of
    samples ``n`` (or any array of more than one dimension) is ambiguous and refused; a
    tuple or list is always read as curve radii.

    Raises:
      ValueError: a scalar, an array shaped ``[n]`` or ``[n, ...]`` (n > 1), or ndim > 1.
    """
    if np.ndim(eps) == 0:
        raise ValueError(f"eps must be a sequence of curve radii, e.g. (0.0, {float(eps)}).")
    if not isinstance(eps, tuple | list):
        shape = np.shape(eps)
        if len(shape) > 1 or (n > 1 and shape[0] == n):
            raise ValueError(
                f"eps is an array shaped {shape} for {n} samples: robust_accuracy reads eps as "
                "the curve's radii (each applied to every sample), not per-sample radii. Pass "
                "tuple(eps) if you mean those radii; for per-sample radii [N] attack with "
                "arjax.attacks.pgd(..., eps=radii) or adversarial_examples(..., eps=radii)."
            )
    return tuple(float(e) for e in np.ravel(np.asarray(eps, dtype=np.float64)))


def robust_predictions(
    logits_fn: LogitsFn,
    x: Any,
    y: Any,
    key: PRNGKey,
    *,
    eps: Sequence[float] = (0.0, 0.05, 0.1),
    num_steps: int = 100,
    norm: str = "linf",
    losses: Sequence[str] = ("ce", "margin"),
    step_size: float | None = None,
    alpha: float = 4.0,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    random_start: bool = True,
    num_restarts: int = 1,
    batch_size: int = 512,
) -> RobustPredictions:
    """Per-sample robustness at each radius: worst case over losses and restarts.

    IMA evaluation (Ma et al.): ``num_steps``-step PGD per loss (cross-entropy
    and margin by default) at every radius; a sample is robust at ``eps`` when it
    is correct on clean data and no run flips it. ``eps == 0`` is the clean
    accuracy (no attack is run).

    Args:
      logits_fn: images ``[B, ...]`` -> logits ``[B, K]`` or ``[B]`` (eval mode);
        a :class:`jax.tree_util.Partial` avoids recompiling when parameters change.
      x: float ``[N, ...]`` inputs (numpy or jax, possibly sharded).
      y: int ``[N]`` labels.
      key: PRNG key for the random starts.
      eps: the curve's radii ``E`` (>= 0), in the ``norm``, each applied to every sample;
        a tuple/list, or an array whose length is not ``N`` (an ``[N]`` array reads as
        per-sample radii and is refused; pass ``tuple(eps)`` to mean curve radii).
      num_steps: PGD steps (100 in IMA's "100-PGD").
      norm: ``"linf"`` or ``"l2"``.
      losses: attack objectives, each from ``arjax.attacks.LOSSES``.
      step_size: fixed step size for every radius; default ``alpha * eps / num_steps``.
      alpha: step-size factor (IMA uses 4).
      bounds: data range ``(lo, hi)`` or None (e.g. two-moons points).
      random_start: start each run at a uniform point of the ball.
      num_restarts: PGD runs per loss (each with its own random start).
      batch_size: chunk size; every chunk has this many rows (the last is padded).

    Returns:
      :class:`RobustPredictions` with ``correct`` bool ``[E, N]``.
    """
    n = _check(x, y, norm, batch_size, num_steps)
    losses = tuple(losses)
    bad = [name for name in losses if name not in LOSSES]
    if not losses or bad:
        raise ValueError(f"losses must be a non-empty subset of {LOSSES}; got {losses}.")
    eps = curve_radii(eps, n)
    if not eps or min(eps) < 0:
        raise ValueError(f"eps must be a non-empty sequence of radii >= 0; got {eps}.")
    if num_restarts < 1:
        raise ValueError(f"num_restarts must be >= 1; got {num_restarts}.")
    jitted = _jitted(logits_fn)
    size, starts = _chunks(n, batch_size)
    xs = [_chunk(x, s, size) for s in starts]
    ys = [_chunk(y, s, size) for s in starts]
    clean = _gather([jitted["clean"](xc, yc) for xc, yc in zip(xs, ys, strict=True)], n)
    # The radius and step are traced; the spec (static) carries eps 0 for every radius.
    specs = {
        name: make_spec("pgd", norm, 0.0, num_steps, loss=name, random_start=random_start)
        for name in losses
    }

    per_loss = {name: np.zeros((len(eps), n), dtype=bool) for name in losses}
    for i, e in enumerate(eps):
        step = alpha * e / num_steps if step_size is None else step_size
        e_arr, step_arr = np.float32(e), np.float32(step)
        for name in losses:
            if e == 0.0:
                per_loss[name][i] = clean
                continue
            ok = clean.copy()
            k_loss = jax.random.fold_in(jax.random.fold_in(key, i), LOSS_TAGS[name])
            for r in range(num_restarts):
                k_run = jax.random.fold_in(k_loss, r)
                outs = [
                    jitted["correct"](
                        xc, yc, k_run, c, e_arr, step_arr, spec=specs[name], bounds=bounds
                    )
                    for c, (xc, yc) in enumerate(zip(xs, ys, strict=True))
                ]
                ok &= _gather(outs, n)
            per_loss[name][i] = ok
    correct = np.logical_and.reduce([per_loss[name] for name in losses])
    return RobustPredictions(eps=eps, correct=correct, per_loss=per_loss, clean=clean, norm=norm)


def robust_accuracy(
    logits_fn: LogitsFn,
    x: Any,
    y: Any,
    key: PRNGKey,
    *,
    eps: Sequence[float] = (0.0, 0.05, 0.1),
    num_steps: int = 100,
    norm: str = "linf",
    losses: Sequence[str] = ("ce", "margin"),
    step_size: float | None = None,
    alpha: float = 4.0,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    mask: Any = None,
    random_start: bool = True,
    num_restarts: int = 1,
    batch_size: int = 512,
) -> RobustCurve:
    """Accuracy vs radius under the worst of several PGD attacks (IMA's 100-PGD evaluation).

    See :func:`robust_predictions` for the arguments; ``mask`` (``[N]`` bool/0-1)
    excludes padding examples from the averages. By construction the robust
    accuracy is at most each single-loss accuracy, which is at most the clean
    accuracy.

    Returns:
      :class:`RobustCurve`; ``area()`` summarises it.
    """
    attack = dict(eps=eps, num_steps=num_steps, norm=norm, losses=losses, step_size=step_size)
    attack.update(alpha=alpha, bounds=bounds, random_start=random_start)
    chunking = dict(num_restarts=num_restarts, batch_size=batch_size)
    preds = robust_predictions(logits_fn, x, y, key, **attack, **chunking)
    return preds.curve(mask)


def adversarial_examples(
    logits_fn: LogitsFn,
    x: Any,
    y: Any,
    key: PRNGKey | None = None,
    *,
    attack: str = "pgd",
    eps: float | Array = 0.05,
    num_steps: int = 10,
    norm: str = "linf",
    loss: str = "ce",
    bounds: tuple[float, float] | None = (0.0, 1.0),
    step_size: float | None = None,
    alpha: float = 4.0,
    random_start: bool = True,
    batch_size: int = 512,
    spec: AttackSpec | None = None,
) -> np.ndarray:
    """Adversarial inputs for a whole data set, for metrics such as AUC under attack.

    ARFL (Hao et al.) reports accuracy and AUC on adversarial test data; compute
    the logits of the returned images and feed :func:`arjax.evaluation.roc_auc`.

    Args:
      logits_fn: images -> logits (see :func:`robust_predictions`).
      x: float ``[N, ...]`` inputs.
      y: ``[N]`` labels.
      key: PRNG key; needed for ``attack="pgd"`` with ``random_start``. Chunk ``c``
        uses ``fold_in(key, c)``.
      attack: ``"pgd"`` or ``"fgsm"`` (one full step of size ``eps``, no random
        start, ``num_steps`` / ``step_size`` / ``random_start`` ignored).
      eps: radius, a float or per-sample ``[N]``.
      num_steps: PGD steps.
      norm: ``"linf"`` or ``"l2"``.
      loss: attack objective from ``arjax.attacks.LOSSES``.
      bounds: data range or None.
      step_size: PGD step size; default ``alpha * eps / num_steps``.
      alpha: step-size factor.
      random_start: PGD random start.
      batch_size: chunk size.
      spec: an :class:`arjax.attacks.AttackSpec` (any registered attack) instead of
        ``attack`` ... ``random_start``; ``eps`` still gives the radius.

    Returns:
      numpy ``[N, ...]`` adversarial inputs, same dtype as ``x``.
    """
    if spec is None:  # the registry validates the attack, norm, loss and steps
        spec = make_spec(
            attack, norm, 0.0, num_steps, where="adversarial_examples", loss=loss, alpha=alpha,
            step_size=step_size, random_start=random_start,
        )  # fmt: skip
    random_start = spec.random_start and not ATTACKS[spec.attack].fixed_steps
    n = _check(x, y, spec.norm, batch_size, spec.num_steps)
    if random_start and key is None:
        raise ValueError("adversarial_examples with a random start needs a PRNG key.")
    key = jax.random.key(0) if key is None else key
    eps_arr = np.asarray(eps, dtype=np.float32)
    if eps_arr.ndim == 0:
        eps_arr = np.full((n,), eps_arr, dtype=np.float32)
    if eps_arr.shape != (n,):
        raise ValueError(f"eps must be a float or [N={n}]; got shape {eps_arr.shape}.")
    step_arr = spec.step_for(eps_arr)
    spec = spec.with_eps(0.0)  # the radius is traced: one executable for every eps
    jitted = _jitted(logits_fn)
    size, starts = _chunks(n, batch_size)
    outs = []
    for c, s in enumerate(starts):
        xc, yc = _chunk(x, s, size), _chunk(y, s, size)
        ec, sc = _chunk(eps_arr, s, size), _chunk(step_arr, s, size)
        outs.append(jitted["attack"](xc, yc, key, c, ec, sc, spec=spec, bounds=bounds))
    return _gather(outs, n).astype(np.asarray(x[:1]).dtype, copy=False)
