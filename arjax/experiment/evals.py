"""What a run measures while it trains: the named evaluators and the best-checkpoint policy.

``config.evals`` names the evaluators (:mod:`arjax.evaluation.evaluators`), and
``config.train.best = {"metric", "mode", "patience"}`` keeps the checkpoint with the best
value of any evaluator's metric, smallest (``"min"``) or largest (``"max"``), and stops a
phase after ``patience`` evaluations without improvement. Robust early stopping (Rice,
Wong & Kolter 2020)::

    config.evals = {
        "val": {"type": "classification", "split": "val"},
        "val_pgd": {"type": "robust", "split": "val", "attacks": ("pgd:linf:8/255:10",)},
    }
    config.train.best = {"metric": "val_pgd/accuracy", "mode": "max", "patience": 0}

Built once on the host (:func:`build`) from the config and the data's splits; the
training loop (:mod:`arjax.experiment.phase_loop`) runs them.
"""

import dataclasses

import ml_collections

from arjax.config_lib import ConfigError
from arjax.evaluation import evaluators as evaluators_lib
from arjax.evaluation.evaluators import Classification, Evaluator

MODES = ("min", "max")


@dataclasses.dataclass(frozen=True)
class BestPolicy:
    """Which checkpoint a run keeps and reports (``train.best``).

    Attributes:
      metric: ``"<evaluator>/<metric>"``, or ``""`` for none (the last state is kept).
      mode: ``"min"`` or ``"max"``: which direction is better.
      patience: evaluations without improvement that end a phase (0: never).
      every: the evaluator's interval in steps (what ``patience`` counts in).
    """

    metric: str = ""
    mode: str = "min"
    patience: int = 0
    every: int = 0

    @property
    def enabled(self) -> bool:
        """Whether a best checkpoint is kept at all."""
        return bool(self.metric)

    @property
    def evaluator(self) -> str:
        """The evaluator whose metric decides."""
        return self.metric.split("/", 1)[0]

    @property
    def key(self) -> str:
        """The metric's name within the evaluator's results (``accuracy``, ``loss``)."""
        return self.metric.split("/", 1)[1]


def default_split(splits) -> str:
    """The split the default evaluator uses: ``val``, else ``test``."""
    return "val" if "val" in splits else "test"


def build(cfg: ml_collections.ConfigDict, splits) -> tuple[dict[str, Evaluator], BestPolicy]:
    """The run's evaluators by name and its best-checkpoint policy.

    Args:
      cfg: the experiment config (``evals``, ``train.eval_every``, ``train.best``).
      splits: the names of the data's splits.

    Raises:
      ConfigError: an unknown evaluator type or field, a split the data lacks, a best
        metric no evaluator reports, a bad mode or patience (the field named).
    """
    every = int(cfg.train.get("eval_every", 0))
    sections = dict(cfg.get("evals", {}) or {})
    if sections:
        evals = {
            name: evaluators_lib.from_config(name, section, default_every=every)
            for name, section in sections.items()
        }
    else:  # what runs always had: clean metrics on val (else test), named after the split
        split = default_split(splits)
        evals = {split: Classification(split=split, every=every, batch_size=cfg.eval.batch_size)}
    for name, ev in evals.items():
        if ev.split not in splits:
            valid = ", ".join(sorted(splits))
            raise ConfigError(f"unknown evals.{name}.split {ev.split!r}; valid choices: {valid}")
    return evals, _policy(cfg, evals, implicit=not sections)


def check_best(cfg: ml_collections.ConfigDict) -> tuple[str, str, int]:
    """``train.best``'s ``(metric, mode, patience)``, their types and ranges checked.

    Raises:
      ConfigError: an unknown field, mode or a negative patience (the field named).
    """
    best = dict(cfg.train.get("best", {}) or {})
    unknown = sorted(set(best) - {"metric", "mode", "patience"})
    if unknown:
        raise ConfigError(f"unknown field train.best.{unknown[0]}; valid: metric, mode, patience")
    metric, mode = best.get("metric", "") or "", best.get("mode", "min")
    patience = best.get("patience", 0)
    if not isinstance(metric, str):
        raise ConfigError(f"train.best.metric={metric!r} must be '<evaluator>/<metric>' or ''")
    if mode not in MODES:
        raise ConfigError(f"unknown train.best.mode {mode!r}; valid choices: min, max")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
        raise ConfigError(f"train.best.patience={patience!r} must be an integer >= 0")
    return metric, mode, patience


def _policy(cfg, evals: dict[str, Evaluator], implicit: bool) -> BestPolicy:
    metric, mode, patience = check_best(cfg)
    if not metric:
        return BestPolicy(patience=patience)
    name, _, key = metric.partition("/")
    if implicit and name == "val" and name not in evals:  # older runs without a val split
        name = next(iter(evals))
    if name not in evals or not key:
        valid = ", ".join(f"{n}/<metric>" for n in evals)
        raise ConfigError(
            f"train.best.metric={metric!r} names no evaluator's metric; valid: {valid} "
            "(evaluators are listed in config.evals)"
        )
    if key not in evals[name].metric_names():
        valid = ", ".join(evals[name].metric_names())
        raise ConfigError(f"train.best.metric={metric!r}: evaluator {name!r} reports {valid}")
    if not evals[name].every:
        raise ConfigError(
            f"train.best.metric={metric!r} needs evaluator {name!r} to run during training: "
            f"set evals.{name}.every (or train.eval_every) > 0"
        )
    return BestPolicy(f"{name}/{key}", mode, patience, evals[name].every)
