"""Blur corruptions of MedMNIST-C (Di Salvo et al. 2024): Gaussian, defocus and motion blur.

Definitions follow ``medmnistc/corruptions/filter.py`` and the libraries it calls; each
output is clipped to ``[0, 1]`` and kept in float (MedMNIST-C rounds to 8 bits):

* ``gaussian_blur`` (parameter: kernel size ``k``): torchvision's ``gaussian_blur(img,
  kernel_size=k)`` with its default ``sigma = 0.3 ((k - 1) / 2 - 1) + 0.8`` (OpenCV's
  rule), the separable kernel ``exp(-t^2 / (2 sigma^2))`` at ``t = -(k-1)/2 ... (k-1)/2``
  normalised to sum 1, reflect padding (the edge pixel is not repeated).
* ``defocus_blur`` (parameter: ``(radius, alias_blur)``): ImageNet-C's disk kernel, the
  indicator of ``X^2 + Y^2 <= radius^2`` on the grid ``-8..8`` (``-radius..radius`` for
  ``radius > 8``) normalised to sum 1 and smoothed by OpenCV's ``GaussianBlur`` with a
  ``3 x 3`` kernel (``5 x 5`` for ``radius > 8``) of ``sigma = alias_blur``, then
  ``cv2.filter2D`` (correlation, ``BORDER_REFLECT_101`` = reflect padding).
* ``motion_blur`` (parameter: ``(radius, sigma)``): ImageMagick's ``MotionBlurImage``
  (MagickCore ``effect.c``), called by MedMNIST-C through Wand with an angle drawn
  uniformly in ``[-45, 45]`` degrees per image: a one-sided Gaussian kernel ``k_i =
  exp(-i^2 / (2 sigma^2))``, ``i = 0 .. 2 ceil(radius)`` (``GetOptimalKernelWidth1D``),
  normalised to sum 1; tap ``i`` reads the pixel at column ``x + ceil(i cos(a) - 0.5)``
  and row ``y + ceil(i sin(a) - 0.5)``, outside pixels taking the nearest edge value
  (ImageMagick's default virtual-pixel method).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from arjax import compilation
from arjax.data.corruptions.registry import register_table
from arjax.types import Array, PRNGKey

SOURCE = "MedMNIST-C (Di Salvo et al. 2024), medmnistc/corruptions/filter.py"
MOTION_ANGLE = 45.0  # degrees: MedMNIST-C draws the angle in [-45, 45]


def gaussian_kernel_1d(size: int, sigma: float, *, center: float | None = None) -> np.ndarray:
    """``exp(-t^2 / (2 sigma^2))`` at ``t = i - center`` (default the middle), sum 1."""
    t = np.arange(size, dtype=np.float64) - ((size - 1) / 2 if center is None else center)
    k = np.exp(-(t**2) / (2.0 * sigma**2))
    return k / k.sum()


def torchvision_sigma(kernel_size: int) -> float:
    """Torchvision's default ``sigma`` of ``gaussian_blur`` for a kernel size."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """ImageNet-C / MedMNIST-C ``disk``: a normalised aliased disk, Gaussian-smoothed.

    Args:
      radius: disk radius in pixels.
      alias_blur: ``sigma`` of the ``3 x 3`` (``5 x 5`` beyond radius 8) smoothing.

    Returns:
      float64 ``[n, n]`` kernel (``n = 17`` up to radius 8).
    """
    if radius <= 8:
        grid, smooth = np.arange(-8, 8 + 1), 3
    else:
        grid, smooth = np.arange(-radius, radius + 1), 5
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = gaussian_kernel_1d(smooth, alias_blur)  # cv2.getGaussianKernel for sigma > 0
    pad = smooth // 2
    padded = np.pad(disk, pad, mode="reflect")  # cv2 BORDER_REFLECT_101
    rows = sum(g[i] * padded[i : i + disk.shape[0]] for i in range(smooth))
    return sum(g[j] * rows[:, j : j + disk.shape[1]] for j in range(smooth))


def correlate(x: Array, kernel: np.ndarray) -> Array:
    """Per-channel 2-D correlation with reflect padding (``cv2.filter2D`` / torch conv).

    Args:
      x: float ``[B, H, W, C]``.
      kernel: ``[kh, kw]`` with odd sides.

    Returns:
      ``[B, H, W, C]``.
    """
    kh, kw = kernel.shape
    b, h, w, c = x.shape
    planes = jnp.transpose(x, (0, 3, 1, 2)).reshape(b * c, h, w, 1)
    planes = jnp.pad(planes, ((0, 0), (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)), mode="reflect")
    out = jax.lax.conv_general_dilated(
        planes,
        jnp.asarray(kernel, x.dtype)[:, :, None, None],
        window_strides=(1, 1),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )
    return jnp.transpose(out.reshape(b, c, h, w), (0, 2, 3, 1))


@functools.partial(compilation.jit, static_argnums=1)
def gaussian_blur(x: Array, kernel_size: int, key: PRNGKey | None = None) -> Array:
    """Torchvision ``gaussian_blur(kernel_size)`` with its default sigma. ``[B, H, W, C]``."""
    del key
    g = gaussian_kernel_1d(kernel_size, torchvision_sigma(kernel_size))
    return jnp.clip(correlate(x, np.outer(g, g)), 0.0, 1.0)


@functools.partial(compilation.jit, static_argnums=1)
def defocus_blur(x: Array, param: tuple[float, float], key: PRNGKey | None = None) -> Array:
    """Correlation with ``disk_kernel(radius, alias_blur)``. ``[B, H, W, C]`` -> same."""
    del key
    return jnp.clip(correlate(x, disk_kernel(*param)), 0.0, 1.0)


def motion_kernel(radius: float, sigma: float) -> np.ndarray:
    """ImageMagick's one-sided motion-blur kernel ``[2 ceil(radius) + 1]`` (sum 1)."""
    width = int(2 * math.ceil(radius) + 1)
    return gaussian_kernel_1d(width, max(abs(sigma), 1e-12), center=0.0)


def motion_offsets(angle: Array, width: int) -> tuple[Array, Array]:
    """ImageMagick's integer tap offsets ``(rows [..., width], columns [..., width])``.

    Args:
      angle: degrees, any shape.
      width: number of taps.
    """
    a = jnp.deg2rad(angle)[..., None]
    i = jnp.arange(width, dtype=jnp.float32)
    dx = jnp.ceil(i * jnp.cos(a) - 0.5).astype(jnp.int32)
    dy = jnp.ceil(i * jnp.sin(a) - 0.5).astype(jnp.int32)
    return dy, dx


def shift_blur(x: Array, kernel: Array, dy: Array, dx: Array) -> Array:
    """``sum_i kernel[i] x[b, r + dy[b, i], c + dx[b, i]]`` with edge clamping.

    Args:
      x: float ``[B, H, W, C]``.
      kernel: ``[T]`` tap weights.
      dy: int ``[B, T]`` row offsets.
      dx: int ``[B, T]`` column offsets.

    Returns:
      ``[B, H, W, C]``.
    """
    h, w = x.shape[1:3]
    rows, cols = jnp.arange(h), jnp.arange(w)

    def one(image, oy, ox):
        def tap(i, acc):
            shifted = image[jnp.clip(rows + oy[i], 0, h - 1)][:, jnp.clip(cols + ox[i], 0, w - 1)]
            return acc + kernel[i] * shifted

        return jax.lax.fori_loop(0, kernel.shape[0], tap, jnp.zeros_like(image))

    return jax.vmap(one)(x, dy, dx)


@functools.partial(compilation.jit, static_argnums=1)
def motion_blur(x: Array, param: tuple[float, float], key: PRNGKey) -> Array:
    """ImageMagick ``MotionBlurImage(radius, sigma, angle)``, angle ~ U(-45, 45) per image.

    Args:
      x: float ``[B, H, W, C]`` in ``[0, 1]``.
      param: ``(radius, sigma)``.
      key: PRNG key of the angles.

    Returns:
      ``[B, H, W, C]``.
    """
    kernel = motion_kernel(*param)
    angle = jax.random.uniform(key, (x.shape[0],), minval=-MOTION_ANGLE, maxval=MOTION_ANGLE)
    dy, dx = motion_offsets(angle, kernel.shape[0])
    return jnp.clip(shift_blur(x, jnp.asarray(kernel, x.dtype), dy, dx), 0.0, 1.0)


register_table(
    "gaussian_blur",
    gaussian_blur,
    {
        # chest and pneumonia list a sixth size (13) that the five severities never use
        "chestmnist": (3, 5, 7, 9, 11),
        "pneumoniamnist": (3, 5, 7, 9, 11),
        "organamnist": (11, 13, 15, 17, 21),
    },
    random=False,
    source=SOURCE,
)
register_table(
    "defocus_blur",
    defocus_blur,
    {"octmnist": ((0.5, 0.6), (1.0, 0.5), (1.5, 0.1), (2.0, 0.5), (2.5, 0.1))},
    random=False,
    source=SOURCE,
)
register_table(
    "motion_blur",
    motion_blur,
    {
        "breastmnist": ((5, 5), (9, 7), (9, 10), (13, 10), (17, 12)),
        "octmnist": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    },
    random=True,
    source=SOURCE + " (Wand / ImageMagick MotionBlurImage)",
)
