"""Command line: compare methods (workdirs) as ARFL's Tables 1-3, with p-values.

    python -m arjax.compare runs/A runs/B runs/C [--metric auto|accuracy|auc|...]
        [--attack adversarial|<attack name>] [--labels A,B,C] [--out comparison]

Each argument is a workdir (its ``eval.json`` from ``arjax.evaluate``, else
the training ``report.json``) or such a file. Prints the standard, adversarial
and mean metric as mean (std) in percent per method and the two-sided
Mann-Whitney U p-value of every pair; writes ``comparison.json``,
``comparison.md`` and ``comparison.png`` to ``--out``. Bad arguments exit 2.
"""

import sys

from absl import app, flags

from arjax.config_lib import ConfigError
from arjax.evaluation import comparison

_METRIC = flags.DEFINE_string(
    "metric", "auto", f"One of {', '.join(comparison.METRICS)} (auto: AUC if every run has it)."
)
_ATTACK = flags.DEFINE_string(
    "attack", "adversarial", "Adversarial column: 'adversarial' (first attack) or an attack name."
)
_LABELS = flags.DEFINE_list("labels", [], "Row labels, one per method (default: config names).")
_OUT = flags.DEFINE_string("out", "comparison", "Output folder.")


def main(argv: list[str]) -> None:
    """Entry point for absl.app."""
    paths = argv[1:]
    try:
        if len(paths) < 2:
            raise ConfigError("give at least two workdirs or result files to compare")
        if _LABELS.value and len(_LABELS.value) != len(paths):
            raise ConfigError(f"--labels has {len(_LABELS.value)} names for {len(paths)} methods")
        if _METRIC.value not in comparison.METRICS:
            valid = ", ".join(comparison.METRICS)
            raise ConfigError(f"--metric: unknown {_METRIC.value!r}; valid choices: {valid}")
        methods = [comparison.load_method(p) for p in paths]
        attacks = comparison.attack_sections(methods)
        if _ATTACK.value not in attacks:
            valid = ", ".join(attacks)
            raise ConfigError(f"--attack: unknown {_ATTACK.value!r}; valid choices: {valid}")
        labels = _LABELS.value or comparison.default_labels(methods)
        result = comparison.compare_methods(
            methods, labels, metric=_METRIC.value, attack=_ATTACK.value
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(comparison.format_tables(result))
    for path in comparison.write_comparison(result, _OUT.value):
        print(f"wrote {path}")


def run() -> None:
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run()
