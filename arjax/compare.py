"""Command line: compare methods (workdirs) as ARFL's Tables 1-3, with p-values.

    arjax-compare runs/A runs/B runs/C [--metric auto|accuracy|auc|...]
        [--attack adversarial|<attack name>] [--labels A,B,C] [--out comparison]

Each argument is a workdir (its ``eval.json`` from ``arjax.evaluate``, else
the training ``report.json``) or such a file. Prints the standard, adversarial
and mean metric as mean (std) in percent per method and the two-sided
Mann-Whitney U p-value of every pair; writes ``comparison.json``,
``comparison.md`` and ``comparison.png`` to ``--out``, and
``accuracy_vs_eps.png`` (the methods' robust-accuracy curves overlaid, one
line per method, IMA Fig. 6 style) when the runs hold such curves. Bad arguments exit
with status 2 and a one-line message naming the flag and the valid choices.
Flags are parsed as by every arjax command (:mod:`arjax.cli`).
"""

from collections.abc import Sequence

from absl import flags

from arjax import cli
from arjax.experiment import compare as comparison

PROG = "arjax-compare"


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    """The command's flags (the workdirs are positional; ``argv`` unused)."""
    del argv
    flags.DEFINE_enum("metric", "auto", comparison.METRICS, "metric to compare", flag_values=fv)
    flags.DEFINE_string("attack", "adversarial", "'adversarial' or an attack name", flag_values=fv)
    flags.DEFINE_list("labels", None, "row labels, comma-separated", flag_values=fv)
    flags.DEFINE_string("out", "comparison", "output folder", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses ``argv``, compares, prints and writes the tables; exits 2 on bad arguments."""
    fv, paths = cli.parse(PROG, __doc__, argv, define_flags, positional="WORKDIR WORKDIR...")

    def body() -> dict:
        if len(paths) < 2:
            raise cli.UsageError("give at least two workdirs or result files to compare")
        if fv.labels and len(fv.labels) != len(paths):
            raise cli.UsageError(f"flag --labels: {len(fv.labels)} names for {len(paths)} methods")
        methods = [comparison.load_method(path) for path in paths]
        attacks = comparison.attack_sections(methods)
        if fv.attack not in attacks:
            valid = ", ".join(attacks)
            raise cli.UsageError(f"flag --attack: unknown {fv.attack!r}; valid choices: {valid}")
        labels = fv.labels or comparison.default_labels(methods)
        result = comparison.compare_methods(methods, labels, metric=fv.metric, attack=fv.attack)
        print(comparison.format_tables(result))
        # segmentation runs: --metric tvdi / adi also draws those Dice curves (IMA Figs. 10-12)
        value = fv.metric if fv.metric in comparison.CURVE_VALUES else "accuracy"
        curves = comparison.curve_overlay(methods, labels, value=value)
        for path in comparison.write_comparison(result, fv.out, curves, curve_value=value):
            print(f"wrote {path}")
        return result

    return cli.run_main(PROG, body)


def run() -> None:
    """Console-script entry point (``arjax-compare``)."""
    main()


if __name__ == "__main__":
    run()
