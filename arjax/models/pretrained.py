"""torchvision conventions for arjax's ResNet, DenseNet and VGG: weights and initialisation.

Import (``load_pretrained``, ``import_torchvision``) copies a torchvision
ImageNet state dict, read from a local ``.safetensors`` file (or ``.pth`` when
PyTorch is installed; nothing is downloaded), into a model built by
``resnet.py``, ``densenet.py`` or ``vgg.py``. Export (``export_torchvision``)
writes the same names back, so a round trip is the identity.

Naming: a model's parameter paths ARE torchvision's module names with ``/``
for ``.`` (``layer4/1/conv2/kernel`` <-> ``layer4.1.conv2.weight``,
``features/28/kernel`` <-> ``features.28.weight``), except where a model
declares ``torchvision_renames`` (the truncated DenseNet's final norm is
torchvision's ``features.transition2.norm``). Leaf names and layouts:

=====================  ===================  =========================================
arjax module / leaf    torchvision          conversion
=====================  ===================  =========================================
``Conv.kernel``        ``weight``           OIHW ``[O, I, kh, kw]`` -> HWIO ``[kh, kw, I, O]``
``Conv.bias``          ``bias``             as is
``nnx.Linear.kernel``  ``weight``           ``[out, in]`` -> ``[in, out]``
``nnx.Linear.bias``    ``bias``             as is
norm ``scale/bias``    ``weight/bias``      as is (BatchNorm, or instance norm's affine)
BatchNorm ``mean/var`` ``running_mean/var`` as is, into ``nnx.BatchStat``
=====================  ===================  =========================================

Accounting is strict: every tensor of the file is loaded exactly once, or
dropped by a rule the architecture declares (``num_batches_tracked``; running
statistics where the model uses instance norm; the blocks a truncated
network removed: ``torchvision_dropped``), or is a head tensor whose shape
differs from the model's head (another class count; the head then keeps its
fresh initialisation). Anything else, and any model variable the file does not
provide, raises ``ValueError`` listing the names. The one shape change allowed
outside the head: a 1-channel (grayscale) model's input convolution receives
the RGB kernel summed over its input channels, which is exact for a gray image
copied into three channels when the input standardisation is the same for all
channels (``layers.input_norm_stats`` uses the channel averages for ImageNet,
whose per-channel values differ by a few percent).

``torchvision_init`` draws a fresh model's values the way torchvision's model
constructors do (a model-level loop after building the layers), on the host
with numpy: building the modules abstractly (``abstract_module``) and filling
them this way compiles nothing, where eager JAX initialisation compiles one
sampler per parameter shape (about 15 s for ResNet-18 on a 2-core CPU).
"""

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from arjax.models.layers import Conv

NORM_TYPES = (nnx.BatchNorm, nnx.InstanceNorm, nnx.GroupNorm, nnx.LayerNorm)
# (module type, arjax leaf) -> (torchvision leaf, layout kind)
_LEAVES = {
    (Conv, "kernel"): ("weight", "conv"),
    (Conv, "bias"): ("bias", "vector"),
    (nnx.Linear, "kernel"): ("weight", "linear"),
    (nnx.Linear, "bias"): ("bias", "vector"),
    ("norm", "scale"): ("weight", "vector"),
    ("norm", "bias"): ("bias", "vector"),
    ("norm", "mean"): ("running_mean", "vector"),
    ("norm", "var"): ("running_var", "vector"),
}
_RUNNING = ("running_mean", "running_var", "num_batches_tracked")


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One model variable and its torchvision tensor."""

    name: str  # torchvision state-dict key
    variable: nnx.Variable
    kind: str  # "conv" | "linear" | "vector"
    is_head: bool
    is_input_conv: bool


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """What ``import_torchvision`` did with each tensor of the state dict.

    Attributes:
      loaded: names copied into the model (each exactly once).
      dropped: names the architecture declares unused (``num_batches_tracked``,
        running statistics of instance-normalised models, removed blocks).
      skipped_head: head names not loaded (shape differs or ``head="skip"``);
        the model's head keeps its initialisation.
      summed_input_channels: the RGB input kernel was summed into 1 channel.
    """

    loaded: tuple[str, ...]
    dropped: tuple[str, ...]
    skipped_head: tuple[str, ...]
    summed_input_channels: bool


def _module_prefix(model: nnx.Module, path: tuple) -> str:
    dotted = ".".join(str(p) for p in path)
    for ours, theirs in getattr(model, "torchvision_renames", {}).items():
        if dotted == ours or dotted.startswith(ours + "."):
            return theirs + dotted[len(ours) :]
    return dotted


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _entries(model: nnx.Module) -> tuple[list[_Entry], set[str], set[str]]:
    """Model variables with their torchvision names.

    Returns:
      ``(entries, batch_norm_prefixes, stat_free_norm_prefixes)``; the last
      two name the norms whose ``num_batches_tracked`` (BatchNorm) or running
      statistics (instance norm) a torchvision file carries but the model
      does not store.
    """
    head = getattr(model, "torchvision_head", None)
    input_conv = getattr(model, "torchvision_input_conv", None)
    entries, bn, stat_free, seen = [], set(), set(), set()
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Module) or node is model:
            continue
        kind = "norm" if isinstance(node, NORM_TYPES) else type(node)
        prefix = _module_prefix(model, path)
        leaves = {k: v for k, v in vars(node).items() if isinstance(v, nnx.Variable)}
        if isinstance(node, nnx.BatchNorm):
            bn.add(prefix)
        elif kind == "norm":
            stat_free.add(prefix)
        for leaf, var in leaves.items():
            if (kind, leaf) not in _LEAVES:
                raise ValueError(
                    f"no torchvision name for {type(node).__name__} variable {prefix}.{leaf}"
                )
            tv_leaf, layout = _LEAVES[(kind, leaf)]
            name = f"{prefix}.{tv_leaf}"
            if name in seen:
                raise ValueError(f"two model variables map to torchvision name {name!r}")
            seen.add(name)
            is_head = head is not None and _under(name, head)
            entries.append(_Entry(name, var, layout, is_head, prefix == input_conv))
    n_vars = len(nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))))
    if n_vars != len(entries):
        raise ValueError(f"{n_vars} model variables but {len(entries)} reached by the name map")
    return entries, bn, stat_free


# layout kind -> (torchvision -> arjax, arjax -> torchvision) axis permutations
_PERMUTATIONS = {"conv": ((2, 3, 1, 0), (3, 2, 0, 1)), "linear": ((1, 0), (1, 0))}


def _convert(array: np.ndarray, kind: str, to_torchvision: bool) -> np.ndarray:
    if kind not in _PERMUTATIONS:
        return array
    return np.transpose(array, _PERMUTATIONS[kind][int(to_torchvision)])


def export_torchvision(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's variables as a torchvision-format state dict.

    Args:
      model: a ResNet, DenseNet or VGG from arjax (any number of outputs).

    Returns:
      ``{name: C-contiguous float32 array}`` in PyTorch layouts (OIHW kernels,
      ``[out, in]`` linear weights), plus an int64 ``num_batches_tracked = 0`` per
      BatchNorm, as ``torchvision`` ``state_dict()`` has.
    """
    entries, bn, _ = _entries(model)
    # C-contiguous copies: safetensors.numpy.save_file writes a transposed view's raw buffer
    # as if it were C-ordered (silently scrambling the tensor).
    out = {
        e.name: np.ascontiguousarray(_convert(np.asarray(e.variable[...]), e.kind, True))
        for e in entries
    }
    out.update({f"{p}.num_batches_tracked": np.zeros((), np.int64) for p in bn})
    return out


def _canonical_names(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames old torchvision DenseNet keys (``denselayer1.norm.1``) to ``norm1``."""
    out = {}
    for name, value in state_dict.items():
        parts = name.split(".")
        for i in range(len(parts) - 2):
            if parts[i].startswith("denselayer") and parts[i + 2] in ("1", "2"):
                parts[i + 1 : i + 3] = [parts[i + 1] + parts[i + 2]]
                break
        new = ".".join(parts)
        if new in out:
            raise ValueError(f"state dict holds {new!r} twice (old and new DenseNet names)")
        out[new] = value
    return out


def import_torchvision(
    model: nnx.Module, state_dict: Mapping[str, np.ndarray], *, head: str = "auto"
) -> ImportReport:
    """Copies a torchvision state dict into ``model`` in place (see the module docstring).

    Args:
      model: an arjax ResNet / DenseNet / VGG; its parameters and batch
        statistics are overwritten.
      state_dict: torchvision names -> numpy arrays (PyTorch layouts).
      head: ``"auto"`` loads the classification head when its shapes match
        (1000 ImageNet classes) and keeps the model's own head otherwise;
        ``"load"`` requires it to match; ``"skip"`` never loads it.

    Returns:
      An ``ImportReport``.

    Raises:
      ValueError: unexpected or missing names, shape mismatches (listed), an
        unknown ``head`` mode.
    """
    if head not in ("auto", "load", "skip"):
        raise ValueError(f"head must be 'auto', 'load' or 'skip', got {head!r}")
    tensors = _canonical_names(state_dict)
    entries, bn, stat_free = _entries(model)
    dropped_prefixes = tuple(getattr(model, "torchvision_dropped", ()))
    by_name = {e.name: e for e in entries}
    missing = sorted(set(by_name) - set(tensors))
    dropped, unexpected = [], []
    for name in sorted(set(tensors) - set(by_name)):
        prefix, leaf = name.rsplit(".", 1) if "." in name else ("", name)
        if (
            any(_under(name, p) for p in dropped_prefixes)
            or (leaf == "num_batches_tracked" and prefix in bn)
            or (leaf in _RUNNING and prefix in stat_free)
        ):
            dropped.append(name)
        else:
            unexpected.append(name)
    if missing or unexpected:
        raise ValueError(
            f"state dict does not fit {type(model).__name__}: missing {missing[:20]} "
            f"({len(missing)}), unexpected {unexpected[:20]} ({len(unexpected)})"
        )
    values, mismatched, head_shapes, summed = {}, [], [], False
    for e in entries:
        value = _convert(np.asarray(tensors[e.name]), e.kind, False)
        want = tuple(e.variable.shape)
        if e.is_input_conv and e.kind == "conv" and value.shape[2] == 3 and want[2] == 1:
            value, summed = value.sum(axis=2, keepdims=True), True
        if value.shape != want:
            message = f"{e.name}: file {value.shape} vs model {want}"
            (head_shapes if e.is_head else mismatched).append(message)
        values[e.name] = value
    if mismatched:
        raise ValueError(f"shape mismatch for {len(mismatched)} tensors: {mismatched[:20]}")
    if head == "load" and head_shapes:
        raise ValueError(f"head='load' but the head does not fit: {head_shapes}")
    skip_head = head == "skip" or bool(head_shapes)
    loaded, skipped = [], []
    for e in entries:
        if e.is_head and skip_head:
            skipped.append(e.name)
            continue
        e.variable.set_value(jax.device_put(values[e.name].astype(e.variable.dtype, copy=False)))
        loaded.append(e.name)
    return ImportReport(tuple(loaded), tuple(dropped), tuple(skipped), summed)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a local torchvision state dict.

    Args:
      path: ``*.safetensors`` (read with the ``safetensors`` package) or
        ``*.pth`` / ``*.pt`` (read with ``torch.load(weights_only=True)``;
        needs PyTorch: ``pip install torch``).

    Returns:
      ``{name: numpy array}``.

    Raises:
      FileNotFoundError: no such file.
      ImportError: a ``.pth`` file without PyTorch installed.
      ValueError: another extension, or a ``.pth`` that is not a state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    if path.endswith((".pth", ".pt")):
        try:
            import torch
        except ImportError:
            raise ImportError(
                f"reading {path} needs PyTorch (pip install torch); or convert it once to "
                ".safetensors (safetensors.torch.save_file(torch.load(path), 'w.safetensors'))"
            ) from None
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
            raise ValueError(f"{path} is not a flat state dict of tensors")
        # bfloat16 has no numpy dtype; such weights are widened to float32.
        return {
            k: (v.float() if v.dtype == torch.bfloat16 else v).detach().cpu().numpy()
            for k, v in state.items()
        }
    raise ValueError(f"unknown weights format {path!r}: expected .safetensors, .pth or .pt")


def load_pretrained(
    model: nnx.Module, path: str | os.PathLike, *, head: str = "auto"
) -> ImportReport:
    """``import_torchvision(model, load_state_dict(path), head=head)``."""
    return import_torchvision(model, load_state_dict(path), head=head)


class _ShapeOnlyRngs:
    """Stand-in for ``nnx.Rngs`` in an abstract build: every stream returns one fixed key.

    Only shapes matter there. ``nnx.Rngs`` increments a counter per draw, and
    under tracing each increment costs time proportional to the trace so far
    (flax 0.12 builds an error message for a tracer's ``sharding``), which
    makes an abstract DenseNet-121 quadratic (6 s instead of under 2).
    """

    def __init__(self):
        self._key = jax.random.key(0, impl="unsafe_rbg")  # cheapest sampler to trace

    def __getattr__(self, stream: str) -> Callable[[], jax.Array]:
        if stream.startswith("_"):
            raise AttributeError(stream)
        return lambda: self._key


def abstract_module(factory: Callable[..., nnx.Module]) -> nnx.Module:
    """``factory(rngs)`` built without computing anything: variables hold ``ShapeDtypeStruct``.

    Args:
      factory: ``rngs -> module``; it receives a shape-only RNG stand-in.

    Returns:
      The module, every variable abstract until filled (``torchvision_init``,
      ``import_torchvision``).
    """
    graphdefs = []

    def build():
        graphdef, state = nnx.split(factory(_ShapeOnlyRngs()))
        graphdefs.append(graphdef)
        return state

    state = jax.eval_shape(build)
    return nnx.merge(graphdefs[0], state)


def torchvision_init(
    model: nnx.Module,
    seed: int | Sequence[int],
    *,
    conv_mode: str = "fan_out",
    linear: str = "uniform",
    zero_biases: bool = True,
) -> nnx.Module:
    """Fills every variable of ``model`` the way torchvision's constructors do (in place).

    Convolution kernels ``N(0, 2 / fan)`` (``kaiming_normal_``, ReLU gain;
    ``fan = k*k*C_out`` for ``"fan_out"``: ResNet, VGG; ``k*k*C_in`` for
    ``"fan_in"``: DenseNet) and zero biases; norms scale 1, bias 0, running
    mean 0, variance 1; linear layers ``"uniform"`` (PyTorch's default
    ``U(+-1/sqrt(in))``: ResNet's ``fc``, DenseNet's weight) or ``"normal"``
    ``N(0, 0.01)`` (VGG), biases zero if ``zero_biases`` else ``U(+-1/sqrt(in))``.

    Args:
      model: module to fill (may be abstract, from ``abstract_module``).
      seed: ``numpy.random.default_rng`` seed (int or ints); same seed, same
        values on every host.
      conv_mode: ``"fan_in"`` or ``"fan_out"``.
      linear: ``"uniform"`` or ``"normal"``.
      zero_biases: linear biases zero (DenseNet, VGG) or uniform (ResNet).

    Returns:
      ``model``.

    Raises:
      ValueError: bad options, or a variable outside Conv / Linear / norms.
    """
    if conv_mode not in ("fan_in", "fan_out") or linear not in ("uniform", "normal"):
        raise ValueError(f"bad torchvision_init options {conv_mode!r}, {linear!r}")
    rng = np.random.default_rng(seed)
    f32 = np.float32

    def fill(var: nnx.Variable, draw: Callable[[tuple[int, ...]], np.ndarray]) -> None:
        # device_put, not jnp.asarray: the latter compiles a transfer per shape (2 ms each).
        var.set_value(jax.device_put(draw(tuple(var.shape)).astype(f32, copy=False)))

    def uniform(bound: float) -> Callable:
        return lambda s: rng.uniform(-bound, bound, s)

    def normal(std: float) -> Callable:
        return lambda s: rng.standard_normal(s, f32) * f32(std)

    def const(value: float) -> Callable:
        return lambda s: np.full(s, value, f32)

    for _, node in nnx.iter_graph(model):
        if isinstance(node, Conv):
            k, _, cin, cout = node.kernel.shape
            fill(
                node.kernel,
                normal(math.sqrt(2 / (k * k * (cin if conv_mode == "fan_in" else cout)))),
            )
            if node.bias is not None:
                fill(node.bias, const(0.0))
        elif isinstance(node, nnx.Linear):
            bound = 1 / math.sqrt(node.in_features)
            fill(node.kernel, uniform(bound) if linear == "uniform" else normal(0.01))
            fill(node.bias, const(0.0) if zero_biases else uniform(bound))
        elif isinstance(node, NORM_TYPES):
            for leaf, value in (("scale", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0)):
                var = getattr(node, leaf, None)
                if isinstance(var, nnx.Variable):
                    fill(var, const(value))
    left = [
        "/".join(map(str, path))
        for path, var in nnx.to_flat_state(nnx.state(model))
        if isinstance(var.get_value(), jax.ShapeDtypeStruct)
    ]
    if left:
        raise ValueError(f"torchvision_init does not know how to fill {left[:10]}")
    return model
