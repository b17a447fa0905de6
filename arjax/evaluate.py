"""Command line: evaluate a trained workdir without retraining.

    python -m arjax.evaluate --workdir runs/X [--attack fgsm,pgd --norm linf,l2
        --eps 0.01,0.05 --steps 100 --split test --checkpoint auto]

Restores each run's best (else latest) checkpoint, evaluates clean data and
every (attack, norm, eps) combination given (default: the config's
``eval.attacks``), and writes ``<run>/eval.json``, ``roc_curves.png`` and the
workdir's mean (std) ``eval.json``. Runs already evaluated with the same
settings are skipped (``--force`` redoes them). Bad flags exit with status 2.
"""

import logging
import os
import sys

from absl import app, flags

from arjax.attacks import NORMS
from arjax.config_lib import ConfigError
from arjax.evaluation.attack_specs import cross_product
from arjax.evaluation.robustness import ATTACKS
from arjax.evaluation.workdir import CHECKPOINTS

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (with config.json).")
_ATTACK = flags.DEFINE_list("attack", [], f"Attacks, comma-separated: {', '.join(ATTACKS)}.")
_NORM = flags.DEFINE_list("norm", [], f"Norms, comma-separated: {', '.join(NORMS)}.")
_EPS = flags.DEFINE_list("eps", [], "Attack radii, comma-separated numbers >= 0.")
_STEPS = flags.DEFINE_string("steps", None, "PGD steps (attacks and robust curves).")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default: eval.split).")
_MAX = flags.DEFINE_string("max_examples", None, "Evaluate the first N examples (0: all).")
_BATCH = flags.DEFINE_string("batch_size", None, "Evaluation batch size.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "auto", f"One of {', '.join(CHECKPOINTS)}.")
_CURVES = flags.DEFINE_boolean("curves", True, "Also compute the robust-accuracy curves.")
_FORCE = flags.DEFINE_boolean("force", False, "Re-evaluate runs whose eval.json is up to date.")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show progress bars.")


def _choices(flag: str, values: list[str], valid: tuple[str, ...]) -> list[str]:
    for v in values:
        if v not in valid:
            raise ConfigError(f"--{flag}: unknown {v!r}; valid choices: {', '.join(valid)}")
    return values


def _number(flag: str, text: str, cast=float, lo: float = 0):
    try:
        value = cast(text)
    except ValueError:
        kind = "an integer" if cast is int else "a number"
        raise ConfigError(f"--{flag}: {text!r} is not {kind}") from None
    if not value >= lo:
        raise ConfigError(f"--{flag}={text} is out of range; valid: [{lo}, inf)")
    return value


def eval_overrides() -> dict:
    """The ``eval`` fields the flags set (checked here, before anything loads).

    Raises:
      ConfigError: naming the flag and the valid choices or range.
    """
    from arjax.evaluation.workdir import load_config

    out = {}
    for flag, field, cast, lo in (
        (_STEPS, "num_steps", int, 1),
        (_MAX, "max_examples", int, 0),
        (_BATCH, "batch_size", int, 1),
    ):
        if flag.value is not None:
            out[field] = _number(flag.name, flag.value, cast, lo)
    if _SPLIT.value is not None:
        out["split"] = _SPLIT.value
    attacks = _choices("attack", _ATTACK.value, ATTACKS)
    norms = _choices("norm", _NORM.value, NORMS)
    eps = [_number("eps", e) for e in _EPS.value]
    if attacks or norms or eps or "num_steps" in out:
        ev = load_config(_WORKDIR.value).eval
        attacks = attacks or [ev.adv_attack]
        norms = norms or [ev.norm]
        eps = eps or [ev.adv_eps]
        out["attacks"] = cross_product(attacks, norms, eps, out.get("num_steps", ev.num_steps))
    return out


def format_table(summary: dict) -> str:
    """Mean (std) of the clean and per-attack metrics, one row per condition."""
    from arjax.evaluation.metrics import format_mean_std

    stats = summary["summary"]
    names = ["clean"] + sorted({k.split("/")[0] for k in stats} - {"clean", "adversarial"})
    columns = ("accuracy", "auc", "sensitivity", "specificity")
    columns = [c for c in columns if any(f"{n}/{c}" in stats for n in names)]
    width = max(len(n) for n in names) + 2
    lines = [f"{summary['name'] or summary['method']}: {len(summary['runs'])} run(s), % mean (std)"]
    lines.append("".ljust(width) + "".join(c.rjust(14) for c in columns))
    for n in names:
        if not any(f"{n}/{c}" in stats for c in columns):
            continue
        cells = [
            format_mean_std(stats[f"{n}/{c}"], scale=100.0) if f"{n}/{c}" in stats else "-"
            for c in columns
        ]
        lines.append(n.ljust(width) + "".join(c.rjust(14) for c in cells))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Entry point for absl.app."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from arjax.evaluation.workdir import evaluate_workdir

    try:
        if not _WORKDIR.value or not os.path.isdir(_WORKDIR.value):
            raise ConfigError(f"--workdir={_WORKDIR.value!r} is not a directory")
        _choices("checkpoint", [_CHECKPOINT.value], CHECKPOINTS)
        summary = evaluate_workdir(
            _WORKDIR.value,
            overrides=eval_overrides(),
            which=_CHECKPOINT.value,
            curves=_CURVES.value,
            force=_FORCE.value,
            progress=_PROGRESS.value,
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_table(summary))
    print(f"eval: {os.path.join(_WORKDIR.value, 'eval.json')}")


def run() -> None:
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run()
