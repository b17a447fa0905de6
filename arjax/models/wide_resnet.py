"""WideResNet-d-k (Zagoruyko & Komodakis 2016, "Wide Residual Networks") for 32x32 images.

The network of TRADES (Zhang et al. 2019), AWP (Wu, Xia & Wang 2020) and robust
overfitting (Rice, Wong & Kolter 2020) as their public code writes it
(``models/wideresnet.py`` of yaodongyu/TRADES, identical up to initialisation to
``wideresnet.py`` of locuslab/robust_overfitting and csdongxian/AWP), in NHWC::

    conv1 3x3/1 (16) - block1, block2, block3 (n = (depth - 4) / 6 blocks each;
    16k, 32k, 64k channels; stride 1, 2, 2) - bn1 - ReLU - global average pool - fc

Each block is the pre-activation basic block (``preact_resnet.PreActBlock``; the
reference's ``BasicBlock``: ``bn1 - ReLU - conv1 3x3/s - bn2 - ReLU - conv2 3x3``, the
shortcut a bias-free 1x1/s convolution of the pre-activated input where the width
changes). WRN-34-10 (``depth=34, widen_factor=10``, the TRADES / AWP / Rice et al. default)
has 46,160,474 parameters for 10 classes, WRN-28-10 36,479,194.

Parameter paths are the reference's module names (``conv1``, ``block1/layer/0/bn1``,
``block2/layer/0/convShortcut``, ``bn1``, ``fc``), so
``arjax.models.pretrained.export_torchvision`` / ``import_torchvision`` exchange state
dicts with the PyTorch code by name. TRADES' and AWP-TRADES' file also builds an unused
``sub_block1`` (a copy of ``block1`` that ``forward`` never calls: 2,102,112 more
parameters in their ``parameters()``, 48,262,586 for WRN-34-10); it is left out, which
changes no output; a state dict carrying it imports with ``sub_block1`` dropped.

Choices (sources):

* dropout 0 (every reference's ``dropRate=0.0``; not implemented);
* batch norms PyTorch's defaults, momentum 0.1, eps 1e-5 (none of the references set them);
* initialisation as the reference: convolutions ``N(0, 2 / (k * k * C_out))``, batch
  norms 1 / 0, ``fc`` weight PyTorch's default ``U(+-1/sqrt(in))`` and bias 0
  (``pretrained.torchvision_init(conv_mode="fan_out", zero_biases=True)``);
* global average pool instead of ``F.avg_pool2d(out, 8)`` (equal on the 8x8 map of a
  32x32 input);
* ``input_norm`` default ``"none"``: TRADES and AWP-TRADES feed ``[0, 1]`` images;
  ``"cifar10"`` is Rice et al.'s / AT-AWP's standardisation.
"""

import jax
import ml_collections
from flax import nnx

from arjax.config_lib import ConfigError
from arjax.models.layers import Conv, batch_norm, input_norm_stats, linear, standardize
from arjax.models.preact_resnet import PreActBlock, cifar_image_fields
from arjax.models.pretrained import abstract_module, torchvision_init
from arjax.types import Array

DEFAULT_DEPTH = 34
DEFAULT_WIDEN_FACTOR = 10
SUB_BLOCK = "sub_block1"  # TRADES' unused copy of block1


class NetworkBlock(nnx.Module):
    """``n`` pre-activation blocks of one width (the reference's ``NetworkBlock.layer``).

    Args:
      n: number of blocks.
      cin: input channels of the first block.
      planes: output channels.
      stride: stride of the first block.
      rngs: parameter streams.
    """

    def __init__(self, n: int, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
        self.layer = nnx.List(
            [PreActBlock(cin if i == 0 else planes, planes, stride if i == 0 else 1, rngs=rngs)
             for i in range(n)]
        )  # fmt: skip

    def __call__(self, x: Array) -> Array:
        """Maps ``[B, H, W, cin]`` to ``[B, ceil(H/s), ceil(W/s), planes]``."""
        for block in self.layer:
            x = block(x)
        return x


def check_depth(depth: int, widen_factor: int) -> int:
    """Blocks per stage ``n = (depth - 4) / 6`` of a WRN-depth-widen_factor.

    Raises:
      ConfigError: naming ``model.depth`` / ``model.widen_factor`` and the valid values.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ConfigError(
            f"model.depth={depth!r} is not a WideResNet depth; valid: 6n + 4 with n >= 1 "
            "(10, 16, 22, 28, 34, 40, ...)"
        )
    if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
        raise ConfigError(f"model.widen_factor={widen_factor!r} must be an int >= 1")
    return (depth - 4) // 6


class WideResNet(nnx.Module):
    """WideResNet-depth-widen_factor returning ``(logits, features)``.

    Args:
      depth: total depth ``6n + 4`` (28, 34, ...).
      widen_factor: k, the width multiplier of the three stages (16k, 32k, 64k).
      num_outputs: width of ``fc``; 1 gives one binary logit, returned as ``[B]``.
      in_channels: input channels.
      input_norm: standardisation of ``[0, 1]`` inputs (a key of ``layers.INPUT_NORMS``).
      rngs: parameter streams.
    """

    torchvision_input_conv = "conv1"
    torchvision_head = "fc"
    cam_head = "fc"  # the nnx.Linear applied to the global average of ``features``
    torchvision_dropped = (SUB_BLOCK,)

    def __init__(
        self,
        depth: int = DEFAULT_DEPTH,
        widen_factor: int = DEFAULT_WIDEN_FACTOR,
        num_outputs: int = 10,
        in_channels: int = 3,
        input_norm: str = "none",
        *,
        rngs: nnx.Rngs,
    ):
        n = check_depth(depth, widen_factor)
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.input_stats = input_norm_stats(input_norm, in_channels)
        self.conv1 = Conv(in_channels, widths[0], 3, 1, 1, use_bias=False, rngs=rngs)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, rngs=rngs)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, rngs=rngs)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, rngs=rngs)
        self.bn1 = batch_norm(widths[3], rngs=rngs)
        self.fc = linear(widths[3], num_outputs, rngs=rngs)
        self.num_outputs = num_outputs
        self.num_features = widths[3]

    @property
    def torchvision_renames(self) -> dict[str, str]:
        """Our shortcut ``block<b>.layer.0.shortcut.0`` is the reference's bare ``convShortcut``.

        A property, not an attribute: a dict stored on the module would enter the graph
        definition and make it unhashable (``ModelFns`` is a static jit argument).
        """
        return {
            f"block{b}.layer.0.shortcut.0": f"block{b}.layer.0.convShortcut"
            for b in (1, 2, 3)
            if getattr(self, f"block{b}").layer[0].shortcut is not None
        }

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """Forward pass.

        Args:
          x: float ``[B, H, W, C]`` images in ``[0, 1]``.

        Returns:
          ``(logits, features)``: logits ``[B, num_outputs]`` (``[B]`` for one output);
          features ``relu(bn1(block3))``, ``[B, ceil(H/4), ceil(W/4), 64 * widen_factor]``
          (``[B, 8, 8, 640]`` for WRN-d-10 on CIFAR), the map a CAM uses.
        """
        h = self.conv1(standardize(x, self.input_stats))
        h = self.block3(self.block2(self.block1(h)))
        h = jax.nn.relu(self.bn1(h))
        logits = self.fc(h.mean(axis=(1, 2)))
        if self.num_outputs == 1:
            logits = logits[:, 0]
        return logits, h


def wide_resnet(
    depth: int = DEFAULT_DEPTH,
    widen_factor: int = DEFAULT_WIDEN_FACTOR,
    num_outputs: int = 10,
    in_channels: int = 3,
    *,
    input_norm: str = "none",
    seed: int | list[int] = 0,
) -> WideResNet:
    """A WideResNet with the reference initialisation, filled on the host (nothing compiled).

    Args:
      depth: ``6n + 4``.
      widen_factor: k.
      num_outputs: head width.
      in_channels: input channels.
      input_norm: input standardisation.
      seed: ``numpy.random.default_rng`` seed (an int or ints).

    Returns:
      A ``WideResNet`` (see the module docstring for the initialisation).
    """

    def build(rngs: nnx.Rngs) -> WideResNet:
        return WideResNet(depth, widen_factor, num_outputs, in_channels, input_norm, rngs=rngs)

    model = abstract_module(build)
    return torchvision_init(model, seed, conv_mode="fan_out", linear="uniform", zero_biases=True)


def build_wide_resnet(
    cfg: ml_collections.ConfigDict, input_shape, num_classes: int, rngs: nnx.Rngs
) -> WideResNet:
    """Registry builder for ``model.name="wide_resnet"``.

    Fields: ``depth`` [34], ``widen_factor`` [10] (WRN-28-10: ``depth=28``),
    ``input_norm`` [``"none"``], ``num_outputs`` / ``binary_head`` (as for the torchvision
    models).
    """
    num_outputs, channels, input_norm = cifar_image_fields(
        "wide_resnet", cfg, input_shape, num_classes, "none"
    )
    depth = cfg.get("depth", DEFAULT_DEPTH)
    widen_factor = cfg.get("widen_factor", DEFAULT_WIDEN_FACTOR)
    check_depth(depth, widen_factor)
    # Host-side init seed derived from the params stream (same seed -> same model).
    seed = jax.random.key_data(rngs.params()).ravel().tolist()
    return wide_resnet(depth, widen_factor, num_outputs, channels, input_norm=input_norm, seed=seed)
