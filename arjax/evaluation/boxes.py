"""Images with bounding boxes: reading them, their box lists, the CAM channel of a box class.

Shared by the figures of :mod:`arjax.evaluation.interpret` and the localisation protocol
of :mod:`arjax.evaluation.localization` (Khakzar et al. §3.3).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


def box_list(boxes) -> list:
    """``(x, y, w, h)`` or ``(class, x, y, w, h)`` rows -> ``[(label, x, y, w, h)]``."""
    out = []
    for box in boxes if boxes is not None else ():
        box = tuple(box)
        if len(box) not in (4, 5):
            raise ValueError(f"a box is (x, y, w, h) or (class, x, y, w, h), got {box}")
        out.append(box if len(box) == 5 else (None, *box))
    return out


def box_data(data: Any) -> tuple[Callable[[np.ndarray], dict], dict, tuple[str, ...]]:
    """Reads images with boxes from an ``ImageFileSource`` or a dict.

    Args:
      data: an ``ImageFileSource`` (``gather``, ``boxes``: position -> ``[(class,
        x, y, w, h)]`` in input pixels, ``class_names``), or a dict with
        ``image`` ``[N, S, S, C]``, ``boxes`` (the same mapping) and optional
        ``label`` and ``class_names``.

    Returns:
      ``(gather, boxes, class_names)``: ``gather(positions [n])`` gives a dict
      with ``image`` ``[n, S, S, C]`` (and ``label`` when the data have labels).
    """
    if isinstance(data, Mapping):
        if "image" not in data or "boxes" not in data:
            raise ValueError("box data must hold 'image' [N, S, S, C] and 'boxes'")
        images = np.asarray(data["image"])
        bad = [p for p in data["boxes"] if not 0 <= p < len(images)]
        if images.ndim != 4 or bad:
            raise ValueError(
                f"box data: 'image' must be [N, S, S, C] (got {images.shape}) and box "
                f"positions in [0, N); out of range: {bad[:5]}"
            )
        arrays = {k: np.asarray(data[k]) for k in ("image", "label") if k in data}
        names = tuple(data.get("class_names", ()))
        return (lambda p: {k: v[p] for k, v in arrays.items()}), dict(data["boxes"]), names
    if not hasattr(data, "gather") or not hasattr(data, "boxes"):
        raise TypeError(f"box data must be an ImageFileSource or a dict, got {type(data)}")
    return data.gather, dict(data.boxes), tuple(data.class_names)


def cam_channels(classes: np.ndarray, num_maps: int, names: Sequence[str] = ()) -> np.ndarray:
    """CAM channel of each box class: the class itself, or 0 for a one-logit binary head.

    Args:
      classes: int ``[N]`` box classes (indices into the label names).
      num_maps: CAM channels K of the model.
      names: label names (a one-logit head with two names serves class 1).

    Returns:
      int ``[N]`` channels in ``[0, K)``.
    """
    classes = np.asarray(classes, int)
    if num_maps == 1:
        if len(names) == 2 and np.any(classes != 1):
            raise ValueError(f"boxes of class {names[0]!r} for a one-logit (positive-class) CAM")
        return np.zeros_like(classes)
    if classes.max() >= num_maps:
        raise ValueError(f"box class {classes.max()} but the model has only {num_maps} outputs")
    return classes
