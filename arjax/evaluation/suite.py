"""The evaluation a config asks for, on one trained state (no files written).

Used by the training loop's final report and by ``python -m arjax.evaluate``
(both through :func:`arjax.experiment.final_eval.evaluate_run`): clean
metrics; metrics on adversarial data for every attack of ``eval.attacks``
(ARFL's "adversarial accuracy / AUC", Hao et al. §4.2; the first attack is the
report's ``adversarial`` section); sensitivity / specificity at an operating
point chosen on validation data; the robust-accuracy-vs-eps curve; and the
gradient-masking sanity checks next to APGD / AutoAttack rows.

Curves (``eval.curve_attack``): ``"pgd"`` is the IMA paper's curve (PGD with each
of ``eval.losses``, worst case per sample); a registered attack name runs that
attack at every radius (:mod:`arjax.evaluation.attack_curve`, monotone in eps);
``"auto"`` (the default) uses the first APGD / AutoAttack attack of
``eval.attacks`` (its steps and restarts, the curve's norm) when there is one,
else PGD.

Masking checks (``eval.masking_checks``, Carlini et al. 2019; see
:mod:`arjax.evaluation.masking`): ``"auto"`` runs them for every APGD /
AutoAttack attack, ``"all"`` for every attack, ``"off"`` never; on the first
``eval.masking_examples`` examples with ``eval.masking_steps`` APGD iterations,
once per (norm, eps). Results go to ``report["masking_checks"][attack name]``.

AUC under AutoAttack is left out (``auc_omitted`` says why): the ensemble keeps,
per example, the first input that flips the label and the clean input where none
does, so its scores are not an attack on the ranking and the AUC of them is not an
"AUC under attack" (see ``AttackDef.score_calibrated``).
"""

import dataclasses
import functools
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from arjax import compilation, losses, parallel
from arjax.attacks.registry import ATTACKS, SpecError, make_spec
from arjax.config_lib import ConfigError, check_choice, check_range
from arjax.data import eval_batches, split_labels
from arjax.evaluation import metrics
from arjax.evaluation.attack_curve import attack_predictions
from arjax.evaluation.attack_specs import AUTOATTACK_FAMILY, AttackSpec, attack_specs
from arjax.evaluation.masking import MASKING_MODES, masking_checks
from arjax.evaluation.robustness import adversarial_examples, robust_accuracy
from arjax.models import ModelFns
from arjax.types import PRNGKey, PyTree

MASKING_KEY_TAG = 0x3A5C
AUC_FIELDS = ("auc", "auc_per_class", "auc_skipped_classes")
AUC_OMITTED = (
    "AUC omitted: the attack keeps per example the first input that flips the label (else "
    "the clean one), which does not attack the ranking; report its accuracy"
)


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks the ``eval.*`` fields.

    Raises:
      ConfigError: naming the field and the valid choices or range.
    """
    from arjax import attacks

    check_range(cfg, "eval.batch_size", 1, integer=True)
    check_choice(cfg, "eval.adv_attack", ATTACKS)
    check_range(cfg, "eval.adv_eps", 0.0)
    check_range(cfg, "eval.num_steps", 1, integer=True)
    check_choice(cfg, "eval.norm", attacks.NORMS)
    for loss in cfg.eval.losses:
        if loss not in ("ce", "margin"):
            raise ConfigError(f"unknown eval.losses entry {loss!r}; valid choices: ce, margin")
    for field in ("eps", "eps_l2"):
        for i, eps in enumerate(cfg.eval.get(field, ())):
            if not isinstance(eps, int | float) or eps < 0:
                raise ConfigError(f"eval.{field}[{i}]={eps!r} is out of range; valid: [0, inf)")
    specs = attack_specs(cfg.eval)
    if "curve_attack" in cfg.eval:
        check_choice(cfg, "eval.curve_attack", ("auto", *ATTACKS))
        for norm in ("linf", "l2"):
            curve_spec(cfg.eval, specs, norm)
    if "masking_checks" in cfg.eval:
        check_choice(cfg, "eval.masking_checks", MASKING_MODES)
        check_range(cfg, "eval.masking_examples", 1, integer=True)
        check_range(cfg, "eval.masking_steps", 1, integer=True)
    split = cfg.eval.get("threshold_split", "val")
    if not isinstance(split, str):
        raise ConfigError(f"eval.threshold_split={split!r} must be a split name such as 'val'")


@functools.partial(compilation.jit, static_argnums=0)
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


def predict_split(
    model: ModelFns, state: Any, source, *, batch_size: int, mesh: Mesh
) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode logits of a whole split and its labels: ``([N, ...], [N, ...])``.

    ``state`` is anything with ``params`` and ``batch_stats`` (a ``TrainState``).
    """
    logits = predict(
        model, state.params, state.batch_stats, source, batch_size=batch_size, mesh=mesh
    )
    return logits, split_labels(source)


def task_scores(logits: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """The scores ROC analysis ranks: ``[N]`` for binary, ``[N, C]`` for multi-label.

    Binary: probability of class 1 (:func:`metrics.binary_scores`); multi-label
    (labels ``[N, C]``): per-class sigmoid. None for softmax over K > 2 classes.
    """
    if labels.ndim == 2:
        return 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    if logits.ndim == 1 or logits.shape[-1] <= 2:
        return metrics.binary_scores(logits)
    return None


def choose_threshold(logits: np.ndarray, labels: np.ndarray) -> float | list[float] | None:
    """Youden-J operating point(s) from (validation) logits: a float, or one per class.

    Returns None for softmax over K > 2 classes (no single positive class). A
    class with one label value gets NaN, and the default 0.5 is used for it.
    """
    scores = task_scores(logits, labels)
    if scores is None:
        return None
    if scores.ndim == 1:
        t = metrics.youden_threshold(scores, labels)
        return 0.5 if np.isnan(t) else t
    ts = [metrics.youden_threshold(scores[:, c], labels[:, c]) for c in range(scores.shape[1])]
    return [0.5 if np.isnan(t) else t for t in ts]


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, threshold: float | list[float] | None = None
) -> dict[str, float]:
    """Accuracy, ROC-AUC, mean loss and (given a threshold) sensitivity / specificity.

    Binary tasks report ``auc``; multi-label tasks (labels ``[N, C]``) report
    the mean ``auc`` over classes that have both label values,
    ``auc_per_class`` (NaN for a class with one label value) and
    ``auc_skipped_classes``; accuracy is then the fraction of examples with all
    C labels right.

    Args:
      logits: ``[N]``, ``[N, K]`` or ``[N, C]`` (multi-label); ``[N, H, W, C]`` for
        segmentation masks, which give ``accuracy`` (Dice >= 0.6), ``loss`` (nnU-Net's
        Dice + CE) and the mean ``dice`` only (the validation record of such runs).
      labels: ``[N]`` int or ``[N, C]`` multi-hot (``[N, H, W]`` masks).
      threshold: score threshold (binary) or ``[C]`` thresholds (multi-label),
        e.g. from :func:`choose_threshold` on the validation split; adds
        ``sensitivity`` / ``specificity`` (per class and their mean for multi-label).
    """
    if np.ndim(labels) >= 3:  # segmentation masks [N, H, W]: Dice, nnU-Net's loss
        dice = losses.dice_score(np.asarray(logits), np.asarray(labels))
        return {
            "accuracy": metrics.accuracy(logits, labels),
            "loss": float(np.mean(losses.dice_ce_loss(logits, labels))),
            "dice": float(np.mean(dice)),
        }
    out = {
        "accuracy": metrics.accuracy(logits, labels),
        "loss": float(np.mean(losses.classification_loss(logits, labels))),
    }
    scores = task_scores(logits, labels)
    if scores is None:
        return out
    if labels.ndim == 2:
        per_class = metrics.roc_auc_per_class(scores, labels)
        out["auc"] = float(np.nanmean(per_class)) if np.any(np.isfinite(per_class)) else np.nan
        out["auc_per_class"] = [float(a) for a in per_class]
        out["auc_skipped_classes"] = metrics.single_valued_classes(labels)
    else:
        out["auc"] = metrics.roc_auc(scores, labels)
    if threshold is not None:
        if labels.ndim == 2:
            rates = [
                metrics.sensitivity_specificity(scores[:, c], labels[:, c], threshold[c])
                for c in range(labels.shape[1])
            ]
            for name in ("sensitivity", "specificity"):
                values = np.array([r[name] for r in rates])
                out[f"{name}_per_class"] = [float(v) for v in values]
                out[name] = float(np.nanmean(values)) if np.isfinite(values).any() else np.nan
        else:
            out.update(metrics.sensitivity_specificity(scores, labels, threshold))
    return out


def attacked_logits(
    model: ModelFns,
    params: PyTree,
    batch_stats: PyTree,
    arrays: dict[str, np.ndarray],
    specs: list[AttackSpec],
    *,
    bounds: tuple[float, float] | None,
    key: PRNGKey,
    mesh: Mesh,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """Logits of the split's adversarial copies, one entry per attack spec.

    Attack ``i`` uses ``fold_in(key, i)`` and runs through :func:`arjax.attacks.run_attack`
    (the step-size rule is the spec's: ``alpha * eps / num_steps`` with ``eval.alpha``)
    with a random start, FGSM one step of size eps; the loss is cross-entropy
    (BCE for one logit / multi-hot labels).

    Returns:
      ``{spec.name: logits [N, ...]}`` in spec order.
    """
    logits_fn = model.logits_fn(params, batch_stats)
    out = {}
    for i, spec in enumerate(specs):
        x_adv = adversarial_examples(
            logits_fn,
            arrays["image"],
            arrays["label"],
            jax.random.fold_in(key, i),
            spec=spec,
            eps=spec.eps,
            bounds=bounds,
            batch_size=batch_size,
        )
        out[spec.name] = predict(
            model, params, batch_stats, arrays, batch_size=batch_size, mesh=mesh, images=x_adv
        )
    return out


def curve_spec(cfg: ml_collections.ConfigDict, specs: list[AttackSpec], norm: str):
    """The attack of a robust curve in ``norm``: an :class:`AttackSpec`, or None for PGD.

    None means the IMA curve (PGD with each of ``eval.losses``); see the module
    docstring for ``eval.curve_attack``.

    Raises:
      ConfigError: ``eval.curve_attack`` names an attack the registry rejects.
    """
    choice = cfg.get("curve_attack", "auto")
    if choice == "pgd":
        return None
    if choice == "auto":
        strong = [s for s in specs if s.attack in AUTOATTACK_FAMILY]
        if not strong:
            return None
        base = next((s for s in strong if s.norm == norm), strong[0])
        return dataclasses.replace(base, norm=norm, eps=0.0)
    try:
        return make_spec(
            choice, norm, 0.0, cfg.num_steps, where="eval.curve_attack", alpha=cfg.alpha
        )
    except SpecError as e:
        raise ConfigError(str(e)) from None


def evaluate_split(
    model: ModelFns,
    params: PyTree,
    batch_stats: PyTree,
    arrays: dict[str, np.ndarray],
    cfg: ml_collections.ConfigDict,
    bounds: tuple[float, float] | None,
    key: PRNGKey,
    mesh: Mesh,
    *,
    threshold: float | list[float] | None = None,
    curves: bool = True,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Clean, per-attack and robust-curve metrics of one model on one split.

    Args:
      model: the model's pure functions.
      params: parameters.
      batch_stats: batch statistics.
      arrays: the split to evaluate (``image`` ``[N, ...]``, ``label`` ``[N]`` / ``[N, C]``).
      cfg: the ``eval`` config section.
      bounds: input bounds for the attacks, or None.
      key: PRNG key for the attacks' random starts.
      mesh: device mesh.
      threshold: operating point(s) for sensitivity / specificity (see
        :func:`choose_threshold`), or None to leave them out.
      curves: also compute the robust-accuracy curve(s) (``eval.eps``, ``eval.eps_l2``).

    Returns:
      ``(report, logits)``: report ``{"clean": {...}, "attacks": {name: {...}},
      "adversarial": {...first attack...}, "robust_curve": {...}}`` (plus
      ``"robust_curve_l2"`` when ``eval.eps_l2`` is set), and ``{"clean": [N, ...],
      name: [N, ...]}`` logits for ROC plots (not for attacks whose AUC is omitted);
      ``"masking_checks"`` when any attack was checked (see :func:`masking_checks`).
    """
    x, y = arrays["image"], arrays["label"]
    specs = attack_specs(cfg)
    k_adv, k_curve = jax.random.split(key)
    logits = {
        "clean": predict(model, params, batch_stats, arrays, batch_size=cfg.batch_size, mesh=mesh)
    }
    logits.update(
        attacked_logits(
            model,
            params,
            batch_stats,
            arrays,
            specs,
            bounds=bounds,
            key=k_adv,
            mesh=mesh,
            batch_size=cfg.batch_size,
        )
    )
    report = {"clean": classification_metrics(logits["clean"], y, threshold), "attacks": {}}
    for spec in specs:
        m = classification_metrics(logits[spec.name], y, threshold)
        if not ATTACKS[spec.attack].score_calibrated:
            m = {k: v for k, v in m.items() if k not in AUC_FIELDS}
            if "auc" in report["clean"]:
                m["auc_omitted"] = AUC_OMITTED
            del logits[spec.name]  # no ROC curve for it either
        report["attacks"][spec.name] = {**spec.to_dict(), **m}
    report["adversarial"] = report["attacks"][specs[0].name]
    curve_specs = [("robust_curve", cfg.norm, cfg.eps)] if curves else []
    if curves and cfg.get("eps_l2", ()):
        curve_specs.append(("robust_curve_l2", "l2", cfg.eps_l2))
    logits_fn = model.logits_fn(params, batch_stats)
    for name, norm, eps in curve_specs:
        k = jax.random.fold_in(k_curve, len(name))
        spec = curve_spec(cfg, specs, norm)
        if spec is None:
            curve = robust_accuracy(
                logits_fn, x, y, k, eps=tuple(eps), num_steps=cfg.num_steps, norm=norm,
                losses=tuple(cfg.losses), alpha=cfg.alpha, bounds=bounds,
                batch_size=cfg.batch_size,
            )  # fmt: skip
            report[name] = {**curve.to_dict(), "area": curve.area()}
            continue
        curve = attack_predictions(
            logits_fn, x, y, k, spec, eps=tuple(eps), bounds=bounds, batch_size=cfg.batch_size
        ).curve()
        attack = {f: v for f, v in spec.to_dict().items() if f not in ("name", "eps")}
        report[name] = {**curve.to_dict(), "area": curve.area(), "attack": attack}
    k_mask = jax.random.fold_in(key, MASKING_KEY_TAG)
    checks = masking_checks(logits_fn, x, y, k_mask, specs, cfg, bounds)
    if checks:
        report["masking_checks"] = checks
    return report, logits
