"""Reading ``(logits, features)`` from whatever a model returns (issue 18, bring your own model).

arjax's own modules return ``(logits, features)``: ``features`` is what ARFL's
``L_robust`` (Hao et al., Eq. 1) and CAMs read. A user's module or function usually
returns plain logits. :func:`call_model` runs it and answers the pair under one of
the :data:`FEATURES` rules:

* ``"auto"``: a returned pair is ``(logits, features)``; plain logits give
  ``features = None`` (a method that needs features then says so by name);
* ``"penultimate"``: the features are the penultimate activations, i.e. the input of
  the last ``nnx.Linear`` the forward pass called (the classification head), taken on
  the fly from a traced copy of the module (nothing of the user's module changes);
* ``None``: never any features (the second output, if any, is dropped).
"""

from collections.abc import Callable
from typing import Any

from flax import nnx

from arjax.models.surgery import wrap_layers
from arjax.types import Array

FEATURES = ("auto", "penultimate", None)


def check_features(features: Any) -> None:
    """Raises ValueError when ``features`` is not one of :data:`FEATURES`."""
    if features not in FEATURES:
        raise ValueError(f"unknown features={features!r}; valid choices: {FEATURES}")


def split_outputs(out: Any) -> tuple[Array, Array | None]:
    """``(logits, features)`` from a model output: a 2-tuple/list, or plain logits.

    Raises:
      ValueError: a tuple/list of another length (the meaning of its entries is unknown).
    """
    if isinstance(out, tuple | list):
        if len(out) != 2:
            raise ValueError(
                f"the model returned a {type(out).__name__} of {len(out)} outputs; arjax reads "
                "plain logits or a pair (logits, features)"
            )
        return out[0], out[1]
    return out, None


class _Sink:
    """Collects the inputs the tapped layers saw (plain Python; static in the graph)."""

    def __init__(self):
        self.inputs: list[Array] = []


class _Tap(nnx.Module):
    """Wraps a layer of a traced module copy and records its input."""

    def __init__(self, inner: nnx.Module, sink: _Sink):
        self.inner = inner
        self.sink = sink

    def __call__(self, x, *args, **kwargs):
        self.sink.inputs.append(x)
        return self.inner(x, *args, **kwargs)


def _tap_linears(module: nnx.Module) -> _Sink:
    """Replaces every ``nnx.Linear`` of ``module`` (a throwaway copy) by a recording tap."""
    sink = _Sink()
    wrap_layers(module, nnx.Linear, lambda layer: _Tap(layer, sink))
    return sink


def call_model(
    model: nnx.Module | Callable[[Array], Any], x: Array, features: str | None
) -> tuple[Array, Array | None]:
    """Runs ``model(x)`` and returns ``(logits, features)`` under the ``features`` rule.

    Args:
      model: a module copy owned by the current trace (``nnx.merge(..., copy=True)``:
        ``"penultimate"`` rewires it), or any callable for ``"auto"`` / ``None``.
      x: inputs ``[B, ...]``.
      features: one of :data:`FEATURES`.

    Returns:
      ``(logits [B, ...], features [B, ...] or None)``.

    Raises:
      ValueError: ``"penultimate"`` on a model whose forward pass calls no ``nnx.Linear``.
    """
    if features != "penultimate":
        logits, feats = split_outputs(model(x))
        return logits, (feats if features == "auto" else None)
    if not isinstance(model, nnx.Module):
        raise ValueError("features='penultimate' needs an nnx.Module (it taps its nnx.Linear head)")
    sink = _tap_linears(model)
    logits, _ = split_outputs(model(x))
    if not sink.inputs:
        raise ValueError(
            f"features='penultimate': {type(model).__name__} calls no nnx.Linear, so it has no "
            "head whose input would be the penultimate activations; return (logits, features) "
            "from the model instead"
        )
    return logits, sink.inputs[-1]
