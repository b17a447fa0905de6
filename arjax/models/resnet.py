"""ResNet-18 and ResNet-50 (He et al., 2016) in torchvision's layout, NHWC.

The architecture, parameter names and initialisation follow
``torchvision.models.resnet18`` / ``resnet50`` (v1.5: a Bottleneck's stride
sits on its 3x3 convolution), so ImageNet weights import by name
(``arjax.models.pretrained``) and parameter paths read like torchvision's:
``conv1``, ``bn1``, ``layer4/1/conv2``, ``layer2/0/downsample/0``, ``fc``::

    conv1 7x7/2 - norm - ReLU - maxpool 3x3/2 - layer1..layer4 - GAP - fc

Normalisation (``norm``):

* ``"batch"``: ``torch.nn.BatchNorm2d`` (running statistics in
  ``nnx.BatchStat``; train mode uses batch statistics).
* ``"instance"``: IMA's COVID-19 CT model (Ma et al., seed 004, "replaced
  batch normalization with instance normalization"), which the authors' code
  writes as ``nn.GroupNorm(C, C)``: each channel of each example normalised
  over ``H x W``, with a learned per-channel scale and bias (the same
  parameters as BatchNorm, no running statistics; identical in train and eval
  mode). ImageNet BatchNorm weights load into its scale and bias; the running
  statistics are dropped.

``features`` is ``layer4``'s output (post-ReLU, ``[B, H/32, W/32, 512]`` for
ResNet-18, ``2048`` channels for ResNet-50): the last convolutional map, which
global average pooling and ``fc`` turn into logits, so it is the map a CAM
uses (``CAM_k = sum_c fc_w[c, k] * features[..., c]``).
"""

from collections.abc import Sequence

import jax
from flax import nnx

from arjax.models.layers import (
    TORCH_NORM_EPS,
    Conv,
    batch_norm,
    input_norm_stats,
    linear,
    standardize,
)
from arjax.models.pretrained import torchvision_init
from arjax.types import Array

NORMS = ("batch", "instance")


def _norm(kind: str, channels: int, rngs: nnx.Rngs) -> nnx.Module:
    """BatchNorm2d, or affine instance norm (``GroupNorm(C, C)``), eps 1e-5."""
    if kind == "batch":
        return batch_norm(channels, rngs=rngs)
    return nnx.InstanceNorm(channels, epsilon=TORCH_NORM_EPS, use_fast_variance=False, rngs=rngs)


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> Conv:
    """Bias-free convolution with ``k // 2`` padding."""
    return Conv(cin, cout, k, stride, k // 2, use_bias=False, rngs=rngs)


def _downsample(cin: int, cout: int, stride: int, norm: str, rngs: nnx.Rngs) -> nnx.List | None:
    """``downsample = [conv1x1/stride, norm]`` when the shortcut changes shape, else None."""
    if stride == 1 and cin == cout:
        return None
    return nnx.List([_conv(cin, cout, 1, stride, rngs), _norm(norm, cout, rngs)])


class BasicBlock(nnx.Module):
    """``relu(norm(conv3x3(relu(norm(conv3x3/s(x))))) + shortcut(x))`` (ResNet-18/34).

    Args:
      cin: input channels.
      planes: output channels.
      stride: stride of the first convolution and of the shortcut.
      norm: ``"batch"`` or ``"instance"``.
      rngs: parameter streams.
    """

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, norm: str, *, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, planes, 3, stride, rngs)
        self.bn1 = _norm(norm, planes, rngs)
        self.conv2 = _conv(planes, planes, 3, 1, rngs)
        self.bn2 = _norm(norm, planes, rngs)
        self.downsample = _downsample(cin, planes, stride, norm, rngs)

    def __call__(self, x: Array) -> Array:
        """Maps ``[B, H, W, cin]`` to ``[B, H/s, W/s, planes]``."""
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return jax.nn.relu(out + shortcut)


class Bottleneck(nnx.Module):
    """1x1 reduce - 3x3/s - 1x1 expand (x4) with shortcut (ResNet-50, torchvision v1.5).

    Args:
      cin: input channels.
      planes: width of the 3x3 convolution; the block outputs ``4 * planes``.
      stride: stride of the 3x3 convolution and of the shortcut.
      norm: ``"batch"`` or ``"instance"``.
      rngs: parameter streams.
    """

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, norm: str, *, rngs: nnx.Rngs):
        cout = planes * self.expansion
        self.conv1 = _conv(cin, planes, 1, 1, rngs)
        self.bn1 = _norm(norm, planes, rngs)
        self.conv2 = _conv(planes, planes, 3, stride, rngs)
        self.bn2 = _norm(norm, planes, rngs)
        self.conv3 = _conv(planes, cout, 1, 1, rngs)
        self.bn3 = _norm(norm, cout, rngs)
        self.downsample = _downsample(cin, cout, stride, norm, rngs)

    def __call__(self, x: Array) -> Array:
        """Maps ``[B, H, W, cin]`` to ``[B, H/s, W/s, 4 * planes]``."""
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = jax.nn.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return jax.nn.relu(out + shortcut)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
# name -> (block, blocks per stage)
ARCHITECTURES = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}


class ResNet(nnx.Module):
    """torchvision's ResNet returning ``(logits, features)``.

    Args:
      block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50+).
      layers: blocks per stage, e.g. ``(2, 2, 2, 2)``.
      num_outputs: width of ``fc``; 1 gives one binary logit, returned as ``[B]``.
      in_channels: input channels (3 RGB, 1 grayscale).
      norm: ``"batch"`` or ``"instance"`` (see the module docstring).
      input_norm: standardisation applied to ``[0, 1]`` inputs first (a key of
        ``layers.INPUT_NORMS``: ``"imagenet"``, ``"half"``, ``"none"``).
      rngs: parameter streams.
      widths: ``planes`` of the four stages (torchvision: 64, 128, 256, 512;
        ``conv1`` has ``widths[0]`` channels); narrower nets keep every name.
    """

    # torchvision state-dict names (arjax.models.pretrained).
    torchvision_input_conv = "conv1"
    torchvision_head = "fc"

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        num_outputs: int = 1000,
        in_channels: int = 3,
        norm: str = "batch",
        input_norm: str = "imagenet",
        *,
        rngs: nnx.Rngs,
        widths: Sequence[int] = (64, 128, 256, 512),
    ):
        if block not in BLOCKS:
            raise ValueError(f"unknown ResNet block {block!r}; valid: {sorted(BLOCKS)}")
        if norm not in NORMS:
            raise ValueError(f"unknown model.norm {norm!r}; valid: {list(NORMS)}")
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"ResNet needs 4 stages, got {tuple(layers)=}, {tuple(widths)=}")
        block_cls = BLOCKS[block]
        self.input_stats = input_norm_stats(input_norm, in_channels)
        self.conv1 = _conv(in_channels, widths[0], 7, 2, rngs)
        self.bn1 = _norm(norm, widths[0], rngs)
        cin = widths[0]
        for stage, (planes, depth) in enumerate(zip(widths, layers, strict=True)):
            blocks = []
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block_cls(cin, planes, stride, norm, rngs=rngs))
                cin = planes * block_cls.expansion
            setattr(self, f"layer{stage + 1}", nnx.List(blocks))
        self.fc = linear(cin, num_outputs, rngs=rngs)
        self.num_outputs = num_outputs
        self.num_features = cin

    def stem(self, x: Array) -> Array:
        """Standardise, then ``conv1 - norm - ReLU - maxpool``: ``[B, H/4, W/4, widths[0]]``."""
        h = jax.nn.relu(self.bn1(self.conv1(standardize(x, self.input_stats))))
        return nnx.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """Forward pass.

        Args:
          x: float ``[B, H, W, C]`` images in ``[0, 1]``.

        Returns:
          ``(logits, features)``: logits ``[B, num_outputs]`` (``[B]`` for one
          output); features ``layer4``'s output ``[B, ceil(H/32), ceil(W/32),
          512 or 2048]``.
        """
        h = self.stem(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for blk in stage:
                h = blk(h)
        logits = self.fc(h.mean(axis=(1, 2)))
        if self.num_outputs == 1:
            logits = logits[:, 0]
        return logits, h


def resnet(
    name: str,
    num_outputs: int = 1000,
    in_channels: int = 3,
    *,
    norm: str = "batch",
    input_norm: str = "imagenet",
    seed: int | Sequence[int] = 0,
) -> ResNet:
    """Builds ``"resnet18"`` or ``"resnet50"`` with torchvision's initialisation.

    The layers are built abstractly and filled on the host by
    ``pretrained.torchvision_init`` (kaiming-normal fan-out kernels, norms
    1/0, ``fc`` PyTorch-uniform), which compiles nothing; calling ``ResNet``
    directly gives the layers' own PyTorch-default initialisation instead.

    Args:
      name: a key of ``ARCHITECTURES``.
      num_outputs: width of the head (1000 for ImageNet, 1 for one binary logit).
      in_channels: input channels.
      norm: ``"batch"`` or ``"instance"``.
      input_norm: input standardisation (``"imagenet"``, ``"half"``, ``"none"``).
      seed: initialisation seed (an int or ints for ``numpy.random.default_rng``).

    Returns:
      A ``ResNet``.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown ResNet {name!r}; valid: {sorted(ARCHITECTURES)}")
    block, layers = ARCHITECTURES[name]
    model = nnx.eval_shape(
        lambda: ResNet(block, layers, num_outputs, in_channels, norm, input_norm, rngs=nnx.Rngs(0))
    )
    return torchvision_init(model, seed, conv_mode="fan_out", linear="uniform", zero_biases=False)
