"""Training phases: one, or Khakzar's clean-then-adversarial two; early stopping.

Khakzar et al. (seed 002) §3.2: "we initially train the network without
adversarial loss, and after convergence, we continue training with the
adversarial loss"; §4: "the training is continued until the validation loss
diverges, and the model with the smallest validation loss is used".
``train.phases`` selects:

* ``"single"``: the configured method for at most ``train.num_epochs``.
* ``"two_phase"``: phase 1 trains clean (method ``standard`` with the
  method's ``cls_loss``) for at most ``train.phase1_max_epochs``; phase 2
  starts from phase 1's lowest-validation-loss parameters and batch
  statistics and trains the configured method for at most
  ``train.num_epochs``. The final model is phase 2's lowest-validation-loss
  state (phase 1's best is phase 2's start, not a candidate: it would pick
  the clean model whenever adversarial training raises the clean loss).

In every phase, ``train.best.patience > 0`` stops the phase once the best metric
(``train.best.metric``, e.g. the validation loss) has not improved for ``patience``
evaluations of its evaluator; 0 runs the phase to its maximum length
(:mod:`arjax.experiment.evals`).

Each phase has its own step counter, optimiser state and learning-rate
schedule, laid over that phase's *maximum* length (``optim.schedule`` cosine
decays over ``phase1_max_epochs`` in phase 1 and ``num_epochs`` in phase 2);
early stopping cuts a decaying schedule short (Khakzar uses a constant rate).
Data order and step keys restart with the phase's step counter.

Layout of a run directory (the phase a checkpoint belongs to is its folder):
phase 2 (or the single phase) writes ``checkpoints/``, ``best/`` and
``metrics.jsonl`` in the run directory itself; phase 1 writes
``phase1/state/`` (its latest checkpoints), ``phase1/best/``,
``phase1/metrics.jsonl`` and ``phase1/training_curves.png``.
``schedule.json`` records each finished phase (steps, early stop, best step
and validation loss). A restart resumes the latest phase that has a
checkpoint; a finished phase 1 is never retrained.
"""

import dataclasses
import json
import os

import ml_collections

from arjax import distributed
from arjax.config_lib import ConfigError, check_range
from arjax.experiment.evals import check_best
from arjax.methods import Method, Standard
from arjax.training.checkpoint import Checkpointer

PHASES = ("single", "two_phase")
SUMMARY_FILE = "schedule.json"


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training phase of a run.

    Attributes:
      name: ``"train"`` (single schedule), ``"clean"`` or ``"adversarial"``.
      run_dir: the run directory the phase belongs to.
      directory: where the phase's ``metrics.jsonl`` and ``best/`` go.
      checkpoint_dir: the phase's periodic checkpoints.
      method: the phase's method.
      num_epochs: the phase's maximum length in epochs.
    """

    name: str
    run_dir: str
    directory: str
    checkpoint_dir: str
    method: Method
    num_epochs: int


def validate(cfg: ml_collections.ConfigDict, method: Method) -> None:
    """Checks ``train.phases``, ``train.phase1_max_epochs`` and what they need.

    Raises:
      ConfigError: naming the field and the valid choices or range, or the
        field a two-phase / early-stopping run also needs.
    """
    tcfg = cfg.train
    name = tcfg.get("phases", "single")
    if name not in PHASES:
        raise ConfigError(f"unknown train.phases {name!r}; valid choices: {', '.join(PHASES)}")
    if "phase1_max_epochs" in tcfg:
        check_range(cfg, "train.phase1_max_epochs", 1, integer=True)
    metric, _, patience = check_best(cfg)
    if (patience or name == "two_phase") and not metric:
        why = "train.best.patience > 0" if patience else "train.phases='two_phase'"
        raise ConfigError(
            f"{why} needs train.best.metric (e.g. 'val/loss') and its evaluator running "
            "during training (train.eval_every > 0); got train.best.metric=''"
        )
    if name == "two_phase" and isinstance(method, Standard):
        raise ConfigError(
            "train.phases='two_phase' trains clean, then method.name: it must be another "
            "method than 'standard'"
        )


def clean_method(method: Method) -> Method:
    """Phase 1's method: ``standard`` training with ``method``'s classification loss."""
    return Standard(cls_loss=method.cls_loss)


def plan(cfg: ml_collections.ConfigDict, method: Method, workdir: str) -> list[Phase]:
    """The phases of a run in ``workdir``, in order (see the module docstring)."""
    tcfg = cfg.train
    last = Phase(
        name="train",
        run_dir=workdir,
        directory=workdir,
        checkpoint_dir=os.path.join(workdir, "checkpoints"),
        method=method,
        num_epochs=int(tcfg.num_epochs),
    )
    if tcfg.get("phases", "single") == "single":
        return [last]
    first_dir = os.path.join(workdir, "phase1")
    first = Phase(
        name="clean",
        run_dir=workdir,
        directory=first_dir,
        checkpoint_dir=os.path.join(first_dir, "state"),
        method=clean_method(method),
        num_epochs=int(tcfg.get("phase1_max_epochs", tcfg.num_epochs)),
    )
    return [first, dataclasses.replace(last, name="adversarial")]


def resume_index(phases: list[Phase]) -> int:
    """Index of the phase to resume: the last one with a checkpoint (0 if none has)."""
    for i in range(len(phases) - 1, 0, -1):
        if os.path.isdir(phases[i].checkpoint_dir):
            ckpt = Checkpointer(phases[i].checkpoint_dir)
            latest = ckpt.latest_step()
            ckpt.close()
            if latest is not None:
                return i
    return 0


def should_stop(step: int, best_step: int | None, patience: int, eval_every: int) -> bool:
    """Early stopping: no better best metric in the last ``patience`` evaluations.

    Evaluations happen every ``eval_every`` steps, so this is a function of
    the step and the best step alone, and a restarted run decides exactly as
    an uninterrupted one.

    Args:
      step: the current step (of the phase).
      best_step: step of the lowest validation loss so far, or None.
      patience: evaluations without improvement that end the phase; 0: never.
      eval_every: steps between evaluations.

    Returns:
      Whether the phase stops at ``step``.
    """
    if patience <= 0 or eval_every <= 0 or best_step is None:
        return False
    return step - best_step >= patience * eval_every


def record(phase: Phase, summary: dict) -> dict:
    """Adds a finished phase's ``summary`` to ``<run_dir>/schedule.json`` (atomic write).

    Returns:
      The file's whole content: ``{"phases": {name: summary, ...}}``.
    """
    content = read_summary(phase.run_dir) or {"phases": {}}
    content["phases"][phase.name] = dict(summary, method=phase.method.name)
    path = os.path.join(phase.run_dir, SUMMARY_FILE)
    if not distributed.is_primary():
        return content
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(content, f, indent=2)
    os.replace(tmp, path)
    return content


def read_summary(workdir: str) -> dict | None:
    """``<workdir>/schedule.json``, or None before any phase has finished."""
    path = os.path.join(workdir, SUMMARY_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
