"""Bring your own model: any Flax NNX module or apply function as arjax's ``ModelFns``.

arjax's attacks, methods, train step and evaluation see a model only as
:class:`arjax.models.ModelFns` plus two state pytrees (DESIGN §3.2). :func:`adapt`
produces them from what a notebook user has:

* an ``nnx.Module`` returning plain logits (or ``(logits, features)``), in whatever
  mode it was left (NNX builds modules in train mode). Batch norm is explicit: attacks
  and evaluation use the running statistics (``logits_fn(..., train=False)``), the
  training methods use and update the batch's statistics; dropout
  (``nnx.Dropout(rate, rngs=nnx.Rngs(dropout=seed))``) is off in attacks and drawn in
  training from its rng state, which the train state threads with the statistics;
* a pure ``apply_fn(params, x) -> logits`` (or ``(logits, features)``) with its
  parameter pytree; it has no batch statistics and no dropout (write those as an NNX
  module).

Example::

    fns, params, stats = arjax.models.adapt(my_module)
    x_adv = arjax.attacks.pgd(fns.logits_fn(params, stats), x, y, key, eps=0.03)
    loss = arjax.methods.make_loss(arjax.method_config("trades"), fns, (0.0, 1.0))
"""

import dataclasses
from collections.abc import Callable
from typing import Any

from flax import nnx

from arjax.models.functional import ModelFns, split_model
from arjax.models.outputs import call_model, check_features
from arjax.types import Array, PyTree


@dataclasses.dataclass(frozen=True)
class FunctionModel(ModelFns):
    """:class:`ModelFns` of a pure ``apply_fn(params, x)``; ``graphdef`` is None.

    Attributes:
      apply_fn: ``(params, x [B, ...]) -> logits`` or ``(logits, features)``.
    """

    apply_fn: Callable[[PyTree, Array], Any] | None = None

    def apply(
        self, params: PyTree, batch_stats: PyTree, x: Array, *, train: bool = False
    ) -> tuple[Array, Array | None, PyTree]:
        """Runs ``apply_fn(params, x)``; ``train`` changes nothing (no statistics, no dropout).

        Returns:
          ``(logits, features or None, batch_stats)``.
        """
        del train
        logits, features = call_model(lambda v: self.apply_fn(params, v), x, self.features)
        return logits, features, batch_stats


def adapt(
    model: nnx.Module | Callable[[PyTree, Array], Any],
    params: PyTree | None = None,
    *,
    features: str | None = "auto",
) -> tuple[ModelFns, PyTree, PyTree]:
    """``(ModelFns, params, batch_stats)`` of a user's NNX module or apply function.

    Args:
      model: an ``nnx.Module`` (``model(x [B, ...])`` returns logits ``[B, K]`` / ``[B]``
        or ``(logits, features)``; its Params, BatchStats and dropout RngState are taken;
        any mode), or a function ``apply_fn(params, x)`` returning the same.
      params: the parameter pytree of an ``apply_fn`` (must be None for a module, whose
        parameters are its ``nnx.Param`` variables).
      features: what methods needing features (ARFL's ``L_robust``, Hao et al. Eq. 1)
        and CAMs read: ``"auto"`` (the model's second output, or None for plain logits:
        those methods then raise an error naming themselves), ``"penultimate"`` (the
        input of the last ``nnx.Linear`` the module calls: its penultimate activations)
        or None.

    Returns:
      ``(fns, params, batch_stats)``: ``fns.logits_fn(params, batch_stats)`` is the
      eval-mode closure attacks take; ``fns.apply(..., train=True)`` is what the training
      methods call. ``batch_stats`` is an empty ``nnx.State`` for an ``apply_fn``.

    Raises:
      ValueError: an unknown ``features``, ``params`` given with a module or missing with
        a function, or module state arjax cannot thread (see :func:`split_model`).
      TypeError: ``model`` is neither an ``nnx.Module`` nor callable.
    """
    check_features(features)
    if isinstance(model, nnx.Module):
        if params is not None:
            raise ValueError(
                "adapt(module, params=...): a module's parameters are its nnx.Param "
                "variables; pass params only with an apply function"
            )
        return split_model(model, features=features)
    if not callable(model):
        raise TypeError(
            f"adapt() takes an nnx.Module or an apply_fn(params, x); got {type(model).__name__}"
        )
    if params is None:
        raise ValueError("adapt(apply_fn): pass the parameter pytree as params=")
    return FunctionModel(None, features, apply_fn=model), params, nnx.State({})
