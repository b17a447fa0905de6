"""Two-moons synthetic data (seeded, numpy).

The two interleaving half circles of ``sklearn.datasets.make_moons`` with
Gaussian noise. ARFL (Hao et al., seed 003) trains an MLP 2-10-10-1 on two
moons for 5000 epochs; IMA (Ma et al., seed 004) uses two-moons splits of
10k/1k (or 20k/2k/2k) points. Points are 2-D vectors, not images: they carry no
``[0, 1]`` bounds.
"""

import zlib
from collections.abc import Mapping

import numpy as np
import sklearn.datasets


def make_moons(num_examples: int, noise: float, seed: int) -> dict[str, np.ndarray]:
    """Generates a shuffled two-moons sample.

    Wraps ``sklearn.datasets.make_moons(shuffle=True)`` with a
    ``numpy.random.RandomState(seed)``, so the same arguments always give the
    same arrays. Class 0 is the upper moon, class 1 the lower one; the classes
    have ``num_examples // 2`` and ``num_examples - num_examples // 2`` points.

    Args:
        num_examples: Number of points ``N`` (> 0).
        noise: Standard deviation of the Gaussian noise added to each
            coordinate (>= 0).
        seed: Non-negative integer seed.

    Returns:
        ``{"image": float32 [N, 2], "label": int32 [N]}``.

    Raises:
        ValueError: If ``num_examples <= 0``, ``noise < 0`` or ``seed < 0``.
    """
    if int(num_examples) <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    points, labels = sklearn.datasets.make_moons(
        n_samples=int(num_examples),
        shuffle=True,
        noise=float(noise),
        random_state=np.random.RandomState(int(seed)),
    )
    return {"image": points.astype(np.float32), "label": labels.astype(np.int32)}


def split_seed(seed: int, split: str) -> int:
    """Derives a per-split seed from a base seed and the split's name.

    Uses ``numpy.random.SeedSequence`` over ``(seed, crc32(split))``: stable
    across processes and python versions (unlike ``hash(str)``), and distinct
    for distinct split names.

    Args:
        seed: Non-negative base seed.
        split: Split name, e.g. ``"train"``.

    Returns:
        A seed in ``[0, 2**32)``.
    """
    entropy = [int(seed), zlib.crc32(split.encode("utf-8"))]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def moons_splits(
    sizes: Mapping[str, int], noise: float, seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """Generates independent two-moons splits.

    Each split is drawn with its own seed ``split_seed(seed, name)``, so
    changing one split's size leaves the other splits unchanged.

    Args:
        sizes: Split name -> number of points, e.g. ``{"train": 10000,
            "test": 1000}`` or ``{"train": 20000, "val": 2000, "test": 2000}``.
        noise: Gaussian noise standard deviation (>= 0).
        seed: Non-negative base seed.

    Returns:
        Split name -> ``{"image": float32 [N_split, 2], "label": int32
        [N_split]}``.
    """
    return {
        name: make_moons(int(size), noise, split_seed(seed, name)) for name, size in sizes.items()
    }
