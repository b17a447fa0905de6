"""Mixed precision: a model computing in bfloat16 around float32 parameters and losses.

``model.dtype="bfloat16"`` (``DTYPES``) keeps everything a run stores or accumulates in
float32 and runs only the network in bfloat16 (the usual mixed-precision recipe,
Micikevicius et al. 2018, with bfloat16's float32 exponent range, so no loss scaling):

* parameters, batch statistics and the optimiser state stay float32 (checkpoints do not
  change); :func:`cast_floats` casts a copy of the parameters and the input to bfloat16
  at the start of every forward pass, and the gradients flow back through that cast into
  float32 (the cast's transpose);
* the logits and features come back as float32 (:func:`outputs_to_float32`), so every
  loss, attack objective, margin and metric is accumulated in float32;
* attacks keep their iterate, step, projection and BPGD's bisection in float32 on the
  input (the model casts its own copy), so perturbations stay exactly inside the ball and
  the data bounds;
* flax's norms compute their mean and variance in float32 (they promote to at least
  float32), then normalise in the compute dtype; updated running statistics are cast back
  to their stored float32.

Whether this is faster depends on the hardware: TPUs and recent GPUs run bfloat16 matrix
products at 2-16x float32's rate; XLA:CPU (jaxlib 0.10.2) converts bfloat16 convolutions
to float32 and back even on CPUs with ``avx512_bf16`` (see ``benchmarks/README.md``), so on
CPU it only adds conversions.
"""

import jax
import jax.numpy as jnp

from arjax.types import PyTree

DTYPES: dict[str, jnp.dtype] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def check_dtype(name: str) -> str:
    """Returns ``name`` if it is a ``model.dtype`` choice, else raises.

    Raises:
      ValueError: naming the valid choices.
    """
    if name not in DTYPES:
        raise ValueError(f"unknown model.dtype {name!r}; valid choices: {', '.join(DTYPES)}")
    return name


def cast_floats(tree: PyTree, dtype: jnp.dtype) -> PyTree:
    """Casts every floating-point leaf of ``tree`` to ``dtype`` (integers, keys untouched)."""

    def cast(leaf):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(dtype)
        return leaf

    return jax.tree.map(cast, tree)


def restore_dtypes(tree: PyTree, like: PyTree) -> PyTree:
    """``tree`` with each leaf cast back to the dtype of the same leaf in ``like``.

    Leaves already of that dtype are kept as they are (dropout streams' PRNG keys, which
    have no ``astype``).
    """

    def restore(a, b):
        if hasattr(a, "astype") and hasattr(b, "dtype") and a.dtype != b.dtype:
            return a.astype(b.dtype)
        return a

    return jax.tree.map(restore, tree, like)


def outputs_to_float32(*outputs):
    """Each floating-point output (logits ``[B, K]``, features, or None) as float32."""
    return tuple(None if o is None else cast_floats(o, jnp.float32) for o in outputs)
