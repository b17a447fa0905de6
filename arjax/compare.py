"""Command line: compare methods (workdirs) as ARFL's Tables 1-3, with p-values.

    python -m arjax.compare runs/A runs/B runs/C [--metric auto|accuracy|auc|...]
        [--attack adversarial|<attack name>] [--labels A,B,C] [--out comparison]

Each argument is a workdir (its ``eval.json`` from ``arjax.evaluate``, else
the training ``report.json``) or such a file. Prints the standard, adversarial
and mean metric as mean (std) in percent per method and the two-sided
Mann-Whitney U p-value of every pair; writes ``comparison.json``,
``comparison.md`` and ``comparison.png`` to ``--out``. Bad arguments exit
with status 2 and a message naming the argument and the valid choices.
"""

import argparse
import sys
from collections.abc import Sequence

from arjax.config_lib import ConfigError
from arjax.evaluation import comparison


def parser() -> argparse.ArgumentParser:
    """The argument parser (exit status 2 on bad arguments)."""
    p = argparse.ArgumentParser(prog="python -m arjax.compare", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", help="workdirs or eval.json / report.json files")
    p.add_argument("--metric", choices=comparison.METRICS, default="auto")
    p.add_argument("--attack", default="adversarial", help="'adversarial' or an attack name")
    p.add_argument("--labels", type=lambda s: s.split(","), help="row labels, comma-separated")
    p.add_argument("--out", default="comparison", help="output folder")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses ``argv``, compares, prints and writes the tables; exits 2 on bad arguments."""
    p = parser()
    args = p.parse_args(argv)
    if len(args.paths) < 2:
        p.error("give at least two workdirs or result files to compare")
    if args.labels and len(args.labels) != len(args.paths):
        p.error(f"argument --labels: {len(args.labels)} names for {len(args.paths)} methods")
    try:
        methods = [comparison.load_method(path) for path in args.paths]
    except ConfigError as e:
        p.error(f"argument paths: {e}")
    attacks = comparison.attack_sections(methods)
    if args.attack not in attacks:
        p.error(f"argument --attack: unknown {args.attack!r}; valid choices: {', '.join(attacks)}")
    labels = args.labels or comparison.default_labels(methods)
    try:
        result = comparison.compare_methods(methods, labels, metric=args.metric, attack=args.attack)
    except ConfigError as e:
        p.error(str(e))
    print(comparison.format_tables(result))
    for path in comparison.write_comparison(result, args.out):
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
