"""The jit boundary between Flax NNX modules and pure functions (DESIGN §3.2).

A model is built once, split into its static graph definition and two state
pytrees (``params``: trainable ``nnx.Param``; ``batch_stats``: the non-trainable
state a forward pass may update: running statistics ``nnx.BatchStat`` and the
dropout streams' ``nnx.RngState`` (key and counter), empty for models with
neither). Traced code rebuilds the module with ``nnx.merge`` and calls it; the
mode is chosen explicitly per call, never flipped globally: eval mode (running
statistics, dropout off) for attacks and evaluation, train mode (batch
statistics, dropout masks drawn from the threaded rng state) in training.
The module's own mode (NNX builds modules in train mode) does not matter.
"""

import dataclasses

import jax
from flax import nnx
from jax.tree_util import Partial

from arjax.models.outputs import call_model, check_features
from arjax.models.precision import (
    DTYPES,
    cast_floats,
    check_dtype,
    outputs_to_float32,
    restore_dtypes,
)
from arjax.types import Array, LogitsFn, PyTree

# The non-trainable state a forward pass updates (the ``batch_stats`` pytree).
MODEL_STATE = (nnx.BatchStat, nnx.RngState)


@dataclasses.dataclass(frozen=True)
class ModelFns:
    """Pure functions of one model architecture.

    Attributes:
      graphdef: the static structure from ``nnx.split`` (hashable).
      features: how the features are read from the module's output, one of
        ``arjax.models.outputs.FEATURES``: ``"auto"`` (a returned pair is
        ``(logits, features)``, plain logits give None), ``"penultimate"`` (the input
        of the last ``nnx.Linear`` called) or None.
      dtype: the compute dtype, a key of ``arjax.models.precision.DTYPES``
        (``model.dtype``): ``"bfloat16"`` runs the network on bfloat16 copies of the
        parameters, statistics and input and returns float32 logits and features
        (parameters, their gradients and the updated statistics stay float32).
    """

    graphdef: nnx.GraphDef
    features: str | None = "auto"
    dtype: str = "float32"

    def apply(
        self, params: PyTree, batch_stats: PyTree, x: Array, *, train: bool = False
    ) -> tuple[Array, Array, PyTree]:
        """Runs the model on ``x``.

        Args:
          params: ``nnx.State`` of parameters.
          batch_stats: ``nnx.State`` of batch statistics and dropout rng state (may
            be empty).
          x: inputs ``[B, ...]``.
          train: use and update batch statistics and draw dropout masks (True), or
            use the running averages with dropout off (False, the default and what
            attacks use).

        Returns:
          ``(logits, features, new_batch_stats)``; ``features`` is None for a model
          returning plain logits (``features="auto"``); ``new_batch_stats`` equals
          ``batch_stats`` when ``train`` is False, else carries the updated statistics
          and the advanced dropout counters (so the next call draws new masks).
        """
        # copy=True: fresh Variables owned by the current trace. Without it a
        # BatchStat created at an outer trace level (jit) cannot be updated
        # inside jax.grad (flax raises TraceContextError).
        stored_stats = batch_stats
        if self.dtype != "float32":  # mixed precision: compute on low-precision copies
            low = DTYPES[self.dtype]
            params, batch_stats, x = cast_floats((params, batch_stats, x), low)
        model = nnx.merge(self.graphdef, params, batch_stats, copy=True)
        if train:
            model.train()
        else:
            model.eval()
        logits, features = call_model(model, x, self.features)
        if self.dtype == "float32":
            new_stats = nnx.state(model, MODEL_STATE) if train else batch_stats
            return logits, features, new_stats
        logits, features = outputs_to_float32(logits, features)
        new_stats = nnx.state(model, MODEL_STATE) if train else stored_stats
        return logits, features, restore_dtypes(new_stats, stored_stats)

    def logits_fn(self, params: PyTree, batch_stats: PyTree, *, train: bool = False) -> LogitsFn:
        """``images -> logits`` for attacks (statistics are not updated).

        A :class:`jax.tree_util.Partial` over ``params`` and ``batch_stats``: jitted
        attacks and evaluations take it as an argument (its arrays traced, its
        function, equal for equal architectures, in the cache key), so a second
        model of the same architecture (another seed) reuses their executables.

        Args:
          params: parameter state.
          batch_stats: batch statistics state.
          train: normalise with the current batch's statistics instead of the
            running averages (some reference codes attack in train mode).

        Returns:
          ``f(x [B, ...]) -> logits``.
        """
        return Partial(_Logits(self, train), params, batch_stats)


@dataclasses.dataclass(frozen=True)
class _Logits:
    """``(params, batch_stats, x) -> logits`` of a model; equal for equal models and mode."""

    model: ModelFns
    train: bool

    def __call__(self, params: PyTree, batch_stats: PyTree, x: Array) -> Array:
        return self.model.apply(params, batch_stats, x, train=self.train)[0]


def split_model(
    model: nnx.Module, *, features: str | None = "auto", dtype: str = "float32"
) -> tuple[ModelFns, PyTree, PyTree]:
    """Splits a built module into ``(ModelFns, params, batch_stats)``.

    ``batch_stats`` holds the ``nnx.BatchStat`` and ``nnx.RngState`` variables (dropout
    streams created with ``nnx.Dropout(rate, rngs=...)``): training threads them through
    the state, so each train-mode call draws fresh masks; eval mode turns dropout off.

    Args:
      model: an NNX module returning logits or ``(logits, features)``, in any mode.
      features: see :class:`ModelFns`.
      dtype: the compute dtype, see :class:`ModelFns` (parameters stay as built).

    Raises:
      ValueError: an unknown ``features``, or the module holds state other than
        ``Param``, ``BatchStat`` and ``RngState`` (e.g. ``nnx.Intermediate`` from ``sow``),
        which the pure training step would silently drop; the message names the paths.
    """
    check_features(features)
    graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, MODEL_STATE, ...)
    if jax.tree.leaves(rest):
        paths = [".".join(map(str, path)) for path, _ in nnx.to_flat_state(rest)]
        raise ValueError(
            f"model {type(model).__name__} holds state other than Param/BatchStat/RngState, "
            f"which arjax's pure steps would drop: {paths[:5]}"
        )
    check_dtype(dtype)
    return ModelFns(graphdef, features, dtype), params, batch_stats
