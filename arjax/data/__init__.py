"""Datasets and input pipelines.

``load_dataset(config.data)`` builds a dataset by registered name and returns
its splits (in-memory arrays, or file-backed ``RecordSource`` objects that
decode images on ``gather``) plus the facts a model and an attack need
(input shape, number of classes, pixel bounds). ``train_dataset`` and
``eval_batches`` turn a split into batches. New sources register a builder
with ``register_dataset`` (``arjax.data.registry``). Registered
``data.name`` values: ``"moons"`` (below), ``"tfds"`` (``tfds.py``),
``"synthetic_images"`` (``synthetic.py``), ``"chestxray14"`` and
``"covid_ct"`` (``medical.py``), ``"csv_manifest"`` (``manifest.py``) and
``"synthetic_lesions"`` (``lesions.py``); segmentation sets ``"segmentation_folder"`` and
``"synthetic_segmentation"`` (``segmentation.py``) and ``"msd"`` (``nifti.py``).
``checks.py`` holds the checks run while loading, before any compute: class counts
(``check_num_classes``, ``check_model_outputs``) and a header check of every image
file (``verify_images``).
"""

from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from arjax.data.checks import check_model_outputs, check_num_classes, verify_images
from arjax.data.images import ImageFileSource, decode_image
from arjax.data.lesions import build_synthetic_lesions, write_synthetic_lesions
from arjax.data.manifest import build_csv_manifest, read_manifest
from arjax.data.medical import CHESTXRAY14_CLASSES, build_chestxray14, build_covid_ct
from arjax.data.moons import make_moons, moons_splits, split_seed
from arjax.data.nifti import build_msd
from arjax.data.pipeline import (
    INDEX_KEY,
    MASK_KEY,
    ArraySource,
    RecordSource,
    eval_batches,
    split_arrays,
    split_labels,
    split_length,
    steps_per_epoch,
    train_dataset,
)
from arjax.data.registry import DATASETS, DatasetSplits, load_dataset, register_dataset
from arjax.data.segmentation import (
    build_segmentation_folder,
    build_synthetic_segmentation,
    read_segmentation_folder,
)
from arjax.data.synthetic import build_synthetic_images
from arjax.data.tfds import build_tfds


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


__all__ = [
    "CHESTXRAY14_CLASSES",
    "DATASETS",
    "INDEX_KEY",
    "MASK_KEY",
    "ArraySource",
    "RecordSource",
    "DatasetSplits",
    "ImageFileSource",
    "build_chestxray14",
    "build_covid_ct",
    "build_csv_manifest",
    "build_synthetic_lesions",
    "build_msd",
    "build_segmentation_folder",
    "build_synthetic_segmentation",
    "read_segmentation_folder",
    "decode_image",
    "read_manifest",
    "write_synthetic_lesions",
    "build_moons",
    "build_synthetic_images",
    "build_tfds",
    "check_model_outputs",
    "check_num_classes",
    "eval_batches",
    "load_dataset",
    "make_moons",
    "moons_splits",
    "register_dataset",
    "split_arrays",
    "split_labels",
    "split_length",
    "split_seed",
    "steps_per_epoch",
    "train_dataset",
    "verify_images",
]
