"""Built-in class-conditional images for smoke runs that need no downloaded data.

Each class has a fixed smooth template (a sum of a few random low-frequency
cosines, seeded); an example is its class template plus Gaussian pixel noise,
clipped to [0, 1]. The task is learnable by a small CNN in a few steps, so the
image configs' ``smoke`` variants exercise the whole pipeline (CNN, attacks,
BPGD, margins, report) on a machine without Fashion-MNIST or SVHN.
"""

import ml_collections
import numpy as np

from arjax.data.registry import DatasetSplits, register_dataset


def class_templates(num_classes: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Smooth per-class patterns in [0.2, 0.8], float32 ``[K, H, W, C]``."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = np.zeros((num_classes, h, w, c), np.float32)
    for k in range(num_classes):
        for ch in range(c):
            pattern = np.zeros((h, w))
            for _ in range(3):
                fy, fx = rng.uniform(0.5, 3.0, 2)
                phase = rng.uniform(0, 2 * np.pi)
                pattern += np.cos(2 * np.pi * (fy * yy + fx * xx) + phase)
            out[k, :, :, ch] = 0.5 + 0.1 * pattern
    return np.clip(out, 0.2, 0.8)


def make_split(
    templates: np.ndarray, num_examples: int, noise: float, seed: int
) -> dict[str, np.ndarray]:
    """``num_examples`` balanced examples: template of the label + N(0, noise) pixels."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_examples) % len(templates)).astype(np.int32)
    images = templates[labels] + rng.normal(0, noise, (num_examples, *templates.shape[1:]))
    return {"image": np.clip(images, 0.0, 1.0).astype(np.float32), "label": labels}


@register_dataset("synthetic_images")
def build_synthetic_images(config: ml_collections.ConfigDict) -> DatasetSplits:
    """Builds ``data.name="synthetic_images"``.

    Fields: ``sizes`` (split -> count), ``image_shape`` (H, W, C),
    ``num_classes``, ``noise`` (pixel std), ``seed``.
    """
    shape = tuple(int(d) for d in config.get("image_shape", (28, 28, 1)))
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"data.image_shape must be (H, W, C) positive ints, got {shape}")
    num_classes = int(config.get("num_classes", 10))
    if num_classes < 2:
        raise ValueError(f"data.num_classes must be >= 2, got {num_classes}")
    sizes = dict(config.sizes)
    if "train" not in sizes:
        raise ValueError(f"data.sizes.train is required; got splits {sorted(sizes)}")
    for split, n in sizes.items():
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"data.sizes.{split} must be a positive int, got {n!r}")
    seed = int(config.get("seed", 0))
    templates = class_templates(num_classes, shape, seed)
    noise = float(config.get("noise", 0.1))
    splits = {
        split: make_split(templates, n, noise, seed + 1 + i)
        for i, (split, n) in enumerate(sorted(sizes.items()))
    }
    return DatasetSplits(
        splits=splits,
        input_shape=shape,
        num_classes=num_classes,
        bounds=(0.0, 1.0),
        name="synthetic_images",
    )
