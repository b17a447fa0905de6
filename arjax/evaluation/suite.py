"""The evaluation a config asks for, on one trained state (no files written).

Used by the training loop's final report (and by a standalone evaluation
command later): clean metrics, metrics on adversarial data (ARFL's
"adversarial accuracy / AUC": one attack at ``eval.adv_eps``), and the IMA
paper's robust-accuracy-vs-eps curve (PGD with each of ``eval.losses``,
worst case per sample).
"""

import functools

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from arjax import losses
from arjax.config_lib import check_choice, check_range
from arjax.data import eval_batches
from arjax.evaluation import metrics
from arjax.evaluation.robustness import adversarial_examples, robust_accuracy
from arjax.models import ModelFns
from arjax.training import parallel
from arjax.types import PRNGKey, PyTree

ATTACKS = ("fgsm", "pgd")


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks the ``eval.*`` fields."""
    from arjax import attacks

    check_range(cfg, "eval.batch_size", 1, integer=True)
    check_choice(cfg, "eval.adv_attack", ATTACKS)
    check_range(cfg, "eval.adv_eps", 0.0)
    check_range(cfg, "eval.num_steps", 1, integer=True)
    check_choice(cfg, "eval.norm", attacks.NORMS)
    for loss in cfg.eval.losses:
        if loss not in ("ce", "margin"):
            from arjax.config_lib import ConfigError

            raise ConfigError(f"unknown eval.losses entry {loss!r}; valid choices: ce, margin")
    for field in ("eps", "eps_l2"):
        for i, eps in enumerate(cfg.eval.get(field, ())):
            if not isinstance(eps, int | float) or eps < 0:
                from arjax.config_lib import ConfigError

                raise ConfigError(f"eval.{field}[{i}]={eps!r} is out of range; valid: [0, inf)")


@functools.partial(jax.jit, static_argnums=0)
def _logits(model: ModelFns, params, batch_stats, x):
    return model.apply(params, batch_stats, x)[0]


def predict(
    model: ModelFns,
    params: PyTree,
    batch_stats: PyTree,
    arrays: dict[str, np.ndarray],
    *,
    batch_size: int,
    mesh: Mesh,
    images: np.ndarray | None = None,
) -> np.ndarray:
    """Eval-mode logits for a whole split, batch-sharded over ``mesh``.

    Args:
      model: the model's pure functions.
      params: parameters.
      batch_stats: batch statistics.
      arrays: the split (``image``, ``label``).
      batch_size: evaluation batch size (rounded up to a multiple of the device count).
      mesh: the ``('data',)`` mesh.
      images: evaluate these instead of ``arrays["image"]`` (e.g. adversarial copies).

    Returns:
      logits ``[N, ...]`` as numpy.
    """
    source = arrays if images is None else {**arrays, "image": images}
    sharding = parallel.batch_sharding(mesh)
    outs = []
    for batch in eval_batches(source, batch_size=batch_size, multiple_of=mesh.size):
        x = parallel.put_batch({"image": batch["image"]}, sharding)["image"]
        logits = np.asarray(_logits(model, params, batch_stats, x))
        outs.append(logits[batch["mask"] > 0])
    return np.concatenate(outs)


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, ROC-AUC and mean loss of a split's logits.

    Binary tasks report ``auc``; multi-label tasks (labels ``[N, C]``) report
    the mean ``auc`` over classes that have both label values and
    ``auc_per_class`` (NaN for a class with one label value); accuracy is then
    the fraction of examples with all C labels right.
    """
    out = {
        "accuracy": metrics.accuracy(logits, labels),
        "loss": float(np.mean(losses.classification_loss(logits, labels))),
    }
    if labels.ndim == 2:
        per_class = metrics.roc_auc_per_class(1 / (1 + np.exp(-logits)), labels)
        out["auc"] = float(np.nanmean(per_class)) if np.any(np.isfinite(per_class)) else np.nan
        out["auc_per_class"] = [float(a) for a in per_class]
    elif logits.ndim == 1 or logits.shape[-1] == 2:
        out["auc"] = metrics.roc_auc(metrics.binary_scores(logits), labels)
    return out


def evaluate(
    model: ModelFns,
    params: PyTree,
    batch_stats: PyTree,
    arrays: dict[str, np.ndarray],
    cfg: ml_collections.ConfigDict,
    bounds: tuple[float, float] | None,
    key: PRNGKey,
    mesh: Mesh,
) -> dict:
    """Clean, adversarial and robust-curve metrics of one model on one split.

    Args:
      model: the model's pure functions.
      params: parameters.
      batch_stats: batch statistics.
      arrays: the split to evaluate (``image``, ``label``).
      cfg: the ``eval`` config section.
      bounds: input bounds for the attacks, or None.
      key: PRNG key for the attacks' random starts.
      mesh: device mesh.

    Returns:
      ``{"clean": {...}, "adversarial": {...}, "robust_curve": {...}}`` and,
      when ``eval.eps_l2`` is set, ``"robust_curve_l2"``.
    """
    x, y = arrays["image"], arrays["label"]
    logits = predict(model, params, batch_stats, arrays, batch_size=cfg.batch_size, mesh=mesh)
    logits_fn = model.logits_fn(params, batch_stats)
    k_adv, k_curve = jax.random.split(key)
    report = {"clean": classification_metrics(logits, y)}
    x_adv = adversarial_examples(
        logits_fn,
        x,
        y,
        k_adv,
        attack=cfg.adv_attack,
        eps=cfg.adv_eps,
        num_steps=cfg.num_steps,
        norm=cfg.norm,
        loss="ce",
        bounds=bounds,
        batch_size=cfg.batch_size,
    )
    adv_logits = predict(
        model, params, batch_stats, arrays, batch_size=cfg.batch_size, mesh=mesh, images=x_adv
    )
    report["adversarial"] = {
        "attack": cfg.adv_attack,
        "eps": cfg.adv_eps,
        "norm": cfg.norm,
        **classification_metrics(adv_logits, y),
    }
    curves = [("robust_curve", cfg.norm, cfg.eps)]
    if cfg.get("eps_l2", ()):
        curves.append(("robust_curve_l2", "l2", cfg.eps_l2))
    for name, norm, eps in curves:
        curve = robust_accuracy(
            logits_fn,
            x,
            y,
            jax.random.fold_in(k_curve, len(name)),
            eps=tuple(eps),
            num_steps=cfg.num_steps,
            norm=norm,
            losses=tuple(cfg.losses),
            alpha=cfg.alpha,
            bounds=bounds,
            batch_size=cfg.batch_size,
        )
        report[name] = {**curve.to_dict(), "area": curve.area()}
    return report
