"""Orbax checkpoints of the ``TrainState``: periodic, final, and on SIGTERM.

The data pipeline needs no saved iterator: batches are addressed by the
global step (``train_dataset(...)[step]``), so restoring the step restores the
data position exactly.
"""

import json
import logging
import math
import os
import signal
import threading
import time

import jax
import orbax.checkpoint as ocp

from arjax import distributed, faults
from arjax.training.state import TrainState, saved_layout

log = logging.getLogger("arjax")


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` for one run directory.

    Args:
      directory: ``<workdir>/checkpoints``.
      max_to_keep: number of recent checkpoints kept.
    """

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
        )

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self.manager.latest_step()

    def save(self, state: TrainState, *, force: bool = True) -> None:
        """Saves ``state`` under its step (no-op when that step is already saved)."""
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.StandardSave(state), force=force)
        faults.point("checkpoint")  # the write is in flight (orbax saves asynchronously)

    def restore(self, like: TrainState, step: int | None = None) -> TrainState:
        """Restores a step (default: the latest) into the structure and shardings of ``like``.

        A checkpoint written by older code (older ``TrainState`` fields, e.g. ``margins``
        before ``method_state``) is read into today's layout
        (:func:`arjax.training.state.saved_layout`).
        """
        step = self.latest_step() if step is None else step
        target, rebuild = saved_layout(like, self._saved_fields(step))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        return rebuild(self.manager.restore(step, args=ocp.args.StandardRestore(abstract)))

    def _saved_fields(self, step: int) -> set[str] | None:
        """The top-level field names of the saved state (None when unreadable)."""
        try:
            tree = self.manager.item_metadata(step).tree
        except Exception:  # damaged metadata: let the restore report it
            return None
        return set(tree) if hasattr(tree, "keys") else None

    def restore_newest_good(self, like: TrainState) -> TrainState | None:
        """The newest checkpoint that restores; unreadable newer ones are set aside.

        A truncated file or missing metadata in the newest step (a disk that
        filled up, a copy cut short) makes orbax fail deep in tensorstore; this
        tries the steps newest first and, once an older one restores, moves the
        broken ones to ``<directory>/../corrupt_checkpoints/`` (kept for a
        post-mortem, out of orbax's way so the step can be saved again) with a
        warning naming them. Nothing is moved when no step restores.

        Returns:
          the restored state, or None when the directory holds no checkpoint.

        Raises:
          ConfigError: every checkpoint fails to restore (the directory and the
            newest one's error named).
        """
        from arjax.config_lib import ConfigError

        failed: list[tuple[int, Exception]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state = self.restore(like, step)
            except Exception as e:  # orbax/tensorstore raise many types for bad files
                failed.append((step, e))
                continue
            for bad, error in failed:
                moved = self._set_aside(bad)
                log.warning(
                    "checkpoint step %d in %s is unreadable (%s: %s); moved it to %s and "
                    "resumed from step %d",
                    bad,
                    self.directory,
                    type(error).__name__,
                    str(error)[:160],
                    moved,
                    step,
                )
            return state
        if failed:
            step, e = failed[0]
            raise ConfigError(
                f"{self.directory}: no checkpoint can be restored (newest, step {step}: "
                f"{type(e).__name__}: {' '.join(str(e).split())[:200]}); delete the directory "
                "to start the run over"
            ) from e
        return None

    def _set_aside(self, step: int) -> str:
        """Moves step ``step``'s directory out of the manager's way; returns where to."""
        aside = os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints")
        target = os.path.join(aside, f"{step}.{time.strftime('%Y%m%dT%H%M%S')}")
        if distributed.is_primary():
            os.makedirs(aside, exist_ok=True)
            os.replace(os.path.join(self.directory, str(step)), target)
        distributed.barrier(f"arjax_set_aside_{step}")
        self.manager.reload()
        return target

    def restore_matching(self, like: TrainState, what: str, step: int | None = None) -> TrainState:
        """:meth:`restore`, with a ``ConfigError`` naming ``what`` when the saved tree differs.

        A checkpoint from another model or optimiser fails inside orbax with a
        structure error; this says which checkpoint and why, in one line.
        """
        from arjax.config_lib import ConfigError

        try:
            return self.restore(like, step)
        except Exception as e:  # structure mismatch: another model or optimiser
            detail = " ".join(str(e).split())[:200]
            raise ConfigError(
                f"{what}: its checkpoint cannot be restored into this model/optimiser (another "
                f"model, or a damaged checkpoint: {type(e).__name__}: {detail})"
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

    The first signal says so in the log (an evaluation in progress finishes
    first); a second one raises ``KeyboardInterrupt`` at once. Handlers are
    installed only from the main thread and restored on ``close``.
    """

    def __init__(self):
        self.event = threading.Event()
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        del frame
        name = signal.Signals(signum).name
        if self.event.is_set():  # the second signal: stop now (the last checkpoint resumes)
            log.warning("%s again: stopping now; rerun the same command to resume", name)
            raise KeyboardInterrupt(name)
        self.signal = name
        self.event.set()
        log.warning(
            "%s received: saving a checkpoint and stopping at the next step boundary (during "
            "an evaluation, once it ends: its results are kept); send it again to stop now",
            name,
        )

    def __bool__(self) -> bool:
        return self.event.is_set()

    def close(self) -> None:
        """Restores the previous signal handlers."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class BestCheckpoint:
    """Keeps the state with the best value of one evaluator's metric.

    Khakzar et al. §4: "the model with the smallest validation loss is used"
    (``"val/loss"``, ``mode="min"``); robust early stopping (Rice, Wong & Kolter 2020)
    keeps the largest robust validation accuracy (``"val_pgd/accuracy"``, ``"max"``).
    Saved under ``<workdir>/best`` with ``best.json`` (step and value) so a resumed run
    knows the best so far. Disabled when ``metric`` is empty.

    Args:
      workdir: the run directory.
      metric: ``""`` (off) or ``"<evaluator>/<metric>"``; the part after the evaluator's
        name is looked up in that evaluator's results.
      mode: ``"min"`` or ``"max"``: which direction is better.
    """

    def __init__(self, workdir: str, metric: str, mode: str = "min"):
        self.enabled = bool(metric)
        self.metric = metric.split("/", 1)[-1] if metric else ""
        self.sign = 1.0 if mode == "min" else -1.0
        self.step: int | None = None
        self.value = math.inf * self.sign
        self._meta = os.path.join(workdir, "best", "best.json")
        self._ckpt = None
        if self.enabled:
            self._ckpt = Checkpointer(os.path.join(workdir, "best", "checkpoints"), max_to_keep=1)
            if os.path.exists(self._meta):
                with open(self._meta) as f:
                    meta = json.load(f)
                self.step, self.value = meta["step"], meta["value"]

    def offer(self, state: TrainState, evaluation: dict, step: int) -> bool:
        """Saves ``state`` if ``evaluation[metric]`` is the best so far (ties keep the first)."""
        if not self.enabled:
            return False
        value = float(evaluation[self.metric])
        if not self.sign * value < self.sign * self.value:
            return False
        self._ckpt.save(state)
        self._ckpt.wait()
        self.step, self.value = step, value
        if not distributed.is_primary():
            return True
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
