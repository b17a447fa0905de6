"""Command line: ``python -m arjax.launch --config configs/X.py[:variant] --workdir DIR``.

Overrides: ``--config.method.eps=0.1``, ``--config.seeds='(0,1)'``. The
resolved config is saved as ``DIR/config.json``; an existing run in ``DIR`` is
resumed. Without ``--workdir`` the run goes to ``runs/<config>[_<variant>]``.
"""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from arjax.config_lib import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with ':variant'.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (resumed when it holds a run).")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show progress bars.")


def default_workdir(config_arg: str) -> str:
    """``runs/<config stem>[_<variant>]`` for ``configs/<stem>.py[:<variant>]``."""
    path, _, variant = config_arg.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{stem}_{variant}" if variant else stem)


def format_summary(report: dict) -> str:
    """A short human-readable table of a report's mean (std) numbers."""
    from arjax.evaluation.metrics import format_mean_std

    lines = [f"{report['name'] or report['method']}  seeds={report['seeds']}"]
    # ``adversarial/*`` repeats the first attack's own rows; print it once.
    first = (report.get("runs") or [{}])[0].get("adversarial", {}).get("name")
    if first:
        lines[0] += f"  adversarial={first}"
    for key, stats in report["summary"].items():
        if first and key.startswith(f"{first}/"):
            continue
        pct = "loss" not in key and not key.startswith("margins/")
        text = format_mean_std(stats, digits=1 if pct else 3, scale=100.0 if pct else 1.0)
        lines.append(f"  {key:<28} {text}{' %' if pct else ''}")
    lines.append(f"  {'mean of clean/adv accuracy':<28} {100 * report['mean_accuracy']:.1f} %")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Entry point for absl.app."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from arjax.training import loop

    config_arg = flags.FLAGS["config"].config_filename
    workdir = _WORKDIR.value or default_workdir(config_arg)
    try:
        report = loop.run(_CONFIG.value, workdir, progress=_PROGRESS.value)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    if report is None:
        print(f"preempted: checkpoint saved in {workdir}; rerun the same command to resume")
        return
    print(format_summary(report))
    print(f"report: {os.path.join(workdir, 'report.json')}")


def run() -> None:
    """Console-script entry point."""
    flags.mark_flag_as_required("config")
    app.run(main)


if __name__ == "__main__":
    run()
