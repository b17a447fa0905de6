"""Model registry: flax NNX modules returning ``(logits, features)``."""

from collections.abc import Callable

import ml_collections
from flax import nnx

from arjax.models.functional import ModelFns, split_model
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
        layer_norm=cfg.get("layer_norm", False),
        rngs=rngs,
    )


# name -> builder(model_config, per-example input shape, num_classes, rngs) -> nnx.Module
MODELS: dict[str, Callable[..., nnx.Module]] = {"mlp": _build_mlp}


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


__all__ = ["ACTIVATIONS", "MLP", "MODELS", "ModelFns", "build_model", "split_model"]
