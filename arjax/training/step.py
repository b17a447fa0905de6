"""Pure training and evaluation steps, written for the global batch (DESIGN §3.7).

``train_step(state, batch) -> (state, metrics)`` takes one optimiser step;
``multi_step`` runs ``k`` of them inside one compiled ``lax.scan`` so that the
host loop dispatches once per ``k`` steps (tiny models, e.g. two-moons MLPs,
are otherwise bound by Python dispatch). A ``valid`` mask lets the last call
of a run do fewer than ``k`` real steps without a second compilation.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from arjax import compilation, parallel
from arjax.training.state import TrainState, gather_rows, scatter_rows, step_key
from arjax.types import Batch, Metrics

# loss(params, batch_stats, batch, state_rows, key) -> (loss, LossOutput(metrics,
# new_batch_stats, new_state_rows)): a bound arjax.methods.Method.loss.
MethodLoss = Callable


def make_train_step(
    loss_fn: MethodLoss, tx: optax.GradientTransformation
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """One optimiser update on the batch.

    The step key is ``fold_in(state.rng, state.step)``, so a resumed run
    draws the same randomness as an uninterrupted one. When the method keeps a
    per-example state (IMA/MMA margins), the batch's rows are gathered by its
    ``index`` for the loss and the rows it returns are scattered back.
    """

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rows = gather_rows(state.method_state, batch["index"])
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, out), grads = grad_fn(state.params, state.batch_stats, batch, rows, step_key(state))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(out.metrics)
        metrics.update(loss=loss, grad_norm=optax.global_norm(grads))
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=out.batch_stats,
            opt_state=opt_state,
            method_state=scatter_rows(state.method_state, batch["index"], out.state),
        )
        return new_state, metrics

    return train_step


def make_multi_step(
    train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]],
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """``k`` train steps in one ``lax.scan``.

    Args:
      train_step: from :func:`make_train_step`.

    Returns:
      ``multi_step(state, batches, valid)`` with ``batches`` stacked
      ``[k, B, ...]`` and ``valid`` bool ``[k]``; steps whose ``valid`` is
      False leave the state unchanged (padding of the run's last call).
      Metrics come back stacked ``[k]``.
    """

    def body(state, inputs):
        batch, ok = inputs
        new_state, metrics = train_step(state, batch)
        state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
        return state, metrics

    def multi_step(state, batches, valid):
        if valid.shape[0] == 1:
            # No loop for one step: XLA:CPU runs a ConvNet's training step ~25x slower
            # inside a while loop (cam_cnn at 64x64, batch 32: 8.3 s vs 0.3 s per step,
            # whatever the convolution implementation), so image configs keep
            # steps_per_call=1 and pay nothing for the multi-step interface.
            state, metrics = body(state, jax.tree.map(lambda a: a[0], (batches, valid)))
            return state, jax.tree.map(lambda m: m[None], metrics)
        return jax.lax.scan(body, state, (batches, valid))

    return multi_step


def compile_multi_step(
    loss_fn: MethodLoss, tx: optax.GradientTransformation, mesh: Mesh, *, stacked: bool = False
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """The jitted data-parallel multi-step: batch sharded, state replicated and donated.

    Args:
      loss_fn: the method's loss.
      tx: the optimiser.
      mesh: the ``('data',)`` mesh.
      stacked: train ``S`` independent runs at once (``train.vmap_seeds``): every
        leaf of the state has a leading ``[S]`` axis (each run its own parameters,
        optimiser state and base key, hence its own init, attack and dropout
        randomness), batches are ``[S, k, B, ...]`` (each run its own shuffle),
        metrics come back ``[S, k]``; ``valid`` ``[k]`` is shared. The runs are
        ``jax.vmap`` of the single-run multi-step, so each computes what it
        would alone (up to float rounding of batched matrix products).
    """
    fn = make_multi_step(make_train_step(loss_fn, tx))
    if stacked:
        fn = jax.vmap(fn, in_axes=(0, 0, None))
    repl = parallel.replicated(mesh)
    batches = parallel.batch_sharding(mesh, leading_axes=3 if stacked else 2)
    return compilation.jit(
        fn,
        in_shardings=(repl, batches, repl),
        out_shardings=(repl, repl),
        donate_argnums=0,
    )
