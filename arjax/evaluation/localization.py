"""Weakly supervised CAM localisation against bounding boxes (Khakzar et al., seed 002, §3.3).

The protocol, per annotated box (one image may hold several):

1. the CAM of the box's class (``interpret.class_activation_maps``) is
   bilinearly upsampled to the input size and scaled to ``[0, 255]``
   (``interpret.upsample_cam``);
2. it is thresholded by value, ``mask = CAM >= t`` for ``t`` in ``0 .. 255``,
   with no box generation (Li et al.'s evaluation), and compared with the
   ground-truth box by IoU (``iou``, ``iou_curve``: all 256 thresholds at once
   from two histograms);
3. a box is localised when ``IoU > T(IoU)``; localisation accuracy is the
   fraction of localised boxes, for ``T(IoU)`` in ``{0.1, ..., 0.7}``;
4. the threshold ``t`` is chosen per class (and per ``T(IoU)``) on a held-out
   20 % of the annotated images ("20 % (of 880 images)") and accuracy is measured
   on the boxes of the other 80 %, 5-fold (``choose_threshold``; folds of whole
   images stratified by box class, sklearn's ``StratifiedGroupKFold``;
   ``fold_by="box"`` deals boxes instead, ``StratifiedKFold``); the report gives
   the mean and std over the folds.

The paper says the threshold is chosen "based on its resulting localization
performance"; arjax reads this as the localisation accuracy at the same
``T(IoU)`` (ties: the larger mean IoU, then the lower threshold).

Each box is one item: an image with two boxes of a class is scored twice,
each box against the whole thresholded CAM of that class.

Any registered attribution map can stand in for the CAM (``method=``: ``"grad_cam"``,
``"grad_cam_pp"``, ``"smoothgrad"``, ``"integrated_gradients"``, ``"occlusion"``,
``"gradient"``; :mod:`arjax.evaluation.attribution`): it is upsampled and scaled to ``[0,
255]`` as a CAM (``interpret.localization_map``) and goes through the same thresholds,
folds and IoUs, so a clean and an FGSM-trained model can be compared with any of them.

A random-box baseline comes with every report: a box of the ground truth's
own size placed uniformly at random in the image (``random_draws`` draws per
box), a chance level that already knows the lesion size.
"""

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from arjax import compilation
from arjax.evaluation import attribution, interpret
from arjax.evaluation.report import PathLike, _save, subplots
from arjax.models.functional import ModelFns
from arjax.types import Array, PyTree

DEFAULT_IOUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
FOLD_BY = ("image", "box")
LEVELS = 256  # thresholds 0 .. 255 on the [0, 255] CAM


def box_mask(boxes: Array, size: tuple[int, int]) -> Array:
    """Pixels inside boxes: pixel ``(r, c)`` is in when its centre lies in the box.

    Args:
      boxes: float ``[..., 4]`` as ``(x, y, w, h)`` in pixels (x = column of the
        left edge, y = row of the top edge); integer boxes cover exactly
        ``w * h`` pixels.
      size: ``(H, W)``.

    Returns:
      bool ``[..., H, W]``.
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    x, y, w, h = (boxes[..., i, None] for i in range(4))
    rows = jnp.arange(size[0], dtype=jnp.float32) + 0.5
    cols = jnp.arange(size[1], dtype=jnp.float32) + 0.5
    in_rows = (rows >= y) & (rows < y + h)  # [..., H]
    in_cols = (cols >= x) & (cols < x + w)  # [..., W]
    return in_rows[..., :, None] & in_cols[..., None, :]


def iou(mask: Array, box: Array) -> Array:
    """IoU between binary masks and boxes (as pixel sets).

    Args:
      mask: bool ``[..., H, W]``.
      box: ``[..., 4]`` ``(x, y, w, h)`` in pixels (broadcast against ``mask``).

    Returns:
      float ``[...]``; 0 where both are empty.
    """
    mask = jnp.asarray(mask, bool)
    inside = box_mask(box, mask.shape[-2:])
    inter = jnp.sum(mask & inside, axis=(-2, -1))
    union = jnp.sum(mask | inside, axis=(-2, -1))
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 0.0)


@functools.partial(compilation.jit, static_argnames="levels")
def iou_curve(cam255: Array, boxes: Array, levels: int = LEVELS) -> Array:
    """IoU of ``{CAM >= t}`` with each box for every threshold ``t = 0 .. levels - 1``.

    Exact for integer thresholds: ``CAM >= t`` iff ``floor(CAM) >= t``, so the
    mask areas and intersections at all thresholds are reverse cumulative sums
    of two histograms of ``floor(CAM)`` (all pixels, pixels in the box).

    Args:
      cam255: float ``[N, H, W]`` maps in ``[0, levels - 1]`` (``upsample_cam``).
      boxes: ``[N, 4]`` ``(x, y, w, h)`` in pixels.
      levels: number of thresholds (256 for the paper's [0, 255] range).

    Returns:
      float32 ``[N, levels]``: column ``t`` is the IoU at threshold ``t``.
    """
    n, h, w = cam255.shape
    q = jnp.clip(jnp.floor(cam255), 0, levels - 1).astype(jnp.int32).reshape(n, h * w)
    inside = box_mask(boxes, (h, w)).reshape(n, h * w).astype(jnp.float32)

    def counts(values, weights):
        hist = jnp.bincount(values, weights=weights, length=levels)
        return jnp.cumsum(hist[::-1])[::-1]  # [levels]: count with value >= t

    area = jax.vmap(counts)(q, jnp.ones_like(inside))
    inter = jax.vmap(counts)(q, inside)
    union = area + inside.sum(axis=1, keepdims=True) - inter
    return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 0.0)


def choose_threshold(
    iou_table: Array, t_iou: float | Sequence[float], thresholds: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds that maximise localisation accuracy ``mean(IoU > T(IoU))`` on a selection set.

    Ties go to the larger mean IoU, then to the lower threshold.

    Args:
      iou_table: ``[N, T]`` IoU of each selection box at each threshold (``iou_curve``).
      t_iou: one ``T(IoU)`` or ``J`` of them.
      thresholds: the ``T`` threshold values (default ``0 .. T - 1``).

    Returns:
      ``(threshold values [J], column indices [J])``.
    """
    table = np.asarray(iou_table, np.float64)
    if table.ndim != 2 or table.shape[0] == 0:
        raise ValueError(f"choose_threshold needs a non-empty [N, T] IoU table, got {table.shape}")
    t_iou = np.atleast_1d(np.asarray(t_iou, np.float64))
    values = np.arange(table.shape[1]) if thresholds is None else np.asarray(thresholds)
    if values.shape != (table.shape[1],):
        raise ValueError(f"{len(values)} thresholds for an IoU table with {table.shape[1]} columns")
    accuracy = (table[:, None, :] > t_iou[None, :, None]).mean(axis=0)  # [J, T]
    mean_iou = np.broadcast_to(table.mean(axis=0), accuracy.shape)
    best = np.where(accuracy == accuracy.max(axis=1, keepdims=True), mean_iou, -np.inf)
    index = np.argmax(best, axis=1)  # first (lowest threshold) among equals
    return values[index], index


def random_box_ious(boxes: np.ndarray, size: tuple[int, int], draws: int, seed: int) -> np.ndarray:
    """IoU of each box with ``draws`` same-sized boxes placed uniformly at random in the image.

    Args:
      boxes: ``[N, 4]`` ``(x, y, w, h)`` in pixels.
      size: ``(H, W)`` of the image.
      draws: random boxes per ground-truth box.
      seed: numpy seed.

    Returns:
      float ``[N, draws]``.
    """
    boxes = np.asarray(boxes, np.float64)
    x, y, w, h = (boxes[:, i, None] for i in range(4))
    rng = np.random.default_rng(seed)
    rx = rng.random((len(boxes), draws)) * np.maximum(size[1] - w, 0.0)
    ry = rng.random((len(boxes), draws)) * np.maximum(size[0] - h, 0.0)
    ix = np.clip(np.minimum(x, rx) + w - np.maximum(x, rx), 0.0, None)
    iy = np.clip(np.minimum(y, ry) + h - np.maximum(y, ry), 0.0, None)
    inter = ix * iy
    return inter / (2.0 * w * h - inter)


@functools.partial(compilation.jit, static_argnames=("model", "method", "options"))
def _item_curves(model, params, batch_stats, x, channel, boxes, key, method, options):
    maps = interpret.localization_map(
        method, model, params, batch_stats, x, channel, key, **dict(options)
    )  # [B, H, W] in [0, 255]
    return iou_curve(maps, boxes)


def localization_report(
    model: ModelFns,
    params: PyTree,
    batch_stats: PyTree,
    data: Any,
    *,
    ious: Sequence[float] = DEFAULT_IOUS,
    folds: int = 5,
    seed: int = 0,
    fold_by: str = "image",
    batch_size: int = 32,
    random_draws: int = 100,
    class_names: Sequence[str] | None = None,
    progress: bool = False,
    method: str = "cam",
    method_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """CAM localisation accuracy per class at each ``T(IoU)`` (Khakzar et al. §3.3, Fig. 3).

    Args:
      model: the model's pure functions (a GAP + linear network, see
        ``interpret.cam_head``).
      params: parameters.
      batch_stats: batch statistics.
      data: an ``ImageFileSource`` (its ``boxes``: position -> ``[(class, x, y,
        w, h)]`` in input pixels), or a dict with ``image`` ``[N, S, S, C]``,
        ``boxes`` (the same mapping) and optional ``class_names``. Box classes
        index the model's outputs; a one-logit binary model's single CAM
        serves the positive class (class 1).
      ious: the ``T(IoU)`` values, each in ``(0, 1)``.
      folds: cross-validation folds (5: 20 % chooses the thresholds).
      seed: fold shuffling and random-box seed.
      fold_by: ``"image"`` (the paper: "20 % (of 880 images)" choose the thresholds, so
        the boxes of one image are never split between choosing and measuring;
        sklearn's ``StratifiedGroupKFold``) or ``"box"`` (boxes dealt independently).
      batch_size: boxes per model call (one compilation; the last batch is padded).
      random_draws: random boxes per ground-truth box for the baseline.
      class_names: names of the box classes (default: the source's).
      progress: show a progress bar.
      method: the attribution map thresholded in place of the CAM (a name in
        ``attribution.ATTRIBUTIONS``; ``"cam"``, the paper's, needs a GAP + linear head).
      method_options: keyword options of the method (e.g. ``{"num_samples": 25}``);
        random methods draw from ``seed``.

    Returns:
      JSON-able dict: ``method`` (when not ``"cam"``), ``ious``, ``folds``, ``seed``,
      ``image_size``, ``num_boxes``; ``classes``: name -> ``{count, accuracy [J] (mean over
      folds), accuracy_std [J], accuracy_folds [folds][J], thresholds
      [folds][J], random_box [J]}``; ``mean``: ``{accuracy, random_box}``
      averaged over the evaluated classes; ``skipped``: name -> box count for
      classes with fewer boxes than folds.
    """
    ious = tuple(float(t) for t in ious)
    if not ious or min(ious) <= 0 or max(ious) >= 1:
        raise ValueError(f"localization ious must lie in (0, 1), got {ious}")
    if fold_by not in FOLD_BY:
        raise ValueError(f"unknown localization fold_by {fold_by!r}; valid choices: image, box")
    for name, value, low in (("folds", folds, 2), ("batch_size", batch_size, 1)):
        if int(value) != value or value < low:
            raise ValueError(f"localization {name}={value!r} must be an int >= {low}")
    gather, boxes, names = interpret.box_data(data)
    names = tuple(class_names) if class_names is not None else names
    rows = [(p, *b) for p in sorted(boxes) for b in boxes[p]]
    if not rows:
        raise ValueError("localization needs images with boxes; the data hold none")
    table = np.asarray(rows, np.float64)  # [N, 6]: position, class, x, y, w, h
    positions, classes, box = table[:, 0].astype(int), table[:, 1].astype(int), table[:, 2:]
    first = np.asarray(gather(positions[:1])["image"], np.float32)
    if method == "cam":  # K CAMs [1, h, w, K]; fails here for a network without a GAP head
        shape = jax.eval_shape(
            functools.partial(interpret.class_activation_maps, model), params, batch_stats, first
        ).shape
    else:  # K logits [1, K] or one [1]
        attribution.check_attribution(method)
        shape = jax.eval_shape(
            lambda p, b, v: model.apply(p, b, v)[0], params, batch_stats, first
        ).shape
    channels = interpret.cam_channels(classes, shape[-1] if len(shape) > 1 else 1, names)
    size = first.shape[1:3]
    options = tuple(sorted((method_options or {}).items()))
    key = jax.random.key(seed)

    n, curves = len(rows), []
    for start in tqdm.trange(0, n, batch_size, disable=not progress, desc="CAM localisation"):
        take = np.minimum(np.arange(start, start + batch_size), n - 1)  # pad with the last box
        unique, inverse = np.unique(positions[take], return_inverse=True)
        x = np.asarray(gather(unique)["image"], np.float32)[inverse]
        out = _item_curves(
            model, params, batch_stats, x, channels[take], box[take],
            jax.random.fold_in(key, start), method=method, options=options,
        )  # fmt: skip
        curves.append(np.asarray(out)[: min(batch_size, n - start)])
    curves = np.concatenate(curves)  # [N, LEVELS]

    label = [names[k] if k < len(names) else str(k) for k in range(classes.max() + 1)]
    counts = np.bincount(classes)
    # the folds deal boxes (fold_by="box") or images: a class needs that many of them
    units = (
        counts
        if fold_by == "box"
        else np.bincount(np.unique(table[:, :2], axis=0)[:, 1].astype(int), minlength=len(counts))
    )
    eligible = units[classes] >= folds
    report = dict(
        **({} if method == "cam" else {"method": method}),
        ious=list(ious), folds=int(folds), fold_by=fold_by, seed=int(seed),
        image_size=list(size), num_boxes=n,
        classes={}, skipped={label[k]: int(counts[k]) for k in np.unique(classes[~eligible])},
    )  # fmt: skip
    if not eligible.any():
        raise ValueError(f"every box class has fewer than folds={folds} boxes: {report['skipped']}")
    chance = random_box_ious(box, size, random_draws, seed)  # [N, draws]
    chance_acc = (chance[:, :, None] > np.asarray(ious)).mean(axis=1)  # [N, J]
    per_fold = _fold_accuracies(
        curves, classes, positions, np.flatnonzero(eligible), ious, folds, seed, fold_by
    )
    for k, (accs, thresholds) in per_fold.items():
        if not accs:  # its images never fell on both sides of a fold
            report["skipped"][label[k]] = int(counts[k])
            continue
        accs = np.asarray(accs)
        report["classes"][label[k]] = dict(
            count=int(counts[k]),
            accuracy=accs.mean(axis=0).tolist(),
            accuracy_std=accs.std(axis=0).tolist(),
            accuracy_folds=accs.tolist(),
            thresholds=np.asarray(thresholds).tolist(),
            random_box=chance_acc[classes == k].mean(axis=0).tolist(),
        )
    evaluated = report["classes"].values()
    report["mean"] = {
        key: np.mean([c[key] for c in evaluated], axis=0).tolist()
        for key in ("accuracy", "random_box")
    }
    return report


def threshold_folds(
    classes: np.ndarray, positions: np.ndarray, folds: int, seed: int, fold_by: str = "image"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``(evaluate, select)`` box indices of each fold of the threshold search.

    Args:
      classes: ``[N]`` box classes (the stratification).
      positions: ``[N]`` the image of each box (the groups when ``fold_by="image"``).
      folds: number of folds; each ``select`` side is about ``1 / folds`` of the data.
      seed: shuffling seed.
      fold_by: ``"image"`` (no image on both sides) or ``"box"``.

    Returns:
      ``folds`` pairs of index arrays into the ``N`` boxes.
    """
    rows = np.arange(len(classes))
    if fold_by == "box":
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
        return list(splitter.split(rows, classes))
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(rows, classes, groups=positions))


def _fold_accuracies(curves, classes, positions, idx, ious, folds, seed, fold_by) -> dict:
    """Per class: the accuracy ``[J]`` and thresholds of each fold of the threshold search.

    Args:
      curves: ``[N, LEVELS]`` IoU of each box's CAM at every threshold level.
      classes: ``[N]`` box classes.
      positions: ``[N]`` their images.
      idx: the boxes of classes with enough boxes/images for ``folds``.
      ious: the ``T(IoU)`` values.
      folds: number of folds.
      seed: fold shuffling seed.
      fold_by: ``"image"`` or ``"box"`` (:func:`threshold_folds`).

    Returns:
      ``{class: (accuracies [[J]], thresholds [[J]])}``, one entry per fold in which the
      class has boxes on both sides.
    """
    per_fold = {k: ([], []) for k in np.unique(classes[idx])}
    for evaluate, select in threshold_folds(classes[idx], positions[idx], folds, seed, fold_by):
        for k, (accs, thresholds) in per_fold.items():
            sel = idx[select][classes[idx[select]] == k]
            ev = idx[evaluate][classes[idx[evaluate]] == k]
            if not len(sel) or not len(ev):  # image folds can leave a side without class k
                continue
            values, cols = choose_threshold(curves[sel], ious)
            accs.append((curves[ev][:, cols] > np.asarray(ious)).mean(axis=0))
            thresholds.append(values)
    return per_fold


def localization_table(report: Mapping[str, Any]) -> str:
    """The report as a text table: one row per class (and its random-box baseline), mean last."""
    ious = report["ious"]
    lines = [f"{'T(IoU)':<24}" + "".join(f"{t:>7.1f}" for t in ious)]
    rows = [(f"{name} (n={c['count']})", c) for name, c in report["classes"].items()]
    for title, c in [*rows, ("mean over classes", report["mean"])]:
        lines.append(f"{title:<24}" + "".join(f"{a:>7.3f}" for a in c["accuracy"]))
        lines.append(f"{'  random box':<24}" + "".join(f"{a:>7.3f}" for a in c["random_box"]))
    for name, count in report.get("skipped", {}).items():
        lines.append(f"{name}: skipped ({count} boxes < {report['folds']} folds)")
    return "\n".join(lines)


def plot_localization(reports: Mapping[str, Any], path: PathLike) -> PathLike:
    """Localisation accuracy vs ``T(IoU)``, one panel per class, one line per model (Fig. 3).

    Args:
      reports: ``{label: localization_report(...)}`` (e.g. clean vs FGSM-trained),
        or a single report.
      path: PNG to write.

    Returns:
      The path written.
    """
    if "classes" in reports:
        reports = {"model": reports}
    first = next(iter(reports.values()))
    panels = list(first["classes"]) + (["mean"] if len(first["classes"]) > 1 else [])
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for label, report in reports.items():
            entry = report["mean"] if panel == "mean" else report["classes"].get(panel)
            if entry is None:
                continue
            (line,) = ax.plot(report["ious"], entry["accuracy"], marker="o", ms=3, label=label)
            if "accuracy_std" in entry:  # spread over the folds
                mean, std = np.asarray(entry["accuracy"]), np.asarray(entry["accuracy_std"])
                ax.fill_between(
                    report["ious"], mean - std, mean + std, color=line.get_color(), alpha=0.2
                )
        entry = first["mean"] if panel == "mean" else first["classes"][panel]
        ax.plot(first["ious"], entry["random_box"], "k--", lw=1, label="random box")
        ax.set_title(panel if panel == "mean" else f"{panel} (n={entry['count']})")
        ax.set_xlabel("T(IoU)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("localisation accuracy")
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    return _save(fig, path)
