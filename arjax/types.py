"""Type aliases shared across arjax.

Conventions (DESIGN §3, §8):

* images are float32 ``[B, ...]`` (``[B, H, W, C]`` for images, ``[B, D]`` for
  vectors such as two-moons points), usually in ``[0, 1]``;
* labels are int32 ``[B]`` class ids for softmax heads and single binary
  logits, or float32 multi-hot ``[B, C]`` for multi-label sigmoid heads;
* every training example carries an int32 ``index`` (stable across epochs and
  restarts) used by per-sample state such as IMA margins.
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
PyTree = Any
# images [B, ...] -> logits [B, K], [B] (single binary logit) or [B, C] (multi-label).
LogitsFn = Callable[[Array], Array]
# {"image": [B, ...], "label": [B] | [B, C], "index": [B], optional "mask": [B]}.
Batch = Mapping[str, Array]
Metrics = dict[str, Array]
# A radius or step size: a python float or a per-sample array [B].
Radius = float | Array
