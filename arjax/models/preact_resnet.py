"""PreAct ResNet-18 for 32x32 images (He et al. 2016, "Identity Mappings in Deep ResNets").

The network of the fast and robust-overfitting adversarial-training papers (Wong, Rice &
Kolter 2020, "Fast is better than free"; Rice, Wong & Kolter 2020, "Overfitting in
adversarially robust deep learning"; Wu, Xia & Wang 2020, AWP; de Jorge et al. 2022,
N-FGSM), as their public code writes it (``preactresnet.py`` of locuslab/robust_overfitting,
identical in locuslab/fast_adversarial ``CIFAR10/preact_resnet.py`` and csdongxian/AWP
``AT_AWP/preactresnet.py``), in NHWC::

    conv1 3x3/1 (64) - layer1..layer4 (2 PreActBlocks each; 64, 128, 256, 512 channels,
    stride 1, 2, 2, 2) - bn - ReLU - global average pool - linear

A :class:`PreActBlock` is ``bn1 - ReLU - conv1 3x3/s - bn2 - ReLU - conv2 3x3`` plus a
shortcut: the identity, or where the shape changes a bias-free 1x1/s convolution applied to
the *pre-activated* input ``ReLU(bn1(x))`` (as the reference code does; He et al.'s Fig. 4e
leaves it open). All convolutions are bias-free; batch norms are PyTorch's defaults
(momentum 0.1, eps 1e-5; ``layers.batch_norm``).

Parameter paths are the reference's module names (``conv1``, ``layer2/0/shortcut/0``,
``bn``, ``linear``), so ``arjax.models.pretrained.export_torchvision`` /
``import_torchvision`` exchange state dicts with the PyTorch code by name.

Differences from the reference, all neutral on 32x32 inputs:

* the pool is a global average; the reference's ``F.avg_pool2d(out, 4)`` is the same on
  the 4x4 map of a 32x32 input, and larger inputs still give ``[B, 512]``;
* input standardisation is inside the model (``input_norm``, default ``"cifar10"``: the
  mean/std the reference training scripts apply before the network, so attacks still
  work on ``[0, 1]`` images).

Initialisation is PyTorch's default (the reference sets none): convolution and linear
weights ``U(+-1/sqrt(fan_in))`` (``layers.Conv`` / ``layers.linear``), linear bias likewise,
batch norms 1 / 0. 11,172,170 parameters for 10 classes.
"""

from collections.abc import Sequence

import jax
import ml_collections
from flax import nnx

from arjax.config_lib import ConfigError
from arjax.models.layers import (
    Conv,
    batch_norm,
    input_norm_stats,
    linear,
    standardize,
    torchvision_num_outputs,
)
from arjax.types import Array

STAGE_WIDTHS = (64, 128, 256, 512)
PREACT_RESNET18_BLOCKS = (2, 2, 2, 2)


class PreActBlock(nnx.Module):
    """Pre-activation basic block: ``conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut``.

    He et al. (2016), the "full pre-activation" unit of their Fig. 4(e). The same
    block is WideResNet's ``BasicBlock`` (``wide_resnet.py``).

    Args:
      cin: input channels.
      planes: output channels.
      stride: stride of ``conv1`` and of the shortcut convolution.
      rngs: parameter streams.
    """

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
        self.bn1 = batch_norm(cin, rngs=rngs)
        self.conv1 = Conv(cin, planes, 3, stride, 1, use_bias=False, rngs=rngs)
        self.bn2 = batch_norm(planes, rngs=rngs)
        self.conv2 = Conv(planes, planes, 3, 1, 1, use_bias=False, rngs=rngs)
        # the identity, or where the shape changes [conv1x1/s] (the reference's nn.Sequential)
        changes_shape = stride != 1 or cin != planes
        self.shortcut = (
            nnx.List([Conv(cin, planes, 1, stride, 0, use_bias=False, rngs=rngs)])
            if changes_shape
            else None
        )

    def __call__(self, x: Array) -> Array:
        """Maps ``[B, H, W, cin]`` to ``[B, ceil(H/s), ceil(W/s), planes]``."""
        out = jax.nn.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut[0](out)
        out = self.conv2(jax.nn.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNet(nnx.Module):
    """Pre-activation ResNet for small images, returning ``(logits, features)``.

    Args:
      num_blocks: blocks per stage, ``(2, 2, 2, 2)`` for PreAct ResNet-18.
      num_outputs: width of ``linear``; 1 gives one binary logit, returned as ``[B]``.
      in_channels: input channels.
      input_norm: standardisation of ``[0, 1]`` inputs (a key of ``layers.INPUT_NORMS``).
      rngs: parameter streams.
      widths: channels of the four stages (``conv1`` has ``widths[0]``); smaller values
        keep every name (tests).
    """

    torchvision_input_conv = "conv1"
    torchvision_head = "linear"
    cam_head = "linear"  # the nnx.Linear applied to the global average of ``features``

    def __init__(
        self,
        num_blocks: Sequence[int] = PREACT_RESNET18_BLOCKS,
        num_outputs: int = 10,
        in_channels: int = 3,
        input_norm: str = "cifar10",
        *,
        rngs: nnx.Rngs,
        widths: Sequence[int] = STAGE_WIDTHS,
    ):
        if len(num_blocks) != 4 or len(widths) != 4 or min(*num_blocks, *widths) < 1:
            raise ValueError(f"PreActResNet needs 4 positive stages, got {num_blocks}, {widths}")
        self.input_stats = input_norm_stats(input_norm, in_channels)
        self.conv1 = Conv(in_channels, widths[0], 3, 1, 1, use_bias=False, rngs=rngs)
        cin = widths[0]
        for stage, (planes, depth) in enumerate(zip(widths, num_blocks, strict=True)):
            blocks = []
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(PreActBlock(cin, planes, stride, rngs=rngs))
                cin = planes
            setattr(self, f"layer{stage + 1}", nnx.List(blocks))
        self.bn = batch_norm(cin, rngs=rngs)
        self.linear = linear(cin, num_outputs, rngs=rngs)
        self.num_outputs = num_outputs
        self.num_features = cin

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """Forward pass.

        Args:
          x: float ``[B, H, W, C]`` images in ``[0, 1]``.

        Returns:
          ``(logits, features)``: logits ``[B, num_outputs]`` (``[B]`` for one output);
          features ``relu(bn(layer4))``, ``[B, ceil(H/8), ceil(W/8), widths[-1]]``
          (``[B, 4, 4, 512]`` for CIFAR): the map the pool and ``linear`` turn into
          logits, i.e. the one a CAM uses.
        """
        h = self.conv1(standardize(x, self.input_stats))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                h = block(h)
        h = jax.nn.relu(self.bn(h))
        logits = self.linear(h.mean(axis=(1, 2)))
        if self.num_outputs == 1:
            logits = logits[:, 0]
        return logits, h


def cifar_image_fields(
    name: str, cfg: ml_collections.ConfigDict, input_shape, num_classes: int, default_norm: str
) -> tuple[int, int, str]:
    """``(num_outputs, in_channels, input_norm)`` of a CIFAR network's config, checked.

    Raises:
      ConfigError: non-image inputs, or an unknown ``model.input_norm`` (valid choices named).
    """
    if len(input_shape) != 3:
        raise ConfigError(f"model {name!r} needs [H, W, C] inputs, got {tuple(input_shape)}")
    input_norm = cfg.get("input_norm", default_norm)
    channels = int(input_shape[-1])
    try:
        input_norm_stats(input_norm, channels)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return torchvision_num_outputs(cfg, num_classes), channels, input_norm


def build_preact_resnet18(
    cfg: ml_collections.ConfigDict, input_shape, num_classes: int, rngs: nnx.Rngs
) -> PreActResNet:
    """Registry builder for ``model.name="preact_resnet18"``.

    Fields: ``input_norm`` [``"cifar10"``], ``num_outputs`` / ``binary_head`` (as for the
    torchvision models: 0 = one output per class).
    """
    num_outputs, channels, input_norm = cifar_image_fields(
        "preact_resnet18", cfg, input_shape, num_classes, "cifar10"
    )
    return PreActResNet(PREACT_RESNET18_BLOCKS, num_outputs, channels, input_norm, rngs=rngs)
