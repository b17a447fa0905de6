"""Command line: evaluate a trained workdir without retraining.

    arjax-evaluate --workdir runs/X [--attack fgsm,pgd --norm linf,l2
        --eps 0.01,0.05 --steps 100 --split test --checkpoint auto --nocurves
        --masking_checks auto|all|off --curve_attack auto|pgd|autoattack|...]

Restores each run's best (else latest) checkpoint, evaluates clean data and
every (attack, norm, eps) combination given (default: the config's
``eval.attacks``), runs the gradient-masking checks next to APGD / AutoAttack
attacks (a ``WARNING`` line per failed check), and writes ``<run>/eval.json``,
``roc_curves.png`` and the workdir's mean (std) ``eval.json``. Runs already evaluated with the same
settings are skipped (``--force`` redoes them). Bad arguments exit with
status 2 and a one-line message naming the flag and the valid choices. Flags
are parsed as by every arjax command (:mod:`arjax.cli`); ``main(argv)`` runs
in-process. Also installed as ``arjax-evaluate``.
"""

import os
from collections.abc import Sequence

from absl import flags

from arjax import cli
from arjax.attacks import ATTACKS, NORMS
from arjax.evaluation.attack_specs import attack_specs, cross_product
from arjax.evaluation.masking import MASKING_MODES
from arjax.experiment.setup import CHECKPOINTS

PROG = "arjax-evaluate"


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    """The command's flags (``argv`` unused)."""
    del argv
    flags.DEFINE_string("workdir", None, "training workdir (with config.json)", flag_values=fv)
    flags.DEFINE_list(
        "attack", [], f"attacks, e.g. fgsm,pgd ({', '.join(ATTACKS)})", flag_values=fv
    )
    flags.DEFINE_list("norm", [], f"norms, e.g. linf,l2 ({', '.join(NORMS)})", flag_values=fv)
    flags.DEFINE_list("eps", [], "radii, e.g. 0.01,0.05 or 8/255", flag_values=fv)
    flags.DEFINE_integer("steps", None, "attack steps (attacks and curves)", 1, flag_values=fv)
    flags.DEFINE_string("split", None, "split to evaluate (default: eval.split)", flag_values=fv)
    flags.DEFINE_integer("max_examples", None, "first N examples (0: all)", 0, flag_values=fv)
    flags.DEFINE_integer("batch_size", None, "evaluation batch size", 1, flag_values=fv)
    flags.DEFINE_enum("checkpoint", "auto", CHECKPOINTS, "checkpoint to evaluate", flag_values=fv)
    flags.DEFINE_enum(
        "masking_checks", None, MASKING_MODES,
        "gradient-masking checks: for APGD/AutoAttack attacks (auto), all attacks, or off",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_enum(
        "curve_attack", None, ("auto", *sorted(ATTACKS)),
        "attack of the robust curves (auto: the first APGD/AutoAttack attack, else PGD)",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_boolean("curves", True, "compute the robust-accuracy curves", flag_values=fv)
    flags.DEFINE_boolean("force", False, "re-evaluate up-to-date runs", flag_values=fv)
    flags.DEFINE_boolean("progress", True, "show progress bars", flag_values=fv)
    flags.mark_flag_as_required("workdir", flag_values=fv)


def _check_listed(name: str, values: list[str], valid: Sequence[str]) -> None:
    for v in values:
        if v not in valid:
            raise cli.UsageError(f"flag --{name}: unknown {v!r}; valid choices: {', '.join(valid)}")


def eval_overrides(fv: flags.FlagValues) -> dict:
    """The ``eval`` fields the flags set.

    ``--attack`` / ``--norm`` / ``--eps`` replace ``eval.attacks`` by their grid
    (a dimension not given comes from the config's first attack); ``--steps``
    alone changes the steps of the config's attacks that name none, and the curves'.

    Raises:
      UsageError: an unknown attack or norm, or a radius that is not a number >= 0.
    """
    from arjax.attacks.registry import SpecError, parse_eps
    from arjax.experiment.workdir import load_config

    _check_listed("attack", fv.attack, sorted(ATTACKS))
    _check_listed("norm", fv.norm, NORMS)
    try:
        eps = [parse_eps(e, "--eps") for e in fv.eps]
    except SpecError as e:
        raise cli.UsageError(f"flag --eps: {e}") from None
    out = {}
    fields = ("num_steps", "max_examples", "batch_size", "split", "masking_checks", "curve_attack")
    for field in fields:
        value = fv["steps" if field == "num_steps" else field].value
        if value is not None:
            out[field] = value
    if fv.attack or fv.norm or eps:
        ev = load_config(fv.workdir).eval
        first = attack_specs(ev)[0]  # fills the dimensions not given
        out["attacks"] = cross_product(
            fv.attack or [first.attack],
            fv.norm or [first.norm],
            eps or [first.eps],
            out.get("num_steps", ev.num_steps),
        )
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses ``argv``, evaluates, prints the table; exits 2 on bad arguments."""
    fv, _ = cli.parse(PROG, __doc__, argv, define_flags)
    cli.quiet_logging()
    from arjax.experiment.final_eval import evaluate_workdir
    from arjax.experiment.summary import format_eval

    def body() -> dict:
        if not os.path.isdir(fv.workdir):
            raise cli.UsageError(f"flag --workdir: {fv.workdir!r} is not a directory")
        summary = evaluate_workdir(
            fv.workdir,
            overrides=eval_overrides(fv),
            which=fv.checkpoint,
            curves=fv.curves,
            force=fv.force,
            progress=fv.progress,
        )
        print(format_eval(summary))
        print(f"eval: {os.path.join(fv.workdir, 'eval.json')}")
        return summary

    return cli.run_main(PROG, body)


def run() -> None:
    """Console-script entry point (``arjax-evaluate``)."""
    main()


if __name__ == "__main__":
    run()
