"""Orbax checkpoints of the ``TrainState``: periodic, final, and on SIGTERM.

The data pipeline needs no saved iterator: batches are addressed by the
global step (``train_dataset(...)[step]``), so restoring the step restores the
data position exactly.
"""

import json
import math
import os
import signal
import threading

import jax
import orbax.checkpoint as ocp

from arjax.training.state import TrainState


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` for one run directory.

    Args:
      directory: ``<workdir>/checkpoints``.
      max_to_keep: number of recent checkpoints kept.
    """

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self.manager.latest_step()

    def save(self, state: TrainState, *, force: bool = True) -> None:
        """Saves ``state`` under its step (no-op when that step is already saved)."""
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, like: TrainState, step: int | None = None) -> TrainState:
        """Restores a step (default: the latest) into the structure and shardings of ``like``."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def restore_matching(self, like: TrainState, what: str, step: int | None = None) -> TrainState:
        """:meth:`restore`, with a ``ConfigError`` naming ``what`` when the saved tree differs.

        A checkpoint from another model or optimiser fails inside orbax with a
        structure error; this says which checkpoint and why, in one line.
        """
        from arjax.config_lib import ConfigError

        try:
            return self.restore(like, step)
        except Exception as e:  # structure mismatch: another model or optimiser
            raise ConfigError(
                f"{what}: its checkpoint does not match this model/optimiser "
                f"({type(e).__name__}: {str(e)[:200]})"
            ) from e

    def wait(self) -> None:
        """Blocks until asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


class PreemptionFlag:
    """Set by SIGTERM (and SIGINT); the loop saves and exits cleanly when it is set.

    Handlers are installed only from the main thread and restored on ``close``.
    """

    def __init__(self):
        self.event = threading.Event()
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        del frame
        self.signal = signal.Signals(signum).name
        self.event.set()

    def __bool__(self) -> bool:
        return self.event.is_set()

    def close(self) -> None:
        """Restores the previous signal handlers."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class BestCheckpoint:
    """Keeps the state with the lowest validation loss.

    Khakzar et al. §4: "the model with the smallest validation loss is used".
    Saved under ``<workdir>/best`` with ``best.json`` (step and value) so a
    resumed run knows the best so far. Disabled when ``metric`` is empty.

    Args:
      workdir: the run directory.
      metric: ``""`` (off) or ``"val/loss"`` / ``"test/loss"``-style key whose
        split-free name (``loss``) is looked up in the evaluation dict.
    """

    def __init__(self, workdir: str, metric: str):
        self.enabled = bool(metric)
        self.metric = metric.split("/")[-1] if metric else ""
        self.step: int | None = None
        self.value = math.inf
        self._meta = os.path.join(workdir, "best", "best.json")
        self._ckpt = None
        if self.enabled:
            self._ckpt = Checkpointer(os.path.join(workdir, "best", "checkpoints"), max_to_keep=1)
            if os.path.exists(self._meta):
                with open(self._meta) as f:
                    meta = json.load(f)
                self.step, self.value = meta["step"], meta["value"]

    def offer(self, state: TrainState, evaluation: dict, step: int) -> bool:
        """Saves ``state`` if ``evaluation[metric]`` is the lowest so far."""
        if not self.enabled:
            return False
        value = float(evaluation[self.metric])
        if not value < self.value:
            return False
        self._ckpt.save(state)
        self._ckpt.wait()
        self.step, self.value = step, value
        tmp = self._meta + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"step": step, "value": value, "metric": self.metric}, f)
        os.replace(tmp, self._meta)
        return True

    def restore(self, like: TrainState) -> TrainState:
        """The best state, in the structure and shardings of ``like``."""
        return self._ckpt.restore(like, self.step)

    def close(self) -> None:
        """Finishes pending saves."""
        if self._ckpt is not None:
            self._ckpt.close()
