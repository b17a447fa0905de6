"""The one 2-D convolution of arjax's models, and its CPU-friendly gradient.

``conv2d`` has PyTorch's stride/padding semantics on NHWC inputs and HWIO kernels, with
interchangeable implementations (``CONV_IMPLS``): XLA's convolution and its autodiff
(``"xla"``), and a custom VJP (``"patches"``) whose input gradient avoids XLA:CPU's slow
paths: for a strided convolution, one matrix product ``g @ K^T`` into the im2col layout
folded back by :func:`fold_patches` (XLA:CPU runs the lhs-dilated convolution of its own
gradient at up to ~40x the forward pass); for stride 1, a convolution with the flipped
kernel materialised in HWIO order (inside loop bodies XLA otherwise picks a slow generic
path, jax-ml/jax#12868). ``"auto"`` (the default) is ``"patches"`` on the CPU backend and
``"xla"`` elsewhere. ``conv_impl_scope`` sets the implementation of the ``Conv`` layers
(``arjax.models.layers``) built inside it; ``build_model`` applies ``model.conv_impl``.
"""

import contextlib
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp

from arjax.types import Array

CONV_IMPLS = ("auto", "xla", "patches")
_default_conv_impl = "auto"


def check_conv_impl(impl: str) -> str:
    """Returns ``impl`` if it names a convolution implementation, else raises.

    Raises:
      ValueError: listing ``CONV_IMPLS``.
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown model.conv_impl {impl!r}; valid: {', '.join(CONV_IMPLS)}")
    return impl


def default_conv_impl() -> str:
    """The implementation a ``Conv`` built now uses when given none (initially ``"auto"``)."""
    return _default_conv_impl


@contextlib.contextmanager
def conv_impl_scope(impl: str) -> Iterator[None]:
    """Sets the implementation of the ``Conv`` layers *built* inside the block.

    The choice is stored on each layer when it is constructed (a static attribute, part of
    the graph definition), so compiled functions never see a stale global and a model built
    under ``conv_impl_scope("xla")`` keeps XLA's convolution wherever it is called.
    ``arjax.models.build_model`` wraps construction in ``conv_impl_scope(model.conv_impl)``.

    Args:
      impl: ``"auto"``, ``"xla"`` or ``"patches"`` (see :func:`conv2d`).

    Raises:
      ValueError: for an unknown name (the message lists the valid ones).
    """
    global _default_conv_impl
    previous, _default_conv_impl = _default_conv_impl, check_conv_impl(impl)
    try:
        yield
    finally:
        _default_conv_impl = previous


def _xla_conv(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def extract_patches(x: Array, kernel_size: int, stride: int, padding: int) -> Array:
    """The im2col matrix of ``conv2d``: every ``k x k x C`` input window, flattened.

    ``patches[b, i, j, (di*k + dj)*C + c] = xpad[b, i*s + di, j*s + dj, c]``: the layout of
    an HWIO kernel reshaped to ``[k*k*C, C_out]``, so ``conv2d(x, K) == patches @ K``.
    Built from ``k*k`` strided slices (no gather), or one reshape when the output is a
    single pixel. :func:`fold_patches` is its adjoint.

    Args:
      x: float ``[B, H, W, C]``.
      kernel_size: k.
      stride: s.
      padding: p.

    Returns:
      float ``[B, H', W', k*k*C]``.
    """
    batch, height, width, channels = x.shape
    k = kernel_size
    out_h = conv_output_size(height, k, stride, padding)
    out_w = conv_output_size(width, k, stride, padding)
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    if out_h == out_w == 1:
        return xp[:, :k, :k, :].reshape(batch, 1, 1, k * k * channels)
    windows = [
        jax.lax.slice(
            xp,
            (0, di, dj, 0),
            (batch, di + stride * (out_h - 1) + 1, dj + stride * (out_w - 1) + 1, channels),
            (1, stride, stride, 1),
        )
        for di in range(k)
        for dj in range(k)
    ]
    return jnp.concatenate(windows, axis=-1)


def fold_patches(
    patches: Array, x_shape: tuple[int, ...], kernel_size: int, stride: int, padding: int
) -> Array:
    """The adjoint of :func:`extract_patches` (col2im): adds every window back in place.

    ``out[b, h, w, c] = sum over (i, j, di, dj) with i*s + di = h + p, j*s + dj = w + p of
    patches[b, i, j, (di*k + dj)*C + c]``. Computed per stride phase: padded row
    ``s*u + r`` receives the taps ``di = s*q + r`` from output row ``u - q``, so each of
    the ``s*s`` phases is a sum of ``ceil(k/s)**2`` plain shifts (pads without holes), and
    the phases interleave by one reshape. XLA fuses this into few loops; the autodiff
    adjoint (a sum of ``k*k`` interior-padded buffers) is 1.3-1.5x slower on CPU.

    Args:
      patches: float ``[B, H', W', k*k*C]``.
      x_shape: ``(B, H, W, C)`` of the convolution's input.
      kernel_size: k.
      stride: s.
      padding: p.

    Returns:
      float ``[B, H, W, C]``.
    """
    batch, height, width, channels = x_shape
    k, s = kernel_size, stride
    _, out_h, out_w, _ = patches.shape
    taps = patches.reshape(batch, out_h, out_w, k, k, channels)
    if out_h == out_w == 1:
        full = taps.reshape(batch, k, k, channels)
    else:
        kq = -(-k // s)  # taps per phase and axis
        rows_q, cols_q = out_h - 1 + kq, out_w - 1 + kq
        phases = []
        for ri in range(s):
            row = []
            for rj in range(s):
                acc = jnp.zeros((batch, rows_q, cols_q, channels), patches.dtype)
                for qi in range((k - ri + s - 1) // s):
                    for qj in range((k - rj + s - 1) // s):
                        shift = ((0, 0), (qi, kq - 1 - qi), (qj, kq - 1 - qj), (0, 0))
                        acc = acc + jnp.pad(taps[:, :, :, s * qi + ri, s * qj + rj], shift)
                row.append(acc)
            phases.append(jnp.stack(row, axis=3))
        full = jnp.stack(phases, axis=2).reshape(batch, rows_q * s, cols_q * s, channels)
    # ``full`` covers padded rows/columns from 0; crop or extend to the padded input, unpad.
    hp, wp = height + 2 * padding, width + 2 * padding
    full = full[:, :hp, :wp]
    full = jnp.pad(full, ((0, 0), (0, hp - full.shape[1]), (0, wp - full.shape[2]), (0, 0)))
    return full[:, padding : padding + height, padding : padding + width]


def _one_pixel(x: Array, kernel: Array, stride: int, padding: int) -> bool:
    """The output is ``1 x 1``: the convolution is a matrix product of the flat window."""
    k = kernel.shape[0]
    out_h = conv_output_size(x.shape[1], k, stride, padding)
    return out_h == 1 and conv_output_size(x.shape[2], k, stride, padding) == 1


def _flat_kernel(kernel: Array) -> Array:
    k, _, c_in, c_out = kernel.shape
    return kernel.reshape(k * k * c_in, c_out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _patches_conv(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    if _one_pixel(x, kernel, stride, padding):
        k = kernel.shape[0]
        return jnp.matmul(extract_patches(x, k, stride, padding), _flat_kernel(kernel))
    return _xla_conv(x, kernel, stride, padding)


def _patches_conv_fwd(x, kernel, stride, padding):
    return _patches_conv(x, kernel, stride, padding), (x, kernel)


def _stride1_input_grad(g: Array, kernel: Array, padding: int) -> Array:
    """Input gradient of a stride-1 ``conv2d``: ``g`` convolved with the flipped kernel.

    ``dx = conv2d(g, flip(K)^T, 1, k - 1 - p)`` with ``flip(K)^T[a, b, o, c] =
    K[k-1-a, k-1-b, c, o]``. The flipped kernel passes an optimization barrier so that XLA
    materialises it in HWIO order: left as a transpose, XLA folds it into the
    convolution's dimension numbers (``01oi``), which XLA:CPU runs on a slow generic path
    inside loop bodies (jax-ml/jax#12868; 2.6x the whole pass for ResNet-18 in PGD).

    Args:
      g: float ``[B, H', W', C_out]`` output cotangent.
      kernel: float ``[k, k, C_in, C_out]``.
      padding: the forward padding p.

    Returns:
      float ``[B, H, W, C_in]``.
    """
    k = kernel.shape[0]
    flipped = jax.lax.optimization_barrier(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    return _xla_conv(g, flipped, 1, k - 1 - padding)


# Largest im2col cotangent (bytes) the strided input gradient materialises at once; a
# bigger batch is cut into tiles of whole examples (see ``strided_input_grad``).
INPUT_GRAD_TILE_BYTES = 8 << 20


def batch_tile(batch: int, bytes_per_example: int, budget: int) -> int:
    """The largest divisor of ``batch`` whose tile of examples fits in ``budget`` bytes (>= 1)."""
    fits = max(1, budget // max(1, bytes_per_example))
    return max(t for t in range(1, min(batch, fits) + 1) if batch % t == 0)


def strided_input_grad(
    g: Array, kernel: Array, x_shape: tuple[int, ...], stride: int, padding: int
) -> Array:
    """Input gradient of a strided ``conv2d``: ``fold_patches(g @ K^T)``, tiled over the batch.

    ``g @ K^T`` is the cotangent of the im2col matrix, ``k*k*C_in / C_out`` times the size
    of ``g`` (e.g. 40 MB for the IMA Fashion-MNIST CNN's second layer at batch 128): far
    beyond the caches, so the matrix product writes it to memory and the fold reads it
    back. Cut into tiles of whole examples of at most ``INPUT_GRAD_TILE_BYTES``
    (``lax.map``, one tile after another), the product and its fold stay in cache.
    Examples are independent, so the result is the same.

    Args:
      g: float ``[B, H', W', C_out]`` output cotangent.
      kernel: float ``[k, k, C_in, C_out]``.
      x_shape: ``(B, H, W, C_in)`` of the convolution's input.
      stride: s > 1.
      padding: p.

    Returns:
      float ``[B, H, W, C_in]``.
    """
    batch, out_h, out_w, _ = g.shape
    k, _, c_in, _ = kernel.shape
    flat = _flat_kernel(kernel).T

    def one_tile(g_tile):
        shape = (g_tile.shape[0], *x_shape[1:])
        return fold_patches(jnp.matmul(g_tile, flat), shape, k, stride, padding)

    per_example = out_h * out_w * k * k * c_in * g.dtype.itemsize
    tile = batch_tile(batch, per_example, INPUT_GRAD_TILE_BYTES)
    if tile == batch:
        return one_tile(g)
    tiles = jax.lax.map(one_tile, g.reshape(batch // tile, tile, *g.shape[1:]))
    return tiles.reshape(x_shape)


def _patches_conv_bwd(stride, padding, residuals, g):
    # Input gradient: a stride-1 convolution with a materialised flipped kernel for stride
    # 1; for strided convolutions the patches-cotangent g @ K^T (one matrix product) folded
    # back, instead of XLA:CPU's slow lhs-dilated convolution. Kernel gradient: XLA's
    # (fast), or patches^T @ g for a 1-pixel output. jit drops whichever of the two the
    # caller does not use.
    x, kernel = residuals
    k = kernel.shape[0]
    if _one_pixel(x, kernel, stride, padding):
        patches = extract_patches(x, k, stride, padding)
        dkernel = jnp.einsum("bhwp,bhwo->po", patches, g).reshape(kernel.shape)
        dx = fold_patches(jnp.matmul(g, _flat_kernel(kernel).T), x.shape, k, stride, padding)
        return dx, dkernel
    _, vjp = jax.vjp(lambda kernel: _xla_conv(x, kernel, stride, padding), kernel)
    (dkernel,) = vjp(g)
    if stride > 1:
        dx = strided_input_grad(g, kernel, x.shape, stride, padding)
    else:
        dx = _stride1_input_grad(g, kernel, padding)
    return dx, dkernel


_patches_conv.defvjp(_patches_conv_fwd, _patches_conv_bwd)


def conv2d(x: Array, kernel: Array, stride: int, padding: int, impl: str = "auto") -> Array:
    """2-D cross-correlation with PyTorch's stride/padding semantics (no bias).

    ``out[b, i, j, o] = sum_{di, dj, c} xpad[b, i*s + di, j*s + dj, c] *
    kernel[di, dj, c, o]`` where ``xpad`` is ``x`` zero-padded by ``padding``
    on every spatial side.

    Implementations (same maths; float32 results agree to rounding, ~1e-6 relative):

    * ``"xla"``: ``jax.lax.conv_general_dilated`` and its autodiff. On XLA's CPU
      backend the input gradient of a strided convolution is an lhs-dilated
      convolution that XLA runs on a slow generic path (up to ~40x the forward
      pass for the IMA Fashion-MNIST CNN's third layer).
    * ``"patches"``: the same forward convolution (a matrix product when the
      output is one pixel) with a custom VJP: the input gradient of a strided
      convolution is ``g @ K^T`` (one matrix product into the im2col layout)
      folded back by :func:`fold_patches`, so it costs about one forward pass; a
      stride-1 input gradient is a convolution with the flipped kernel kept in HWIO
      order (XLA's own picks a slow path inside loop bodies, jax-ml/jax#12868).
      Reverse mode only, to any order; forward mode (``jax.jvp``, ``jacfwd``,
      ``hessian``) raises: build the model with ``"xla"`` for it.
    * ``"auto"``: ``"patches"`` when JAX's default backend is the CPU, ``"xla"``
      otherwise (GPU/TPU convolutions and their gradients are fast), decided when
      the function is traced.

    Args:
      x: float ``[B, H, W, C_in]``.
      kernel: float ``[k, k, C_in, C_out]`` (HWIO).
      stride: spatial stride s >= 1 (both axes).
      padding: zeros added on each side of both spatial axes, p >= 0.
      impl: ``"auto"`` (default), ``"xla"`` or ``"patches"`` (static).

    Returns:
      float ``[B, H', W', C_out]`` with ``H' = (H + 2p - k) // s + 1`` (same
      for W).

    Raises:
      ValueError: for an unknown ``impl``.
    """
    check_conv_impl(impl)
    if impl == "xla":
        return _xla_conv(x, kernel, stride, padding)
    if impl == "patches" or jax.default_backend() == "cpu":
        return _patches_conv(x, kernel, stride, padding)
    return _xla_conv(x, kernel, stride, padding)


def conv_output_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """Spatial output size of ``conv2d``: ``(size + 2p - k) // s + 1``."""
    return (size + 2 * padding - kernel_size) // stride + 1
