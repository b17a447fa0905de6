"""Model registry: flax NNX modules returning ``(logits, features)``.

Registered ``model.name`` values:

* ``"mlp"``: ``MLP`` (fields ``hidden``, ``activation``, ``layer_norm``,
  ``num_outputs``).
* ``"ima_cnn"``: the IMA paper's image CNNs, ``model.variant`` picks
  ``"fmnist"`` (Fashion-MNIST, 28x28x1) or ``"svhn"`` (SVHN, 32x32x3).
"""

from collections.abc import Callable

import ml_collections
from flax import nnx

from arjax.models.cnn import ARCHITECTURES, ConvSpec, ImaCNN, feature_map_shape, ima_cnn
from arjax.models.functional import ModelFns, split_model
from arjax.models.layers import Conv, conv2d, instance_norm, layer_norm, linear
from arjax.models.mlp import ACTIVATIONS, MLP


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


# name -> builder(model_config, per-example input shape, num_classes, rngs) -> nnx.Module
MODELS: dict[str, Callable[..., nnx.Module]] = {"mlp": _build_mlp, "ima_cnn": _build_ima_cnn}


def build_model(
    cfg: ml_collections.ConfigDict, input_shape: tuple[int, ...], num_classes: int, seed: int
):
    """Builds the configured model and splits it at the jit boundary.

    Args:
      cfg: the ``model`` config section; ``cfg.name`` picks from ``MODELS``.
      input_shape: per-example input shape, e.g. ``(2,)`` or ``(28, 28, 1)``.
      num_classes: number of classes of the data set.
      seed: parameter initialisation seed.

    Returns:
      ``(ModelFns, params, batch_stats)``.
    """
    if cfg.name not in MODELS:
        raise ValueError(f"unknown model.name {cfg.name!r}; valid: {sorted(MODELS)}")
    module = MODELS[cfg.name](cfg, tuple(input_shape), num_classes, nnx.Rngs(params=seed))
    return split_model(module)


__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "MLP",
    "MODELS",
    "Conv",
    "ConvSpec",
    "ImaCNN",
    "ModelFns",
    "build_model",
    "conv2d",
    "feature_map_shape",
    "ima_cnn",
    "instance_norm",
    "layer_norm",
    "linear",
    "split_model",
]
