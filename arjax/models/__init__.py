"""Model registry: flax NNX modules returning ``(logits, features)``.

Registered ``model.name`` values:

* ``"mlp"``: ``MLP`` (fields ``hidden``, ``activation``, ``layer_norm``,
  ``batch_norm``, ``num_outputs``, ``features_at``).
* ``"cam_cnn"``: ``CamCNN``, a small conv + GAP + linear network for CAM tests
  and demos (fields ``widths``, ``input_norm``, ``num_outputs``, ``binary_head``).
* ``"ima_cnn"``: the IMA paper's image CNNs, ``model.variant`` picks
  ``"fmnist"`` (Fashion-MNIST, 28x28x1) or ``"svhn"`` (SVHN, 32x32x3).
* ``"preact_resnet18"``: PreAct ResNet-18 for 32x32 images (Wong et al. / Rice et al.'s
  fast and robust adversarial training; ``preact_resnet.py``; fields ``input_norm``
  [``"cifar10"``], ``num_outputs``, ``binary_head``).
* ``"wide_resnet"``: WideResNet-``depth``-``widen_factor`` (TRADES / AWP; ``wide_resnet.py``;
  fields ``depth`` [34], ``widen_factor`` [10], ``input_norm`` [``"none"``],
  ``num_outputs``, ``binary_head``).
* ``"unet"``: ``UNet``, the nnU-Net-style 2-D segmentation U-Net (``unet.py``; fields
  ``widths``, ``convs_per_stage``, ``negative_slope``, ``deep_supervision``,
  ``input_norm``), logits ``[B, H, W, C]`` per pixel.
* ``"resnet18"``, ``"resnet50"``, ``"densenet121"``, ``"densenet121_truncated"``
  (Khakzar et al.), ``"vgg16"``: torchvision's ImageNet networks on ``[H, W, C]``
  inputs (C = 1 or 3, H, W >= 32), returning ``features`` = the last
  convolutional map (see each module). Fields:

  - ``norm``: ``"batch"`` (default) or ``"instance"`` (IMA's COVID-19 ResNet);
    ResNets only.
  - ``num_outputs``: head width; 0 (default) = ``num_classes``, except 1 (one
    binary logit, ``[B]``) when ``num_classes == 2`` and ``binary_head`` is True.
    Multi-label data: ``num_classes`` labels, sigmoid outputs.
  - ``binary_head``: see ``num_outputs`` (default False: 2-way softmax).
  - ``batch_norm``: VGG16 only: torchvision's ``vgg16_bn`` layout (default False).
  - ``input_norm``: standardisation inside the model of the ``[0, 1]`` images:
    ``"imagenet"`` (default; torchvision's mean/std), ``"half"`` ((x-0.5)/0.5,
    IMA's code) or ``"none"``.
  - ``pretrained``: path of a torchvision ImageNet state dict (``.safetensors``,
    or ``.pth`` with PyTorch installed) or None. The head loads only when its
    shape matches (1000 classes), else it keeps its initialisation. A
    1-channel model gets the first convolution's RGB kernel summed over its
    input channels (exact for gray images copied to RGB). See
    ``arjax.models.pretrained``.

Every model takes ``model.conv_impl`` (optional, default ``"auto"``): the
implementation of all its ``Conv`` layers, ``"auto"`` (patches-based input
gradient on the CPU backend, XLA's convolution elsewhere), ``"xla"`` or
``"patches"``; see ``arjax.models.layers.conv2d``.

Every model takes ``model.dtype`` (optional, default ``"float32"``): the compute
dtype, ``"float32"`` or ``"bfloat16"`` (mixed precision: bfloat16 network, float32
parameters, optimiser state, losses and attacks; ``arjax.models.precision``).

Every model takes ``model.dual_batch_norm`` (optional, default False): replace
each batch norm by a clean/adversarial pair (DSBN, ``arjax.models.dual_norm``;
the ``dsbn`` method needs it). The model must have batch norms: the ResNets
with ``norm="batch"``, the DenseNets, an MLP or VGG16 with ``batch_norm=True``
(VGG16: torchvision's ``vgg16_bn``); not plain VGG16 (torchvision's ``vgg16`` has
none) nor the instance-norm networks.

* ``"torch"``: a PyTorch network from ``model.torch_factory`` (``"package.module:function"``,
  e.g. ``"torchvision.models:resnet18"``), run through torchax; fields ``torch_kwargs``,
  ``torch_weights``, ``torch_features``, ``input_norm`` (``arjax.models.torch_factory``;
  needs the ``[torch]`` extra).

A user's own NNX module or ``apply_fn(params, x)`` (plain logits are fine) becomes
``(ModelFns, params, batch_stats)`` through :func:`adapt` (``arjax.models.adapter``); a
``torch.nn.Module`` through :func:`from_torch` (``arjax.models.torch_bridge``).
"""

import logging
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from arjax.config_lib import ConfigError
from arjax.models.adapter import FunctionModel, adapt
from arjax.models.camnet import CamCNN, build_cam_cnn
from arjax.models.cnn import ARCHITECTURES, ConvSpec, ImaCNN, feature_map_shape, ima_cnn
from arjax.models.convolution import CONV_IMPLS, conv2d, conv_impl_scope
from arjax.models.densenet import DenseNet, TruncatedDenseNet, densenet
from arjax.models.dual_norm import BRANCHES, DualBatchNorm, branch_model, dualize
from arjax.models.functional import ModelFns, split_model
from arjax.models.layers import (
    INPUT_NORMS,
    Conv,
    batch_norm,
    instance_norm,
    layer_norm,
    linear,
    torchvision_num_outputs,
)
from arjax.models.mlp import ACTIVATIONS, MLP
from arjax.models.outputs import FEATURES
from arjax.models.preact_resnet import PreActBlock, PreActResNet, build_preact_resnet18
from arjax.models.precision import DTYPES, check_dtype
from arjax.models.pretrained import (
    ImportReport,
    abstract_module,
    export_torchvision,
    import_torchvision,
    load_pretrained,
    load_state_dict,
    torchvision_init,
)
from arjax.models.resnet import NORMS, BasicBlock, Bottleneck, ResNet, resnet
from arjax.models.torch_bridge import TorchModel, TorchModule, from_torch, torch_state_dict
from arjax.models.torch_factory import build_torch_model
from arjax.models.unet import UNet, build_unet
from arjax.models.vgg import VGG, adaptive_avg_pool, vgg16
from arjax.models.wide_resnet import WideResNet, build_wide_resnet, wide_resnet

_log = logging.getLogger(__name__)


def _build_mlp(cfg: ml_collections.ConfigDict, input_shape, num_classes: int, rngs: nnx.Rngs):
    in_features = 1
    for d in input_shape:
        in_features *= d
    num_outputs = cfg.get("num_outputs", None) or (1 if num_classes == 2 else num_classes)
    return MLP(
        in_features,
        hidden=tuple(cfg.hidden),
        num_outputs=num_outputs,
        activation=cfg.get("activation", "relu"),
        layer_norm=_bool_or_tuple(cfg.get("layer_norm", False)),
        batch_norm=bool(cfg.get("batch_norm", False)),
        features_at=cfg.get("features_at", "post_activation"),
        rngs=rngs,
    )


def _bool_or_tuple(value):
    """``model.layer_norm``: a bool, or per-hidden-layer flags (``()`` = none)."""
    if isinstance(value, bool):
        return value
    flags = tuple(bool(v) for v in value)
    return flags if flags else False


def _build_ima_cnn(cfg: ml_collections.ConfigDict, input_shape, num_classes: int, rngs: nnx.Rngs):
    """IMA's image CNNs: ``model.variant`` is ``"fmnist"`` or ``"svhn"`` (see ``cnn.py``).

    Optional ``model.negative_slope`` (LeakyReLU slope, default 0.01). The
    input shape and class count come from the data.
    """
    variant = cfg.get("variant", None)
    if variant not in ARCHITECTURES:
        raise ValueError(f"unknown model.variant {variant!r}; valid: {sorted(ARCHITECTURES)}")
    convs = ARCHITECTURES[variant][0]
    try:
        feature_map_shape(convs, input_shape)
    except ValueError as e:
        raise ValueError(f"model.variant {variant!r}: {e}") from None
    return ima_cnn(
        variant,
        num_classes,
        input_shape,
        negative_slope=cfg.get("negative_slope", 0.01),
        rngs=rngs,
    )


TORCHVISION_MODELS = ("resnet18", "resnet50", "densenet121", "densenet121_truncated", "vgg16")


def _build_torchvision(
    cfg: ml_collections.ConfigDict, input_shape, num_classes: int, rngs: nnx.Rngs
) -> nnx.Module:
    """ResNet / DenseNet / VGG per ``model.*`` (module docstring), then optional weights."""
    name = cfg.name
    if len(input_shape) != 3 or min(input_shape[:2]) < 32:
        raise ValueError(
            f"model {name!r} needs [H, W, C] inputs with H, W >= 32, got {input_shape}"
        )
    channels = int(input_shape[-1])
    num_outputs = torchvision_num_outputs(cfg, num_classes)
    input_norm = cfg.get("input_norm", "imagenet")
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"unknown model.input_norm {input_norm!r}; valid: {sorted(INPUT_NORMS)}")
    norm = cfg.get("norm", None) or "batch"
    if name.startswith("resnet"):
        if norm not in NORMS:
            raise ValueError(f"unknown model.norm {norm!r}; valid: {list(NORMS)}")
    elif norm != "batch":
        raise ValueError(f"model.norm={norm!r}: only the ResNets have a norm choice")
    if cfg.get("batch_norm", False) and name != "vgg16":
        raise ValueError(f"model.batch_norm is a vgg16 / mlp field; {name!r} has its own norms")
    path = cfg.get("pretrained", None)
    head = cfg.get("pretrained_head", "auto")
    # Host-side init seed derived from the params stream (same seed -> same model).
    seed = np.asarray(jax.random.key_data(rngs.params())).ravel().tolist()
    kwargs = dict(input_norm=input_norm, seed=seed)
    if name.startswith("resnet"):
        model = resnet(name, num_outputs, channels, norm=norm, **kwargs)
    elif name.startswith("densenet"):
        model = densenet(name, num_outputs, channels, **kwargs)
    else:
        hidden = int(cfg.get("hidden", 4096))
        bn = bool(cfg.get("batch_norm", False))
        model = vgg16(num_outputs, channels, hidden=hidden, batch_norm=bn, **kwargs)
    if path:
        report = load_pretrained(model, path, head=head)
        _log.info(
            "%s: loaded %d tensors from %s, dropped %d, head kept fresh: %s",
            name,
            len(report.loaded),
            path,
            len(report.dropped),
            bool(report.skipped_head),
        )
    return model


# name -> builder(model_config, per-example input shape, num_classes, rngs) -> nnx.Module
MODELS: dict[str, Callable[..., nnx.Module]] = {
    "mlp": _build_mlp,
    "ima_cnn": _build_ima_cnn,
    "cam_cnn": build_cam_cnn,
    "unet": build_unet,
    "preact_resnet18": build_preact_resnet18,
    "wide_resnet": build_wide_resnet,
    "torch": build_torch_model,
    **dict.fromkeys(TORCHVISION_MODELS, _build_torchvision),
}


def build_model(
    cfg: ml_collections.ConfigDict, input_shape: tuple[int, ...], num_classes: int, seed: int
):
    """Builds the configured model and splits it at the jit boundary.

    Args:
      cfg: the ``model`` config section; ``cfg.name`` picks from ``MODELS``;
        ``cfg.conv_impl`` (optional, default ``"auto"``, one of ``CONV_IMPLS``) is the
        implementation of every ``Conv`` layer built; ``cfg.dtype`` (optional, default
        ``"float32"``, one of ``DTYPES``) the compute dtype.
      input_shape: per-example input shape, e.g. ``(2,)`` or ``(28, 28, 1)``.
      num_classes: number of classes of the data set.
      seed: parameter initialisation seed.

    Returns:
      ``(ModelFns, params, batch_stats)``.

    Raises:
      ConfigError: for an unknown ``model.conv_impl`` or ``model.dtype`` (naming the
        valid choices), or
        ``model.dual_batch_norm`` on a model without batch norm.
    """
    if cfg.name not in MODELS:
        raise ValueError(f"unknown model.name {cfg.name!r}; valid: {sorted(MODELS)}")
    conv_impl = cfg.get("conv_impl", "auto")
    if conv_impl not in CONV_IMPLS:
        raise ConfigError(
            f"unknown model.conv_impl {conv_impl!r}; valid choices: {', '.join(CONV_IMPLS)}"
        )
    dtype = cfg.get("dtype", "float32")
    try:
        check_dtype(dtype)  # before the build; split_model checks callers that skip this
    except ValueError as e:
        raise ConfigError(str(e)) from None
    with conv_impl_scope(conv_impl):
        module = MODELS[cfg.name](cfg, tuple(input_shape), num_classes, nnx.Rngs(params=seed))
    if cfg.get("dual_batch_norm", False):
        try:
            dualize(module)
        except ValueError as e:
            raise ConfigError(f"model.dual_batch_norm=True for model {cfg.name!r}: {e}") from None
    return split_model(module, dtype=dtype)


__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "BRANCHES",
    "CONV_IMPLS",
    "DTYPES",
    "INPUT_NORMS",
    "MLP",
    "MODELS",
    "NORMS",
    "TORCHVISION_MODELS",
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "CamCNN",
    "FEATURES",
    "FunctionModel",
    "Conv",
    "ConvSpec",
    "DenseNet",
    "DualBatchNorm",
    "ImaCNN",
    "ImportReport",
    "ModelFns",
    "PreActBlock",
    "PreActResNet",
    "ResNet",
    "TorchModel",
    "TorchModule",
    "TruncatedDenseNet",
    "UNet",
    "WideResNet",
    "abstract_module",
    "adapt",
    "adaptive_avg_pool",
    "batch_norm",
    "branch_model",
    "build_model",
    "conv2d",
    "conv_impl_scope",
    "densenet",
    "dualize",
    "export_torchvision",
    "feature_map_shape",
    "from_torch",
    "ima_cnn",
    "import_torchvision",
    "instance_norm",
    "layer_norm",
    "linear",
    "load_pretrained",
    "load_state_dict",
    "resnet",
    "split_model",
    "torch_state_dict",
    "torchvision_init",
    "torchvision_num_outputs",
    "vgg16",
    "wide_resnet",
]
