"""Evaluation of segmentation runs: Dice under attack, TVDI / ADI curves, the image grid.

IMA's segmentation experiments (Ma et al., "Experiments on Segmentation", Figs. 10-12)
attack every test slice with 100-step PGD in L2 at a series of noise levels and plot the
Total Voxel Dice Index (Eq. 9) and the Average Dice Index (Eq. 10) against the noise
level. Here, as for classification (:mod:`arjax.evaluation.robustness`), each noise level
is attacked once per loss of ``eval.losses`` (pixel-mean cross-entropy and pixel-mean
logit margin) and each sample keeps its *worst* outcome, the attacked prediction with the
lowest Dice; TVDI, ADI and the fraction of samples still "correct" (Dice >= the
threshold, IMA's rule) come from those predictions. Each curve's area is the trapezoid
area over the noise range divided by its width (1 is perfect), as for accuracy curves.

Result layout (one run)::

    clean:        {accuracy, tvdi, adi, loss, tvdi_per_class, adi_per_class}
    adversarial:  the same at eval.adv_eps (eval.norm), plus eps / norm / num_steps
    attacks:      {"pgd<steps>_<norm>_<eps>": the adversarial section}
    robust_curve: {eps, accuracy, tvdi, adi, per_loss: {loss: adi [E]}, clean_accuracy,
                   norm, area, area_tvdi, area_adi, dice_threshold}
    robust_curve_l2: the same for eval.eps_l2 (when set)

``clean`` and ``adversarial`` also hold ``hd95`` and ``hd95_per_class``, the 95th-percentile
Hausdorff distance in pixels (:mod:`arjax.evaluation.surface_distance`; the adversarial one
of each sample's worst-Dice attack), the boundary metric reported next to Dice.

``accuracy`` everywhere is the fraction of samples with Dice >= ``dice_threshold``, so
``arjax-compare`` tables and curve overlays work unchanged (``--metric adi`` / ``tvdi``
picks the Dice indices instead).
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from arjax import parallel
from arjax.attacks.registry import AttackSpec, make_spec, run_attack
from arjax.compilation import jit
from arjax.evaluation import report as report_lib
from arjax.evaluation.robustness import LOSS_TAGS
from arjax.evaluation.surface_distance import hd95_summary
from arjax.losses import segmentation as seg
from arjax.models import ModelFns
from arjax.types import PRNGKey, PyTree

SEGMENTATION_LOSSES = ("ce", "margin")


def _labels(logits):
    """The predicted class ids ``[B, H, W]`` (uint8 up to 256 classes: host memory)."""
    return jnp.argmax(logits, axis=-1).astype(jnp.uint8 if logits.shape[-1] <= 256 else jnp.int32)


def _counts(fn, x, y):
    logits = fn(x)
    return (*seg.confusion_counts(logits, y), seg.dice_ce_loss(logits, y), _labels(logits))


def _attacked_counts(fn, x, y, key, eps, step_size, *, spec: AttackSpec, bounds):
    x_adv = run_attack(spec, fn, x, y, key, eps=eps, step_size=step_size, bounds=bounds)
    logits = fn(x_adv)
    return seg.confusion_counts(logits, y), x_adv, _labels(logits)


_CLEAN = jit(_counts)
_ATTACKED = jit(_attacked_counts, static_argnames=("spec", "bounds"))


def _batches(n: int, batch_size: int, multiple_of: int) -> tuple[int, list[int]]:
    size = max(1, min(batch_size, n))
    size = -(-size // multiple_of) * multiple_of
    return size, list(range(0, n, size))


def _pad(a: np.ndarray, start: int, size: int) -> np.ndarray:
    part = a[start : start + size]
    if part.shape[0] < size:
        part = np.concatenate([part, np.repeat(part[-1:], size - part.shape[0], axis=0)])
    return part


def _stack(parts: list, n: int) -> np.ndarray:
    return np.concatenate([np.asarray(p) for p in parts])[:n]


def clean_counts(
    fn, x: np.ndarray, y: np.ndarray, *, batch_size: int, mesh: Mesh
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample clean ``(tp, fp, fn)`` ``[N, C - 1]``, loss ``[N]`` and class ids ``[N, H, W]``.

    The loss is nnU-Net's :func:`arjax.losses.segmentation.dice_ce_loss`.
    """
    size, starts = _batches(len(y), batch_size, mesh.size)
    sharding = parallel.batch_sharding(mesh)
    outs = []
    for s in starts:
        batch = parallel.put_batch({"x": _pad(x, s, size), "y": _pad(y, s, size)}, sharding)
        outs.append(_CLEAN(fn, batch["x"], batch["y"]))
    return tuple(_stack([o[i] for o in outs], len(y)) for i in range(5))


def attacked_counts(
    fn,
    x: np.ndarray,
    y: np.ndarray,
    key: PRNGKey,
    spec: AttackSpec,
    eps: float,
    *,
    alpha: float,
    bounds,
    batch_size: int,
    mesh: Mesh,
    keep: int = 0,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray | None, np.ndarray]:
    """Per-sample counts ``[N, C - 1]`` after ``spec``'s attack at radius ``eps``.

    The step size is ``alpha * eps / num_steps`` (IMA's alpha = 4). Returns the counts,
    the first ``keep`` attacked images (None for 0), for the picture grid, and the
    attacked predictions ``[N, H, W]`` (class ids).
    """
    size, starts = _batches(len(y), batch_size, mesh.size)
    sharding = parallel.batch_sharding(mesh)
    step = alpha * eps / spec.num_steps
    outs, images, preds = [], [], []
    for c, s in enumerate(starts):
        batch = parallel.put_batch({"x": _pad(x, s, size), "y": _pad(y, s, size)}, sharding)
        k = jax.random.fold_in(key, c)
        counts, x_adv, pred = _ATTACKED(
            fn, batch["x"], batch["y"], k, jnp.float32(eps), jnp.float32(step),
            spec=spec, bounds=bounds,
        )  # fmt: skip
        outs.append(counts)
        preds.append(pred)
        if keep and sum(len(i) for i in images) < keep:
            images.append(np.asarray(x_adv))
    counts = tuple(_stack([o[i] for o in outs], len(y)) for i in range(3))
    return counts, (np.concatenate(images)[:keep] if keep else None), _stack(preds, len(y))


def dice_summary(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, threshold: float
) -> dict[str, Any]:
    """TVDI (Eq. 9), ADI (Eq. 10), both per class and averaged, and the correct fraction."""
    t, a = seg.tvdi(tp, fp, fn), seg.adi(tp, fp, fn)
    dice = seg.dice_from_counts(tp, fp, fn).mean(axis=-1)
    return {
        "accuracy": float(np.mean(dice >= threshold)),
        "tvdi": float(t.mean()),
        "adi": float(a.mean()),
        "tvdi_per_class": [float(v) for v in t],
        "adi_per_class": [float(v) for v in a],
    }


def worst_pick(per_loss: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per sample, the index of the attack (over losses) that left the lowest Dice, ``[N]``."""
    dice = np.stack([seg.dice_from_counts(*c).mean(axis=-1) for c in per_loss])  # [L, N]
    return np.argmin(dice, axis=0)


def worst_case(per_loss: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple:
    """Per sample, the counts of the attack (over losses) that left the lowest Dice."""
    pick = worst_pick(per_loss)
    rows = np.arange(len(pick))
    return tuple(np.stack([c[i] for c in per_loss])[pick, rows] for i in range(3))


def _area(eps: Sequence[float], values: Sequence[float]) -> float:
    eps, values = np.asarray(eps, np.float64), np.asarray(values, np.float64)
    order = np.argsort(eps, kind="stable")
    eps, values = eps[order], values[order]
    if eps.size < 2 or eps[-1] <= eps[0]:
        return float(values.mean())
    return float(np.trapezoid(values, eps) / (eps[-1] - eps[0]))


def evaluate_split(
    model: ModelFns,
    params: PyTree,
    batch_stats: PyTree,
    arrays: dict[str, np.ndarray],
    cfg: ml_collections.ConfigDict,
    bounds,
    key: PRNGKey,
    mesh: Mesh,
    *,
    dice_threshold: float = seg.DICE_THRESHOLD,
    curves: bool = True,
    keep: int = 8,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Clean and attacked Dice metrics of a segmentation model on one split.

    Args:
      model: the model's pure functions (eval mode is used).
      params: parameters.
      batch_stats: batch statistics.
      arrays: ``image`` ``[N, H, W, C]``, ``label`` int ``[N, H, W]``.
      cfg: the ``eval`` section (``adv_eps``, ``norm``, ``num_steps``, ``losses``,
        ``eps``, ``eps_l2``, ``alpha``, ``batch_size``).
      bounds: the data range the attacks clip to.
      key: PRNG key of the attacks' random starts.
      mesh: the ``('data',)`` mesh.
      dice_threshold: the Dice from which a sample is "correct" (IMA: 0.6).
      curves: also compute the Dice-vs-noise curves.
      keep: how many samples the picture grid shows.

    Returns:
      ``(result, pictures)``: the result layout of the module docstring, and
      ``{"image", "mask", "prediction", "attacked"}`` of the first ``keep`` samples
      (the attacked prediction at ``eval.adv_eps`` under the ``ce`` loss).
    """
    x, y = np.asarray(arrays["image"], np.float32), np.asarray(arrays["label"], np.int32)
    fn = model.logits_fn(params, batch_stats)
    bs = int(cfg.batch_size)
    *clean, clean_loss, clean_pred = clean_counts(fn, x, y, batch_size=bs, mesh=mesh)
    num_classes = clean[0].shape[1] + 1
    result = {
        "clean": {
            **dice_summary(*clean, dice_threshold),
            "loss": float(clean_loss.mean()),
            **hd95_summary(clean_pred, y, num_classes),
        }
    }
    logits = np.asarray(jax.jit(fn)(jnp.asarray(x[:keep])))
    pictures = {"image": x[:keep], "mask": y[:keep], "prediction": logits.argmax(-1)}

    def under_attack(norm: str, eps: float, tag: int, keep_images: int = 0):
        per_loss, kept, preds = [], None, []
        for loss in cfg.losses:
            # the radius is traced (spec.eps is a placeholder): one compile per loss and norm
            spec = make_spec("pgd", norm, 0.0, int(cfg.num_steps), where="eval", loss=loss)
            k = jax.random.fold_in(jax.random.fold_in(key, tag), LOSS_TAGS[loss])
            counts, images, pred = attacked_counts(
                fn, x, y, k, spec, float(eps), alpha=float(cfg.alpha), bounds=bounds,
                batch_size=bs, mesh=mesh, keep=keep_images if kept is None else 0,
            )  # fmt: skip
            kept = images if kept is None else kept
            per_loss.append(counts)
            preds.append(pred)
        return per_loss, kept, preds

    adv_eps = float(cfg.adv_eps)
    per_loss, images, preds = under_attack(cfg.norm, adv_eps, 10_000, keep)
    worst_pred = np.stack(preds)[worst_pick(per_loss), np.arange(len(y))]
    result["adversarial"] = {
        **dice_summary(*worst_case(per_loss), dice_threshold),
        **hd95_summary(worst_pred, y, num_classes),
        "eps": adv_eps,
        "norm": cfg.norm,
        "num_steps": int(cfg.num_steps),
        "attack": "pgd",
    }
    # also under the attack's report key (e.g. pgd100_l2_0.5), as classification runs list it
    name = make_spec("pgd", cfg.norm, adv_eps, int(cfg.num_steps), where="eval").name
    result["attacks"] = {name: dict(result["adversarial"])}
    pictures["attacked"] = np.asarray(jax.jit(fn)(jnp.asarray(images))).argmax(-1)
    grids = [("robust_curve", cfg.norm, tuple(cfg.eps))] if curves else []
    if curves and cfg.get("eps_l2", ()):
        grids.append(("robust_curve_l2", "l2", tuple(cfg.eps_l2)))
    for name, norm, grid in grids:
        rows, by_loss = [], {loss: [] for loss in cfg.losses}
        for i, eps in enumerate(grid):
            if eps == 0:
                counts = [clean] * len(cfg.losses)
            else:
                counts, *_ = under_attack(norm, float(eps), i + (0 if norm == cfg.norm else 1000))
            for loss, c in zip(cfg.losses, counts, strict=True):
                by_loss[loss].append(dice_summary(*c, dice_threshold)["adi"])
            rows.append(dice_summary(*worst_case(counts), dice_threshold))
        curve = {
            "eps": [float(e) for e in grid],
            "accuracy": [r["accuracy"] for r in rows],
            "tvdi": [r["tvdi"] for r in rows],
            "adi": [r["adi"] for r in rows],
            "per_loss": by_loss,
            "clean_accuracy": result["clean"]["accuracy"],
            "norm": norm,
            "dice_threshold": float(dice_threshold),
        }
        curve["area"] = _area(grid, curve["accuracy"])
        curve["area_tvdi"] = _area(grid, curve["tvdi"])
        curve["area_adi"] = _area(grid, curve["adi"])
        result[name] = curve
    return result, pictures


def plot_segmentation_grid(pictures: dict[str, np.ndarray], path: str, title: str = "") -> Path:
    """PNG grid: one row per sample, columns image / mask / prediction / attacked prediction.

    Args:
      pictures: ``image`` ``[n, H, W, C]``, ``mask`` / ``prediction`` / ``attacked`` int
        ``[n, H, W]`` (:func:`arjax.evaluation.segmentation.evaluate`).
      path: PNG file.
      title: figure title.

    Returns:
      The path written.
    """
    columns = ("image", "mask", "prediction", "attacked")
    n = len(pictures["image"])
    fig, axes = report_lib.subplots(n, 4, figsize=(8, 2 * n), squeeze=False)
    num_classes = max(int(pictures["mask"].max()), 1)
    for row in range(n):
        for col, name in enumerate(columns):
            ax = axes[row, col]
            value = pictures[name][row]
            if name == "image":
                ax.imshow(value[..., 0] if value.shape[-1] == 1 else value, cmap="gray")
            else:
                ax.imshow(value, cmap="viridis", vmin=0, vmax=num_classes)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    return report_lib.save_figure(fig, path)
