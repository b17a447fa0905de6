"""Datasets and input pipelines.

``load_dataset(config.data)`` builds a dataset by registered name and returns
its splits as numpy arrays plus the facts a model and an attack need
(input shape, number of classes, pixel bounds). ``train_dataset`` and
``eval_batches`` turn a split into batches. New sources (TFDS, medical
folders) register a builder with ``register_dataset``.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from arjax.data.moons import make_moons, moons_splits, split_seed
from arjax.data.pipeline import (
    INDEX_KEY,
    MASK_KEY,
    ArraySource,
    eval_batches,
    steps_per_epoch,
    train_dataset,
)


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    """A dataset's splits and the facts downstream code needs.

    Attributes:
        splits: Split name -> field -> array; every split has ``image``
            ``[N, *input_shape]`` and ``label`` (int32 ``[N]`` or float32
            multi-hot ``[N, C]``).
        input_shape: Per-example input shape, e.g. ``(2,)`` or ``(28, 28, 1)``.
        num_classes: Number of classes (or of labels for multi-label data).
        bounds: ``(low, high)`` value range of the inputs, used to clip
            attacks; ``None`` when inputs are not images (two moons).
        name: Registered dataset name.
    """

    splits: dict[str, dict[str, np.ndarray]]
    input_shape: tuple[int, ...]
    num_classes: int
    bounds: tuple[float, float] | None
    name: str


Builder = Callable[[ml_collections.ConfigDict], DatasetSplits]

# Dataset name -> builder(config.data) -> DatasetSplits.
DATASETS: dict[str, Builder] = {}


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(config.data) -> DatasetSplits`` as ``name``.

    Args:
        name: The ``data.name`` value that selects the builder.

    Returns:
        A decorator returning the builder unchanged.

    Raises:
        ValueError: If ``name`` is already registered.
    """

    def decorator(builder: Builder) -> Builder:
        if name in DATASETS:
            raise ValueError(f"dataset '{name}' is already registered")
        DATASETS[name] = builder
        return builder

    return decorator


def _check_sizes(sizes: Any) -> dict[str, int]:
    """Validates ``data.sizes``: a split -> positive int mapping with ``train``."""
    if isinstance(sizes, ml_collections.ConfigDict):
        sizes = sizes.to_dict()
    if not isinstance(sizes, Mapping):
        raise ValueError(f"data.sizes must map split names to sizes, got {sizes!r}")
    if "train" not in sizes:
        raise ValueError(f"data.sizes.train is required; got splits {sorted(sizes)}")
    checked = {}
    for split, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size <= 0:
            raise ValueError(f"data.sizes.{split} must be a positive int, got {size!r}")
        checked[str(split)] = int(size)
    return checked


@register_dataset("moons")
def build_moons(config: ml_collections.ConfigDict) -> DatasetSplits:
    """Two moons: ``moons_splits(config.sizes, config.noise, config.seed)``.

    Args:
        config: The ``data`` section: ``sizes`` (split -> int, with
            ``train``), ``noise`` (float >= 0), ``seed`` (int >= 0).

    Returns:
        ``DatasetSplits`` with ``input_shape=(2,)``, ``num_classes=2``,
        ``bounds=None``.

    Raises:
        ValueError: Naming the bad field (``data.sizes.train``,
            ``data.noise``, ``data.seed``).
    """
    sizes = _check_sizes(config.get("sizes"))
    noise = config.get("noise")
    if isinstance(noise, bool) or not isinstance(noise, int | float) or noise < 0:
        raise ValueError(f"data.noise must be a float >= 0, got {noise!r}")
    seed = config.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"data.seed must be an int >= 0, got {seed!r}")
    return DatasetSplits(
        splits=moons_splits(sizes, float(noise), seed),
        input_shape=(2,),
        num_classes=2,
        bounds=None,
        name="moons",
    )


def load_dataset(config: ml_collections.ConfigDict | Mapping[str, Any]) -> DatasetSplits:
    """Builds the dataset that ``config.name`` selects.

    Args:
        config: The ``data`` section of an experiment config (a ConfigDict or
            a plain mapping) with ``name`` and the builder's fields.

    Returns:
        The builder's ``DatasetSplits``.

    Raises:
        ValueError: ``unknown data.name 'x'; valid: ...`` for an unregistered
            name, or the builder's validation error naming the field.
    """
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(dict(config))
    name = config.get("name")
    if name not in DATASETS:
        raise ValueError(f"unknown data.name {name!r}; valid: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](config)


__all__ = [
    "DATASETS",
    "INDEX_KEY",
    "MASK_KEY",
    "ArraySource",
    "DatasetSplits",
    "build_moons",
    "eval_batches",
    "load_dataset",
    "make_moons",
    "moons_splits",
    "register_dataset",
    "split_seed",
    "steps_per_epoch",
    "train_dataset",
]
