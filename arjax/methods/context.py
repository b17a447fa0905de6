"""What the data and the model give a method's loss: :class:`Context` (bound once per run)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from arjax.models import ModelFns


@dataclasses.dataclass(frozen=True)
class Context:
    """What the data and model give a method: static, hashable, bound once per run.

    Attributes:
      model: the model's pure functions.
      bounds: the inputs' valid range ``(lo, hi)``, or None (two-moons points).
    """

    model: ModelFns
    bounds: tuple[float, float] | None
