"""What training and re-evaluation build the same way: the folds, the model, the state.

Training (:mod:`arjax.experiment.train`) and ``arjax-evaluate``
(:mod:`arjax.experiment.final_eval`) both call these, so a restored checkpoint
always matches the state the loop saved.
"""

import json
import logging
import os

import jax
import ml_collections
import numpy as np
import optax

from arjax import data as data_lib
from arjax import methods, parallel
from arjax.config_lib import ConfigError
from arjax.data import folds as folds_lib
from arjax.data.checks import check_model_outputs
from arjax.models import ModelFns, build_model
from arjax.training import optim
from arjax.training.checkpoint import Checkpointer
from arjax.training.state import TrainState, create_train_state
from arjax.types import PyTree

log = logging.getLogger("arjax")

CHECKPOINTS = ("auto", "best", "latest")


def load_folds(cfg: ml_collections.ConfigDict) -> list[data_lib.DatasetSplits]:
    """The datasets of an experiment: one, or one per fold when ``cfg.folds >= 2``.

    Checks that every fold has at least ``train.batch_size`` training examples and
    that ``model.num_outputs`` can represent the data's classes.

    Raises:
      ConfigError: unreadable data (the file named), too small a training split, or a
        head width that does not match the classes.
    """
    num_folds = int(cfg.get("folds", 0))
    cv = cfg.get("cv", None) or {}
    try:
        datasets = folds_lib.fold_datasets(
            cfg.data,
            num_folds,
            mode=cv.get("mode", "kfold"),
            holdout=cv.get("holdout", "val"),
        )
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    for fold, dataset in enumerate(datasets):
        # a head that cannot represent the classes (e.g. a mistyped extra label) stops here
        num_outputs = int(cfg.model.get("num_outputs", 0) or 0)
        check_model_outputs(dataset.num_classes, num_outputs, cfg.data.get("name", "data"))
        n_train = data_lib.split_length(dataset.splits["train"])
        if n_train < cfg.train.batch_size:
            where = f" in fold {fold} of folds={num_folds}" if num_folds else ""
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} exceeds the {n_train} training "
                f"examples{where}"
            )
    check_radii(cfg, datasets[0])
    return datasets


def build_method(cfg: ml_collections.ConfigDict) -> methods.Method:
    """The run's method from ``cfg.method`` (Δε & co. derived from ``train.num_epochs``).

    Raises:
      ConfigError: an unknown method or field (the nearest named), a value out of range.
    """
    return methods.from_config(cfg.method, num_epochs=int(cfg.train.num_epochs))


def check_radii(cfg: ml_collections.ConfigDict, dataset: data_lib.DatasetSplits) -> None:
    """Rejects attack radii beyond the data range, naming the field and the range.

    Inputs in ``[lo, hi]^D`` are at most ``hi - lo`` apart in L-inf and
    ``(hi - lo) * sqrt(D)`` in L2, so a larger radius covers the whole input box
    (``method.eps=2.0`` on [0, 1] images attacks with "any image"). Data without
    bounds (two moons: coordinates in the plane) accept any radius.

    Raises:
      ConfigError: a ``method.attack``/``eps``/``eps_max``, ``eval.adv_eps``/``eps``/``eps_l2``
        or ``eval.attacks`` radius above the limit of its norm.
    """
    if dataset.bounds is None:
        return
    from arjax.evaluation.attack_specs import attack_specs

    lo, hi = dataset.bounds
    dim = int(np.prod(dataset.input_shape))
    limit = {"linf": hi - lo, "l2": (hi - lo) * dim**0.5}
    method = build_method(cfg)
    radii = [
        (f"method.{f}", getattr(method, f), getattr(method, "norm", "linf"))
        for f in ("eps", "eps_max")
        if hasattr(method, f)
    ]
    if isinstance(method, methods.AttackMethod):
        spec = method.attack
        radii.append((f"method.attack={spec.text!r}: eps", spec.eps, spec.norm))
    radii += [(f"eval.eps[{i}]", e, cfg.eval.norm) for i, e in enumerate(cfg.eval.get("eps", ()))]
    radii += [(f"eval.eps_l2[{i}]", e, "l2") for i, e in enumerate(cfg.eval.get("eps_l2", ()))]
    radii += [
        (f"eval.attacks[{i}]" if cfg.eval.get("attacks") else "eval.adv_eps", s.eps, s.norm)
        for i, s in enumerate(attack_specs(cfg.eval))
    ]
    for field, eps, norm in radii:
        top = limit[norm]
        if isinstance(eps, int | float) and eps > top * (1 + 1e-6):
            raise ConfigError(
                f"{field}={eps} is beyond the data range: inputs lie in [{lo:g}, {hi:g}]^{dim}, "
                f"so a {norm} radius above {top:.4g} covers every input; valid: [0, {top:.4g}]"
            )


def finished_result(run_dir: str) -> dict | None:
    """A finished run's ``result.json`` (not retrained), else None; creates ``run_dir``."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "result.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def make_model(
    cfg: ml_collections.ConfigDict, dataset: data_lib.DatasetSplits, seed: int
) -> tuple[ModelFns, PyTree, PyTree]:
    """``(model, params, batch_stats)`` of ``cfg.model`` for the dataset's inputs and classes.

    Raises:
      ConfigError: a model that cannot be built (e.g. missing pretrained weights).
    """
    try:
        return build_model(cfg.model, dataset.input_shape, dataset.num_classes, seed)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e


def initial_state(
    cfg: ml_collections.ConfigDict,
    dataset: data_lib.DatasetSplits,
    params: PyTree,
    batch_stats: PyTree,
    seed: int,
    mesh: jax.sharding.Mesh,
    *,
    method: methods.Method | None = None,
    num_epochs: int | None = None,
) -> tuple[TrainState, optax.GradientTransformation]:
    """A fresh replicated :class:`TrainState` and its optimiser, as a phase starts.

    Args:
      cfg: the experiment config (``optim``, ``train.batch_size``).
      dataset: the splits (train size: optimiser schedule length, margin table size).
      params: initial parameters.
      batch_stats: initial batch statistics.
      seed: the run's seed.
      mesh: device mesh (the state is replicated on it).
      method: the phase's method (default: the config's, :func:`build_method`).
      num_epochs: the phase's length (default ``cfg.train.num_epochs``).

    Returns:
      ``(state, tx)``; ``state.method_state`` is the method's fresh per-example state
      (IMA, MMA: margins at their floor), or None.
    """
    method = build_method(cfg) if method is None else method
    num_epochs = cfg.train.num_epochs if num_epochs is None else num_epochs
    n_train = data_lib.split_length(dataset.splits["train"])
    spe = data_lib.steps_per_epoch(n_train, cfg.train.batch_size)
    tx = optim.make_optimizer(cfg.optim, spe * int(num_epochs), params, steps_per_epoch=spe)
    state = create_train_state(params, batch_stats, tx, seed, method.init_state(n_train))
    return parallel.put_replicated(state, mesh), tx


def restore_state(
    cfg: ml_collections.ConfigDict,
    dataset: data_lib.DatasetSplits,
    run_dir: str,
    seed: int,
    mesh: jax.sharding.Mesh,
    which: str = "auto",
) -> tuple[ModelFns, TrainState, dict]:
    """The model and a run's trained state, built as the training loop builds it.

    Args:
      cfg: the run's config.
      dataset: its splits.
      run_dir: the run directory.
      seed: the run's seed.
      mesh: device mesh (state replicated on it).
      which: ``"best"`` (``best/checkpoints``), ``"latest"`` (``checkpoints``) or
        ``"auto"`` (best when present, else latest).

    Returns:
      ``(model, state, {"checkpoint": "best" | "latest", "steps": step})``.

    Raises:
      ConfigError: when the requested checkpoint does not exist or does not match.
    """
    if which not in CHECKPOINTS:
        raise ConfigError(f"unknown checkpoint {which!r}; valid choices: {', '.join(CHECKPOINTS)}")
    candidates = {"best": os.path.join(run_dir, "best", "checkpoints")}
    candidates["latest"] = os.path.join(run_dir, "checkpoints")
    order = ("best", "latest") if which == "auto" else (which,)
    model, params, batch_stats = make_model(cfg, dataset, seed)
    like, _ = initial_state(cfg, dataset, params, batch_stats, seed, mesh)
    for kind in order:
        if not os.path.isdir(candidates[kind]):
            continue
        ckpt = Checkpointer(candidates[kind])
        try:
            step = ckpt.latest_step()
            if step is None:
                continue
            state = ckpt.restore_matching(like, f"{candidates[kind]} (config.json)")
        finally:
            ckpt.close()
        return model, state, {"checkpoint": kind, "steps": int(step)}
    raise ConfigError(f"run {run_dir!r} has no {' or '.join(order)} checkpoint to evaluate")


def init_from(run_dir: str, state: TrainState, seed: int) -> TrainState:
    """Parameters and batch statistics of another run (its best, else latest, checkpoint).

    ``train.init_from``: fine-tune from another experiment's run (e.g. a
    clean model shared by several adversarial runs; ``train.schedule =
    "two_phase"`` does Khakzar's clean-then-adversarial schedule in one run).
    Step, optimiser state and the method's state start fresh.
    """
    if not os.path.isdir(run_dir):
        raise ConfigError(f"train.init_from={run_dir!r} is not a run directory")
    seed_dir = os.path.join(run_dir, f"seed_{seed}")
    run_dir = seed_dir if os.path.isdir(seed_dir) else run_dir
    for sub in ("best/checkpoints", "checkpoints"):
        path = os.path.join(run_dir, sub)
        if os.path.isdir(path):
            source = Checkpointer(path)
            if source.latest_step() is not None:
                try:
                    other = source.restore_matching(state, f"train.init_from={run_dir!r}")
                finally:
                    source.close()
                log.info("initialised from %s (step %s)", path, int(other.step))
                return state.replace(params=other.params, batch_stats=other.batch_stats)
            source.close()
    raise ConfigError(f"train.init_from={run_dir!r} holds no checkpoint")
