"""Synthetic lesion X-rays: the built-in medical demo set (``data.name="synthetic_lesions"``).

Grayscale "X-ray-like" images: a smooth random background (two scales of
Gaussian-filtered noise, a brighter vertical band like a mediastinum, fine
pixel noise) and, for positive labels, bright lesion blobs of a
class-specific shape at random places, each with its bounding box recorded.
The set exists so that the whole medical pipeline (the CSV-manifest reader,
box rescaling, patient-grouped folds, file-backed sources, grain workers,
CAM localisation against boxes) runs with no download. It is *written* as
files and read back through ``arjax.data.manifest.read_manifest``, exactly as
a real set would be.

Layout written under ``data.root`` (once; reused while ``params.json``
matches the requested parameters)::

    images/00000.png ...   uint8 grayscale PNGs, image_size x image_size
    manifest.csv           path,label,patient_id,fold   (2 images per patient,
                           patients dealt to 5 folds; label as below)
    boxes.csv              path,class,x,y,w,h   (one row per lesion, pixels)
    params.json            the generator's parameters

Labels: with ``multi_label=False`` (default) ``num_classes`` K >= 2 classes
``("normal", "disk", "ring", ...)``, balanced; class 0 has no lesion and class
k one lesion of shape k (K=2 is binary "lesion present"). With
``multi_label=True`` K in [1, 4] lesion types ``("disk", "ring", "bar",
"square")``, each present independently with probability 1/2; the manifest
label is ``"disk|bar"`` or empty, read as a float32 multi-hot ``[K]``.

Config fields (``data.``): ``root`` [None: ``runs/data/synthetic_lesions/<params>``
under the cwd], ``num_images`` [600], ``image_size`` [64], ``num_classes`` [2],
``multi_label`` [False], ``seed`` [0], ``test_fold`` [0], ``val_fold`` [1]
(so 60/20/20 % train/val/test), ``cache_dir``, ``max_examples``,
``decode_threads``.
"""

import json
import os
import shutil
from collections.abc import Callable

import ml_collections
import numpy as np
from PIL import Image
from scipy import ndimage

from arjax.data.manifest import config_int, config_optional_path, read_manifest
from arjax.data.registry import DatasetSplits, register_dataset

LESION_SHAPES = ("disk", "ring", "bar", "square")
NUM_FOLDS = 5
_IMAGES_PER_PATIENT = 2
_CONTRAST = 0.3


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth X-ray-like texture, float64 ``[S, S]`` roughly in [0.25, 0.7]."""
    xx = np.linspace(-1.0, 1.0, size)[None, :]
    band = 0.12 * np.exp(-((xx - rng.uniform(-0.1, 0.1)) ** 2) / 0.03)
    image = 0.42 + band + 0.04 * _smooth_noise(rng, size, size / 5)
    image = image + 0.025 * _smooth_noise(rng, size, size / 20)
    return image + 0.01 * rng.standard_normal((size, size))


def lesion_mask(
    shape: str, size: int, center: tuple[float, float], radius: float, angle: float
) -> np.ndarray:
    """Soft (1-pixel edge) mask in [0, 1], float64 ``[S, S]``, of one lesion.

    Args:
        shape: One of ``LESION_SHAPES``: a disk of radius ``radius``, a ring
            (annulus between ``radius / 2`` and ``radius``), a bar (ellipse with
            semi-axes ``1.4 r`` and ``0.45 r``) or a square (half side
            ``0.85 r``), the last two rotated by ``angle`` radians.
        size: Image side S.
        center: ``(row, col)`` of the lesion centre in pixels.
        radius: Size parameter r in pixels.
        angle: Rotation in radians.
    """
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = rows - center[0], cols - center[1]
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    dist = np.hypot(dx, dy)
    if shape == "disk":
        inside = radius - dist
    elif shape == "ring":
        inside = np.minimum(radius - dist, dist - 0.5 * radius)
    elif shape == "bar":
        a, b = 1.4 * radius, 0.45 * radius
        inside = (1.0 - np.hypot(u / a, v / b)) * b
    elif shape == "square":
        inside = 0.85 * radius - np.maximum(np.abs(u), np.abs(v))
    else:
        raise ValueError(f"unknown lesion shape {shape!r}; valid: {LESION_SHAPES}")
    return np.clip(inside + 0.5, 0.0, 1.0)


def _place(rng, size, shape, taken) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One lesion away from the ``taken`` boxes (20 tries); its mask and integer box."""
    radius = rng.uniform(0.07, 0.12) * size
    reach = 1.45 * radius + 2.0  # covers every shape's extent
    for _ in range(20):
        center = rng.uniform(reach, size - reach, 2)
        clear = all(
            center[1] + reach < x or center[1] - reach > x + w
            or center[0] + reach < y or center[0] - reach > y + h
            for x, y, w, h in taken
        )  # fmt: skip
        if clear:
            break
    mask = lesion_mask(shape, size, tuple(center), radius, rng.uniform(0, np.pi))
    ys, xs = np.nonzero(mask >= 0.5)
    box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
    return mask, box


def make_image(
    rng: np.random.Generator, size: int, shapes: list[str]
) -> tuple[np.ndarray, list[tuple[str, int, int, int, int]]]:
    """One image with a lesion of each of ``shapes`` (may be empty).

    Returns:
        ``(uint8 [S, S], [(shape, x, y, w, h), ...])``: boxes are the tight
        pixel boxes of the mask's pixels ``>= 0.5``.
    """
    image = background(rng, size)
    boxes: list[tuple[str, int, int, int, int]] = []
    for shape in shapes:
        mask, box = _place(rng, size, shape, [b[1:] for b in boxes])
        image = image + _CONTRAST * mask
        boxes.append((shape, *box))
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8), boxes


def class_names(num_classes: int, multi_label: bool) -> tuple[str, ...]:
    """Label names: lesion shapes (multi-label) or ``("normal", *shapes)``."""
    limit = len(LESION_SHAPES) + (0 if multi_label else 1)
    low = 1 if multi_label else 2
    if not low <= num_classes <= limit:
        kind = "multi_label=True" if multi_label else "multi_label=False"
        raise ValueError(f"data.num_classes must be in [{low}, {limit}] with {kind}")
    if multi_label:
        return LESION_SHAPES[:num_classes]
    return ("normal", *LESION_SHAPES[: num_classes - 1])


def write_synthetic_lesions(
    root: str, num_images: int, image_size: int, num_classes: int, multi_label: bool, seed: int
) -> str:
    """Writes the set (layout in the module docstring) to ``root`` unless it is there.

    Written into a temporary sibling folder and renamed, so concurrent writers
    are safe and an interrupted write leaves nothing behind.

    Args:
        root: Folder to create.
        num_images: Number of images N (>= 2 * NUM_FOLDS * 2 so every fold has patients).
        image_size: Side S of the written PNGs.
        num_classes: K (see module docstring).
        multi_label: Multi-hot lesion types instead of one class per image.
        seed: Seed of every random choice.

    Returns:
        The path of ``manifest.csv``.

    Raises:
        ValueError: If ``root`` exists with other parameters (names ``params.json``).
    """
    names = class_names(num_classes, multi_label)
    params = dict(
        num_images=num_images, image_size=image_size, num_classes=num_classes,
        multi_label=multi_label, seed=seed, version=1,
    )  # fmt: skip

    def write(folder: str) -> None:
        os.makedirs(os.path.join(folder, "images"))
        _write(folder, params, names)

    write_once(root, params, write)
    return os.path.join(root, "manifest.csv")


def write_once(root: str, params: dict, write: Callable[[str], None]) -> None:
    """Makes the generated folder ``root`` unless it is there, then checks its parameters.

    ``write(folder)`` fills a temporary sibling of ``root``; ``params.json`` is added
    and the sibling renamed to ``root`` (safe against concurrent writers: the first
    rename wins, the others drop their copy).

    Raises:
        ValueError: ``root`` holds a set made with other parameters (names its
            ``params.json``).
    """
    if not os.path.isdir(root):
        tmp = f"{root}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        with open(os.path.join(tmp, "params.json"), "w") as f:
            json.dump(params, f)
        try:
            os.rename(tmp, root)
        except OSError:  # another process wrote it first
            shutil.rmtree(tmp, ignore_errors=True)
    path = os.path.join(root, "params.json")
    found = None
    if os.path.isfile(path):
        with open(path) as f:
            found = json.load(f)
    if found != params:
        raise ValueError(
            f"{path}: the folder holds a synthetic set with parameters {found}, not "
            f"{params}; choose another data.root or delete the folder"
        )


def _write(folder: str, params: dict, names: tuple[str, ...]) -> None:
    n, size, multi = params["num_images"], params["image_size"], params["multi_label"]
    rng = np.random.default_rng(params["seed"])
    if multi:
        present = rng.random((n, len(names))) < 0.5
        shapes = [[names[k] for k in np.flatnonzero(row)] for row in present]
        labels = ["|".join(s) for s in shapes]
    else:
        classes = rng.permutation(np.arange(n) % len(names))
        shapes = [[] if k == 0 else [names[k]] for k in classes]
        labels = [names[k] for k in classes]
    num_patients = -(-n // _IMAGES_PER_PATIENT)
    patient_fold = rng.permutation(num_patients) % NUM_FOLDS
    manifest = ["path,label,patient_id,fold"]
    box_rows = ["path,class,x,y,w,h"]
    for i in range(n):
        path = f"images/{i:05d}.png"
        image, boxes = make_image(rng, size, shapes[i])
        Image.fromarray(image).save(os.path.join(folder, path))
        patient = i // _IMAGES_PER_PATIENT
        manifest.append(f"{path},{labels[i]},P{patient:05d},{patient_fold[patient]}")
        box_rows += [f"{path},{s},{x},{y},{w},{h}" for s, x, y, w, h in boxes]
    for name, lines in (("manifest.csv", manifest), ("boxes.csv", box_rows)):
        with open(os.path.join(folder, name), "w") as f:
            f.write("\n".join(lines) + "\n")


@register_dataset("synthetic_lesions")
def build_synthetic_lesions(config: ml_collections.ConfigDict) -> DatasetSplits:
    """Writes (once) and reads back the synthetic lesion set through ``read_manifest``.

    Args:
        config: The ``data`` section (fields in the module docstring).

    Returns:
        ``DatasetSplits`` named ``"synthetic_lesions"``: ``train`` / ``val`` /
        ``test`` ``ImageFileSource`` splits (folds ``test_fold`` and
        ``val_fold``) whose ``boxes`` are the recorded lesion boxes,
        ``input_shape=(S, S, 1)``, ``num_classes=K``, ``bounds=(0, 1)``.
    """
    num_images = config_int(config, "num_images", 600, 4 * NUM_FOLDS)
    size = config_int(config, "image_size", 64, 16)
    num_classes = config_int(config, "num_classes", 2, 1)
    multi = config.get("multi_label", False)
    if not isinstance(multi, bool):
        raise ValueError(f"data.multi_label must be a bool, got {multi!r}")
    seed = config_int(config, "seed", 0, 0)
    root = config_optional_path(config, "root") or os.path.join(
        "runs", "data", "synthetic_lesions",
        f"n{num_images}_s{size}_k{num_classes}{'_multi' if multi else ''}_seed{seed}",
    )  # fmt: skip
    manifest = write_synthetic_lesions(root, num_images, size, num_classes, multi, seed)
    fields = dict(
        manifest=manifest,
        boxes=os.path.join(root, "boxes.csv"),
        image_size=size,
        channels=1,
        label_names=class_names(num_classes, multi),
        multi_label=multi,
        test_fold=config_int(config, "test_fold", 0, 0),
        val_fold=config_int(config, "val_fold", 1, 0),
        seed=seed,
        cache_dir=config_optional_path(config, "cache_dir"),
        max_examples=config_int(config, "max_examples", 0, 0),
        decode_threads=config_int(config, "decode_threads", 0, 0),
    )
    return read_manifest(ml_collections.ConfigDict(fields), name="synthetic_lesions")
