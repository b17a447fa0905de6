"""``model.name = "torch"``: a PyTorch network named by its factory, built from the config.

The ``model`` section of an experiment names a function that returns a
``torch.nn.Module`` (a torchvision or timm constructor, or the user's own), and arjax
trains, resumes and evaluates it through :func:`arjax.models.torch_bridge.wrap_torch`.
Fields:

* ``torch_factory``: ``"package.module:function"`` (e.g. ``"torchvision.models:resnet18"``);
  the module must be importable (installed, or on ``PYTHONPATH``).
* ``torch_kwargs``: keyword arguments of the factory (default none). ``num_classes`` is
  added when the factory takes it and the kwargs do not set it: the data's class count,
  or ``model.num_outputs`` / ``model.binary_head`` as for arjax's torchvision networks.
* ``torch_weights``: a local ``state_dict`` file, ``.safetensors`` or a torch pickle
  (``.pt`` / ``.pth``, read with ``weights_only=True``), or "" for the factory's own
  initialisation. Entries whose shape differs from the network's (a 1000-class ImageNet
  head on a 10-class network) keep their initialisation and are logged; missing or
  unexpected keys are an error.
* ``torch_features``: None, ``"penultimate"`` or a submodule name (see ``from_torch``);
  ARFL needs one, CAMs need the last convolutional block (``"layer4"`` of a ResNet).
* ``input_norm``: ``"none"`` (default), ``"imagenet"`` or ``"half"``: standardisation of
  the ``[0, 1]`` images inside the model, so attack radii stay in pixel units.

The factory runs under ``torch.manual_seed`` of a seed derived from the run's seed
(PyTorch's global generator is restored afterwards), so the same config and seed build
the same network. Inputs ``[H, W, C]`` reach the network as ``[B, C, H, W]``.
"""

import importlib
import inspect
import logging
import os

import jax
import ml_collections
from flax import nnx

from arjax.models.layers import torchvision_num_outputs
from arjax.models.torch_bridge import TorchModule, wrap_torch

_log = logging.getLogger(__name__)


def import_factory(spec: str):
    """The callable named ``"package.module:function"`` (``model.torch_factory``).

    Raises:
      ValueError: a malformed spec, an unimportable module or a missing attribute.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(
            f"model.torch_factory={spec!r} must be 'package.module:function', e.g. "
            "'torchvision.models:resnet18'"
        )
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        msg = f"model.torch_factory={spec!r}: cannot import {module_name!r}: {e}"
        raise ValueError(msg) from None
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"model.torch_factory={spec!r}: {module_name} has no {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"model.torch_factory={spec!r} is not callable")
    return factory


def _takes(factory, name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def load_weights(module, path: str) -> None:
    """Loads a local ``state_dict`` file into ``module`` (``model.torch_weights``).

    Raises:
      FileNotFoundError: no such file.
      ValueError: keys missing from the file or unknown to the network, naming some.
    """
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.torch_weights={path!r}: no such file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    own = module.state_dict()
    skipped = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    state = {k: v for k, v in state.items() if k not in skipped}
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"model.torch_weights={path!r} does not fit the network: missing "
            f"{missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}"
        )
    _log.info(
        "loaded %d tensors from %s; kept the initialisation of %s (shape differs)",
        len(state),
        path,
        skipped or "none",
    )


def build_torch_model(
    cfg: ml_collections.ConfigDict, input_shape, num_classes: int, rngs: nnx.Rngs
) -> TorchModule:
    """The ``model.name="torch"`` builder (fields in the module docstring).

    Args:
      cfg: the ``model`` section.
      input_shape: per-example input shape, ``(H, W, C)`` for images.
      num_classes: the data's class count.
      rngs: ``params`` stream: the torch initialisation and dropout seeds.

    Returns:
      the :class:`TorchModule` (``build_model`` splits it).

    Raises:
      ValueError: a bad field, a factory that fails, or logits of the wrong width.
      FileNotFoundError: a missing ``torch_weights`` file.
    """
    import torch

    factory = import_factory(cfg.get("torch_factory", None))
    kwargs = cfg.get("torch_kwargs", None) or {}
    kwargs = kwargs.to_dict() if isinstance(kwargs, ml_collections.ConfigDict) else dict(kwargs)
    num_outputs = torchvision_num_outputs(cfg, num_classes)
    if "num_classes" not in kwargs and _takes(factory, "num_classes"):
        kwargs["num_classes"] = num_outputs
    seed = int(jax.random.randint(rngs.params(), (), 0, 2**31 - 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = factory(**kwargs)
        except TypeError as e:
            msg = f"model.torch_factory={cfg.torch_factory!r}(**{kwargs}): {e}"
            raise ValueError(msg) from None
    if not isinstance(module, torch.nn.Module):
        raise ValueError(
            f"model.torch_factory={cfg.torch_factory!r} returned a {type(module).__name__}, "
            "not a torch.nn.Module"
        )
    if cfg.get("torch_weights", ""):
        load_weights(module, cfg.torch_weights)
    shape = tuple(int(d) for d in input_shape)
    example = torch.zeros((2, shape[-1], *shape[:-1]) if len(shape) == 3 else (2, *shape))
    model = wrap_torch(
        module,
        example,
        features=cfg.get("torch_features", None),
        channels_last=len(shape) == 3,
        input_norm=cfg.get("input_norm", "none"),
        seed=seed,
    )
    width = model.logits_shape[-1] if len(model.logits_shape) == 2 else 1
    if width != num_outputs:
        raise ValueError(
            f"model.torch_factory={cfg.torch_factory!r} gives {width} logits, the data needs "
            f"{num_outputs}: set model.torch_kwargs.num_classes (or the factory's own field)"
        )
    return model


__all__ = ["build_torch_model", "import_factory", "load_weights"]
