"""VGG16 (Simonyan & Zisserman, 2014; configuration D) in torchvision's layout, NHWC.

ARFL's backbone (Hao et al., seed 003, §4.2: "VGG16 ... pre-trained on
ImageNet ... We finetuned the fully connected layers and the last
convolutional layer"). Layout, names and initialisation follow
``torchvision.models.vgg16``: ``features`` holds 13 ``3x3/1`` convolutions
(with bias) at torchvision's ``nn.Sequential`` indices (ReLUs and max pools
hold no parameters and are not stored), then ``AdaptiveAvgPool2d((7, 7))``
and ``classifier`` = ``Linear(25088, 4096) - ReLU - Dropout - Linear(4096,
4096) - ReLU - Dropout - Linear(4096, K)`` at indices 0, 3, 6. Parameter paths
read ``features/0`` ... ``features/28`` (the last convolution),
``classifier/0``, ``classifier/3``, ``classifier/6``; "the fully connected
layers and the last convolutional layer" are ``classifier/*`` and
``features/28``.

``batch_norm=True`` (``model.batch_norm``) builds torchvision's ``vgg16_bn``
instead: every convolution is followed by a ``BatchNorm2d`` at the next index
(``conv - BN - ReLU`` take three indices), so the last convolution is
``features/40``, its batch norm ``features/41``, and ``features`` is the ReLU at
index 42; ``vgg16_bn`` ImageNet weights import by the same names. It is the VGG16
for DSBN (``model.dual_batch_norm``), which needs batch norms to split.

Differences from torchvision, both documented choices:

* Dropout is not applied (a pure ``apply`` has no dropout RNG; Khakzar et
  al. train without dropout, ARFL does not mention it). Parameters are the
  same.
* The 7x7x512 map is flattened in PyTorch's channel-major (C, H, W) order, so
  ``classifier.0.weight`` imports with a plain transpose.

``features`` is the last convolution's output after its ReLU (``features.29``
in torchvision), ``[B, H/16, W/16, 512]`` (14 x 14 for 224 x 224 inputs),
before the final max pool: the highest-resolution map of the last block and
ARFL's "feature map from the last convolutional layer". VGG's head is not
global pooling + linear, so a class map on it is a Grad-CAM, not a CAM.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax.models.layers import Conv, input_norm_stats, linear, standardize
from arjax.models.layers import batch_norm as torch_batch_norm
from arjax.models.pretrained import abstract_module, torchvision_init
from arjax.types import Array

# Configuration "D": output channels of each 3x3 convolution, "M" = 2x2/2 max pool.
VGG16_CONFIG = (
    *(64, 64, "M", 128, 128, "M"),
    *(256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
)
POOLED = 7  # AdaptiveAvgPool2d((7, 7))


def adaptive_pool_matrix(size: int, out: int) -> np.ndarray:
    """``[out, size]`` averaging weights of ``torch.nn.AdaptiveAvgPool1d(out)``.

    Output ``i`` averages inputs ``floor(i*size/out) .. ceil((i+1)*size/out) - 1``
    (PyTorch's bins, overlapping when ``size`` is not a multiple of ``out``,
    repeating inputs when ``size < out``).

    Args:
      size: input length.
      out: output length.

    Returns:
      float32 ``[out, size]`` with rows summing to 1.
    """
    weights = np.zeros((out, size), np.float32)
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool(x: Array, out: int = POOLED) -> Array:
    """``torch.nn.AdaptiveAvgPool2d((out, out))`` on ``[B, H, W, C]`` -> ``[B, out, out, C]``."""
    rows = jnp.asarray(adaptive_pool_matrix(x.shape[1], out), x.dtype)
    cols = jnp.asarray(adaptive_pool_matrix(x.shape[2], out), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


class VGG(nnx.Module):
    """torchvision's VGG (``vgg16``; ``vgg16_bn`` with batch norm): ``(logits, features)``.

    Args:
      config: conv widths and ``"M"`` pools (``VGG16_CONFIG``).
      num_outputs: width of ``classifier/6``; 1 gives one binary logit ``[B]``.
      in_channels: input channels (3 RGB, 1 grayscale).
      hidden: width of the two hidden classifier layers (4096).
      input_norm: standardisation of ``[0, 1]`` inputs (``layers.INPUT_NORMS``).
      batch_norm: a BatchNorm2d after every convolution (torchvision's ``vgg16_bn``).
      rngs: parameter streams.
    """

    torchvision_input_conv = "features.0"
    torchvision_head = "classifier.6"

    def __init__(
        self,
        config: Sequence[int | str] = VGG16_CONFIG,
        num_outputs: int = 1000,
        in_channels: int = 3,
        hidden: int = 4096,
        input_norm: str = "imagenet",
        batch_norm: bool = False,
        *,
        rngs: nnx.Rngs,
    ):
        self.input_stats = input_norm_stats(input_norm, in_channels)
        self.config = tuple(config)
        self.batch_norm = bool(batch_norm)
        convs, c = {}, in_channels
        widths = iter(item for item in self.config if item != "M")
        for index, op in self._ops():
            if op == "conv":
                c_out = next(widths)
                convs[str(index)] = Conv(c, c_out, 3, 1, 1, rngs=rngs)
                c = c_out
            elif op == "bn":
                convs[str(index)] = torch_batch_norm(c, rngs=rngs)
        self.features = nnx.Dict(convs)
        self.classifier = nnx.Dict(
            {
                "0": linear(c * POOLED * POOLED, hidden, rngs=rngs),
                "3": linear(hidden, hidden, rngs=rngs),
                "6": linear(hidden, num_outputs, rngs=rngs),
            }
        )
        self.num_outputs = num_outputs

    def _ops(self) -> list[tuple[int, str]]:
        """Torchvision's ``features`` as ``(index, "conv" | "bn" | "relu" | "pool")``."""
        ops = []
        for item in self.config:
            if item == "M":
                ops.append("pool")
            else:
                ops += ["conv", "bn", "relu"] if self.batch_norm else ["conv", "relu"]
        return list(enumerate(ops))

    def conv_features(self, x: Array, *, until: int | None = None) -> Array:
        """Runs ``features`` through torchvision index ``until`` (default: all but the last pool).

        Args:
          x: float ``[B, H, W, C]`` images in ``[0, 1]``.
          until: last torchvision index to run, e.g. 4 for the first block
            (``conv - ReLU - conv - ReLU - maxpool``); ``None`` stops before the
            final max pool (index 29, the last convolution's ReLU).

        Returns:
          The activations at that point, NHWC.
        """
        ops = self._ops()
        stop = ops[-1][0] - 1 if until is None else until
        h = standardize(x, self.input_stats)
        for index, op in ops:
            if index > stop:
                break
            if op in ("conv", "bn"):
                h = self.features[str(index)](h)
            elif op == "relu":
                h = jax.nn.relu(h)
            else:
                h = nnx.max_pool(h, (2, 2), strides=(2, 2))
        return h

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """Forward pass.

        Args:
          x: float ``[B, H, W, C]`` images in ``[0, 1]`` (at least 32 x 32).

        Returns:
          ``(logits, features)``: logits ``[B, num_outputs]`` (``[B]`` for one
          output); features the last convolution's ReLU output
          ``[B, H/16, W/16, 512]``.
        """
        features = self.conv_features(x)
        return self.logits_from_features(features), features

    def logits_from_features(self, features: Array) -> Array:
        """The head: last pool, adaptive average pool, the MLP classifier (Grad-CAM's ``z(A)``).

        Args:
          features: ``[B, h, w, 512]`` the last convolution's ReLU output.

        Returns:
          logits ``[B, num_outputs]`` (``[B]`` for one output).
        """
        h = adaptive_avg_pool(nnx.max_pool(features, (2, 2), strides=(2, 2)))
        h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)  # PyTorch's (C, H, W)
        cls = self.classifier
        h = jax.nn.relu(cls["0"](h))
        h = jax.nn.relu(cls["3"](h))
        logits = cls["6"](h)
        if self.num_outputs == 1:
            logits = logits[:, 0]
        return logits


def vgg16(
    num_outputs: int = 1000,
    in_channels: int = 3,
    *,
    hidden: int = 4096,
    input_norm: str = "imagenet",
    batch_norm: bool = False,
    seed: int | Sequence[int] = 0,
) -> VGG:
    """Builds VGG16 (``vgg16_bn`` with ``batch_norm``) with torchvision's initialisation.

    Built abstractly and filled on the host by ``pretrained.torchvision_init``
    (kaiming-normal fan-out kernels and zero biases, linear ``N(0, 0.01)`` and
    zero biases); nothing is compiled.

    Args:
      num_outputs: width of the last classifier layer.
      in_channels: input channels.
      hidden: hidden classifier width (4096; smaller only for tests).
      input_norm: input standardisation (``"imagenet"``, ``"half"``, ``"none"``).
      batch_norm: torchvision's ``vgg16_bn`` layout (a BatchNorm2d after every conv).
      seed: initialisation seed (an int or ints for ``numpy.random.default_rng``).

    Returns:
      A ``VGG``.
    """
    model = abstract_module(
        lambda rngs: VGG(
            VGG16_CONFIG, num_outputs, in_channels, hidden, input_norm, batch_norm, rngs=rngs
        )
    )
    return torchvision_init(model, seed, conv_mode="fan_out", linear="normal", zero_biases=True)
