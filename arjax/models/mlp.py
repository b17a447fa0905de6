"""Multi-layer perceptron returning logits and penultimate features.

Used by the two-moons experiments of both papers:

* ARFL (Hao et al., §4.2): 2-10-10-1, ReLU, one binary logit; ``L_robust``
  is computed on the penultimate layer.
* IMA (Ma et al., Moons experiment): 2-32-64-128-2 with LayerNorm and
  LeakyReLU, softmax over two classes.

``batch_norm=True`` puts a ``torch.nn.BatchNorm1d``-like layer after every hidden
Linear instead: not in either paper's MLP; it exists so that DSBN (dual batch
norm, ``model.dual_batch_norm``) has batch norms to split on the two-moons data.
"""

from collections.abc import Sequence

import jax
from flax import nnx

from arjax.models.layers import batch_norm as torch_batch_norm
from arjax.types import Array

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "gelu": jax.nn.gelu,
    "tanh": jax.numpy.tanh,
}


# Readings of "the penultimate layer" (ARFL §3.1, §4.2): after or before its activation.
FEATURES_AT = ("post_activation", "pre_activation")

# Run norm-free MLPs feature-major (``MLP._feature_major``); read when a forward pass is
# traced. False restores the batch-major loop, for A/B timing
# (``benchmarks/stacked_step.py --layouts``); results agree up to float rounding.
FEATURE_MAJOR = True


class MLP(nnx.Module):
    """Fully connected network ``in -> hidden... -> outputs``.

    Each hidden layer is ``Linear -> [LayerNorm | BatchNorm] -> activation``. The output
    of the last hidden layer is the feature vector (the "penultimate layer"
    that ARFL regularises).

    Args:
      in_features: input width D (2 for two-moons points).
      hidden: widths of the hidden layers, e.g. ``(10, 10)``.
      num_outputs: 1 for a single binary logit (logits come out as ``[B]``),
        K > 1 for a softmax head (``[B, K]``).
      activation: one of ``ACTIVATIONS``.
      layer_norm: put a LayerNorm after every hidden Linear (True), or per hidden
        layer (a tuple of bools; IMA's Moons net has none after the first).
      batch_norm: put a BatchNorm (PyTorch's defaults, ``layers.batch_norm``) after
        every hidden Linear, which then has no bias; exclusive with ``layer_norm``.
      features_at: which output of the last hidden layer is ``features``:
        ``"post_activation"`` (default, ``act(norm(W h + b))``) or ``"pre_activation"``
        (``norm(W h + b)``). ARFL's paper (§3.1) does not say which one ``L_robust``
        sees; ``FEATURES_AT`` lists both readings (docs/fidelity.md).
      rngs: parameter initialisation streams.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (10, 10),
        num_outputs: int = 1,
        activation: str = "relu",
        layer_norm: bool | Sequence[bool] = False,
        batch_norm: bool = False,
        features_at: str = "post_activation",
        *,
        rngs: nnx.Rngs,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown model.activation {activation!r}; valid: {sorted(ACTIVATIONS)}"
            )
        if features_at not in FEATURES_AT:
            raise ValueError(
                f"unknown model.features_at {features_at!r}; valid: {', '.join(FEATURES_AT)}"
            )
        widths = (in_features, *hidden)
        # Before a batch norm a bias is redundant (the norm removes it) and its gradient is
        # zero up to rounding, which Adam would amplify: bias-free, as the ResNets' convs.
        self.hidden = nnx.List(
            [
                nnx.Linear(a, b, use_bias=not batch_norm, rngs=rngs)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        flags = (layer_norm,) * len(hidden) if isinstance(layer_norm, bool) else tuple(layer_norm)
        if len(flags) != len(hidden):
            raise ValueError(
                f"model.layer_norm has {len(flags)} entries for {len(hidden)} hidden layers"
            )
        if batch_norm and any(flags):
            raise ValueError("model.batch_norm and model.layer_norm are exclusive; choose one")
        if batch_norm:
            norms = [torch_batch_norm(w, rngs=rngs) for w in hidden]
        else:
            pairs = zip(hidden, flags, strict=True)
            norms = [nnx.LayerNorm(w, rngs=rngs) if f else None for w, f in pairs]
        self.norms = nnx.List(norms)
        self.head = nnx.Linear(widths[-1], num_outputs, rngs=rngs)
        self.activation = activation
        self.num_outputs = num_outputs
        self.features_at = features_at

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """Forward pass.

        Args:
          x: float ``[B, D]``.

        Returns:
          ``(logits, features)``: logits ``[B]`` (one output) or ``[B, K]``;
          features ``[B, hidden[-1]]``, the penultimate layer (after or before its
          activation, per ``features_at``).
        """
        act = ACTIVATIONS[self.activation]
        h = x.reshape(x.shape[0], -1)
        layers = (*self.hidden, self.head)
        plain = all(n is None for n in self.norms) and all(type(m) is nnx.Linear for m in layers)
        if plain and FEATURE_MAJOR:
            return self._feature_major(h, act)
        pre = h  # no hidden layers: the features are the input
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if self.norms[i] is not None:
                h = self.norms[i](h)
            pre, h = h, act(h)
        return self._outputs(self.head(h), pre, h)

    def _feature_major(self, x: Array, act) -> tuple[Array, Array]:
        """The norm-free network on ``[width, B]`` activations (the batch minor).

        Same values as the batch-major loop up to float rounding. XLA:CPU's
        elementwise loops then run along the batch (hundreds of contiguous values)
        instead of along rows of ``width`` values, which vectorise badly when the
        width is small: the ARFL Table 1 train steps (2-10-10-1) run 1.15-1.4x
        faster, the IMA 2-32-64-128-2 net without its norms the same
        (``benchmarks/README.md``). Nets with norms stay batch-major: transposing
        around each norm made IMA's Moons step 2x slower. So do modules whose layers
        were swapped for wrappers (``features="penultimate"``'s taps, surgery): the
        wrappers see ``[B, width]`` inputs.
        """
        h = pre = x.T  # no hidden layers: the features are the input
        for layer in self.hidden:
            pre = _linear_feature_major(layer, h)
            h = act(pre)
        logits = _linear_feature_major(self.head, h)
        return self._outputs(logits.T, pre.T, h.T)

    def _outputs(self, logits: Array, pre: Array, post: Array) -> tuple[Array, Array]:
        """``(logits, features)`` from the head's output and the last hidden layer's."""
        if self.num_outputs == 1:
            logits = logits[:, 0]
        return logits, (pre if self.features_at == "pre_activation" else post)


def _linear_feature_major(layer: nnx.Linear, h: Array) -> Array:
    """``layer`` on feature-major activations: ``[in, B] -> [out, B]`` (``(h.T W + b).T``).

    Uses the layer's own dtype promotion, ``dot_general``, precision and preferred
    element type, as ``nnx.Linear.__call__`` does; only the contracted axes differ.
    """
    kernel = layer.kernel[...]
    bias = layer.bias[...] if layer.bias is not None else None
    h, kernel, bias = layer.promote_dtype((h, kernel, bias), dtype=layer.dtype)
    extra = {}
    if layer.preferred_element_type is not None:
        extra["preferred_element_type"] = layer.preferred_element_type
    y = layer.dot_general(kernel, h, (((0,), (0,)), ((), ())), precision=layer.precision, **extra)
    return y if bias is None else y + bias[:, None]
