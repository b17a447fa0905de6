"""Dual (domain-specific) batch normalisation for clean and adversarial inputs.

DSBN (Chang et al., CVPR 2019, "Domain-specific batch normalization for unsupervised
domain adaptation") gives every domain its own batch-norm layer: its own batch
statistics *and* its own affine parameters (``gamma_d``, ``beta_d``), with all other
weights shared. AdvProp (Xie et al., CVPR 2020) and Han et al. (Nature Communications
2021, "dual batch normalization") use the same construction with the two "domains"
clean and adversarial images. arjax follows both papers: a :class:`DualBatchNorm`
holds one complete ``nnx.BatchNorm`` per branch (scale, bias, running mean and
variance), and a static ``branch`` attribute picks the one a forward pass uses::

    y = gamma_d * (x - mu_d) / sqrt(var_d + eps) + beta_d,   d = branch

Because ``branch`` is static (part of the graph definition, not of the state), the
model built with ``model.dual_batch_norm=True`` normalises with the ``"clean"`` branch
unless told otherwise: evaluation, attacks at test time, CAMs and saliency all see
the clean branch without any change to their code (DSBN's choice at test time; the
ARFL paper notes the difficulty of picking a branch for data of unknown origin).
A method selects the other branch per forward with :func:`branch_model`, which
returns the same model's pure functions with a different graph definition over
the same ``params`` / ``batch_stats`` pytrees.

Parameter paths gain the branch: a ResNet's ``bn1/scale`` becomes
``bn1/norms/clean/scale`` and ``bn1/norms/adversarial/scale``. Both branches start
from the wrapped layer's values (its initialisation or imported ImageNet weights).
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx

from arjax.models.functional import ModelFns
from arjax.models.surgery import wrap_layers
from arjax.types import Array, PyTree

# Branch names: the first is the default (evaluation) branch.
BRANCHES = ("clean", "adversarial")
CLEAN = BRANCHES[0]


def _copy(norm: nnx.BatchNorm) -> nnx.BatchNorm:
    """A clone of ``norm`` whose variables hold fresh buffers (donation needs distinct ones)."""
    graphdef, state = nnx.split(norm)
    return nnx.merge(graphdef, nnx.map_state(lambda _, v: jnp.array(v, copy=True), state))


class DualBatchNorm(nnx.Module):
    """One ``nnx.BatchNorm`` per branch; ``branch`` (static) selects the one applied.

    Args:
      norm: the batch-norm layer to duplicate (its values seed every branch).
      branches: branch names (default ``BRANCHES``).
      branch: the branch used until changed (default the first, ``"clean"``).
    """

    def __init__(self, norm: nnx.BatchNorm, branches=BRANCHES, branch: str | None = None):
        branches = tuple(branches)
        branch = branches[0] if branch is None else branch
        if branch not in branches:
            raise ValueError(f"unknown batch-norm branch {branch!r}; valid: {', '.join(branches)}")
        self.norms = nnx.Dict({name: _copy(norm) for name in branches})
        self.branches = branches
        self.branch = branch

    def __call__(self, x: Array) -> Array:
        """Normalises ``x`` ``[..., C]`` with the selected branch's layer (same shape out)."""
        return self.norms[self.branch](x)


def dualize(module: nnx.Module, branches=BRANCHES) -> nnx.Module:
    """Replaces every ``nnx.BatchNorm`` inside ``module`` by a :class:`DualBatchNorm`, in place.

    Args:
      module: a built model (any nesting of modules, ``nnx.List`` and ``nnx.Dict``).
      branches: branch names.

    Returns:
      ``module`` itself, now with dual batch norms.

    Raises:
      ValueError: when ``module`` holds no batch norm (nothing to make dual).
    """
    if not wrap_layers(module, nnx.BatchNorm, lambda bn: DualBatchNorm(bn, branches)):
        raise ValueError(f"model {type(module).__name__} has no batch-norm layer to make dual")
    return module


def branch_model(model: ModelFns, params: PyTree, batch_stats: PyTree, branch: str) -> ModelFns:
    """``model`` with every :class:`DualBatchNorm` set to ``branch`` (pure; jit-safe).

    Only the static graph definition changes; the returned functions take the same
    ``params`` and ``batch_stats`` pytrees as ``model`` (both branches live in them).

    Args:
      model: pure functions of a model built with dual batch norms.
      params: its parameters (concrete or traced; only their structure is used).
      batch_stats: its batch statistics.
      branch: a branch name of the model's dual batch norms.

    Returns:
      :class:`ModelFns` normalising with ``branch``.

    Raises:
      ValueError: the model has no dual batch norm, or ``branch`` is not one of its branches.
    """
    module = nnx.merge(model.graphdef, params, batch_stats, copy=True)
    duals = [n for _, n in nnx.iter_graph(module) if isinstance(n, DualBatchNorm)]
    if not duals:
        raise ValueError("the model has no dual batch norm (build it with model.dual_batch_norm)")
    for norm in duals:
        if branch not in norm.branches:
            valid = ", ".join(norm.branches)
            raise ValueError(f"unknown batch-norm branch {branch!r}; valid: {valid}")
        norm.branch = branch
    return dataclasses.replace(model, graphdef=nnx.graphdef(module))
