"""Command line: evaluate a trained workdir without retraining.

    python -m arjax.evaluate --workdir runs/X [--attack fgsm,pgd --norm linf,l2
        --eps 0.01,0.05 --steps 100 --split test --checkpoint auto --nocurves]

Restores each run's best (else latest) checkpoint, evaluates clean data and
every (attack, norm, eps) combination given (default: the config's
``eval.attacks``), and writes ``<run>/eval.json``, ``roc_curves.png`` and the
workdir's mean (std) ``eval.json``. Runs already evaluated with the same
settings are skipped (``--force`` redoes them). Bad arguments exit with
status 2 and a message naming the flag and the valid choices. (argparse, not
absl flags, so that the CLI can be called in-process: ``main(argv)``.)
"""

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from arjax.attacks import NORMS
from arjax.config_lib import ConfigError
from arjax.evaluation.attack_specs import attack_specs, cross_product
from arjax.evaluation.robustness import ATTACKS
from arjax.evaluation.workdir import CHECKPOINTS


def _listed(valid: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [v for v in text.split(",") if v]
        for v in values:
            if v not in valid:
                raise argparse.ArgumentTypeError(
                    f"unknown {v!r}; valid choices: {', '.join(valid)}"
                )
        return values

    return parse


def _numbers(cast: type, lo: float, many: bool = False) -> Callable[[str], object]:
    kind = "an integer" if cast is int else "a number"

    def parse(text: str):
        out = []
        for part in text.split(",") if many else [text]:
            try:
                value = cast(part)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{part!r} is not {kind}") from None
            if not value >= lo:
                raise argparse.ArgumentTypeError(f"{part} is out of range; valid: [{lo}, inf)")
            out.append(value)
        return out if many else out[0]

    return parse


def parser() -> argparse.ArgumentParser:
    """The argument parser (exit status 2 on bad arguments)."""
    p = argparse.ArgumentParser(prog="python -m arjax.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="training workdir (with config.json)")
    p.add_argument("--attack", type=_listed(ATTACKS), default=[], help="e.g. fgsm,pgd")
    p.add_argument("--norm", type=_listed(NORMS), default=[], help="e.g. linf,l2")
    p.add_argument("--eps", type=_numbers(float, 0, many=True), default=[], help="e.g. 0.01,0.05")
    p.add_argument("--steps", type=_numbers(int, 1), help="PGD steps (attacks and curves)")
    p.add_argument("--split", help="split to evaluate (default: eval.split)")
    p.add_argument("--max_examples", type=_numbers(int, 0), help="first N examples (0: all)")
    p.add_argument("--batch_size", type=_numbers(int, 1), help="evaluation batch size")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="auto")
    p.add_argument("--nocurves", dest="curves", action="store_false", help="skip robust curves")
    p.add_argument("--force", action="store_true", help="re-evaluate up-to-date runs")
    p.add_argument("--noprogress", dest="progress", action="store_false")
    return p


def eval_overrides(args: argparse.Namespace) -> dict:
    """The ``eval`` fields the arguments set.

    ``--attack`` / ``--norm`` / ``--eps`` replace ``eval.attacks`` by their grid
    (a dimension not given comes from the config's first attack); ``--steps``
    alone changes the steps of the config's attacks that name none, and the curves'.
    """
    from arjax.evaluation.workdir import load_config

    out = {}
    for field in ("num_steps", "max_examples", "batch_size", "split"):
        value = getattr(args, "steps" if field == "num_steps" else field)
        if value is not None:
            out[field] = value
    if args.attack or args.norm or args.eps:
        ev = load_config(args.workdir).eval
        first = attack_specs(ev)[0]  # fills the dimensions not given
        out["attacks"] = cross_product(
            args.attack or [first.attack],
            args.norm or [first.norm],
            args.eps or [first.eps],
            out.get("num_steps", ev.num_steps),
        )
    return out


def format_table(summary: dict) -> str:
    """Mean (std) in percent of the clean and per-attack metrics, one row per condition."""
    from arjax.evaluation.metrics import format_mean_std

    stats = summary["summary"]
    names = ["clean"] + sorted({k.split("/")[0] for k in stats} - {"clean", "adversarial"})
    columns = [
        c
        for c in ("accuracy", "auc", "sensitivity", "specificity")
        if any(f"{n}/{c}" in stats for n in names)
    ]
    width = max(len(n) for n in names) + 2
    lines = [f"{summary['name'] or summary['method']}: {len(summary['runs'])} run(s), % mean (std)"]
    lines.append("".ljust(width) + "".join(c.rjust(14) for c in columns))
    for n in names:
        if any(f"{n}/{c}" in stats for c in columns):
            cells = [
                format_mean_std(stats[f"{n}/{c}"], scale=100.0) if f"{n}/{c}" in stats else "-"
                for c in columns
            ]
            lines.append(n.ljust(width) + "".join(c.rjust(14) for c in cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses ``argv``, evaluates, prints the table; exits 2 on bad arguments."""
    p = parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from arjax.evaluation.workdir import evaluate_workdir

    if not os.path.isdir(args.workdir):
        p.error(f"argument --workdir: {args.workdir!r} is not a directory")
    try:
        summary = evaluate_workdir(
            args.workdir,
            overrides=eval_overrides(args),
            which=args.checkpoint,
            curves=args.curves,
            force=args.force,
            progress=args.progress,
        )
    except ConfigError as e:
        p.error(str(e))
    print(format_table(summary))
    print(f"eval: {os.path.join(args.workdir, 'eval.json')}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
