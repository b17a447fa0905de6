"""Layers shared by arjax's image models, with PyTorch's defaults.

The papers' reference models are PyTorch modules; these layers reproduce
their parameterisation and default initialisation so that parameter counts,
initial loss scales and learning-rate settings carry over:

* ``Conv``: THE convolution layer of every arjax model. NHWC inputs, HWIO
  kernel, integer stride and explicit symmetric integer padding exactly like
  ``torch.nn.Conv2d(in, out, k, stride, padding)``. The maths lives in one
  function, ``arjax.models.convolution.conv2d``: XLA's convolution, or on CPU
  (``impl="auto"``, the default) a custom VJP whose input gradient avoids
  XLA:CPU's slow paths. ``conv_impl_scope`` picks the implementation of the
  layers built inside it (``model.conv_impl`` in configs).
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

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from arjax.models.convolution import check_conv_impl, conv2d, default_conv_impl
from arjax.models.convolution import conv_output_size as conv_output_size  # re-export
from arjax.types import Array

# PyTorch's eps for InstanceNorm2d and LayerNorm (flax defaults to 1e-6).
TORCH_NORM_EPS = 1e-5


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
    # CIFAR-10 train-set mean/std of locuslab/robust_overfitting and fast_adversarial
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "none": None,
}


def image_model_fields(
    name: str, cfg: ml_collections.ConfigDict, input_shape: Sequence[int], default_norm: str
) -> tuple[tuple[int, ...], str]:
    """``(model.widths, model.input_norm)`` of a small image network, checked.

    Args:
      name: the ``model.name``, for the messages.
      cfg: the ``model`` config section (``widths`` default (16, 32, 64)).
      input_shape: the per-example input shape, which must be ``[H, W, C]``.
      default_norm: ``model.input_norm`` when the field is absent.

    Raises:
      ValueError: non-image inputs, or an unknown input norm (naming the valid ones).
    """
    widths = tuple(int(w) for w in cfg.get("widths", (16, 32, 64)))
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r} needs [H, W, C] inputs, got {tuple(input_shape)}")
    input_norm = cfg.get("input_norm", default_norm)
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"unknown model.input_norm {input_norm!r}; valid: {sorted(INPUT_NORMS)}")
    return widths, input_norm


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


def torchvision_num_outputs(cfg: ml_collections.ConfigDict, num_classes: int) -> int:
    """Head width: ``model.num_outputs``, or for 0 ``num_classes`` (1 if binary_head and K=2)."""
    num_outputs = int(cfg.get("num_outputs", 0) or 0)
    if num_outputs < 0:
        raise ValueError(f"model.num_outputs must be >= 0, got {num_outputs}")
    if num_outputs:
        return num_outputs
    return 1 if num_classes == 2 and cfg.get("binary_head", False) else num_classes
