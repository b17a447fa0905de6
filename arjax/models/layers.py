"""Layers shared by arjax's image models, with PyTorch's defaults.

The papers' reference models are PyTorch modules; these layers reproduce
their parameterisation and default initialisation so that parameter counts,
initial loss scales and learning-rate settings carry over:

* ``Conv``: THE convolution layer of every arjax model. NHWC inputs, HWIO
  kernel, integer stride and explicit symmetric integer padding exactly like
  ``torch.nn.Conv2d(in, out, k, stride, padding)``. The maths lives in one
  function, ``conv2d``, with two implementations: XLA's convolution, and on CPU
  (``impl="auto"``, the default) a custom VJP whose input gradient avoids
  XLA:CPU's slow paths (strided: a matrix product over image patches; stride 1:
  a convolution with a materialised flipped kernel). ``conv_impl_scope`` picks the
  implementation of the layers built inside it (``model.conv_impl`` in configs).
* ``instance_norm``: ``torch.nn.InstanceNorm2d(C)`` defaults (no affine
  parameters, no running statistics, eps 1e-5) via ``nnx.InstanceNorm``.
* ``layer_norm``: ``torch.nn.LayerNorm(D)`` (affine, eps 1e-5) via
  ``nnx.LayerNorm``; the image models apply it to flattened features.
* ``linear``: ``nnx.Linear`` initialised like ``torch.nn.Linear``.

Initialisation (PyTorch's default for ``Conv2d`` and ``Linear``):
``kaiming_uniform_(a=sqrt(5))`` for the weights, which is
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, and the same uniform range for the
bias; ``fan_in = in_channels * k * k`` (convolution) or ``in_features``.
"""

import contextlib
import functools
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from arjax.types import Array

# PyTorch's eps for InstanceNorm2d and LayerNorm (flax defaults to 1e-6).
TORCH_NORM_EPS = 1e-5


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
        dx = fold_patches(jnp.matmul(g, _flat_kernel(kernel).T), x.shape, k, stride, padding)
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


def torch_uniform_init(fan_in: int) -> jax.nn.initializers.Initializer:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: PyTorch's default weight and bias init.

    Args:
      fan_in: number of inputs of one output unit (``C_in * k * k`` or
        ``in_features``).

    Returns:
      An initializer ``(key, shape, dtype) -> Array``.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape, dtype=jnp.float32) -> Array:
        # Drawn flat then reshaped: eager init compiles one sampler per shape, and XLA:CPU
        # compiles a rank-1 sampler 2-4x faster than a rank-4 one (about 0.3 s vs 1 s).
        flat = jax.random.uniform(key, (math.prod(shape),), dtype, minval=-bound, maxval=bound)
        return flat.reshape(shape)

    return init


class Conv(nnx.Module):
    """``torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)`` in NHWC.

    Parameters: ``kernel`` ``[k, k, C_in, C_out]`` (HWIO) and ``bias``
    ``[C_out]``, both drawn from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
    ``fan_in = C_in * k * k`` (PyTorch's default, kaiming-uniform with
    ``a = sqrt(5)``).

    Args:
      in_channels: C_in.
      out_channels: C_out.
      kernel_size: square kernel side k.
      stride: stride s (both axes).
      padding: explicit zero padding p on every spatial side.
      use_bias: add a learned per-channel bias.
      impl: ``"auto"``, ``"xla"`` or ``"patches"`` (see :func:`conv2d`); None takes
        the default of the enclosing :func:`conv_impl_scope` (``"auto"`` outside any).
        Stored on the layer as a static attribute.
      rngs: uses the ``params`` stream.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        *,
        use_bias: bool = True,
        impl: str | None = None,
        rngs: nnx.Rngs,
    ):
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("kernel_size", kernel_size, 1),
            ("stride", stride, 1),
            ("padding", padding, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Conv {name} must be an int >= {low}, got {value!r}")
        init = torch_uniform_init(in_channels * kernel_size * kernel_size)
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        self.kernel = nnx.Param(init(rngs.params(), shape))
        self.bias = nnx.Param(init(rngs.params(), (out_channels,))) if use_bias else None
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.impl = check_conv_impl(default_conv_impl() if impl is None else impl)

    def __call__(self, x: Array) -> Array:
        """Applies the convolution.

        Args:
          x: float ``[B, H, W, C_in]``.

        Returns:
          float ``[B, H', W', C_out]``, ``H' = (H + 2p - k) // s + 1``.
        """
        y = conv2d(x, self.kernel[...], self.stride, self.padding, self.impl)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


def instance_norm(channels: int, *, rngs: nnx.Rngs) -> nnx.InstanceNorm:
    """``torch.nn.InstanceNorm2d(channels)``: per example and channel, no parameters.

    Normalises each ``[H, W]`` plane of an NHWC input to zero mean and unit
    (biased) variance with eps 1e-5; ``affine=False`` and
    ``track_running_stats=False`` as in PyTorch's default, so the layer holds
    no state and behaves the same in train and eval mode.

    Args:
      channels: number of channels C of the ``[B, H, W, C]`` input.
      rngs: unused (no parameters); required by ``nnx.InstanceNorm``.

    Returns:
      An ``nnx.InstanceNorm`` module.
    """
    return nnx.InstanceNorm(
        channels,
        epsilon=TORCH_NORM_EPS,
        use_bias=False,
        use_scale=False,
        use_fast_variance=False,
        rngs=rngs,
    )


def layer_norm(features: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """``torch.nn.LayerNorm(features)`` over the last axis (scale 1, bias 0, eps 1e-5).

    Args:
      features: width D of the ``[B, D]`` input (the flattened feature map in
        the image models).
      rngs: parameter streams.

    Returns:
      An ``nnx.LayerNorm`` module with ``2 * D`` parameters.
    """
    return nnx.LayerNorm(features, epsilon=TORCH_NORM_EPS, use_fast_variance=False, rngs=rngs)


def linear(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """``torch.nn.Linear(in_features, out_features)``: weights and bias ``U(+-1/sqrt(in))``.

    Args:
      in_features: input width.
      out_features: output width.
      rngs: parameter streams.

    Returns:
      An ``nnx.Linear`` module (kernel ``[in, out]``, bias ``[out]``).
    """
    init = torch_uniform_init(in_features)
    return nnx.Linear(in_features, out_features, kernel_init=init, bias_init=init, rngs=rngs)


# PyTorch's BatchNorm2d momentum 0.1 weighs the NEW batch; flax's momentum weighs the OLD average.
TORCH_BN_MOMENTUM = 0.9


def batch_norm(channels: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """``torch.nn.BatchNorm2d(channels)`` over the last (channel) axis of NHWC inputs.

    Scale 1, bias 0, running mean 0 and variance 1, eps 1e-5; PyTorch's
    momentum 0.1 is flax's ``momentum=0.9`` (``avg <- 0.9 avg + 0.1 batch``).
    Train mode normalises with the batch's (biased) statistics and updates the
    running averages (``nnx.BatchStat``); eval mode uses the running averages.
    One difference remains: PyTorch folds the *unbiased* batch variance
    (``n / (n - 1)``) into ``running_var``, flax the biased one; the two agree
    to ``1/n`` with ``n = B*H*W`` values per channel.

    Args:
      channels: number of channels C of the ``[B, H, W, C]`` input.
      rngs: parameter streams.

    Returns:
      An ``nnx.BatchNorm`` with parameters ``scale``/``bias`` ``[C]`` and batch
      statistics ``mean``/``var`` ``[C]``.
    """
    return nnx.BatchNorm(
        channels,
        momentum=TORCH_BN_MOMENTUM,
        epsilon=TORCH_NORM_EPS,
        use_fast_variance=False,
        rngs=rngs,
    )


# Per-channel (mean, std) of the input standardisation a network applies to [0, 1] images.
NormStats = tuple[tuple[float, ...], tuple[float, ...]]
INPUT_NORMS: dict[str, NormStats | None] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision's weights
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # (x - 0.5) / 0.5, IMA's COVID ResNet
    "none": None,
}


def input_norm_stats(name: str, channels: int) -> NormStats | None:
    """Per-channel ``(mean, std)`` of the named input standardisation for C channels.

    A 1-channel (grayscale) input uses the average of the three RGB values
    (ImageNet: mean 0.449, std 0.226), matching a first convolution whose RGB
    kernel was summed over its input channels.

    Args:
      name: a key of ``INPUT_NORMS``.
      channels: C of the ``[B, H, W, C]`` input (1 or 3).

    Returns:
      ``(mean, std)`` tuples of length C, or ``None`` for ``"none"``.
    """
    if name not in INPUT_NORMS:
        raise ValueError(f"unknown model.input_norm {name!r}; valid: {sorted(INPUT_NORMS)}")
    stats = INPUT_NORMS[name]
    if stats is None:
        return None
    if channels == 3:
        return stats
    if channels == 1:
        return tuple((sum(s) / 3,) for s in stats)
    raise ValueError(f"model.input_norm {name!r} needs 1 or 3 input channels, got {channels}")


def standardize(x: Array, stats: NormStats | None) -> Array:
    """``(x - mean) / std`` per channel of ``x [B, H, W, C]``; identity for ``None``."""
    if stats is None:
        return x
    mean, std = stats
    return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)
