"""Replacing layers of an NNX module graph in place (DSBN's dual norms, feature taps).

NNX modules are Python object graphs: a layer is an attribute of its parent, or an
entry of an ``nnx.List`` / ``nnx.Dict``. :func:`wrap_layers` finds every layer of a
type with ``nnx.iter_graph`` and puts ``wrap(layer)`` in its place.
"""

from collections.abc import Callable
from typing import Any

from flax import nnx


def _child(node: Any, key: Any) -> Any:
    """``node[key]`` for ``nnx.List`` / ``nnx.Dict``, else the attribute ``key``."""
    return node[key] if isinstance(node, nnx.List | nnx.Dict) else getattr(node, key)


def _set_child(node: Any, key: Any, value: Any) -> None:
    """Sets what :func:`_child` reads."""
    if isinstance(node, nnx.List | nnx.Dict):
        node[key] = value
    else:
        setattr(node, key, value)


def wrap_layers(
    module: nnx.Module, layer_type: type, wrap: Callable[[nnx.Module], nnx.Module]
) -> list[tuple[Any, ...]]:
    """Replaces every ``layer_type`` instance in ``module`` by ``wrap(instance)`` (in place).

    Args:
      module: the module to edit (it is changed).
      layer_type: the layer class to find (``isinstance``).
      wrap: builds the replacement from the layer.

    Returns:
      the graph paths of the replaced layers (empty when there was none).
    """
    paths = [path for path, node in nnx.iter_graph(module) if isinstance(node, layer_type)]
    for path in paths:
        parent = module
        for key in path[:-1]:
            parent = _child(parent, key)
        _set_child(parent, path[-1], wrap(_child(parent, path[-1])))
    return paths
