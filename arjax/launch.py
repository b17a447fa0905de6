"""Command line: ``arjax-train --config configs/X.py[:variant] --workdir DIR``.

Also ``python -m arjax.launch`` (the same command). Overrides:
``--config.method.eps=0.1``, ``--config.seeds='(0,1)'``. The resolved config is
saved as ``DIR/config.json``; an existing run in ``DIR`` is resumed. Without
``--workdir`` the run goes to ``runs/<config>[_<variant>]``. Flags are parsed as
by every arjax command (:mod:`arjax.cli`); ``main(argv)`` runs in-process; bad
flags and config errors exit with status 2 and a one-line message.
"""

import os
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from arjax import cli

PROG = "arjax-train"


def define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
    """The command's flags; ``argv`` tells the config flag which overrides to define."""
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Experiment config file, optionally with ':variant'.",
        flag_values=fv,
        lock_config=True,
        sys_argv=argv,
    )
    flags.DEFINE_string(
        "workdir", None, "Run directory (resumed when it holds a run).", flag_values=fv
    )
    flags.DEFINE_boolean("progress", True, "Show progress bars.", flag_values=fv)
    flags.mark_flag_as_required("config", flag_values=fv)


def default_workdir(config_arg: str) -> str:
    """``runs/<config stem>[_<variant>]`` for ``configs/<stem>.py[:<variant>]``."""
    path, _, variant = config_arg.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{stem}_{variant}" if variant else stem)


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Parses ``argv``, trains (or resumes), prints the summary; exits 2 on bad input.

    Returns:
      the report, or None when the run was preempted (rerun to resume).
    """
    fv, _ = cli.parse(PROG, __doc__, argv, define_flags)
    cli.quiet_logging()
    from arjax.experiment import train
    from arjax.experiment.summary import format_report

    def body() -> dict | None:
        workdir = fv.workdir or default_workdir(fv["config"].config_filename)
        path = fv["config"].config_filename
        try:
            config = fv.config
            config.get("name")  # a file that failed to load raises on first access
        except (OSError, AttributeError, KeyError, TypeError, ValueError) as e:
            msg = f"flag --config: cannot load {path!r}: {cli.exception_text(e)}"
            raise cli.UsageError(msg) from None
        report = train.run(config, workdir, progress=fv.progress)
        if report is None:
            print(f"preempted: checkpoint saved in {workdir}; rerun the same command to resume")
            return None
        print(format_report(report))
        print(f"report: {os.path.join(workdir, 'report.json')}")
        return report

    return cli.run_main(PROG, body)


def run() -> None:
    """Console-script entry point (``arjax-train``)."""
    main()


if __name__ == "__main__":
    run()
