"""The Fashion-MNIST and SVHN CNNs of IMA (Ma et al., seed 004).

Section "Evaluation on Fashion-MNIST and SVHN datasets" of the IMA paper
gives the two networks as layer lists (``COV(in, out, kernel, stride,
padding)``, LR = LeakyReLU, IN = InstanceNorm, LN = LayerNorm)::

    Fashion-MNIST: COV(1,64,5,2,2)-LR-COV(64,128,5,2,2)-IN-LR-COV(128,256,5,2,2)-IN-LR-
                   COV(256,512,4,1,0)-Flatten-LN-LR-Linear(512,10)
    SVHN:          COV(3,32,3,1,1)-LR-COV(32,32,3,2,1)-IN-LR-COV(32,64,3,1,1)-IN-LR-
                   COV(64,64,3,2,1)-IN-LR-COV(64,128,3,1,1)-IN-LR-COV(128,128,3,2,1)-IN-LR-
                   COV(128,256,4,1,0)-Flatten-LN-LR-Linear(256,10)

Both have the same shape: a stack of ``Conv -> [InstanceNorm] -> LeakyReLU``
blocks, a last ``Conv`` whose output is the feature map, then ``Flatten ->
LayerNorm -> LeakyReLU -> Linear``. ``ImaCNN`` builds either from a
declarative ``ConvSpec`` list (``ARCHITECTURES``). With the paper's input
sizes the feature map is ``1 x 1``: Fashion-MNIST 28 -> 14 -> 7 -> 4 -> 1
(512 channels), SVHN 32 -> 32 -> 16 -> 16 -> 8 -> 8 -> 4 -> 1 (256 channels).
Layers follow PyTorch's defaults (see ``arjax.models.layers``): LeakyReLU
slope 0.01, InstanceNorm without affine parameters, eps 1e-5, uniform init.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
from flax import nnx

from arjax.models.layers import Conv, conv_output_size, instance_norm, layer_norm, linear
from arjax.types import Array


class ConvSpec(NamedTuple):
    """One ``COV(in, out, kernel, stride, padding)`` of a paper layer list.

    Attributes:
      in_channels: C_in.
      out_channels: C_out.
      kernel_size: square kernel side.
      stride: stride.
      padding: zero padding on each spatial side (PyTorch semantics).
      instance_norm: an InstanceNorm follows the convolution (before the
        LeakyReLU); ignored for the last convolution, which has neither.
    """

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    padding: int
    instance_norm: bool = False


# variant -> (convolutions, paper input shape HWC). The head is Flatten-LN-LR-Linear.
ARCHITECTURES: dict[str, tuple[tuple[ConvSpec, ...], tuple[int, int, int]]] = {
    "fmnist": (
        (
            ConvSpec(1, 64, 5, 2, 2),
            ConvSpec(64, 128, 5, 2, 2, instance_norm=True),
            ConvSpec(128, 256, 5, 2, 2, instance_norm=True),
            ConvSpec(256, 512, 4, 1, 0),
        ),
        (28, 28, 1),
    ),
    "svhn": (
        (
            ConvSpec(3, 32, 3, 1, 1),
            ConvSpec(32, 32, 3, 2, 1, instance_norm=True),
            ConvSpec(32, 64, 3, 1, 1, instance_norm=True),
            ConvSpec(64, 64, 3, 2, 1, instance_norm=True),
            ConvSpec(64, 128, 3, 1, 1, instance_norm=True),
            ConvSpec(128, 128, 3, 2, 1, instance_norm=True),
            ConvSpec(128, 256, 4, 1, 0),
        ),
        (32, 32, 3),
    ),
}


def feature_map_shape(convs: Sequence[ConvSpec], input_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape ``(h, w, C)`` of the last convolution's output for one input ``(H, W, C_in)``.

    Args:
      convs: the layer list.
      input_shape: per-example input shape ``(H, W, C_in)``.

    Returns:
      ``(h, w, convs[-1].out_channels)``.

    Raises:
      ValueError: if the input is not ``(H, W, convs[0].in_channels)``, the
        channels of consecutive convolutions do not chain, or the input is too
        small (a spatial size drops below 1).
    """
    if len(input_shape) != 3 or input_shape[-1] != convs[0].in_channels:
        raise ValueError(
            f"input shape {tuple(input_shape)} does not fit the CNN: expected "
            f"(H, W, {convs[0].in_channels})"
        )
    height, width = int(input_shape[0]), int(input_shape[1])
    for i, spec in enumerate(convs):
        if i and spec.in_channels != convs[i - 1].out_channels:
            raise ValueError(
                f"conv {i} takes {spec.in_channels} channels but conv {i - 1} "
                f"gives {convs[i - 1].out_channels}"
            )
        height = conv_output_size(height, spec.kernel_size, spec.stride, spec.padding)
        width = conv_output_size(width, spec.kernel_size, spec.stride, spec.padding)
        if height < 1 or width < 1:
            raise ValueError(f"input {tuple(input_shape)} is too small: conv {i} output is empty")
    return (height, width, convs[-1].out_channels)


class ImaCNN(nnx.Module):
    """The IMA paper's CNN: ``[Conv-[IN]-LR]* - Conv - Flatten - LN - LR - Linear``.

    Args:
      convs: the convolutions in order (``ARCHITECTURES[variant][0]``).
      input_shape: per-example input ``(H, W, C_in)``; fixes the width of the
        LayerNorm and the head (``h * w * C`` of the feature map).
      num_classes: K, width of the softmax head.
      negative_slope: LeakyReLU slope (PyTorch's default 0.01).
      rngs: parameter streams.
    """

    def __init__(
        self,
        convs: Sequence[ConvSpec],
        input_shape: Sequence[int],
        num_classes: int = 10,
        negative_slope: float = 0.01,
        *,
        rngs: nnx.Rngs,
    ):
        convs = tuple(ConvSpec(*c) for c in convs)
        if not convs:
            raise ValueError("ImaCNN needs at least one convolution")
        h, w, c = feature_map_shape(convs, input_shape)
        self.convs = nnx.List(
            [
                Conv(s.in_channels, s.out_channels, s.kernel_size, s.stride, s.padding, rngs=rngs)
                for s in convs
            ]
        )
        # None where a block has no InstanceNorm (and for the last convolution).
        self.norms = nnx.List(
            [
                instance_norm(s.out_channels, rngs=rngs) if s.instance_norm else None
                for s in convs[:-1]
            ]
        )
        self.feature_norm = layer_norm(h * w * c, rngs=rngs)
        self.head = linear(h * w * c, num_classes, rngs=rngs)
        self.negative_slope = negative_slope

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """Forward pass.

        Args:
          x: float ``[B, H, W, C_in]`` images in ``[0, 1]`` (NHWC).

        Returns:
          ``(logits, features)``: logits float ``[B, K]``; features the last
          convolution's output ``[B, h, w, C]`` before Flatten (``[B, 1, 1,
          512]`` for Fashion-MNIST, ``[B, 1, 1, 256]`` for SVHN), used by ARFL's
          ``L_robust`` and by CAMs.
        """
        h = x
        for conv, norm in zip(self.convs[:-1], self.norms, strict=True):
            h = conv(h)
            if norm is not None:
                h = norm(h)
            h = jax.nn.leaky_relu(h, self.negative_slope)
        features = self.convs[-1](h)
        return self.logits_from_features(features), features

    def logits_from_features(self, features: Array) -> Array:
        """The head: Flatten, layer norm, LeakyReLU, linear (Grad-CAM's ``z(A)``), ``[B, K]``."""
        flat = features.reshape(features.shape[0], -1)
        flat = jax.nn.leaky_relu(self.feature_norm(flat), self.negative_slope)
        return self.head(flat)


def ima_cnn(
    variant: str,
    num_classes: int = 10,
    input_shape: Sequence[int] | None = None,
    *,
    rngs: nnx.Rngs,
    negative_slope: float = 0.01,
) -> ImaCNN:
    """Builds the paper's Fashion-MNIST (``"fmnist"``) or SVHN (``"svhn"``) CNN.

    Args:
      variant: a key of ``ARCHITECTURES``.
      num_classes: K (10 in the paper).
      input_shape: ``(H, W, C)``; ``None`` uses the paper's (28, 28, 1) or
        (32, 32, 3).
      rngs: parameter streams.
      negative_slope: LeakyReLU slope.

    Returns:
      An ``ImaCNN``.

    Raises:
      ValueError: for an unknown variant (listing the valid ones) or an input
        shape the network cannot take.
    """
    if variant not in ARCHITECTURES:
        raise ValueError(f"unknown model.variant {variant!r}; valid: {sorted(ARCHITECTURES)}")
    convs, paper_shape = ARCHITECTURES[variant]
    shape = paper_shape if input_shape is None else tuple(input_shape)
    return ImaCNN(convs, shape, num_classes, negative_slope, rngs=rngs)
