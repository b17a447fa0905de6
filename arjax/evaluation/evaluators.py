"""Named evaluators: what a run measures on a split while it trains.

A config lists them by name (``config.evals``); each has a registered ``type``::

    config.evals = {
        "val": {"type": "classification", "split": "val"},
        "val_pgd": {"type": "robust", "split": "val", "attacks": ("pgd:linf:8/255:10",),
                    "max_examples": 512},
    }

and the training loop runs each every ``every`` steps (default ``train.eval_every``),
writes its metrics as ``<name>/<metric>`` records in ``metrics.jsonl``, and offers them
to the best-checkpoint policy (``train.best = {"metric": "val_pgd/accuracy", "mode":
"max"}``: robust early stopping, Rice, Wong & Kolter 2020). An empty ``config.evals``
means one ``classification`` evaluator named after the split it uses (``val``, else
``test``), as runs always had.

Adding an evaluator type is one module holding a frozen dataclass subclass of
:class:`Evaluator` decorated with :func:`register_evaluator`, imported in
``arjax/evaluation/__init__.py``, and its tests.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import numpy as np
from jax.sharding import Mesh

from arjax import losses
from arjax.attacks.registry import SpecError, parse_attack
from arjax.config_lib import ConfigError
from arjax.data import split_arrays, split_labels
from arjax.evaluation import suite
from arjax.models import ModelFns
from arjax.registry import Registry, closest
from arjax.types import PRNGKey, PyTree

EVALUATORS: Registry[type["Evaluator"]] = Registry("evaluator", "evals.<name>.type")


def register_evaluator(name: str) -> Callable[[type], type]:
    """Class decorator: registers an :class:`Evaluator` subclass as ``type = name``."""
    return EVALUATORS.register_class(name, "type")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evaluator:
    """Where, how often and on how much an evaluator runs.

    Attributes:
      split: the dataset split it evaluates (``"val"``, ``"test"``, ``"train"``).
      every: steps between evaluations during training (also at the last step);
        0 never during training.
      batch_size: evaluation batch size.
      max_examples: evaluate the first N examples of the split (0: all).
    """

    type: ClassVar[str] = ""
    split: str = "val"
    every: int = 0
    batch_size: int = 1000
    max_examples: int = 0

    def metric_names(self) -> tuple[str, ...]:
        """The metrics every evaluation reports (others may come with some heads)."""
        return ("loss", "accuracy")

    def __call__(
        self,
        model: ModelFns,
        params: PyTree,
        batch_stats: PyTree,
        source: Any,
        *,
        mesh: Mesh,
        key: PRNGKey,
        bounds: tuple[float, float] | None,
    ) -> dict[str, float]:
        """The metrics of the model on ``source`` (the split): ``{metric: value}``."""
        raise NotImplementedError(f"evaluator {self.type!r} has no evaluation")


@register_evaluator("classification")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Classification(Evaluator):
    """Clean metrics: loss, accuracy, ROC-AUC (binary and multi-label heads)."""

    def __call__(self, model, params, batch_stats, source, *, mesh, key, bounds):
        """Loss, accuracy and (binary / multi-label heads) AUC on the clean split."""
        del key, bounds
        arrays = split_arrays(source, self.max_examples) if self.max_examples else source
        logits = suite.predict(model, params, batch_stats, arrays, batch_size=self.batch_size,
                               mesh=mesh)  # fmt: skip
        return suite.classification_metrics(logits, split_labels(arrays))


@register_evaluator("robust")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Robust(Evaluator):
    """Accuracy under attack on a validation subset (robust early stopping).

    Reports ``accuracy`` (an example counts when every attack leaves it correct: the
    worst case over ``attacks`` per example), ``clean_accuracy`` of the same examples,
    and ``<attack name>/accuracy`` and ``/loss`` per attack.

    Attributes:
      attacks: specs in the grammar of :mod:`arjax.attack_syntax` (read at construction).
      max_examples: the subset's size (the first N examples; 0: all).
    """

    attacks: tuple = ("pgd:linf:8/255:10",)
    max_examples: int = 512

    def __post_init__(self) -> None:
        specs = tuple(
            parse_attack(s, default_steps=10, where=f"evals.<name>.attacks[{i}]")
            for i, s in enumerate(self.attacks)
        )
        if not specs:
            raise ConfigError("evals.<name>.attacks is empty; give at least one attack spec")
        object.__setattr__(self, "attacks", specs)

    def metric_names(self) -> tuple[str, ...]:
        """The worst case and the clean accuracy, and each attack's accuracy and loss."""
        names = ["accuracy", "clean_accuracy"]
        for spec in self.attacks:
            names += [f"{spec.name}/accuracy", f"{spec.name}/loss"]
        return tuple(names)

    def __call__(self, model, params, batch_stats, source, *, mesh, key, bounds):
        """Each attack on the subset, then the worst case per example."""
        arrays = split_arrays(source, self.max_examples)
        labels = arrays["label"]
        clean = suite.predict(model, params, batch_stats, arrays, batch_size=self.batch_size,
                              mesh=mesh)  # fmt: skip
        robust = np.asarray(losses.predictions_correct(clean, labels))
        out = {"clean_accuracy": float(np.mean(robust))}
        attacked = suite.attacked_logits(
            model, params, batch_stats, arrays, list(self.attacks), bounds=bounds, key=key,
            mesh=mesh, batch_size=self.batch_size,
        )  # fmt: skip
        for spec in self.attacks:
            logits = attacked[spec.name]
            metrics = suite.classification_metrics(logits, labels)
            out[f"{spec.name}/accuracy"] = metrics["accuracy"]
            out[f"{spec.name}/loss"] = metrics["loss"]
            robust = robust & np.asarray(losses.predictions_correct(logits, labels))
        out["accuracy"] = float(np.mean(robust))
        return out


def from_config(name: str, section: Mapping[str, Any], *, default_every: int) -> Evaluator:
    """The evaluator ``evals.<name>`` describes, checked.

    Args:
      name: its name in ``config.evals`` (the prefix of its metrics).
      section: ``{"type": ..., <fields>}``.
      default_every: ``every`` when the section gives none (``train.eval_every``).

    Raises:
      ConfigError: an unknown type or field (the nearest named), a bad value.
    """
    values = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    where = f"evals.{name}"
    cls = EVALUATORS.lookup(values.pop("type", None), field=f"{where}.type")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            near = closest(key, list(fields))
            hint = f"did you mean {where}.{near}?" if near else f"valid: {', '.join(fields)}"
            raise ConfigError(f"unknown field {where}.{key} for evaluator {cls.type!r}; {hint}")
    values.setdefault("every", default_every)
    for key in ("every", "batch_size", "max_examples"):
        value = values.get(key, fields[key].default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}.{key}={value!r} must be an integer >= 0")
    if "attacks" in values:
        values["attacks"] = tuple(values["attacks"])
    try:
        return cls(**values)
    except SpecError as e:
        raise ConfigError(str(e).replace("evals.<name>", where)) from None


def key_for(base: PRNGKey, name: str, step: int) -> PRNGKey:
    """The key of evaluator ``name`` at ``step``: a pure function of the run's key."""
    tag = int.from_bytes(name.encode()[:4].ljust(4, b"\0"), "little")
    return jax.random.fold_in(jax.random.fold_in(base, tag), step)


__all__ = [
    "EVALUATORS",
    "Classification",
    "Evaluator",
    "Robust",
    "from_config",
    "key_for",
    "register_evaluator",
]
