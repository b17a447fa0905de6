"""IMA per-sample margin table (Ma et al., Algorithm 2), as pure array functions.

The table is a float32 ``[N_train]`` array, the method state ``{"margins": [N]}`` of
IMA (and MMA) in the ``TrainState``, indexed by each example's stable ``index``. A
training step gathers the batch's margins and the IMA loss runs BPGD inside them. With
``method.margin_update="batch"`` the step scatters the updated values back (only the
batch's indices change); with ``"epoch"`` (the paper) a pass after each epoch
(``arjax.training.state_pass``) updates every entry with the updated model.

Update rules (paper, Alg. 2), with ``delta`` = Δε = ε_max / number of
adversarial epochs:

* clean sample misclassified  -> ``delta`` (re-initialise; the segmentation variant's
  ``shrink_misclassified``: ``margin - delta``);
* BPGD crossed the boundary   -> ``||x - x_n||_p`` (refine / shrink);
* BPGD did not cross          -> ``margin + delta`` (expand);
* finally clip to ``[delta, eps_max]``.

Options reproducing the authors' public code (paper behaviour by default):
``momentum < 1`` keeps a running average ``(1 - m) * old + m * estimate``
instead of replacing the margin, and ``reset_misclassified=False`` leaves the
margin of a misclassified sample unchanged.
"""

import jax.numpy as jnp
import numpy as np

from arjax.types import Array


def update(
    current: Array,
    correct: Array,
    crossed: Array,
    distance: Array,
    *,
    delta: float,
    eps_max: float,
    momentum: float = 1.0,
    reset_misclassified: bool = True,
    shrink_misclassified: bool = False,
) -> Array:
    """Alg. 2 for one batch.

    Args:
      current: float ``[B]`` margins used for this batch's BPGD.
      correct: bool ``[B]`` clean sample classified correctly.
      crossed: bool ``[B]`` BPGD found a boundary point within ``current``.
      distance: float ``[B]`` ``||x - x_n||_p`` of that point (ignored where not crossed).
      delta: Δε, the expansion step and the floor.
      eps_max: the ceiling ε_max.
      momentum: 1.0 replaces the margin by the new estimate (paper); ``m < 1``
        keeps ``(1 - m) * current + m * estimate`` (running average, code option).
      reset_misclassified: misclassified samples go back to Δε (paper); when
        False their margin is kept (code option).
      shrink_misclassified: misclassified samples' margins shrink by Δε instead (the
        paper's segmentation variant, see ``arjax.methods.ima``); overrides
        ``reset_misclassified``.

    Returns:
      float ``[B]`` new margins in ``[delta, eps_max]``.
    """
    estimate = jnp.where(crossed, distance, current + delta)
    if momentum < 1.0:
        estimate = (1.0 - momentum) * current + momentum * estimate
    wrong = delta if reset_misclassified else current
    if shrink_misclassified:
        wrong = current - delta
    new = jnp.where(correct, estimate, wrong)
    return jnp.clip(new, delta, eps_max)


def statistics(margins: np.ndarray, *, delta: float, eps_max: float) -> dict[str, float]:
    """Summary of a margin table for the report.

    ``suggested_eps`` is the median margin: the IMA paper uses the margin
    distribution after IMA training to pick ε for vanilla adversarial
    training; the median is the radius that half of the training samples can
    take without their ε-ball reaching the model's decision boundary.
    """
    m = np.asarray(margins, np.float64)
    q = np.quantile(m, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {
        "mean": float(m.mean()),
        "std": float(m.std()),
        "min": float(m.min()),
        "max": float(m.max()),
        "q10": float(q[0]),
        "q25": float(q[1]),
        "median": float(q[2]),
        "q75": float(q[3]),
        "q90": float(q[4]),
        "fraction_at_floor": float(np.mean(m <= delta * (1 + 1e-6))),
        "fraction_at_eps_max": float(np.mean(m >= eps_max * (1 - 1e-6))),
        "suggested_eps": float(q[2]),
    }
