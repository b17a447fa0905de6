"""Optax optimisers and learning-rate schedules from the ``optim`` config."""

import ml_collections
import optax

from arjax.config_lib import check_choice, check_range

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine")


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks the ``optim.*`` fields."""
    check_choice(cfg, "optim.name", OPTIMIZERS)
    check_choice(cfg, "optim.schedule", SCHEDULES)
    check_range(cfg, "optim.learning_rate", 0.0, lo_open=True)
    check_range(cfg, "optim.momentum", 0.0, 1.0)
    check_range(cfg, "optim.weight_decay", 0.0)
    check_range(cfg, "optim.warmup_steps", 0, integer=True)


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the step."""
    lr = cfg.learning_rate
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, max(total_steps, 1))
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, cfg.warmup_steps, max(total_steps, cfg.warmup_steps + 1)
    )


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int):
    """The configured optax optimiser.

    ``sgd`` uses heavy-ball momentum (Khakzar: lr 0.01, momentum 0.9, no
    weight decay); ``adam`` adds L2 weight decay to the gradient when
    ``weight_decay > 0``; ``adamw`` decouples it.
    """
    schedule = make_schedule(cfg, total_steps)
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
