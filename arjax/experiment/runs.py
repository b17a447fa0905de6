"""A finished (or interrupted) run brought back in one call: ``arjax.load_run(workdir)``.

For notebooks and scripts that attack, evaluate or inspect a trained model::

    run = arjax.load_run("runs/quickstart")
    x_adv = arjax.attacks.pgd(run.logits_fn, x, y, key, eps=0.1)
    run.method, run.state.step, run.dataset.splits["test"]

It reads ``config.json``, rebuilds the data and the model exactly as training built them
(:mod:`arjax.experiment.setup`), and restores the run's best checkpoint (else its
latest), so what it returns is what ``arjax-evaluate`` evaluates.
"""

import dataclasses
import os
from collections.abc import Callable

import jax
import ml_collections

from arjax import parallel
from arjax.config_lib import ConfigError
from arjax.data import DatasetSplits
from arjax.experiment import setup
from arjax.experiment import workdir as workdir_lib
from arjax.methods import Method
from arjax.models import ModelFns
from arjax.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a workdir, restored.

    Attributes:
      config: the run's config (``config.json``).
      dataset: its data splits (the run's fold when cross-validating).
      method: the training method it was trained with.
      model: the model's pure functions.
      state: the restored train state (params, batch statistics, method state, step).
      run_dir: the run directory.
      seed: the run's seed.
      checkpoint: ``"best"`` or ``"latest"``: which checkpoint was restored.
    """

    config: ml_collections.ConfigDict
    dataset: DatasetSplits
    method: Method
    model: ModelFns
    state: TrainState
    run_dir: str
    seed: int
    checkpoint: str

    @property
    def logits_fn(self) -> Callable[[jax.Array], jax.Array]:
        """Eval-mode ``images [B, ...] -> logits`` of the restored model (what attacks take)."""
        return self.model.logits_fn(self.state.params, self.state.batch_stats)


def load_run(
    workdir: str, *, run: str | None = None, checkpoint: str = "auto", num_devices: int = 0
) -> Run:
    """Restores a run of ``workdir`` with its config, data and model.

    Args:
      workdir: a training workdir (``config.json`` at its top).
      run: which run, for a workdir of several (seeds / folds): its directory relative to
        ``workdir`` (``"seed_1"``, ``"fold_0/seed_2"``); None takes the first.
      checkpoint: ``"auto"`` (best when the run kept one, else latest), ``"best"`` or
        ``"latest"``.
      num_devices: devices to replicate the state on (0: all).

    Raises:
      ConfigError: not a workdir, no such run, or no checkpoint to restore.
    """
    cfg = workdir_lib.load_config(workdir)
    runs = workdir_lib.find_run_dirs(workdir)
    if not runs:
        raise ConfigError(f"{workdir!r} holds no run (no checkpoints/ directory at or below it)")
    names = [workdir_lib.relative(r, workdir) for r in runs]
    if run is None:
        run_dir = runs[0]
    elif os.path.normpath(run) in names:
        run_dir = runs[names.index(os.path.normpath(run))]
    else:
        raise ConfigError(f"no run {run!r} in {workdir!r}; valid: {', '.join(names)}")
    dataset = workdir_lib.dataset_for_run(setup.load_folds(cfg), workdir, run_dir)
    seed = workdir_lib.run_seed(cfg, workdir, run_dir)
    mesh = parallel.make_mesh(num_devices)
    model, state, info = setup.restore_state(cfg, dataset, run_dir, seed, mesh, checkpoint)
    method = setup.build_method(cfg)
    return Run(cfg, dataset, method, model, state, run_dir, seed, info["checkpoint"])
