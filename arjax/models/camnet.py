"""A small CAM network for tests and demos (``model.name="cam_cnn"``).

Not from any of the papers: a plain VGG-style stack with the head CAMs need
(Zhou et al., 2016, "Learning Deep Features for Discriminative
Localization")::

    [conv3x3 - ReLU - conv3x3 - ReLU] x n, 2x2 max pool between stages - GAP - fc

so that CAM localisation (Khakzar et al., seed 002, §3.3) can be trained and
checked in seconds on small images: with ``widths=(16, 32, 64)`` a 32 x 32
input gives an 8 x 8 last feature map, where ResNet-18 ends in 1 x 1. The
paper's network is ``densenet121_truncated``.
"""

from collections.abc import Sequence

import jax
import ml_collections
from flax import nnx

from arjax.models.layers import (
    Conv,
    image_model_fields,
    input_norm_stats,
    linear,
    standardize,
    torchvision_num_outputs,
)
from arjax.types import Array


class CamCNN(nnx.Module):
    """Conv stages, global average pooling, linear head; returns ``(logits, features)``.

    Args:
      widths: output channels of each stage (two 3x3 convolutions each); a
        2x2/2 max pool sits between consecutive stages, so the feature map is
        ``H / 2**(len(widths) - 1)``.
      num_outputs: head width; 1 gives one binary logit returned as ``[B]``.
      in_channels: input channels.
      input_norm: standardisation of ``[0, 1]`` inputs (``layers.INPUT_NORMS``).
      rngs: parameter streams.
    """

    cam_head = "fc"  # the nnx.Linear applied to the global average of ``features``

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64),
        num_outputs: int = 1,
        in_channels: int = 1,
        input_norm: str = "half",
        *,
        rngs: nnx.Rngs,
    ):
        if not widths or min(widths) < 1:
            raise ValueError(f"model.widths must be positive ints, got {tuple(widths)}")
        self.input_stats = input_norm_stats(input_norm, in_channels)
        convs, c = [], in_channels
        for w in widths:
            convs.append(nnx.List([Conv(c, w, 3, 1, 1, rngs=rngs), Conv(w, w, 3, 1, 1, rngs=rngs)]))
            c = w
        self.stages = nnx.List(convs)
        self.fc = linear(c, num_outputs, rngs=rngs)
        self.num_outputs = num_outputs
        self.num_features = c

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """Forward pass.

        Args:
          x: float ``[B, H, W, C]`` images in ``[0, 1]``.

        Returns:
          ``(logits, features)``: logits ``[B, num_outputs]`` (``[B]`` for one
          output); features the last stage's ReLU output ``[B, h, w, widths[-1]]``.
        """
        h = standardize(x, self.input_stats)
        for i, stage in enumerate(self.stages):
            if i:
                h = nnx.max_pool(h, (2, 2), strides=(2, 2))
            for conv in stage:
                h = jax.nn.relu(conv(h))
        logits = self.fc(h.mean(axis=(1, 2)))
        if self.num_outputs == 1:
            logits = logits[:, 0]
        return logits, h


def build_cam_cnn(
    cfg: ml_collections.ConfigDict, input_shape, num_classes: int, rngs: nnx.Rngs
) -> CamCNN:
    """Registry builder for ``model.name="cam_cnn"``.

    Fields: ``widths`` [(16, 32, 64)], ``input_norm`` ["half"], ``num_outputs`` /
    ``binary_head`` (as for the torchvision models).
    """
    widths, input_norm = image_model_fields("cam_cnn", cfg, input_shape, "half")
    if min(input_shape[:2]) < 2 ** (len(widths) - 1):
        raise ValueError(
            f"model 'cam_cnn': input {tuple(input_shape)} is too small for "
            f"{len(widths) - 1} poolings (model.widths={widths})"
        )
    return CamCNN(
        widths,
        torchvision_num_outputs(cfg, num_classes),
        int(input_shape[-1]),
        input_norm,
        rngs=rngs,
    )
