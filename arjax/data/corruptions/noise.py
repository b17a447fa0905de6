"""Noise corruptions of MedMNIST-C (Di Salvo et al. 2024): Gaussian, speckle, impulse, shot.

Definitions follow ``medmnistc/corruptions/noise.py`` (after ImageNet-C, Hendrycks &
Dietterich 2019), on images in ``[0, 1]``, clipped back to ``[0, 1]``:

* ``gaussian_noise``: ``x + N(0, c^2)``;
* ``speckle_noise``: ``x + x * N(0, c^2)`` (multiplicative);
* ``impulse_noise``: salt and pepper, scikit-image's ``random_noise(mode="s&p",
  amount=c)``: each value is replaced with probability ``c``, by 1 (salt) or 0 (pepper)
  with equal odds;
* ``shot_noise``: ``Poisson(x * c) / c`` (photon counting with ``c`` photons at full
  intensity; smaller ``c`` is noisier).

Differences from the reference, all below one grey level: MedMNIST-C works on the
8-bit RGB copy of a grey image and truncates the result to ``uint8``; arjax keeps float
values, and draws one value per array element, so a one-channel grey image gets grey
noise where MedMNIST-C's RGB copy gets independent noise per colour channel. The draws
for one key are shared by the severities (the normal / uniform draws are scaled or
thresholded by the severity's parameter), so for a fixed key severity s+1 perturbs at
least as much as s, pixel by pixel (shot noise draws a new Poisson sample per rate).
"""

import jax
import jax.numpy as jnp

from arjax import compilation
from arjax.data.corruptions.registry import register_table
from arjax.types import Array, PRNGKey

SOURCE = "MedMNIST-C (Di Salvo et al. 2024), medmnistc/corruptions/noise.py"


@compilation.jit
def gaussian_noise(x: Array, c: float, key: PRNGKey) -> Array:
    """``clip(x + c * z)``, ``z ~ N(0, 1)`` per element: ``[B, H, W, C]`` -> same."""
    return jnp.clip(x + c * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)


@compilation.jit
def speckle_noise(x: Array, c: float, key: PRNGKey) -> Array:
    """``clip(x + x * c * z)``, ``z ~ N(0, 1)`` per element: ``[B, H, W, C]`` -> same."""
    return jnp.clip(x + x * c * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)


@compilation.jit
def impulse_noise(x: Array, amount: float, key: PRNGKey) -> Array:
    """Salt and pepper: a fraction ``amount`` of the values set to 1 or 0 (half each).

    scikit-image ``random_noise(mode="s&p", amount, salt_vs_pepper=0.5)``: an element is
    flipped when a uniform draw is below ``amount``; a second draw picks salt or pepper.

    Args:
      x: float ``[B, H, W, C]`` in ``[0, 1]``.
      amount: probability of replacing a value.
      key: PRNG key.

    Returns:
      ``[B, H, W, C]``.
    """
    k_flip, k_salt = jax.random.split(key)
    flipped = jax.random.uniform(k_flip, x.shape) < amount
    salt = jax.random.uniform(k_salt, x.shape) < 0.5
    return jnp.where(flipped, salt.astype(x.dtype), x)


@compilation.jit
def shot_noise(x: Array, photons: float, key: PRNGKey) -> Array:
    """``clip(Poisson(x * photons) / photons)`` per element: ``[B, H, W, C]`` -> same."""
    counts = jax.random.poisson(key, x * photons, x.shape)
    return jnp.clip(counts.astype(x.dtype) / photons, 0.0, 1.0)


# CORRUPTIONS_DS of medmnistc/corruptions/registry.py, the grey-scale sets that have them.
register_table(
    "gaussian_noise",
    gaussian_noise,
    {
        "chestmnist": (0.04, 0.08, 0.12, 0.18, 0.26),
        "pneumoniamnist": (0.04, 0.05, 0.06, 0.07, 0.08),
        "organamnist": (0.04, 0.08, 0.12, 0.16, 0.20),
    },
    random=True,
    source=SOURCE,
)
register_table(
    "speckle_noise",
    speckle_noise,
    {
        "chestmnist": (0.05, 0.15, 0.2, 0.35, 0.45),
        "pneumoniamnist": (0.05, 0.07, 0.10, 0.15, 0.20),
        "organamnist": (0.05, 0.10, 0.20, 0.30, 0.40),
        "breastmnist": (0.10, 0.15, 0.20, 0.25, 0.30),
        "octmnist": (0.15, 0.30, 0.40, 0.50, 0.60),
    },
    random=True,
    source=SOURCE,
)
register_table(
    "impulse_noise",
    impulse_noise,
    {
        "chestmnist": (0.01, 0.03, 0.06, 0.09, 0.17),
        "pneumoniamnist": (0.005, 0.01, 0.013, 0.017, 0.02),
        "organamnist": (0.01, 0.02, 0.03, 0.05, 0.08),
    },
    random=True,
    source=SOURCE,
)
register_table(
    "shot_noise",
    shot_noise,
    {
        "chestmnist": (60, 25, 18, 10, 5),
        "pneumoniamnist": (300, 200, 150, 100, 80),
        "organamnist": (200, 100, 50, 25, 15),
    },
    random=True,
    source=SOURCE,
)
