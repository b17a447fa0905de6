"""Dataset registry: ``DatasetSplits``, ``register_dataset`` and ``load_dataset``.

Kept apart from the package ``__init__`` so that source modules (``moons``,
``tfds``, medical folders) can register builders without importing the
package they are part of. ``load_dataset(config.data)`` builds a dataset by
registered ``data.name`` and returns its splits as numpy arrays plus the facts
a model and an attack need (input shape, number of classes, pixel bounds).
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from arjax.data.checks import check_num_classes


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    """A dataset's splits and the facts downstream code needs.

    Attributes:
        splits: Split name -> either field -> array (every split has
            ``image`` ``[N, *input_shape]`` and ``label``: int32 ``[N]`` or
            float32 multi-hot ``[N, C]``), or a file-backed
            ``pipeline.RecordSource`` whose ``gather`` yields those fields.
            Use ``split_length`` / ``split_labels`` / ``split_arrays`` to
            read either kind.
        input_shape: Per-example input shape, e.g. ``(2,)`` or ``(28, 28, 1)``.
        num_classes: Number of classes (or of labels for multi-label data).
        bounds: ``(low, high)`` value range of the inputs, used to clip
            attacks; ``None`` when inputs are not images (two moons).
        name: Registered dataset name.
        task: ``"classification"`` (labels per example) or ``"segmentation"``
            (``label`` int32 masks ``[N, H, W]`` of class ids in
            ``[0, num_classes)``, class 0 the background; ``arjax.data.segmentation``).
    """

    splits: dict[str, Any]
    input_shape: tuple[int, ...]
    num_classes: int
    bounds: tuple[float, float] | None
    name: str
    task: str = "classification"


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
        ConfigError: When ``data.num_classes`` is set and the data have
            another number of classes (``checks.check_num_classes``).
    """
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(dict(config))
    name = config.get("name")
    if name not in DATASETS:
        raise ValueError(f"unknown data.name {name!r}; valid: {', '.join(sorted(DATASETS))}")
    dataset = DATASETS[name](config)
    check_num_classes(dataset.num_classes, config.get("num_classes", None), f"data.name={name!r}")
    return dataset
