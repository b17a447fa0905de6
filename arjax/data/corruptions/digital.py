"""Digital corruptions of MedMNIST-C (Di Salvo et al. 2024): pixelation and JPEG compression.

Definitions follow ``medmnistc/corruptions/compression.py``:

* ``pixelate`` (parameter: resize factor ``f``): PIL ``resize`` with the ``BOX`` filter to
  ``(int(W f), int(H f))`` and back to ``(W, H)``. PIL's resampling is separable: output
  pixel ``o`` of a resize from ``n`` to ``m`` pixels averages, with equal weights, the input
  pixels whose centres lie within ``max(n / m, 1) / 2`` of the output centre ``(o + 0.5)
  n / m`` (``ImagingResample``'s ``precompute_coeffs`` with the box filter), so both
  resizes are matrix products here (:func:`box_resize_matrix`), equal to PIL's to float
  rounding (the tests compare them on PIL ``"F"`` images). A side shorter than one pixel
  becomes one pixel (PIL refuses a zero size).
* ``jpeg_compression`` (parameter: quality ``q``): PIL ``save(format="JPEG", quality=q)``
  and decode, on the host (XLA has no JPEG codec). Images are rounded to 8 bits first;
  grey images (one channel) are encoded as PIL ``"L"``: MedMNIST-C encodes the RGB copy of
  a grey image, whose decoded channels equal the ``"L"`` result exactly (checked for
  qualities 7-50 with PIL 13). Three channels are encoded as ``"RGB"``; other channel
  counts one ``"L"`` plane at a time.
"""

import functools
import io

import jax.numpy as jnp
import numpy as np
from PIL import Image

from arjax import compilation
from arjax.data.corruptions.registry import register_table
from arjax.types import Array, PRNGKey

SOURCE = "MedMNIST-C (Di Salvo et al. 2024), medmnistc/corruptions/compression.py"


@functools.cache
def box_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """PIL's ``BOX`` resampling weights from ``in_size`` to ``out_size`` pixels.

    Returns:
      float64 ``[out_size, in_size]``, rows summing to 1.
    """
    scale = in_size / out_size
    support = 0.5 * max(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) * scale  # [out]
    pixels = np.arange(in_size) + 0.5  # [in]: input pixel centres
    offset = (pixels[None, :] - centres[:, None]) / max(scale, 1.0)
    weights = ((offset > -0.5) & (offset <= 0.5)).astype(np.float64)
    lo = np.maximum((centres - support + 0.5).astype(int), 0)  # PIL's xmin / xmax window
    hi = np.minimum((centres + support + 0.5).astype(int), in_size)
    index = np.arange(in_size)[None, :]
    weights *= (index >= lo[:, None]) & (index < hi[:, None])
    total = weights.sum(axis=1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


@functools.partial(compilation.jit, static_argnums=1)
def pixelate(x: Array, factor: float, key: PRNGKey | None = None) -> Array:
    """``BOX`` downscale by ``factor`` and ``BOX`` upscale back (PIL). ``[B, H, W, C]``."""
    del key
    h, w = x.shape[1:3]
    sh, sw = max(int(h * factor), 1), max(int(w * factor), 1)
    down_h = jnp.asarray(box_resize_matrix(h, sh), x.dtype)
    down_w = jnp.asarray(box_resize_matrix(w, sw), x.dtype)
    up_h = jnp.asarray(box_resize_matrix(sh, h), x.dtype)
    up_w = jnp.asarray(box_resize_matrix(sw, w), x.dtype)
    rows = up_h @ down_h  # [H, H]
    cols = up_w @ down_w  # [W, W]
    out = jnp.einsum("ij,bjkc,lk->bilc", rows, x, cols, precision="highest")
    return jnp.clip(out, 0.0, 1.0)


def _jpeg_plane(plane: np.ndarray, quality: int, mode: str) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(plane, mode=mode).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return np.asarray(Image.open(buffer))


def jpeg_compression(x: Array, quality: int, key: PRNGKey | None = None) -> np.ndarray:
    """PIL JPEG encode / decode at ``quality`` (host). ``[B, H, W, C]`` -> float32 same.

    Args:
      x: float ``[B, H, W, C]`` in ``[0, 1]``.
      quality: PIL JPEG quality (1-95).
      key: unused.

    Returns:
      numpy float32 ``[B, H, W, C]`` on the 8-bit grid ``k / 255``.
    """
    del key
    u8 = np.round(np.clip(np.asarray(x, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    out = np.empty(u8.shape, np.float32)
    for b in range(u8.shape[0]):
        if u8.shape[-1] == 3:
            out[b] = _jpeg_plane(u8[b], quality, "RGB")
        else:
            for c in range(u8.shape[-1]):
                out[b, ..., c] = _jpeg_plane(u8[b, ..., c], quality, "L")
    return out / 255.0


register_table(
    "pixelate",
    pixelate,
    {
        "chestmnist": (0.30, 0.25, 0.20, 0.15, 0.10),
        "pneumoniamnist": (0.8, 0.7, 0.6, 0.5, 0.40),
        "organamnist": (0.7, 0.6, 0.5, 0.40, 0.35),
        "breastmnist": (0.30, 0.25, 0.20, 0.15, 0.10),
        "octmnist": (0.30, 0.25, 0.20, 0.15, 0.10),
    },
    random=False,
    source=SOURCE,
)
register_table(
    "jpeg_compression",
    jpeg_compression,
    {
        "chestmnist": (50, 30, 15, 10, 7),
        "pneumoniamnist": (50, 30, 15, 10, 7),
        "organamnist": (50, 30, 15, 10, 7),
        "breastmnist": (50, 30, 15, 10, 7),
        "octmnist": (30, 15, 10, 7, 5),
    },
    random=False,
    source=SOURCE,
)
