"""Medical Segmentation Decathlon volumes sliced to 2-D (``data.name="msd"``).

The IMA paper segments three MSD tasks slice by slice with nnU-Net's 2-D configuration
(Heart D2, Hippocampus D4, Prostate D5; Simpson et al. 2019). A task folder as the
Decathlon ships it (read locally, never downloaded)::

    <root>/dataset.json          "labels": {"0": "background", "1": "left atrium", ...}
    <root>/imagesTr/<case>.nii.gz   3-D [X, Y, Z] or 4-D [X, Y, Z, M] (M modalities)
    <root>/labelsTr/<case>.nii.gz   3-D [X, Y, Z] class ids

Cases are dealt to train/val/test by ``data.split_cases`` (counts, the paper's e.g.
(16, 1, 3) for Heart) after a seeded shuffle, so slices of one patient stay in one split.
Each volume is normalised to [0, 1] (clipped to its 0.5 / 99.5 percentiles, then min-max;
attacks need a bounded input range), every slice along ``data.axis`` (default the last,
MSD's slice axis) is centre-cropped or zero-padded to ``data.patch_size`` (the paper's
nnU-Net patch sizes: Heart 320x256, Hippocampus 56x40, Prostate 320x320) and becomes one
example. ``data.modality`` picks the channel of a 4-D image (Prostate: 0 = T2, 1 = ADC).
``data.keep_empty`` (default True) keeps slices without foreground.

Checks before any compute, each naming the file: a missing ``dataset.json``, an image
without its label volume, image and label volumes of different shapes, label values
outside ``dataset.json``'s classes, a modality index out of range. ``nibabel`` is an
optional dependency (``pip install arjax[nifti]``).
"""

import json
import os

import ml_collections
import numpy as np

from arjax.data.manifest import config_int, config_optional_path
from arjax.data.registry import DatasetSplits, register_dataset
from arjax.data.segmentation import check_mask

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _nibabel():
    try:
        import nibabel
    except ImportError as e:
        raise ImportError(
            "data.name='msd' reads NIfTI volumes with nibabel: pip install 'arjax[nifti]'"
        ) from e
    return nibabel


def _case_name(filename: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if filename.endswith(suffix) and not filename.startswith("._"):
            return filename[: -len(suffix)]
    return None


def list_cases(root: str) -> dict[str, tuple[str, str]]:
    """``{case: (image path, label path)}`` of ``imagesTr`` / ``labelsTr``.

    Raises:
      FileNotFoundError: no ``imagesTr`` folder or no volume in it.
      ValueError: an image volume without its label volume (named).
    """
    images_dir, labels_dir = os.path.join(root, "imagesTr"), os.path.join(root, "labelsTr")
    if not os.path.isdir(images_dir):
        raise FileNotFoundError(f"{images_dir}: no such folder (MSD layout: imagesTr/, labelsTr/)")
    cases = {}
    for f in sorted(os.listdir(images_dir)):
        case = _case_name(f)
        if case is None:
            continue
        label = next(
            (
                os.path.join(labels_dir, case + s)
                for s in NIFTI_SUFFIXES
                if os.path.isfile(os.path.join(labels_dir, case + s))
            ),
            None,
        )
        if label is None:
            raise ValueError(
                f"{os.path.join(images_dir, f)}: no label volume {labels_dir}/{case}.nii.gz"
            )
        cases[case] = (os.path.join(images_dir, f), label)
    if not cases:
        raise FileNotFoundError(f"{images_dir}: no .nii / .nii.gz volumes")
    return cases


def read_labels(root: str) -> tuple[str, ...]:
    """The class names of ``dataset.json`` (``"labels"``: index -> name), in index order.

    Raises:
      FileNotFoundError / ValueError: naming ``dataset.json``.
    """
    path = os.path.join(root, "dataset.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (the MSD task's description with 'labels')")
    with open(path) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{path}: needs 'labels': {{'0': 'background', '1': ...}}")
    try:
        index = sorted((int(k), str(v)) for k, v in labels.items())
    except ValueError:
        raise ValueError(
            f"{path}: 'labels' keys must be class indices, got {list(labels)}"
        ) from None
    if [i for i, _ in index] != list(range(len(index))):
        raise ValueError(f"{path}: 'labels' must number the classes 0 .. C-1, got {labels}")
    return tuple(n for _, n in index)


def normalize_volume(volume: np.ndarray) -> np.ndarray:
    """Clip to the 0.5 / 99.5 percentiles and min-max to [0, 1] (float32, same shape)."""
    lo, hi = np.percentile(volume, [0.5, 99.5])
    if hi <= lo:
        return np.zeros(volume.shape, np.float32)
    return ((np.clip(volume, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def crop_or_pad(slices: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
    """Centre crop / zero pad ``[N, H, W]`` to ``[N, *patch]``."""
    out = slices
    for axis, target in ((1, patch[0]), (2, patch[1])):
        size = out.shape[axis]
        if size > target:
            start = (size - target) // 2
            out = np.take(out, np.arange(start, start + target), axis=axis)
        elif size < target:
            before = (target - size) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, target - size - before)
            out = np.pad(out, pad)
    return out


def read_case(
    image_path: str,
    label_path: str,
    label_names: tuple[str, ...],
    *,
    patch: tuple[int, int],
    axis: int,
    modality: int,
    keep_empty: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """One case's 2-D slices: ``(image float32 [n, *patch], mask int32 [n, *patch])``.

    Raises:
      ValueError: naming the file: shape mismatch, bad modality, labels outside the classes.
    """
    nib = _nibabel()
    try:
        image = np.asarray(nib.load(image_path).dataobj, np.float32)
        label = np.asarray(nib.load(label_path).dataobj)
    except Exception as e:  # nibabel raises several types for broken files
        raise ValueError(f"{image_path} / {label_path}: cannot read the NIfTI volume ({e})") from e
    if image.ndim == 4:
        if not 0 <= modality < image.shape[3]:
            raise ValueError(
                f"{image_path}: data.modality={modality} but the volume has "
                f"{image.shape[3]} modalities; valid: 0 .. {image.shape[3] - 1}"
            )
        image = image[..., modality]
    if image.ndim != 3 or label.ndim != 3:
        raise ValueError(
            f"{image_path}: need 3-D volumes (or 4-D images), got image {image.shape} and "
            f"label {label.shape}"
        )
    if image.shape != label.shape:
        raise ValueError(
            f"{label_path}: label volume shape {label.shape} differs from its image "
            f"{image_path} ({image.shape})"
        )
    if np.any(label != np.rint(label)):
        raise ValueError(f"{label_path}: label values must be integer class ids")
    mask = check_mask(np.rint(label).astype(np.int64).reshape(label.shape[0], -1),
                      label_path, label_names).reshape(label.shape)  # fmt: skip
    image = normalize_volume(image)
    image, mask = np.moveaxis(image, axis, 0), np.moveaxis(mask, axis, 0)
    if not keep_empty:
        keep = mask.reshape(mask.shape[0], -1).any(axis=1)
        image, mask = image[keep], mask[keep]
    return crop_or_pad(image, patch), crop_or_pad(mask, patch).astype(np.int32)


@register_dataset("msd")
def build_msd(config: ml_collections.ConfigDict) -> DatasetSplits:
    """``data.name="msd"``: one MSD task folder as 2-D slices (module docstring).

    Fields (``data.``): ``root`` (required), ``patch_size`` (required, ``(H, W)``),
    ``split_cases`` [(0.8, 0.05, 0.15) of the cases; ints are counts], ``axis`` [2],
    ``modality`` [0], ``keep_empty`` [True], ``seed`` [0], ``max_cases`` [0: all].
    """
    root = config_optional_path(config, "root")
    if root is None or not os.path.isdir(root):
        raise ValueError(f"data.root={root!r} must be an MSD task folder (imagesTr/, labelsTr/)")
    patch = tuple(config.get("patch_size", None) or ())
    if len(patch) != 2 or not all(isinstance(p, int) and p > 0 for p in patch):
        raise ValueError(f"data.patch_size must be (H, W) positive ints, got {patch}")
    names = read_labels(root)
    cases = list_cases(root)
    max_cases = config_int(config, "max_cases", 0, 0)
    order = sorted(cases)
    rng = np.random.default_rng(config_int(config, "seed", 0, 0))
    order = [order[i] for i in rng.permutation(len(order))][: max_cases or None]
    counts = _split_counts(config.get("split_cases", (0.8, 0.05, 0.15)), len(order))
    axis = config_int(config, "axis", 2, 0)
    if axis > 2:
        raise ValueError(f"data.axis must be 0, 1 or 2, got {axis}")
    modality = config_int(config, "modality", 0, 0)
    keep_empty = config.get("keep_empty", True)
    splits, start = {}, 0
    for split, count in zip(("train", "val", "test"), counts, strict=True):
        chosen, start = order[start : start + count], start + count
        if not chosen:
            continue
        parts = [
            read_case(*cases[c], names, patch=patch, axis=axis, modality=modality,
                      keep_empty=keep_empty)
            for c in chosen
        ]  # fmt: skip
        x = np.concatenate([p[0] for p in parts])[..., None]
        y = np.concatenate([p[1] for p in parts])
        if len(y) == 0:
            raise ValueError(f"{root}: the {split} cases {chosen} give no slices")
        splits[split] = {"image": x, "label": y}
    if "train" not in splits:
        raise ValueError(f"data.split_cases={counts} leaves no training case")
    return DatasetSplits(splits, (*patch, 1), len(names), (0.0, 1.0), "msd", task="segmentation")


def _split_counts(spec, num_cases: int) -> tuple[int, int, int]:
    """``data.split_cases`` (three counts, or three fractions) as case counts."""
    spec = tuple(spec)
    if len(spec) != 3 or any(isinstance(v, bool) or v < 0 for v in spec):
        raise ValueError(f"data.split_cases must be 3 counts or fractions, got {spec}")
    if all(isinstance(v, int) for v in spec):
        if sum(spec) > num_cases:
            raise ValueError(
                f"data.split_cases={spec} asks for {sum(spec)} cases; the folder has {num_cases}"
            )
        return spec
    val = int(round(spec[1] * num_cases))
    test = int(round(spec[2] * num_cases))
    return (num_cases - val - test, val, test)
