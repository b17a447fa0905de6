"""Gradient-masking sanity checks (Carlini et al. 2019, arXiv 1902.06705).

A defence that only hides its gradients (obfuscated gradients, Athalye et al. 2018,
arXiv 1802.00420) looks robust to gradient attacks and is not. The evaluation checklist of
Carlini et al. lists symptoms a sound evaluation must not show; :func:`gradient_masking_checks`
tests four of them with the white-box attack ``APGD-CE -> APGD-T`` (the ``"fast"``
AutoAttack) and the black-box Square attack:

* ``monotone_in_eps``: robust accuracy does not increase with the radius (a larger budget
  can only help the attacker);
* ``large_eps_breaks_all``: at an unbounded radius (the whole data range) robust accuracy
  is about 0 (an unbounded attack must succeed);
* ``black_box_not_stronger``: Square (score-based, no gradient) does not beat the
  white-box attack (a gradient-free attack should not outperform a gradient one);
* ``more_iterations_not_stronger``: 4x the steps and 3 restarts do not lower the robust
  accuracy much (the attack has converged).

Each check allows a slack of ``tolerance`` (a fraction of the batch); a failed check is a
warning that the robust accuracy may be an overestimate, not a proof of masking.
:func:`masking_checks` runs them for the attacks an ``eval`` config selects
(``eval.masking_checks``) and :func:`masking_section` is what the reports hold.
"""

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from arjax.attacks.apgd import DEFAULT_TARGETS
from arjax.attacks.ensemble import EnsembleMember
from arjax.evaluation.attack_specs import AUTOATTACK_FAMILY, AttackSpec
from arjax.evaluation.autoattack_eval import autoattack
from arjax.types import Array, LogitsFn, PRNGKey

EPS_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
MASKING_MODES = ("auto", "all", "off")  # eval.masking_checks


@dataclasses.dataclass(frozen=True)
class MaskingCheck:
    """The outcome of one sanity check.

    Attributes:
      name: ``"monotone_in_eps"``, ``"large_eps_breaks_all"``, ``"black_box_not_stronger"``
        or ``"more_iterations_not_stronger"``.
      passed: False when the symptom was seen.
      detail: the numbers behind the verdict (robust accuracies, radii, the tolerance).
      description: what a failure suggests, one sentence.
    """

    name: str
    passed: bool
    detail: dict[str, float]
    description: str

    def to_dict(self) -> dict[str, Any]:
        """JSON fields: ``name``, ``passed``, ``detail`` (floats), ``description``."""
        detail = {k: float(v) for k, v in self.detail.items()}
        return {"name": self.name, "passed": bool(self.passed), "detail": detail,
                "description": self.description}  # fmt: skip


def _white_box(num_steps: int, restarts: int, num_targets: int) -> tuple[EnsembleMember, ...]:
    return (
        EnsembleMember("apgd-ce", "ce", num_steps, restarts),
        EnsembleMember("apgd-t", "dlr-t", num_steps, restarts, num_targets),
    )


def _default_large_eps(x: np.ndarray, norm: str, bounds, eps: float) -> float:
    if bounds is None:
        span = float(np.max(x) - np.min(x)) or 1.0
        span = max(span, 100.0 * eps)
    else:
        span = float(bounds[1] - bounds[0])
    if norm == "linf":
        return span
    return span * float(np.sqrt(np.prod(x.shape[1:])))


def gradient_masking_checks(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: PRNGKey,
    *,
    norm: str,
    eps: float,
    eps_grid: tuple[float, ...] | None = None,
    large_eps: float | None = None,
    num_steps: int = 20,
    num_queries: int | None = None,
    num_targets: int = 3,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    tolerance: float = 0.05,
) -> list[MaskingCheck]:
    """Runs the four sanity checks of Carlini et al. (2019) on one batch.

    Args:
      logits_fn: inputs ``[B, ...]`` -> logits ``[B, K]``, ``[B]`` or ``[B, C]``; hashable
        (the compiled attacks are cached on it).
      x: float ``[B, ...]`` clean inputs inside ``bounds``.
      y: labels ``[B]`` or multi-hot ``[B, C]``.
      key: PRNG key.
      norm: ``"linf"`` or ``"l2"``.
      eps: the radius the robustness is claimed at.
      eps_grid: radii of the monotonicity check; default ``eps * EPS_FACTORS``.
      large_eps: the "unbounded" radius; default the whole data range (l-inf:
        ``hi - lo``; l2: ``(hi - lo) * sqrt(d)``).
      num_steps: APGD iterations of the white-box attack.
      num_queries: Square queries; default ``50 * num_steps``.
      num_targets: APGD-T targets (capped at K - 1).
      bounds: data range or None.
      tolerance: allowed slack, a fraction of the batch (robust accuracies are fractions).

    Returns:
      the four :class:`MaskingCheck` s, in the order above.
    """
    x = np.asarray(x)
    num_targets = min(num_targets, DEFAULT_TARGETS)
    num_queries = 50 * num_steps if num_queries is None else num_queries
    grid = tuple(sorted(eps * f for f in EPS_FACTORS) if eps_grid is None else sorted(eps_grid))
    large = _default_large_eps(x, norm, bounds, eps) if large_eps is None else large_eps
    keys = jax.random.split(key, 4)
    white = _white_box(num_steps, 1, num_targets)

    def acc(members, radius, k) -> float:
        return autoattack(
            logits_fn, x, y, k, radius, norm, bounds=bounds, members=members
        ).robust_accuracy

    grid_acc = [acc(white, e, keys[0]) for e in grid]
    rises = [b - a for a, b in zip(grid_acc, grid_acc[1:], strict=False)]
    monotone = MaskingCheck(
        "monotone_in_eps",
        all(r <= tolerance for r in rises),
        {
            **{f"robust_acc@eps={e:g}": a for e, a in zip(grid, grid_acc, strict=True)},
            "max_rise": max(rises, default=0.0),
            "tolerance": tolerance,
        },
        "robust accuracy rises with the radius: the attack is not finding the worst case.",
    )
    large_acc = acc(white, large, keys[1])
    unbounded = MaskingCheck(
        "large_eps_breaks_all",
        large_acc <= tolerance,
        {"large_eps": float(large), "robust_acc": large_acc, "tolerance": tolerance},
        "an unbounded attack leaves examples correct: gradients may be masked.",
    )
    white_acc = acc(white, eps, keys[0])
    square_acc = acc((EnsembleMember("square", "margin", num_queries),), eps, keys[2])
    black = MaskingCheck(
        "black_box_not_stronger",
        square_acc >= white_acc - tolerance,
        {"white_box_acc": white_acc, "square_acc": square_acc, "tolerance": tolerance},
        "a gradient-free attack beats the gradient attack: gradients may be masked.",
    )
    strong_acc = acc(_white_box(4 * num_steps, 3, num_targets), eps, keys[3])
    converged = MaskingCheck(
        "more_iterations_not_stronger",
        strong_acc >= white_acc - tolerance,
        {
            "robust_acc": white_acc,
            "robust_acc_4x_steps_3_restarts": strong_acc,
            "tolerance": tolerance,
        },
        "more steps and restarts lower the robust accuracy: the attack has not converged.",
    )
    return [monotone, unbounded, black, converged]


def masking_warnings(checks: list[MaskingCheck]) -> list[str]:
    """One warning line per failed check, e.g. for a log or a report.

    Args:
      checks: from :func:`gradient_masking_checks`.

    Returns:
      ``"gradient masking? <name>: <description> (<numbers>)"`` per failed check; empty
      when all passed.
    """
    lines = []
    for check in checks:
        if check.passed:
            continue
        numbers = ", ".join(f"{k}={v:.4g}" for k, v in check.detail.items())
        lines.append(f"gradient masking? {check.name}: {check.description} ({numbers})")
    return lines


def masking_section(checks: list[MaskingCheck], **context: Any) -> dict[str, Any]:
    """The checks as a report section (what ``report.json`` / ``eval.json`` hold).

    Args:
      checks: from :func:`gradient_masking_checks`.
      **context: fields saying what was checked (``norm``, ``eps``, ``num_examples``...).

    Returns:
      ``{**context, "passed": all passed, "checks": [MaskingCheck.to_dict()...],
      "warnings": masking_warnings(checks)}``.
    """
    return {
        **context,
        "passed": all(c.passed for c in checks),
        "checks": [c.to_dict() for c in checks],
        "warnings": masking_warnings(checks),
    }


def masking_checks(
    logits_fn: LogitsFn,
    x: np.ndarray,
    y: np.ndarray,
    key: PRNGKey,
    specs: list[AttackSpec],
    cfg: ml_collections.ConfigDict,
    bounds: tuple[float, float] | None,
) -> dict[str, dict]:
    """Gradient-masking checks for the attacks ``eval.masking_checks`` (``cfg``) selects.

    ``"auto"``: the APGD / AutoAttack attacks (``AUTOATTACK_FAMILY``); ``"all"``: every
    attack; ``"off"``: none.

    Each (norm, eps > 0) is checked once, on the first ``eval.masking_examples``
    examples with ``eval.masking_steps`` APGD iterations (:func:`gradient_masking_checks`
    with its defaults otherwise); attacks at the same (norm, eps) share the result.

    Returns:
      ``{spec.name: masking_section(...)}`` (``norm``, ``eps``, ``num_examples``,
      ``num_steps``, ``passed``, ``checks``, ``warnings``); empty when none is selected.
    """
    mode = cfg.get("masking_checks", "auto")
    n = int(cfg.get("masking_examples", 256))
    steps = int(cfg.get("masking_steps", 20))
    chosen = [
        s for s in specs if mode == "all" or (mode == "auto" and s.attack in AUTOATTACK_FAMILY)
    ]
    done: dict[tuple[str, float], dict] = {}
    out = {}
    for spec in chosen:
        if spec.eps <= 0:
            continue
        where = (spec.norm, spec.eps)
        if where not in done:
            checks = gradient_masking_checks(
                logits_fn, x[:n], y[:n], jax.random.fold_in(key, len(done)), norm=spec.norm,
                eps=spec.eps, num_steps=steps, bounds=bounds,
            )  # fmt: skip
            done[where] = masking_section(
                checks, norm=spec.norm, eps=spec.eps, num_examples=min(n, len(x)), num_steps=steps
            )
        out[spec.name] = done[where]
    return out
