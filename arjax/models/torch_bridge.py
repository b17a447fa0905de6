"""Bring your PyTorch model: any ``torch.nn.Module`` as arjax's ``ModelFns`` (issue 34).

:func:`from_torch` wraps a module in :class:`TorchModule`, an NNX module whose state is
the torch module's tensors as JAX arrays and whose call runs the torch ``forward``
through torchax (``arjax.models.torch_runtime``). :func:`arjax.models.split_model` then
splits it like any arjax network, so a PyTorch model gets everything the Flax ones get:
attacks, every training method's loss, the compiled data-parallel step, mixed precision,
checkpoints and resume, the evaluation suite. The state, by PyTorch's names:

* ``params["params"]``: the parameters with ``requires_grad`` (what the optimiser trains);
* ``batch_stats["buffers"]``: the buffers (BatchNorm's running statistics and integer
  ``num_batches_tracked``) and frozen parameters: never differentiated; train mode
  writes the updated running statistics here, as PyTorch does in place;
* ``batch_stats["rngs"]``: the dropout stream (key and counter): each train-mode call
  draws a new key for the module's random operators; eval mode turns dropout off.

Trained weights go back to PyTorch as a ``state_dict`` (:meth:`TorchModel.state_dict`,
:func:`save_state_dict`): the same keys and dtypes as ``module.state_dict()``, so
``module.load_state_dict(safetensors.torch.load_file(path))`` loads them.

Example::

    net = torchvision.models.resnet18(num_classes=10)          # any torch.nn.Module
    model = arjax.models.from_torch(net, torch.zeros(1, 3, 32, 32), features="layer4")
    x = jnp.asarray(images_nchw.permute(0, 2, 3, 1).numpy())   # arjax's [B, H, W, C]
    x_adv = arjax.attacks.pgd(model.logits_fn(), x, y, key, eps=8 / 255)
    fns, params, batch_stats = model                            # what adapt() returns

This module imports no torch; :func:`from_torch` imports torch and torchax (the
``[torch]`` extra) when called.
"""

import os
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from arjax.models.functional import ModelFns, split_model
from arjax.models.layers import INPUT_NORMS, input_norm_stats
from arjax.types import Array, LogitsFn, PyTree

# A run's trained weights as a PyTorch state_dict (arjax.experiment writes it at the end).
STATE_DICT_FILE = "state_dict.safetensors"


class TorchModule(nnx.Module):
    """An NNX module holding a torch module's tensors and running it through torchax.

    Attributes:
      runner: the torch side (``torch_runtime.TorchRunner``; static).
      params: ``nnx.Dict`` of ``nnx.Param``, trainable parameters by torch name.
      buffers: ``nnx.Dict`` of ``nnx.BatchStat``, buffers and frozen parameters.
      rngs: the dropout stream.
      exports: ``((state_dict key, "params" | "buffers", name, numpy dtype), ...)``.
      head: torch name of the ``nn.Linear`` on the global average of the feature map
        (the CAM head), or None.
      logits_shape: the logits' shape on the example input (static).
      deterministic: eval mode (set by NNX's ``train()`` / ``eval()``).
    """

    def __init__(
        self,
        runner,
        params: dict[str, Array],
        buffers: dict[str, Array],
        *,
        exports: tuple,
        head: str | None,
        seed: int,
        logits_shape: tuple[int, ...] = (),
    ):
        self.runner = runner
        self.logits_shape = tuple(logits_shape)
        self.params = nnx.Dict({k: nnx.Param(v) for k, v in params.items()})
        self.buffers = nnx.Dict({k: nnx.BatchStat(v) for k, v in buffers.items()})
        self.rngs = nnx.Rngs(dropout=seed)
        self.exports = exports
        self.head = head
        self.deterministic = True

    def __call__(self, x: Array) -> Array | tuple[Array, Array]:
        """Logits ``[B, K]`` (or ``(logits, features)`` when features are named) of ``x``."""
        train = not self.deterministic
        key = self.rngs.dropout() if train else None
        params = {k: v.get_value() for k, v in self.params.items()}
        buffers = {k: v.get_value() for k, v in self.buffers.items()}
        logits, features, new = self.runner(params, buffers, x, train=train, key=key)
        if train:
            for k, v in new.items():
                self.buffers[k].set_value(v)
        return logits if self.runner.features is None else (logits, features)

    def cam_kernel(self) -> Array:
        """The CAM weights ``[C, K]``: the head's ``weight.T`` (Zhou et al. 2016, Eq. 2).

        Raises:
          ValueError: the features are not a map feeding a linear head through GAP.
        """
        if self.head is None:
            raise ValueError(
                "CAM needs features=<the last convolutional block> of a network whose last "
                "nn.Linear takes the global average of that map (e.g. features='layer4' of a "
                "torchvision ResNet)"
            )
        return self.params[f"{self.head}.weight"].get_value().T

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{state_dict key: numpy array}`` with PyTorch's keys and dtypes."""
        out = {}
        for key, group, name, dtype in self.exports:
            value = getattr(self, group)[name].get_value()
            out[key] = np.asarray(jax.device_get(value)).astype(dtype)
        return out


class TorchModel(NamedTuple):
    """What :func:`from_torch` returns: ``fns, params, batch_stats = model`` unpacks it.

    Attributes:
      fns: the pure functions (attacks, methods, steps and evaluation take these).
      params: the trainable parameters (``nnx.State``).
      batch_stats: buffers, frozen parameters and the dropout stream (``nnx.State``).
    """

    fns: ModelFns
    params: PyTree
    batch_stats: PyTree

    def logits_fn(self, *, train: bool = False) -> LogitsFn:
        """``images [B, ...] -> logits``: eval mode (running statistics, no dropout)."""
        return self.fns.logits_fn(self.params, self.batch_stats, train=train)

    def state_dict(
        self, params: PyTree | None = None, batch_stats: PyTree | None = None
    ) -> dict[str, np.ndarray]:
        """PyTorch ``state_dict`` of ``params`` / ``batch_stats`` (default: the model's own)."""
        params = self.params if params is None else params
        batch_stats = self.batch_stats if batch_stats is None else batch_stats
        return torch_state_dict(self.fns, params, batch_stats)


def from_torch(
    module: Any,
    example_input: Any,
    *,
    features: str | None = None,
    channels_last: bool = True,
    input_norm: str = "none",
    dtype: str = "float32",
    seed: int = 0,
) -> TorchModel:
    """A ``torch.nn.Module`` as ``(ModelFns, params, batch_stats)``, run by torchax.

    Args:
      module: the network; ``module(x)`` returns logits ``[B, K]`` (softmax), ``[B]`` /
        ``[B, 1]`` (one binary logit), a tuple whose first entry is those, or an object
        with ``.logits``. Copied: later changes to it do not reach arjax.
      example_input: a batch ``module`` accepts, in its own layout (e.g. ``[B, C, H, W]``;
        a torch tensor or an array): it is run once, eagerly, to check the outputs.
      features: what ARFL's ``L_robust`` (Hao et al., Eq. 1) and CAMs read: None,
        ``"penultimate"`` (the input of the last ``nn.Linear`` called) or a submodule
        name (its output, e.g. ``"layer4"`` of a torchvision ResNet: the last
        convolutional map, which also gives CAMs).
      channels_last: the returned functions take ``[B, H, W, C]`` images (arjax's layout)
        and hand the module ``[B, C, H, W]``; 4-D features come back ``[B, h, w, C]``.
        False: inputs go to the module unchanged.
      input_norm: standardisation of the ``[0, 1]`` images before the module, a key of
        ``arjax.models.INPUT_NORMS`` (``"imagenet"`` for torchvision's weights).
      dtype: compute dtype, ``"float32"`` or ``"bfloat16"`` (``arjax.models.precision``).
      seed: seed of the dropout stream.

    Returns:
      a :class:`TorchModel`.

    Raises:
      ImportError: torch or torchax missing (``pip install 'arjax[torch]'``).
      TypeError: ``module`` is not a ``torch.nn.Module``.
      ValueError: an unknown submodule, input norm or dtype, logits of another rank, or
        a BatchNorm arjax cannot trace (``momentum=None``).
    """
    wrapped = wrap_torch(
        module,
        example_input,
        features=features,
        channels_last=channels_last,
        input_norm=input_norm,
        seed=seed,
    )
    return TorchModel(*split_model(wrapped, features="auto", dtype=dtype))


def wrap_torch(
    module: Any,
    example_input: Any,
    *,
    features: str | None = None,
    channels_last: bool = True,
    input_norm: str = "none",
    seed: int = 0,
) -> TorchModule:
    """The :class:`TorchModule` of ``module`` (unsplit); arguments as :func:`from_torch`."""
    import torch

    from arjax.models import torch_runtime

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch() takes a torch.nn.Module; got {type(module).__name__}")
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"unknown input_norm {input_norm!r}; valid: {sorted(INPUT_NORMS)}")
    example = example_input
    if not isinstance(example, torch.Tensor):
        example = torch.as_tensor(np.asarray(example))
    stats = None
    if input_norm != "none":
        if not channels_last:
            raise ValueError("input_norm standardises channels-last images: needs channels_last")
        stats = input_norm_stats(input_norm, int(example.shape[1]))
    runner = torch_runtime.TorchRunner(
        module, features=features, channels_last=channels_last, input_norm=stats
    )
    probe = runner.probe(example)
    if len(probe["logits"]) not in (1, 2):
        raise ValueError(
            f"{type(module).__name__} returned outputs of shape {probe['logits']}; arjax "
            "reads logits [B, K] or [B]"
        )
    named = dict(runner.module.named_parameters())
    params = {k: v for k, v in named.items() if v.requires_grad}
    buffers = {k: v for k, v in named.items() if not v.requires_grad}
    buffers.update(dict(runner.module.named_buffers()))
    wrapped = TorchModule(
        runner,
        torch_runtime.to_jax(params),
        torch_runtime.to_jax(buffers),
        exports=_exports(runner.module, params, buffers),
        head=_cam_head(runner.module, features, probe),
        seed=seed,
        logits_shape=probe["logits"],
    )
    return wrapped


def _exports(module, params: dict, buffers: dict) -> tuple:
    """``(key, group, name, numpy dtype)`` for every ``state_dict`` entry (ties included)."""
    from arjax.models.torch_runtime import numpy_dtype

    owner = {id(v): ("buffers", k) for k, v in buffers.items()}
    owner.update({id(v): ("params", k) for k, v in params.items()})
    exports = []
    for key, value in module.state_dict(keep_vars=True).items():
        if id(value) not in owner:
            raise ValueError(f"state_dict entry {key!r} is neither a parameter nor a buffer")
        exports.append((key, *owner[id(value)], numpy_dtype(value.dtype).name))
    return tuple(exports)


def _cam_head(module, features: str | None, probe: dict) -> str | None:
    """The last ``nn.Linear`` called, when it takes the channels of a 4-D feature map."""
    import torch

    shape, head = probe["features"], probe["head"]
    if features in (None, "penultimate") or shape is None or len(shape) != 4 or head is None:
        return None
    linear = module.get_submodule(head)
    return head if isinstance(linear, torch.nn.Linear) and linear.in_features == shape[1] else None


def torch_module(fns: ModelFns, params: PyTree, batch_stats: PyTree) -> TorchModule | None:
    """The :class:`TorchModule` behind ``fns`` with this state, or None for other models."""
    if fns.graphdef is None:
        return None
    module = nnx.merge(fns.graphdef, params, batch_stats)
    return module if isinstance(module, TorchModule) else None


def torch_state_dict(fns: ModelFns, params: PyTree, batch_stats: PyTree) -> dict[str, np.ndarray]:
    """PyTorch ``state_dict`` (numpy arrays, torch's keys and dtypes) of a torch model's state.

    Raises:
      ValueError: ``fns`` is not a model from :func:`from_torch`.
    """
    module = torch_module(fns, params, batch_stats)
    if module is None:
        raise ValueError("torch_state_dict() needs a model built by from_torch()")
    return module.state_dict()


def save_state_dict(path: str, state_dict: dict[str, np.ndarray]) -> None:
    """Writes a ``state_dict`` as safetensors (``safetensors.torch.load_file`` reads it).

    Written to a temporary name, then renamed: a killed run leaves the old file or none.
    """
    from safetensors.numpy import save_file

    partial = f"{path}.partial"
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, partial)
    os.replace(partial, path)


def export_run_weights(
    fns: ModelFns, params: PyTree, batch_stats: PyTree, directory: str
) -> str | None:
    """Writes a torch model's trained weights to ``<directory>/state_dict.safetensors``.

    Returns:
      the file's path, or None (nothing written) for a model not from PyTorch.
    """
    module = torch_module(fns, params, batch_stats)
    if module is None:
        return None
    path = os.path.join(directory, STATE_DICT_FILE)
    save_state_dict(path, module.state_dict())
    return path


__all__ = [
    "STATE_DICT_FILE",
    "export_run_weights",
    "TorchModel",
    "TorchModule",
    "from_torch",
    "save_state_dict",
    "torch_module",
    "torch_state_dict",
    "wrap_torch",
]
