"""A 2-D U-Net in the nnU-Net style (``model.name="unet"``), the IMA paper's segmentation net.

Ma et al. ("Experiments on Segmentation") train nnU-Net's 2-D configuration (Isensee et
al. 2021, "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation"). Its network, which this module follows::

    encoder stage s (s = 0 .. S-1), width w_s:
        [conv3x3 (stride 2 for s > 0, else 1) - InstanceNorm - LeakyReLU(0.01)]
        [conv3x3 - InstanceNorm - LeakyReLU(0.01)] x (convs_per_stage - 1)
    decoder stage s (s = S-2 .. 0):
        transposed conv 2x2 / stride 2 (w_{s+1} -> w_s), concatenate the encoder's skip,
        [conv3x3 - InstanceNorm - LeakyReLU(0.01)] x convs_per_stage
    1x1 convolution to the C class logits.

InstanceNorm is nnU-Net's (``affine=True``, eps 1e-5). Downsampling is by strided
convolution (no pooling). The transposed convolution with kernel = stride = 2 does not
overlap, so it is computed exactly as a 1x1 convolution to ``4 w_s`` channels followed by
a depth-to-space rearrangement: every convolution runs through
:func:`arjax.models.layers.conv2d` (the fast CPU path of the classifiers).

Deep supervision (nnU-Net's default in training; here off by default): 1x1 heads on the
decoder stages below full resolution; their logits come back in ``features`` and
:func:`arjax.losses.segmentation.deep_supervision_loss` weighs them as nnU-Net does
(the ``standard`` method uses it when the model has the heads). The depth and widths
are an nnU-Net "plan" given by hand (nnU-Net plans them from the data set's median
shape; the full configs write the paper's patch sizes).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from arjax.models.layers import (
    TORCH_NORM_EPS,
    Conv,
    image_model_fields,
    input_norm_stats,
    standardize,
    torch_uniform_init,
)
from arjax.types import Array

NNUNET_NEGATIVE_SLOPE = 0.01


def affine_instance_norm(channels: int, *, rngs: nnx.Rngs) -> nnx.InstanceNorm:
    """``torch.nn.InstanceNorm2d(channels, affine=True)``, nnU-Net's norm: scale, bias ``[C]``."""
    return nnx.InstanceNorm(channels, epsilon=TORCH_NORM_EPS, use_fast_variance=False, rngs=rngs)


class ConvBlock(nnx.Module):
    """``conv3x3 (stride s) - InstanceNorm(affine) - LeakyReLU`` (nnU-Net's conv block)."""

    def __init__(self, c_in: int, c_out: int, stride: int, negative_slope: float, *, rngs):
        self.conv = Conv(c_in, c_out, 3, stride, 1, rngs=rngs)
        self.norm = affine_instance_norm(c_out, rngs=rngs)
        self.negative_slope = negative_slope

    def __call__(self, x: Array) -> Array:
        """``[B, H, W, c_in] -> [B, H / s, W / s, c_out]``."""
        return jax.nn.leaky_relu(self.norm(self.conv(x)), self.negative_slope)


class UpConv(nnx.Module):
    """``ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)`` as 1x1 conv + depth-to-space.

    Output pixel ``(2i + a, 2j + b)`` is ``W[a, b]^T x[i, j] + bias``: the 1x1 convolution
    (no bias) computes the four ``W[a, b]`` products at once, one bias ``[c_out]`` is
    shared by the four positions as in PyTorch's layer. Initialised like a 1x1 ``Conv``
    to ``4 c_out`` channels (``U(-1/sqrt(c_in), 1/sqrt(c_in))``).
    """

    def __init__(self, c_in: int, c_out: int, *, rngs: nnx.Rngs):
        self.conv = Conv(c_in, 4 * c_out, 1, 1, 0, use_bias=False, rngs=rngs)
        self.bias = nnx.Param(torch_uniform_init(c_in)(rngs.params(), (c_out,)))
        self.c_out = c_out

    def __call__(self, x: Array) -> Array:
        """``[B, H, W, c_in] -> [B, 2H, 2W, c_out]``."""
        b, h, w, _ = x.shape
        y = self.conv(x).reshape(b, h, w, 2, 2, self.c_out)
        y = y.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, self.c_out)
        return y + self.bias[...]


class UNet(nnx.Module):
    """nnU-Net-style 2-D U-Net; returns ``(logits [B, H, W, C], features)``.

    Args:
      num_classes: C output classes (background included).
      in_channels: input channels.
      widths: ``w_s`` of each resolution stage, e.g. nnU-Net's ``(32, 64, 128, 256, ...)``;
        ``len(widths) - 1`` downsamplings, so H and W must be divisible by
        ``2 ** (len(widths) - 1)``.
      convs_per_stage: convolutions per stage (nnU-Net: 2).
      negative_slope: LeakyReLU slope (nnU-Net: 0.01).
      deep_supervision: also return the decoder's lower-resolution logits.
      input_norm: standardisation of ``[0, 1]`` inputs (``layers.INPUT_NORMS``).
      rngs: parameter streams.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64),
        convs_per_stage: int = 2,
        negative_slope: float = NNUNET_NEGATIVE_SLOPE,
        deep_supervision: bool = False,
        input_norm: str = "none",
        *,
        rngs: nnx.Rngs,
    ):
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"model.widths must be >= 2 positive ints, got {widths}")
        if convs_per_stage < 1:
            raise ValueError(f"model.convs_per_stage must be >= 1, got {convs_per_stage}")
        if num_classes < 2:
            raise ValueError(f"a segmentation U-Net needs >= 2 classes, got {num_classes}")
        self.input_stats = input_norm_stats(input_norm, in_channels)
        encoder, c = [], in_channels
        for s, w in enumerate(widths):
            blocks = [ConvBlock(c, w, 2 if s else 1, negative_slope, rngs=rngs)]
            blocks += [
                ConvBlock(w, w, 1, negative_slope, rngs=rngs) for _ in range(convs_per_stage - 1)
            ]
            encoder.append(nnx.List(blocks))
            c = w
        ups, decoder, heads = [], [], []
        for s in range(len(widths) - 2, -1, -1):
            w = widths[s]
            ups.append(UpConv(c, w, rngs=rngs))
            blocks = [ConvBlock(2 * w, w, 1, negative_slope, rngs=rngs)]
            blocks += [
                ConvBlock(w, w, 1, negative_slope, rngs=rngs) for _ in range(convs_per_stage - 1)
            ]
            decoder.append(nnx.List(blocks))
            if deep_supervision and s > 0:
                heads.append(Conv(w, num_classes, 1, 1, 0, rngs=rngs))
            c = w
        self.encoder = nnx.List(encoder)
        self.ups = nnx.List(ups)
        self.decoder = nnx.List(decoder)
        self.aux_heads = nnx.List(heads)
        self.head = Conv(c, num_classes, 1, 1, 0, rngs=rngs)
        self.num_classes = num_classes
        self.widths = widths
        self.deep_supervision = deep_supervision

    def __call__(self, x: Array) -> tuple[Array, Array | dict]:
        """Forward pass.

        Args:
          x: float ``[B, H, W, C_in]`` images, H and W divisible by ``2 ** (S - 1)``.

        Returns:
          ``(logits, features)``: logits ``[B, H, W, num_classes]``; features the last
          decoder stage's activations ``[B, H, W, widths[0]]``, or with deep supervision
          ``{"features": that map, "deep_supervision": (logits [B, H / 2^k, W / 2^k, C]
          for k = 1 .. S - 2, finest first)}``.
        """
        factor = 2 ** (len(self.widths) - 1)
        if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"UNet with {len(self.widths)} stages needs [B, H, W, C] inputs with H, W "
                f"divisible by {factor}, got {x.shape}"
            )
        h = standardize(x, self.input_stats)
        skips = []
        for stage in self.encoder:
            for block in stage:
                h = block(h)
            skips.append(h)
        aux = []
        heads = iter(self.aux_heads)
        for i, (up, stage) in enumerate(zip(self.ups, self.decoder, strict=True)):
            h = jnp.concatenate([up(h), skips[-2 - i]], axis=-1)
            for block in stage:
                h = block(h)
            if self.deep_supervision and i < len(self.decoder) - 1:
                aux.append(next(heads)(h))
        logits = self.head(h)
        if self.deep_supervision:
            return logits, {"features": h, "deep_supervision": tuple(reversed(aux))}
        return logits, h


def build_unet(
    cfg: ml_collections.ConfigDict, input_shape, num_classes: int, rngs: nnx.Rngs
) -> UNet:
    """Registry builder for ``model.name="unet"``.

    Fields: ``widths`` [(16, 32, 64)], ``convs_per_stage`` [2], ``negative_slope``
    [0.01], ``deep_supervision`` [False], ``input_norm`` ["none"], ``num_outputs``
    [0: one per class; else must equal the classes].

    Raises:
      ValueError: naming the field: non-image inputs, a size not divisible by the
        downsampling factor, a bad width list or input norm.
    """
    widths, input_norm = image_model_fields("unet", cfg, input_shape, "none")
    factor = 2 ** (len(widths) - 1)
    if input_shape[0] % factor or input_shape[1] % factor:
        raise ValueError(
            f"model 'unet': input {tuple(input_shape)} is not divisible by {factor}, the "
            f"downsampling of model.widths={widths}; valid: H and W multiples of {factor}"
        )
    num_outputs = int(cfg.get("num_outputs", 0) or 0)
    if num_outputs not in (0, num_classes):
        raise ValueError(
            f"model.num_outputs={num_outputs} for a U-Net on {num_classes} classes; "
            f"valid: 0 or {num_classes} (one logit per class and pixel)"
        )
    return UNet(
        num_classes,
        int(input_shape[-1]),
        widths,
        convs_per_stage=int(cfg.get("convs_per_stage", 2)),
        negative_slope=float(cfg.get("negative_slope", NNUNET_NEGATIVE_SLOPE)),
        deep_supervision=bool(cfg.get("deep_supervision", False)),
        input_norm=input_norm,
        rngs=rngs,
    )
