"""A method's per-example state refreshed after each epoch, over the training split.

A method whose :attr:`~arjax.methods.Method.refreshes_state` is true re-estimates its
state with the updated model once the epoch's optimiser steps are done: IMA's
Algorithm 2 ("update margin estimation after an epoch", ``method.margin_update=
"epoch"``) classifies every training sample, re-initialises the margin of a
misclassified one, and refines or expands the others from a BPGD search inside their
margins (:meth:`arjax.methods.IMA.refresh_state`). With ``"batch"`` the training step
updates the batch's margins from its own BPGD result instead (no pass).

The pass is compiled and data-parallel (batches sharded over the mesh, the state
replicated and donated), ``train.steps_per_call`` batches per call, over the training
split in its stored order. It changes only ``state.method_state``; its randomness
(BPGD's random start) is ``fold_in(fold_in(step_key(state), PASS_TAG), batch_number)``,
a pure function of the state, so a run resumed from a checkpoint repeats it exactly.
"""

from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from arjax import compilation, parallel
from arjax.data.pipeline import eval_batches
from arjax.training.state import TrainState, gather_rows, scatter_rows, step_key
from arjax.types import Array, Batch, PRNGKey, PyTree

# Separates the pass's keys from the training step's (fold_in(base, step) itself).
PASS_TAG = 0x4D415247  # "MARG"

# refresh(params, batch_stats, batch, rows, key) -> new rows: a bound
# arjax.methods.Method.refresh_state (``batch`` holds ``image`` and ``label``).
Refresh = Callable[[PyTree, PyTree, Batch, PyTree, PRNGKey], PyTree]


def make_pass_step(refresh: Refresh) -> Callable[[TrainState, Batch, Array], TrainState]:
    """The refresh on one batch of the pass: ``(state, batch, batch_number) -> state``.

    Args:
      refresh: the method's per-batch state refresh with its context bound.

    Returns:
      a pure function; ``batch`` holds ``image`` ``[B, ...]``, ``label``, ``index``
      ``[B]`` and ``mask`` ``[B]`` (0 on padding rows, which leave the table unchanged);
      ``batch_number`` is an int32 scalar.
    """

    def pass_step(state: TrainState, batch: Batch, batch_number: Array) -> TrainState:
        index = batch["index"]
        rows = gather_rows(state.method_state, index)
        key = jax.random.fold_in(jax.random.fold_in(step_key(state), PASS_TAG), batch_number)
        inputs = {"image": batch["image"], "label": batch["label"]}
        new = refresh(state.params, state.batch_stats, inputs, rows, key)
        valid = batch["mask"] > 0
        return state.replace(method_state=scatter_rows(state.method_state, index, new, valid))

    return pass_step


def make_pass_call(refresh: Refresh) -> Callable[[TrainState, Batch, Array], TrainState]:
    """``k`` batches of the pass in one call: ``(state, batches [k, B, ...], numbers [k])``.

    One ``lax.scan`` over :func:`make_pass_step` (no loop for ``k = 1``: XLA:CPU runs
    convolutions much slower inside a while loop, see ``arjax.training.step``), so that
    tiny models are not bound by one Python dispatch per batch.
    """
    pass_step = make_pass_step(refresh)

    def pass_call(state: TrainState, batches: Batch, numbers: Array) -> TrainState:
        if numbers.shape[0] == 1:
            return pass_step(state, jax.tree.map(lambda a: a[0], batches), numbers[0])

        def body(state, inputs):
            return pass_step(state, *inputs), None

        return jax.lax.scan(body, state, (batches, numbers))[0]

    return pass_call


class StatePass:
    """The host side of the pass: when it is due and the loop over the training split.

    Args:
      refresh: the method's per-batch state refresh, or None (no pass: every method
        whose ``refreshes_state`` is false, e.g. IMA with ``margin_update="batch"``).
      train_split: the training split (``image``, ``label``; an array dict or source).
      batch_size: the pass's global batch size (the training one: same memory as a step).
      mesh: the ``('data',)`` device mesh.
      steps_per_epoch: optimiser steps per epoch; the pass follows every multiple.
      batches_per_call: batches per compiled call (``train.steps_per_call``); the last
        call is filled up with all-padding batches, which change nothing.
    """

    _FIELDS = ("image", "label", "index", "mask")

    def __init__(
        self,
        refresh: Refresh | None,
        train_split,
        *,
        batch_size: int,
        mesh: Mesh,
        steps_per_epoch: int,
        batches_per_call: int = 1,
    ):
        self.enabled = refresh is not None
        self.split, self.batch_size, self.mesh = train_split, batch_size, mesh
        self.steps_per_epoch, self.batches_per_call = steps_per_epoch, batches_per_call
        if self.enabled:
            repl = parallel.replicated(mesh)
            self._call = compilation.jit(
                make_pass_call(refresh),
                in_shardings=(repl, parallel.batch_sharding(mesh, leading_axes=2), repl),
                out_shardings=repl,
                donate_argnums=0,
            )

    def next_boundary(self, step: int, total: int) -> int:
        """The next step ``> step`` after which a pass is due (``total`` when disabled)."""
        if not self.enabled:
            return total
        return min(total, (step // self.steps_per_epoch + 1) * self.steps_per_epoch)

    def after_steps(self, state: TrainState, step: int) -> TrainState:
        """Runs the pass when ``step`` ends an epoch; returns the (updated) state."""
        if not self.enabled or step % self.steps_per_epoch:
            return state
        return self.run(state)

    def run(self, state: TrainState) -> TrainState:
        """One refresh pass over the whole training split with ``state``'s model."""
        k = self.batches_per_call
        batches = [
            {f: b[f] for f in self._FIELDS}
            for b in eval_batches(
                self.split, batch_size=self.batch_size, multiple_of=self.mesh.size
            )
        ]
        empty = {**batches[-1], "mask": np.zeros_like(batches[-1]["mask"])}
        batches += [empty] * (-len(batches) % k)
        sharding = parallel.batch_sharding(self.mesh, leading_axes=2)
        for start in range(0, len(batches), k):
            stacked = jax.tree.map(lambda *a: np.stack(a), *batches[start : start + k])
            numbers = np.arange(start, start + k, dtype=np.int32)
            state = self._call(state, parallel.put_global(stacked, sharding), numbers)
        return state
