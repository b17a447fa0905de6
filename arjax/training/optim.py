"""Optax optimisers and learning-rate schedules from the ``optim`` config.

``optim.schedule`` names a schedule of ``arjax.training.lr_schedule.LR_SCHEDULES``:
``constant``, ``cosine``, ``warmup_cosine``, ``piecewise`` (fields ``milestones``:
fractions of training, default ``(0.5, 0.75)``, or ``milestone_epochs``; ``decay_factor``,
default 0.1) or ``cyclic`` (field ``peak_fraction``, default 0.5). ``optim.warmup_steps``
> 0 warms any of them up linearly (``warmup_cosine`` has it built in).
"""

import re

import jax
import ml_collections
import optax

from arjax.config_lib import ConfigError, check_choice, check_range
from arjax.training.lr_schedule import LR_SCHEDULE_OPTIONS, LR_SCHEDULES, lr_schedule

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = tuple(LR_SCHEDULES)


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks the ``optim.*`` fields."""
    check_choice(cfg, "optim.name", OPTIMIZERS)
    check_choice(cfg, "optim.schedule", SCHEDULES)
    check_range(cfg, "optim.learning_rate", 0.0, lo_open=True)
    check_range(cfg, "optim.momentum", 0.0, 1.0)
    check_range(cfg, "optim.weight_decay", 0.0)
    check_range(cfg, "optim.warmup_steps", 0, integer=True)
    optim = cfg.optim
    try:  # the schedule's own checks, on a stand-in run (its real length is not known yet)
        lr_schedule(optim.schedule, 1.0, total_steps=100, steps_per_epoch=1, **_options(optim))
    except ValueError as e:  # messages start with the option's name
        raise ConfigError(f"optim.{e} (optim.schedule={optim.schedule!r})") from None


def _options(optim: ml_collections.ConfigDict) -> dict:
    """The ``optim.*`` fields the chosen schedule reads (absent ones keep its defaults)."""
    return {k: optim[k] for k in LR_SCHEDULE_OPTIONS[optim.schedule] if k in optim}


def make_schedule(
    cfg: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int | None = None
) -> optax.Schedule:
    """Learning rate as a function of the step (``optim.schedule``, see the module docstring).

    Args:
      cfg: the ``optim`` section.
      total_steps: updates in the (phase's) run.
      steps_per_epoch: updates per epoch; ``optim.milestone_epochs`` needs it.

    Raises:
      ConfigError: a bad schedule option, or ``optim.milestone_epochs`` without
        ``steps_per_epoch``.
    """
    try:
        return lr_schedule(
            cfg.schedule,
            cfg.learning_rate,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            warmup_steps=cfg.get("warmup_steps", 0),
            **_options(cfg),
        )
    except ValueError as e:
        raise ConfigError(f"optim.{e} (optim.schedule={cfg.schedule!r})") from None


def param_path(path) -> str:
    """``"layer4/1/conv2/kernel"`` for a pytree key path (nnx ``.value`` dropped)."""
    parts = []
    for k in path:
        part = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
        if part != "value":
            parts.append(str(part))
    return "/".join(parts)


def trainable_labels(params, patterns) -> object:
    """``"train"`` / ``"freeze"`` per parameter leaf: trained iff a regex matches its path.

    Args:
      params: the parameter pytree.
      patterns: regexes searched (``re.search``) in paths such as
        ``"classifier/6/kernel"``; empty means every parameter is trained.

    Raises:
      ValueError: when a pattern matches no parameter (a typo would otherwise
        freeze the whole network); the message lists some valid paths.
    """
    compiled = [re.compile(p) for p in patterns]
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [param_path(path) for path, _ in flat]
    if not compiled:
        return jax.tree_util.tree_unflatten(treedef, ["train"] * len(paths))
    for pattern in compiled:
        if not any(pattern.search(p) for p in paths):
            raise ValueError(
                f"optim.trainable pattern {pattern.pattern!r} matches no parameter; "
                f"paths look like: {', '.join(paths[:3])} ... {', '.join(paths[-3:])}"
            )
    labels = ["train" if any(c.search(p) for c in compiled) else "freeze" for p in paths]
    return jax.tree_util.tree_unflatten(treedef, labels)


def make_optimizer(
    cfg: ml_collections.ConfigDict,
    total_steps: int,
    params=None,
    *,
    steps_per_epoch: int | None = None,
):
    """The configured optax optimiser, optionally updating only chosen layers.

    ``total_steps`` and ``steps_per_epoch`` lay the learning-rate schedule out
    (:func:`make_schedule`).

    ``optim.trainable`` (regexes over parameter paths, see
    :func:`trainable_labels`) restricts updates to the matching parameters
    (``optax.multi_transform``; the rest get zero updates), e.g. ARFL
    fine-tunes VGG16's fully connected layers and last convolution:
    ``trainable=("classifier", "features/28")``.

    ``sgd`` uses heavy-ball momentum (Khakzar: lr 0.01, momentum 0.9, no
    weight decay); ``adam`` adds L2 weight decay to the gradient when
    ``weight_decay > 0``; ``adamw`` decouples it.
    """
    tx = _base_optimizer(cfg, make_schedule(cfg, total_steps, steps_per_epoch))
    patterns = tuple(cfg.get("trainable", ()) or ())
    if patterns:
        if params is None:
            raise ValueError("optim.trainable needs the parameters to label")
        tx = optax.multi_transform(
            {"train": tx, "freeze": optax.set_to_zero()}, trainable_labels(params, patterns)
        )
    return tx


def _base_optimizer(cfg: ml_collections.ConfigDict, schedule: optax.Schedule):
    if cfg.name == "sgd":
        tx = optax.sgd(schedule, momentum=cfg.momentum or None)
        if cfg.weight_decay:
            tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx)
        return tx
    if cfg.name == "adamw":
        return optax.adamw(schedule, weight_decay=cfg.weight_decay)
    tx = optax.adam(schedule)
    if cfg.weight_decay:
        tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx)
    return tx
