"""DenseNet-121 (Huang et al., 2017) and Khakzar et al.'s truncated variant, NHWC.

Layout, parameter names and initialisation follow
``torchvision.models.densenet121`` (growth rate 32, blocks (6, 12, 24, 16),
64 initial features, bottleneck width 4 x 32), so ImageNet weights import by
name (``arjax.models.pretrained``); parameter paths read
``features/conv0``, ``features/denseblock3/denselayer7/conv2``,
``features/transition2/norm``, ``features/norm5``, ``classifier``::

    conv0 7x7/2 - norm0 - ReLU - maxpool 3x3/2
    - denseblock1 - transition1 - denseblock2 - transition2
    - denseblock3 - transition3 - denseblock4 - norm5 - ReLU - GAP - classifier

A dense layer maps its input (the concatenation of everything before it in the
block) through ``norm1 - ReLU - conv1 1x1 (128) - norm2 - ReLU - conv2 3x3
(32)`` and appends the 32 new channels; a transition halves the channels
(``norm - ReLU - conv 1x1``) and the resolution (2x2 average pooling).

Truncated DenseNet-121 (Khakzar et al., seed 002, §3: "remove the
dense-blocks 3 and 4 and their corresponding transition layers (2 and 3) in
order to get higher resolution feature maps in the last layer"; global average
pooling and a linear head): ``conv0 ... denseblock2 - norm5 - ReLU - GAP -
classifier`` with 512 channels at 1/8 of the input resolution (28 x 28 for
224 x 224 inputs, 4x the full network's 7 x 7 in each dimension). Its final
norm normalises exactly the tensor torchvision's ``transition2.norm`` does
(denseblock2's output), so ImageNet weights give it that layer's values;
``features.norm5`` (1024 channels) and the removed blocks are dropped.

``features`` is ``relu(norm5(...))``, the map global average pooling and the
linear classifier turn into logits, hence the map a CAM uses: ``[B, H/32,
W/32, 1024]`` (full) or ``[B, H/8, W/8, 512]`` (truncated).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from arjax.models.layers import Conv, batch_norm, input_norm_stats, linear, standardize
from arjax.models.pretrained import abstract_module, torchvision_init
from arjax.types import Array


class DenseLayer(nnx.Module):
    """``norm1 - ReLU - conv1 1x1 (bn_size * growth) - norm2 - ReLU - conv2 3x3 (growth)``.

    Args:
      cin: input channels (everything concatenated so far in the block).
      growth: new channels produced (k = 32).
      bn_size: bottleneck multiplier (4).
      rngs: parameter streams.
    """

    def __init__(self, cin: int, growth: int, bn_size: int, *, rngs: nnx.Rngs):
        width = bn_size * growth
        self.norm1 = batch_norm(cin, rngs=rngs)
        self.conv1 = Conv(cin, width, 1, use_bias=False, rngs=rngs)
        self.norm2 = batch_norm(width, rngs=rngs)
        self.conv2 = Conv(width, growth, 3, 1, 1, use_bias=False, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        """Maps ``[B, H, W, cin]`` to the ``[B, H, W, growth]`` new features."""
        h = self.conv1(jax.nn.relu(self.norm1(x)))
        return self.conv2(jax.nn.relu(self.norm2(h)))


class DenseBlock(nnx.Module):
    """``num_layers`` dense layers named ``denselayer1..N``, each appending its output.

    Args:
      num_layers: layers in the block.
      cin: input channels.
      growth: channels each layer appends.
      bn_size: bottleneck multiplier.
      rngs: parameter streams.
    """

    def __init__(self, num_layers: int, cin: int, growth: int, bn_size: int, *, rngs: nnx.Rngs):
        self.num_layers = num_layers
        for i in range(num_layers):
            layer = DenseLayer(cin + i * growth, growth, bn_size, rngs=rngs)
            setattr(self, f"denselayer{i + 1}", layer)

    def __call__(self, x: Array) -> Array:
        """Maps ``[B, H, W, cin]`` to ``[B, H, W, cin + num_layers * growth]``."""
        for i in range(self.num_layers):
            x = jnp.concatenate([x, getattr(self, f"denselayer{i + 1}")(x)], axis=-1)
        return x


class Transition(nnx.Module):
    """``norm - ReLU - conv 1x1 (cout) - avgpool 2x2/2``.

    Args:
      cin: input channels.
      cout: output channels (``cin // 2`` in DenseNet-121).
      rngs: parameter streams.
    """

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.norm = batch_norm(cin, rngs=rngs)
        self.conv = Conv(cin, cout, 1, use_bias=False, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        """Maps ``[B, H, W, cin]`` to ``[B, H // 2, W // 2, cout]``."""
        h = self.conv(jax.nn.relu(self.norm(x)))
        return nnx.avg_pool(h, (2, 2), strides=(2, 2))


class DenseNet(nnx.Module):
    """torchvision's DenseNet returning ``(logits, features)``.

    Args:
      block_config: layers per dense block; ``(6, 12, 24, 16)`` is DenseNet-121,
        ``(6, 12)`` its truncated variant (use ``TruncatedDenseNet`` for the
        torchvision name map of the latter).
      num_outputs: classifier width; 1 gives one binary logit returned as ``[B]``.
      in_channels: input channels (3 RGB, 1 grayscale).
      growth: growth rate k.
      num_init_features: channels of ``conv0``.
      bn_size: bottleneck multiplier.
      input_norm: standardisation of ``[0, 1]`` inputs (``layers.INPUT_NORMS``).
      rngs: parameter streams.
    """

    torchvision_input_conv = "features.conv0"
    torchvision_head = "classifier"

    def __init__(
        self,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_outputs: int = 1000,
        in_channels: int = 3,
        growth: int = 32,
        num_init_features: int = 64,
        bn_size: int = 4,
        input_norm: str = "imagenet",
        *,
        rngs: nnx.Rngs,
    ):
        if not block_config:
            raise ValueError("DenseNet needs at least one dense block")
        self.input_stats = input_norm_stats(input_norm, in_channels)
        layers = {
            "conv0": Conv(in_channels, num_init_features, 7, 2, 3, use_bias=False, rngs=rngs),
            "norm0": batch_norm(num_init_features, rngs=rngs),
        }
        c = num_init_features
        for i, n in enumerate(block_config):
            layers[f"denseblock{i + 1}"] = DenseBlock(n, c, growth, bn_size, rngs=rngs)
            c += n * growth
            if i + 1 < len(block_config):
                layers[f"transition{i + 1}"] = Transition(c, c // 2, rngs=rngs)
                c //= 2
        layers["norm5"] = batch_norm(c, rngs=rngs)
        self.features = nnx.Dict(layers)
        self.classifier = linear(c, num_outputs, rngs=rngs)
        self.num_blocks = len(block_config)
        self.num_outputs = num_outputs
        self.num_features = c

    def stem(self, x: Array) -> Array:
        """Standardise, then ``conv0 - norm0 - ReLU - maxpool``: ``[B, H/4, W/4, 64]``."""
        f = self.features
        h = jax.nn.relu(f["norm0"](f["conv0"](standardize(x, self.input_stats))))
        return nnx.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """Forward pass.

        Args:
          x: float ``[B, H, W, C]`` images in ``[0, 1]``.

        Returns:
          ``(logits, features)``: logits ``[B, num_outputs]`` (``[B]`` for one
          output); features ``relu(norm5(.))`` ``[B, h, w, num_features]``.
        """
        f = self.features
        h = self.stem(x)
        for i in range(1, self.num_blocks + 1):
            h = f[f"denseblock{i}"](h)
            if i < self.num_blocks:
                h = f[f"transition{i}"](h)
        h = jax.nn.relu(f["norm5"](h))
        logits = self.classifier(h.mean(axis=(1, 2)))
        if self.num_outputs == 1:
            logits = logits[:, 0]
        return logits, h


class TruncatedDenseNet(DenseNet):
    """Khakzar et al.'s DenseNet-121 without dense blocks 3-4 and transitions 2-3.

    ``DenseNet`` with ``block_config=(6, 12)``: 512 channels at 1/8 of the
    input resolution. Its ``features/norm5`` takes torchvision's
    ``features.transition2.norm`` (the BatchNorm of denseblock2's output); the
    removed layers' tensors are dropped on import.

    Args:
      num_outputs: classifier width (14 findings in ChestX-ray14).
      in_channels: input channels.
      input_norm: input standardisation.
      rngs: parameter streams.
    """

    torchvision_renames = {"features.norm5": "features.transition2.norm"}
    torchvision_dropped = (
        "features.transition2.conv",
        "features.denseblock3",
        "features.transition3",
        "features.denseblock4",
        "features.norm5",
    )

    def __init__(
        self,
        num_outputs: int = 1000,
        in_channels: int = 3,
        input_norm: str = "imagenet",
        *,
        rngs: nnx.Rngs,
    ):
        super().__init__((6, 12), num_outputs, in_channels, input_norm=input_norm, rngs=rngs)


ARCHITECTURES = {"densenet121": DenseNet, "densenet121_truncated": TruncatedDenseNet}


def densenet(
    name: str,
    num_outputs: int = 1000,
    in_channels: int = 3,
    *,
    input_norm: str = "imagenet",
    seed: int | Sequence[int] = 0,
) -> DenseNet:
    """Builds ``"densenet121"`` or ``"densenet121_truncated"`` with torchvision's init.

    Built abstractly and filled on the host by ``pretrained.torchvision_init``
    (kaiming-normal fan-in kernels, norms 1/0, classifier PyTorch-uniform
    weight and zero bias); nothing is compiled.

    Args:
      name: a key of ``ARCHITECTURES``.
      num_outputs: classifier width.
      in_channels: input channels.
      input_norm: input standardisation (``"imagenet"``, ``"half"``, ``"none"``).
      seed: initialisation seed (an int or ints for ``numpy.random.default_rng``).

    Returns:
      A ``DenseNet`` (or ``TruncatedDenseNet``).
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown DenseNet {name!r}; valid: {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[name]

    def build(rngs) -> DenseNet:
        if cls is TruncatedDenseNet:
            return cls(num_outputs, in_channels, input_norm, rngs=rngs)
        return cls(
            num_outputs=num_outputs, in_channels=in_channels, input_norm=input_norm, rngs=rngs
        )

    model = abstract_module(build)
    return torchvision_init(model, seed, conv_mode="fan_in", linear="uniform", zero_biases=True)
