"""Segmentation data: image/mask PNG folders and the built-in synthetic set.

Two registered ``data.name`` values:

* ``"segmentation_folder"``: a folder of PNG image/mask pairs, one sub-folder per
  split::

      <root>/train/images/<name>.png   <root>/train/masks/<name>.png
      <root>/val/images/...            <root>/val/masks/...      (optional)
      <root>/test/images/...           <root>/test/masks/...

  Each mask is a single-channel PNG of class ids (0 background, ``1 .. C - 1`` the
  structures; uint8 or 16-bit), with the same height and width as its image. Every
  image of the set has one size (crop or resample beforehand; nothing is resized, so a
  mask is never interpolated).
* ``"synthetic_segmentation"``: images with lesion-like blobs on an X-ray-like
  background (the generator of ``synthetic_lesions``) and their masks, *written* as that
  folder layout under ``data.root`` and read back through the same reader, so the reader
  and its checks are what every run exercises.

A split is held in memory as ``image`` float32 ``[N, H, W, C]`` in ``[0, 1]`` and
``label`` int32 ``[N, H, W]``; the dataset's ``task`` is ``"segmentation"``.

Checks, all before any compute, each naming the file: an image without its mask (or a
mask without its image), image and mask of different height/width, images of different
sizes, mask values outside the class list (``data.label_names``), undecodable files.
"""

import os

import ml_collections
import numpy as np
from PIL import Image

from arjax.data.lesions import LESION_SHAPES, background, lesion_mask, write_once
from arjax.data.manifest import config_int, config_optional_path
from arjax.data.registry import DatasetSplits, register_dataset

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png",)
_CONTRAST = 0.3


def _list_pngs(folder: str) -> dict[str, str]:
    """``{stem: path}`` of the PNGs in ``folder`` (empty when it does not exist)."""
    if not os.path.isdir(folder):
        return {}
    return {
        os.path.splitext(f)[0]: os.path.join(folder, f)
        for f in sorted(os.listdir(folder))
        if f.lower().endswith(IMAGE_EXTENSIONS)
    }


def _read_png(path: str, mode: str | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if mode is not None:
                im = im.convert(mode)
            return np.asarray(im)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot decode the image ({e})") from None


def check_mask(mask: np.ndarray, path: str, label_names: tuple[str, ...]) -> np.ndarray:
    """A decoded mask as int32 ``[H, W]`` class ids, checked against the class list.

    Raises:
      ValueError: naming ``path``: a multi-channel mask, or values outside
        ``[0, len(label_names))`` (the message lists the classes).
    """
    if mask.ndim != 2:
        raise ValueError(
            f"{path}: a mask must be one channel of class ids, got an array of shape {mask.shape}"
        )
    values = np.unique(mask)
    bad = values[(values < 0) | (values >= len(label_names))]
    if bad.size:
        classes = ", ".join(f"{i}={n}" for i, n in enumerate(label_names))
        raise ValueError(
            f"{path}: mask values {bad.tolist()} are outside the class list ({classes}); "
            "fix the mask or set data.label_names"
        )
    return mask.astype(np.int32)


def read_split(
    folder: str, label_names: tuple[str, ...], channels: int = 1, max_examples: int = 0
) -> dict[str, np.ndarray]:
    """One split folder (``images/`` and ``masks/``) as ``{"image", "label"}`` arrays.

    Args:
      folder: the split's folder.
      label_names: class names, class 0 first (the background).
      channels: 1 (grayscale) or 3 (RGB) image channels.
      max_examples: read the first N pairs in name order (0: all).

    Returns:
      ``image`` float32 ``[N, H, W, channels]`` in ``[0, 1]``, ``label`` int32 ``[N, H, W]``.

    Raises:
      FileNotFoundError: no ``images/`` folder, or no PNG in it.
      ValueError: naming the file: a missing mask or image, mismatched shapes, bad labels.
    """
    images = _list_pngs(os.path.join(folder, "images"))
    masks = _list_pngs(os.path.join(folder, "masks"))
    if not images:
        raise FileNotFoundError(f"{os.path.join(folder, 'images')}: no PNG images found")
    for stem, path in images.items():
        if stem not in masks:
            raise ValueError(
                f"{path}: no mask {os.path.join(folder, 'masks', stem + '.png')} for this image"
            )
    for stem, path in masks.items():
        if stem not in images:
            raise ValueError(f"{path}: a mask without its image in {folder}/images")
    stems = list(images)[: max_examples or None]
    mode = "L" if channels == 1 else "RGB"
    xs, ys, size = [], [], None
    for stem in stems:
        image = _read_png(images[stem], mode)
        mask = check_mask(_read_png(masks[stem], None), masks[stem], label_names)
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"{masks[stem]}: mask shape {mask.shape} differs from its image "
                f"{images[stem]} ({image.shape[:2]})"
            )
        if size is None:
            size = mask.shape
        elif mask.shape != size:
            raise ValueError(
                f"{images[stem]}: size {mask.shape} differs from the split's {size} (first "
                f"image {images[stems[0]]}); every image of a set must have one size"
            )
        xs.append(image.reshape(*size, channels))
        ys.append(mask)
    x = np.stack(xs).astype(np.float32) / 255.0
    return {"image": x, "label": np.stack(ys)}


def label_names_field(config: ml_collections.ConfigDict, default: tuple[str, ...]) -> tuple:
    """``data.label_names`` as a tuple of >= 2 names, background first."""
    names = config.get("label_names", None) or default
    names = tuple(str(n) for n in names)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(
            f"data.label_names must list >= 2 distinct classes, background first; got {names}"
        )
    return names


def read_segmentation_folder(
    root: str,
    label_names: tuple[str, ...],
    *,
    channels: int = 1,
    max_examples: int = 0,
    name: str = "segmentation_folder",
) -> DatasetSplits:
    """Reads ``<root>/{train,val,test}`` (module docstring) into a segmentation dataset.

    Raises:
      FileNotFoundError: no ``<root>/train`` split.
      ValueError: a bad file (named) or splits of different image sizes.
    """
    if not os.path.isdir(os.path.join(root, "train")):
        raise FileNotFoundError(
            f"{root}: no train/ split folder (layout: <root>/train/images/*.png and "
            "<root>/train/masks/*.png, optional val/ and test/)"
        )
    splits = {}
    for split in SPLITS:
        folder = os.path.join(root, split)
        if os.path.isdir(folder):
            splits[split] = read_split(folder, label_names, channels, max_examples)
    shapes = {s: a["image"].shape[1:] for s, a in splits.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{root}: the splits have different image shapes {shapes}")
    input_shape = tuple(int(d) for d in shapes["train"])
    return DatasetSplits(
        splits, input_shape, len(label_names), (0.0, 1.0), name, task="segmentation"
    )


@register_dataset("segmentation_folder")
def build_segmentation_folder(config: ml_collections.ConfigDict) -> DatasetSplits:
    """``data.name="segmentation_folder"``: the folder layout of the module docstring.

    Fields: ``root`` (required), ``label_names`` [("background", "foreground")],
    ``channels`` [1], ``max_examples`` [0: all, per split].
    """
    root = config_optional_path(config, "root")
    if root is None:
        raise ValueError("data.root is required for data.name='segmentation_folder'")
    channels = config_int(config, "channels", 1, 1)
    if channels not in (1, 3):
        raise ValueError(f"data.channels must be 1 or 3, got {channels}")
    names = label_names_field(config, ("background", "foreground"))
    return read_segmentation_folder(
        root, names, channels=channels, max_examples=config_int(config, "max_examples", 0, 0)
    )


def synthetic_names(num_classes: int) -> tuple[str, ...]:
    """``("background", "disk", ...)``: class k > 0 is lesion shape k - 1."""
    if not 2 <= num_classes <= len(LESION_SHAPES) + 1:
        raise ValueError(f"data.num_classes must be in [2, {len(LESION_SHAPES) + 1}]")
    return ("background", *LESION_SHAPES[: num_classes - 1])


def make_pair(
    rng: np.random.Generator, size: int, num_classes: int, max_lesions: int
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image with 1 .. ``max_lesions`` lesions and its mask.

    Each lesion is a random shape among the foreground classes, of radius
    ``U(0.12, 0.22) * size``, added with contrast 0.3 to the background; the mask
    holds its class where the lesion's soft mask is ``>= 0.5`` (later lesions on top).

    Returns:
      ``(uint8 image [S, S], uint8 mask [S, S])``.
    """
    image = background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, max_lesions + 1))):
        k = int(rng.integers(1, num_classes))
        radius = rng.uniform(0.12, 0.22) * size
        reach = 1.45 * radius + 1.0
        center = tuple(rng.uniform(reach, size - reach, 2))
        soft = lesion_mask(LESION_SHAPES[k - 1], size, center, radius, rng.uniform(0, np.pi))
        image = image + _CONTRAST * soft
        mask[soft >= 0.5] = k
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8), mask


def write_synthetic_segmentation(root: str, sizes: dict[str, int], params: dict) -> None:
    """Writes the synthetic set in the folder layout to ``root`` unless it is there.

    Written into a temporary sibling and renamed (safe against concurrent writers).

    Raises:
      ValueError: ``root`` holds a set with other parameters (names ``params.json``).
    """

    def write(folder: str) -> None:
        rng = np.random.default_rng(params["seed"])
        for split in (s for s in SPLITS if s in sizes):  # a fixed order of the draws
            for sub in ("images", "masks"):
                os.makedirs(os.path.join(folder, split, sub))
            for i in range(sizes[split]):
                image, mask = make_pair(
                    rng, params["image_size"], params["num_classes"], params["max_lesions"]
                )
                Image.fromarray(image).save(os.path.join(folder, split, "images", f"{i:05d}.png"))
                Image.fromarray(mask).save(os.path.join(folder, split, "masks", f"{i:05d}.png"))

    write_once(root, params, write)


@register_dataset("synthetic_segmentation")
def build_synthetic_segmentation(config: ml_collections.ConfigDict) -> DatasetSplits:
    """Writes (once) and reads back the synthetic segmentation set.

    Fields (``data.``): ``root`` [None: ``runs/data/synthetic_segmentation/<params>``],
    ``sizes`` [train 256, val 32, test 64], ``image_size`` [32], ``num_classes`` [2:
    background + lesion; up to 5, one lesion shape per class], ``max_lesions`` [2],
    ``seed`` [0].
    """
    sizes = config.get("sizes", None) or dict(train=256, val=32, test=64)
    if isinstance(sizes, ml_collections.ConfigDict):
        sizes = sizes.to_dict()
    if "train" not in sizes or set(sizes) - set(SPLITS):
        raise ValueError(f"data.sizes must map {SPLITS} (train required) to counts, got {sizes}")
    for split, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"data.sizes.{split} must be a positive int, got {n!r}")
    size = config_int(config, "image_size", 32, 16)
    num_classes = config_int(config, "num_classes", 2, 2)
    names = synthetic_names(num_classes)
    params = dict(
        sizes={s: int(sizes[s]) for s in SPLITS if s in sizes},
        image_size=size,
        num_classes=num_classes,
        max_lesions=config_int(config, "max_lesions", 2, 1),
        seed=config_int(config, "seed", 0, 0),
        version=1,
    )
    tag = "_".join(f"{s}{n}" for s, n in params["sizes"].items())
    root = config_optional_path(config, "root") or os.path.join(
        "runs", "data", "synthetic_segmentation",
        f"{tag}_s{size}_k{num_classes}_l{params['max_lesions']}_seed{params['seed']}",
    )  # fmt: skip
    write_synthetic_segmentation(root, params["sizes"], params)
    return read_segmentation_folder(root, names, name="synthetic_segmentation")
