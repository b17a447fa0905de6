"""ARFL: adversarially robust feature learning (Hao et al., Eq. 2 and Eq. 5).

    L_overall(x) = L_cls(x) + lambda * L_robust(x)                       (Eq. 2)
    L = (1 - r) * (L_cls(x + d) + s * lambda * L_robust(x + d))
        + r * L_overall(x)                                               (Eq. 5)

with ``d`` from FGSM (two-moons, eps_1 = 0.05) or PGD-7 (mammography,
eps_1 = 0.01). The paper prints ``s = -1`` (a minus sign on the adversarial
``L_robust`` term), although its text asks for features "robust on both"
clean and adversarial data, which reads as ``s = +1``. ``adv_sign`` selects
it; the default follows the printed equation. ``L_robust`` is computed on the
model's feature output (the penultimate layer for MLPs, the last convolutional
map for CNNs; ``model.features_at`` of the MLP picks before or after its
activation), or on the logits with ``robust_on="logits"`` (a reading of the
paper's "features" tested for Table 1, docs/fidelity.md). ``r = 1`` is standard
training + ARFL (Eq. 2) and runs no attack.
"""

import jax.numpy as jnp
import ml_collections

from arjax import losses
from arjax.config_lib import ConfigError, check_choice, check_range
from arjax.methods.adversarial import mixed_adversarial_batch
from arjax.methods.context import (
    MethodContext,
    accuracy,
    attack_defaults,
    mean,
    validate_attack,
    validate_common,
)

# What L_robust (Eq. 1) is computed on: the model's feature output, or its logits.
ROBUST_ON = ("features", "logits")


def _pm1(labels):
    """Labels in {-1, +1} for ``L_robust``: binary labels map 0 -> -1; others -> +1.

    ``L_robust`` only sees ``|f * y|``, so for y in {-1, +1} the value is the
    same whatever this returns; it exists to keep the paper's formula.
    """
    if labels.ndim == 1:
        return losses.labels_to_pm1(jnp.clip(labels, 0, 1))
    return jnp.ones(labels.shape[:1], jnp.float32)


def _as_map(logits):
    """Logits as ``L_robust``'s input: ``[B]`` (one binary logit) -> ``[B, 1]``."""
    return logits[:, None] if logits.ndim == 1 else logits


def loss(ctx: MethodContext, params, batch_stats, batch, key):
    """ARFL Eq. 5 (Eq. 2 when ``r = 1``).

    Returns:
      ``(loss [], (metrics, new_batch_stats))``.
    """
    x, y = batch["image"], batch["label"]
    cfg = ctx.cfg
    lam, r = cfg.lam, cfg.r
    y_pm1 = _pm1(y)
    logits, feats, stats = ctx.model.apply(params, batch_stats, x, train=True)
    if cfg.get("robust_on", "features") == "logits":
        feats = _as_map(logits)
    elif feats is None:
        raise ValueError(
            "method 'arfl' needs the model's features (L_robust, Hao et al. Eq. 1, is computed "
            "on the penultimate layer / last convolutional map), but the model returns plain "
            "logits: adapt it with arjax.models.adapt(model, features='penultimate') or "
            "return (logits, features) from it"
        )
    cls_clean = mean(ctx.cls_loss(logits, y))
    rob_clean = mean(losses.arfl_robust(feats, y_pm1))
    overall = cls_clean + lam * rob_clean
    metrics = {
        "accuracy": accuracy(logits, y),
        "loss_clean": cls_clean,
        "robust_clean": rob_clean,
    }
    if r >= 1.0:
        return overall, ({**metrics, "loss": overall}, stats)
    x_adv = mixed_adversarial_batch(ctx, params, batch_stats, x, y, key)
    logits_adv, feats_adv, stats = ctx.model.apply(params, stats, x_adv, train=True)
    if cfg.get("robust_on", "features") == "logits":
        feats_adv = _as_map(logits_adv)
    cls_adv = mean(ctx.cls_loss(logits_adv, y))
    rob_adv = mean(losses.arfl_robust(feats_adv, y_pm1))
    adv_term = cls_adv + cfg.adv_sign * lam * rob_adv
    value = (1.0 - r) * adv_term + r * overall if r > 0 else adv_term
    metrics.update(
        loss=value, loss_adv=cls_adv, robust_adv=rob_adv, accuracy_adv=accuracy(logits_adv, y)
    )
    return value, (metrics, stats)


def defaults() -> dict:
    """Default ``method`` fields (two-moons: FGSM eps_1 = 0.05, lambda = 0.5, r = 0.5)."""
    fields = attack_defaults()
    fields.update(attack="fgsm", eps=0.05)
    return dict(
        name="arfl",
        cls_loss="ce",
        r=0.5,
        lam=0.5,
        adv_sign=-1.0,
        robust_on="features",
        perturb_fraction=1.0,
        **fields,
    )


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks ``method.*`` fields of ``arfl``."""
    validate_common(cfg)
    check_range(cfg, "method.r", 0.0, 1.0)
    check_range(cfg, "method.lam", 0.0)
    check_range(cfg, "method.perturb_fraction", 0.0, 1.0, lo_open=True)
    check_choice(cfg, "method.robust_on", ROBUST_ON)
    if cfg.method.adv_sign not in (-1, 1, -1.0, 1.0):
        raise ConfigError(f"method.adv_sign={cfg.method.adv_sign!r}; valid choices: -1, 1")
    if cfg.method.r < 1.0:
        validate_attack(cfg)
