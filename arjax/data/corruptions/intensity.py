"""Intensity corruptions: brightness, contrast, gamma (MedMNIST-C) and an MRI bias field.

MedMNIST-C (Di Salvo et al. 2024, ``medmnistc/corruptions/enhance.py``) applies PIL's
``ImageEnhance`` and torchvision's ``adjust_gamma`` to 8-bit images; arjax computes the
same maps on float images in ``[0, 1]`` (no rounding to 8 bits):

* ``brightness_up`` / ``brightness_down``: ``ImageEnhance.Brightness(f)`` blends with a
  black image, ``clip(f * x)``;
* ``contrast_up`` / ``contrast_down``: ``ImageEnhance.Contrast(f)`` blends with a constant
  image at the mean grey level ``m`` (the mean of the luminance ``0.299 R + 0.587 G +
  0.114 B``, rounded to a whole 8-bit level as PIL does), ``clip(m + f (x - m))``;
* ``gamma_corr_up`` / ``gamma_corr_down``: ``adjust_gamma(g, gain=1)``, ``x ** g`` (``g >
  1`` darkens the mid-tones, ``g < 1`` brightens them).

``bias_field`` is **not** in MedMNIST-C: it is the smooth multiplicative intensity
inhomogeneity of MR images, as TorchIO's ``RandomBiasField`` (Pérez-García et al. 2021)
models it after Van Leemput et al. (1999) and Sudre et al. (2017): ``x * exp(sum_{i + j
<= 3} c_ij u^i v^j)`` with ``u, v`` the pixel-centre coordinates scaled to ``(-1, 1)``
and ``c_ij ~ U(-s, s)``, clipped to ``[0, 1]`` (TorchIO does not clip). TorchIO's
default ``s = 0.5`` is severity 5; severities 1-4 are arjax's choice, ``s = 0.1 ... 0.4``.
For one key the draws ``U(-1, 1)`` are shared by the severities and scaled by ``s``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from arjax import compilation
from arjax.data.corruptions.registry import ANY_PRESET, register_table
from arjax.types import Array, PRNGKey

SOURCE = "MedMNIST-C (Di Salvo et al. 2024), medmnistc/corruptions/enhance.py"
BIAS_SOURCE = "TorchIO RandomBiasField (order 3), after Van Leemput et al. 1999"
BIAS_ORDER = 3
# ITU-R 601-2 luma, PIL's ``convert("L")``.
LUMA = (0.299, 0.587, 0.114)


@compilation.jit
def brightness(x: Array, factor: float, key: PRNGKey | None = None) -> Array:
    """``clip(factor * x)``: PIL ``ImageEnhance.Brightness``. ``[B, H, W, C]`` -> same."""
    del key
    return jnp.clip(x * factor, 0.0, 1.0)


def luminance(x: Array) -> Array:
    """Grey level ``[B, H, W]``: the channel of a grey image, ITU-R 601 luma of RGB.

    Other channel counts use the channel mean.
    """
    if x.shape[-1] == 3:
        return jnp.tensordot(x, jnp.asarray(LUMA, x.dtype), axes=1)
    return x.mean(axis=-1)


@compilation.jit
def contrast(x: Array, factor: float, key: PRNGKey | None = None) -> Array:
    """``clip(m + factor (x - m))``, ``m`` the image's mean grey level (PIL ``Contrast``).

    Args:
      x: float ``[B, H, W, C]`` in ``[0, 1]``.
      factor: contrast factor (1 is the identity, 0 a flat grey image).
      key: unused.

    Returns:
      ``[B, H, W, C]``.
    """
    del key
    mean = luminance(x).mean(axis=(1, 2))
    mean = jnp.floor(mean * 255.0 + 0.5) / 255.0  # PIL: int(mean + 0.5) on the 8-bit image
    mean = mean[:, None, None, None]
    return jnp.clip(mean + factor * (x - mean), 0.0, 1.0)


@compilation.jit
def gamma(x: Array, g: float, key: PRNGKey | None = None) -> Array:
    """``x ** g`` (torchvision ``adjust_gamma`` with gain 1). ``[B, H, W, C]`` -> same."""
    del key
    return jnp.power(jnp.clip(x, 0.0, 1.0), g)


def bias_coordinates(size: int) -> np.ndarray:
    """TorchIO's bias-field coordinates along one axis: pixel centres scaled to ``(-1, 1)``."""
    half = size / 2
    r = np.arange(-half, half) + 0.5
    return r / r.max() if r.max() > 0 else r


@compilation.jit
def bias_field(x: Array, scale: float, key: PRNGKey) -> Array:
    """Multiplicative polynomial bias field of order 3 (TorchIO ``RandomBiasField``).

    Args:
      x: float ``[B, H, W, C]`` in ``[0, 1]``.
      scale: the coefficients' range ``s``: ``c_ij ~ U(-s, s)``, one set per image.
      key: PRNG key.

    Returns:
      ``clip(x * exp(sum_{i + j <= 3} c_ij u^i v^j))``, ``[B, H, W, C]``.
    """
    u = jnp.asarray(bias_coordinates(x.shape[1]), x.dtype)[:, None]  # rows
    v = jnp.asarray(bias_coordinates(x.shape[2]), x.dtype)[None, :]  # columns
    powers = [(i, j) for i in range(BIAS_ORDER + 1) for j in range(BIAS_ORDER + 1 - i)]
    basis = jnp.stack([u**i * v**j for i, j in powers])  # [T, H, W]
    coeffs = scale * jax.random.uniform(key, (x.shape[0], len(powers)), x.dtype, -1.0, 1.0)
    field = jnp.exp(jnp.einsum("bt,thw->bhw", coeffs, basis))
    return jnp.clip(x * field[..., None], 0.0, 1.0)


def _register(name, fn, severities, *, random=False, source=SOURCE):
    register_table(name, fn, severities, random=random, source=source)


_register(
    "brightness_up",
    brightness,
    {
        "chestmnist": (1.1, 1.2, 1.3, 1.4, 1.5),
        "pneumoniamnist": (1.1, 1.2, 1.3, 1.4, 1.5),
        "organamnist": (1.2, 1.3, 1.4, 1.5, 1.6),
        "breastmnist": (1.4, 1.5, 1.6, 1.8, 2.0),
    },
)
_register(
    "brightness_down",
    brightness,
    {
        "chestmnist": (0.9, 0.8, 0.7, 0.6, 0.5),
        "pneumoniamnist": (0.9, 0.8, 0.7, 0.6, 0.5),
        "organamnist": (0.8, 0.75, 0.7, 0.65, 0.60),
        "breastmnist": (0.55, 0.5, 0.45, 0.4, 0.3),
    },
)
_register(
    "contrast_up",
    contrast,
    {
        "chestmnist": (1.1, 1.2, 1.3, 1.4, 1.6),
        "pneumoniamnist": (1.1, 1.2, 1.3, 1.4, 1.6),
        "organamnist": (1.3, 1.4, 1.6, 1.7, 1.8),
    },
)
_register(
    "contrast_down",
    contrast,
    {
        "chestmnist": (0.9, 0.8, 0.7, 0.6, 0.4),
        "pneumoniamnist": (0.9, 0.8, 0.7, 0.6, 0.4),
        "organamnist": (0.8, 0.7, 0.6, 0.55, 0.5),
        "breastmnist": (0.9, 0.8, 0.7, 0.6, 0.4),
        "octmnist": (0.6, 0.4, 0.3, 0.2, 0.15),
    },
)
_register(
    "gamma_corr_up",
    gamma,
    {
        "chestmnist": (1.1, 1.2, 1.3, 1.4, 1.6),
        "pneumoniamnist": (1.1, 1.2, 1.3, 1.4, 1.6),
        "organamnist": (1.3, 1.4, 1.6, 1.8, 2.0),
    },
)
_register(
    "gamma_corr_down",
    gamma,
    {
        "chestmnist": (0.9, 0.8, 0.7, 0.6, 0.4),
        "pneumoniamnist": (0.9, 0.8, 0.7, 0.6, 0.4),
        "organamnist": (0.9, 0.8, 0.7, 0.6, 0.4),
    },
)
_register(
    "bias_field",
    bias_field,
    {ANY_PRESET: (0.1, 0.2, 0.3, 0.4, 0.5)},
    random=True,
    source=BIAS_SOURCE,
)
