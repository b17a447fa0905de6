"""TensorFlow Datasets image classification sources (``data.name = "tfds"``).

Reads a locally prepared TFDS dataset with ``tfds.data_source`` (random
access over ``array_record`` files; TensorFlow is not needed at read time),
decodes every requested split into numpy and returns ``DatasetSplits`` with
images float32 ``[N, H, W, C]`` in ``[0, 1]`` and labels int32 ``[N]``. The
IMA paper (Ma et al., seed 004) uses Fashion-MNIST (``fashion_mnist``,
60k train / 10k test, 28x28x1) and SVHN (``svhn_cropped``, 73k / 26k,
32x32x3); both fit in memory.

Nothing is downloaded at run time (``download=False``): prepare the data once
on a machine with network access, in ``array_record`` format, e.g.::

    tfds build fashion_mnist --file_format=array_record --data_dir=/data/tfds

Config fields (the ``data`` section)::

    name="tfds"
    tfds_name="fashion_mnist"        # TFDS name, optionally "name:version" / "name/config"
    data_dir=None                    # None: TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets)
    splits=dict(train="train[:90%]", val="train[90%:]", test="test")  # ours -> TFDS split
    max_examples=0                   # per-split cap (first N records); 0 = all
    image_key="image", label_key="label"
"""

import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from arjax.data.registry import DatasetSplits, register_dataset

_PREPARE_HINT = (
    "data must be prepared locally in array_record format (nothing is downloaded at run "
    "time), e.g. `tfds build {name} --file_format=array_record --data_dir=DIR`"
)


def _check_str(config: ml_collections.ConfigDict, field: str, default: str | None) -> str:
    value = config.get(field, default)
    if not isinstance(value, str) or not value:
        raise ValueError(f"data.{field} must be a non-empty string, got {value!r}")
    return value


def _check_splits(splits: Any) -> dict[str, str]:
    """Validates ``data.splits``: our split name -> TFDS split string, with ``train``."""
    if isinstance(splits, ml_collections.ConfigDict):
        splits = splits.to_dict()
    if not isinstance(splits, Mapping) or not splits:
        raise ValueError(
            "data.splits must map split names to TFDS split strings, e.g. "
            f"dict(train='train', test='test'); got {splits!r}"
        )
    if "train" not in splits:
        raise ValueError(f"data.splits.train is required; got splits {sorted(splits)}")
    for ours, theirs in splits.items():
        if not isinstance(theirs, str) or not theirs:
            raise ValueError(f"data.splits.{ours} must be a TFDS split string, got {theirs!r}")
    return {str(k): v for k, v in splits.items()}


def _open_source(name: str, split_name: str, split: str, data_dir: str | None):
    """``tfds.data_source`` with download disabled; errors name the config field."""
    import tensorflow_datasets as tfds  # deferred: ~0.5 s import, only needed here

    if data_dir:
        where = f"data.data_dir={data_dir!r}"
    else:
        where = f"data.data_dir=None (TFDS default: {tfds.core.constants.DATA_DIR})"
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError as e:
        first_line = str(e).splitlines()[0]
        raise ValueError(
            f"unknown data.tfds_name {name!r} ({first_line}); " + _PREPARE_HINT.format(name=name)
        ) from None
    except ValueError as e:
        raise ValueError(
            f"data.splits.{split_name}={split!r} is not a valid split of data.tfds_name "
            f"{name!r}: {e}"
        ) from e
    except (NotImplementedError, OSError, AssertionError, KeyError) as e:
        raise ValueError(
            f"data.tfds_name {name!r} is not prepared in array_record format under {where}; "
            + _PREPARE_HINT.format(name=name)
            + f". TFDS said: {e}"
        ) from e


def _num_classes(source: Any, name: str, label_key: str) -> int:
    features = source.dataset_info.features
    if label_key not in features:
        raise ValueError(
            f"data.label_key {label_key!r} is not a feature of {name!r}; "
            f"features: {sorted(features.keys())}"
        )
    num_classes = getattr(features[label_key], "num_classes", None)
    if not num_classes:
        raise ValueError(
            f"data.label_key {label_key!r} of {name!r} is not a ClassLabel "
            f"({type(features[label_key]).__name__}); cannot tell the number of classes"
        )
    return int(num_classes)


# Records read per batched call: ArrayRecord reads a batch in parallel (about 3x faster
# than one record at a time); decoding stays per record inside TFDS.
_CHUNK = 4096


def _records(source: Any, start: int, stop: int) -> list:
    """Records ``start..stop-1`` of ``source``, read as one batch where the source can."""
    keys = list(range(start, stop))
    try:
        return source.__getitems__(keys)
    except TypeError:
        # The sources of tfds.testing.mock_data (tfds 4.9.10) have a broken __getitems__.
        return [source[i] for i in keys]


def read_split(
    source: Any, count: int, image_key: str, label_key: str, where: str
) -> dict[str, np.ndarray]:
    """Decodes the first ``count`` records of a random-access source into arrays.

    Args:
        source: A random-access source of dict examples (``tfds.data_source``).
        count: Number of records to read (``<= len(source)``, > 0).
        image_key: Field holding uint8 images ``[H, W, C]`` (or ``[H, W]``).
        label_key: Field holding integer scalar labels.
        where: Description used in error messages (dataset and split).

    Returns:
        ``{"image": float32 [count, H, W, C] in [0, 1], "label": int32 [count]}``;
        images are ``uint8 / 255``.

    Raises:
        ValueError: For a missing field, a non-uint8 image, a non-scalar label,
            or an example whose image shape differs from the first one.
    """
    first = source[0]
    for key, field in ((image_key, "image_key"), (label_key, "label_key")):
        if key not in first:
            raise ValueError(
                f"data.{field} {key!r} is not a field of the examples of {where}: {sorted(first)}"
            )
    image0 = np.asarray(first[image_key])
    if image0.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 images, got {image0.dtype}")
    shape = image0.shape + (1,) if image0.ndim == 2 else image0.shape
    if len(shape) != 3:
        raise ValueError(f"{where}: expected images [H, W, C], got shape {image0.shape}")
    raw = np.empty((count, *shape), np.uint8)
    labels = np.empty((count,), np.int32)
    for start in range(0, count, _CHUNK):
        for i, example in enumerate(_records(source, start, min(start + _CHUNK, count)), start):
            image = np.asarray(example[image_key])
            if image.shape != image0.shape:
                raise ValueError(
                    f"{where}: example {i} has image shape {image.shape}, not {image0.shape}"
                )
            raw[i] = image.reshape(shape)
            label = np.asarray(example[label_key])
            if label.ndim != 0:
                raise ValueError(f"{where}: example {i} has a label of shape {label.shape}")
            labels[i] = label
    images = np.empty(raw.shape, np.float32)
    np.divide(raw, np.float32(255.0), out=images)
    return {"image": images, "label": labels}


@register_dataset("tfds")
def build_tfds(config: ml_collections.ConfigDict) -> DatasetSplits:
    """Loads the configured splits of a locally prepared TFDS image dataset.

    Args:
        config: The ``data`` section: ``tfds_name`` (str), ``data_dir`` (str
            or None), ``splits`` (our split name -> TFDS split string, with
            ``train``), ``max_examples`` (int >= 0, 0 = all), optional
            ``image_key`` / ``label_key`` (default ``"image"`` / ``"label"``).

    Returns:
        ``DatasetSplits`` with one entry per configured split (``image``
        float32 ``[N, H, W, C]`` in [0, 1], ``label`` int32 ``[N]``),
        ``input_shape=(H, W, C)`` from the data, ``num_classes`` from the
        label's ``ClassLabel``, ``bounds=(0.0, 1.0)``, ``name="tfds"``.

    Raises:
        ValueError: Naming the field: ``data.tfds_name`` (unknown or not
            prepared), ``data.data_dir`` (missing directory),
            ``data.splits.<split>``, ``data.max_examples``,
            ``data.image_key`` / ``data.label_key``; or when splits disagree
            on the image shape or labels fall outside ``[0, num_classes)``.
    """
    name = _check_str(config, "tfds_name", None)
    data_dir = config.get("data_dir", None)
    if data_dir is not None:
        if not isinstance(data_dir, str) or not data_dir:
            raise ValueError(f"data.data_dir must be a directory path or None, got {data_dir!r}")
        data_dir = os.path.expanduser(data_dir)
        if not os.path.isdir(data_dir):
            raise ValueError(
                f"data.data_dir {data_dir!r} does not exist (data.tfds_name {name!r}); "
                + _PREPARE_HINT.format(name=name)
            )
    splits = _check_splits(config.get("splits", None))
    max_examples = config.get("max_examples", 0)
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 0:
        raise ValueError(f"data.max_examples must be an int >= 0, got {max_examples!r}")
    image_key = _check_str(config, "image_key", "image")
    label_key = _check_str(config, "label_key", "label")

    arrays: dict[str, dict[str, np.ndarray]] = {}
    num_classes = None
    for ours, theirs in splits.items():
        source = _open_source(name, ours, theirs, data_dir)
        where = f"data.tfds_name {name!r} split {theirs!r} (data.splits.{ours})"
        if len(source) == 0:
            raise ValueError(f"{where} is empty")
        num_classes = _num_classes(source, name, label_key)
        count = len(source) if max_examples == 0 else min(max_examples, len(source))
        arrays[ours] = read_split(source, count, image_key, label_key, where)
        labels = arrays[ours]["label"]
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"{where}: labels span [{labels.min()}, {labels.max()}], outside [0, {num_classes})"
            )
    shapes = {ours: split["image"].shape[1:] for ours, split in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"data.splits give different image shapes: {shapes}")
    return DatasetSplits(
        splits=arrays,
        input_shape=tuple(int(d) for d in shapes["train"]),
        num_classes=num_classes,
        bounds=(0.0, 1.0),
        name="tfds",
    )
