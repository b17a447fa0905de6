"""The jit boundary between Flax NNX modules and pure functions (DESIGN §3.2).

A model is built once, split into its static graph definition and two state
pytrees (``params``: trainable ``nnx.Param``; ``batch_stats``: running
statistics ``nnx.BatchStat``, empty for models without batch norm). Traced
code rebuilds the module with ``nnx.merge`` and calls it; the mode (train or
eval statistics) is chosen explicitly per call, never flipped globally.
"""

import dataclasses

import jax
from flax import nnx

from arjax.types import Array, LogitsFn, PyTree


@dataclasses.dataclass(frozen=True)
class ModelFns:
    """Pure functions of one model architecture.

    Attributes:
      graphdef: the static structure from ``nnx.split`` (hashable).
    """

    graphdef: nnx.GraphDef

    def apply(
        self, params: PyTree, batch_stats: PyTree, x: Array, *, train: bool = False
    ) -> tuple[Array, Array, PyTree]:
        """Runs the model on ``x``.

        Args:
          params: ``nnx.State`` of parameters.
          batch_stats: ``nnx.State`` of batch statistics (may be empty).
          x: inputs ``[B, ...]``.
          train: use and update batch statistics (True) or the running
            averages (False, the default and what attacks use).

        Returns:
          ``(logits, features, new_batch_stats)``; ``new_batch_stats`` equals
          ``batch_stats`` when ``train`` is False.
        """
        # copy=True: fresh Variables owned by the current trace. Without it a
        # BatchStat created at an outer trace level (jit) cannot be updated
        # inside jax.grad (flax raises TraceContextError).
        model = nnx.merge(self.graphdef, params, batch_stats, copy=True)
        if train:
            model.train()
        else:
            model.eval()
        logits, features = model(x)
        new_stats = nnx.state(model, nnx.BatchStat) if train else batch_stats
        return logits, features, new_stats

    def logits_fn(self, params: PyTree, batch_stats: PyTree, *, train: bool = False) -> LogitsFn:
        """A closure ``images -> logits`` for attacks (statistics are not updated).

        Args:
          params: parameter state.
          batch_stats: batch statistics state.
          train: normalise with the current batch's statistics instead of the
            running averages (some reference codes attack in train mode).

        Returns:
          ``f(x [B, ...]) -> logits``.
        """

        def f(x: Array) -> Array:
            return self.apply(params, batch_stats, x, train=train)[0]

        return f


def split_model(model: nnx.Module) -> tuple[ModelFns, PyTree, PyTree]:
    """Splits a built module into ``(ModelFns, params, batch_stats)``.

    Raises:
      ValueError: when the module holds state other than ``Param`` and
        ``BatchStat`` (e.g. RNG streams for dropout), which the pure training
        step would silently drop.
    """
    graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    if jax.tree.leaves(rest):
        raise ValueError(
            f"model {type(model).__name__} holds state other than Param/BatchStat: "
            f"{list(nnx.to_flat_state(rest).keys())[:5]}"
        )
    return ModelFns(graphdef), params, batch_stats
