"""Command line: ``arjax-train --config configs/X.py[:variant] --workdir DIR``.

Also ``python -m arjax.launch`` (the same command). Overrides:
``--config.method.eps=0.1``, ``--config.seeds='(0,1)'``. The resolved config is
saved as ``DIR/config.json``; an existing run in ``DIR`` is resumed. Without
``--workdir`` the run goes to ``runs/<config>[_<variant>]``. Flags are parsed as
by every arjax command (:mod:`arjax.cli`); ``main(argv)`` runs in-process; bad
flags and config errors exit with status 2 and a one-line message.

Multi-process runs (:mod:`arjax.distributed`): the same command in every process,
with ``--coordinator_address=host:port --num_processes=N --process_id=i``, or
under SLURM / a Cloud TPU VM / ``launch/multiprocess.sh``, which set the
environment :func:`arjax.distributed.initialize` reads. The processes train one
model on the devices of all of them; process 0 writes the workdir's files.
"""

import importlib.util
import os
import sys
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from arjax import cli, distributed
from arjax.attack_syntax import FORMAT
from arjax.config_lib import ConfigError
from arjax.experiment.migrate import RENAMED_FIELDS
from arjax.methods.sections import ATTACK_ALIASES

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
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "Multi-process run: host:port of process 0's coordinator (with the next two).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "num_processes", None, "Multi-process run: number of processes.", lower_bound=1,
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "process_id", None, "Multi-process run: this process's index.", lower_bound=0,
        flag_values=fv,
    )  # fmt: skip
    flags.mark_flag_as_required("config", flag_values=fv)


def default_workdir(config_arg: str) -> str:
    """``runs/<config stem>[_<variant>]`` for ``configs/<stem>.py[:<variant>]``."""
    path, _, variant = config_arg.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{stem}_{variant}" if variant else stem)


def _config_arg(args: Sequence[str]) -> str | None:
    """The value of ``--config`` in ``args`` (``--config=X`` or ``--config X``)."""
    for i, a in enumerate(args):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(args):
            return args[i + 1]
    return None


def preflight(args: Sequence[str]) -> None:
    """Checks the config file, its variant and every ``--config.<field>`` override.

    Runs before absl/ml_collections parse them, so that each mistake is one line
    naming the file or field and the valid choices (ml_collections would raise a
    traceback-wrapped error, or for a field name one without its section).

    Raises:
      UsageError: a missing or unloadable config file, a bad variant, an unknown field.
    """
    arg = _config_arg(args)
    if arg is None:
        return
    path, _, variant = arg.partition(":")
    if not os.path.isfile(path):
        raise cli.UsageError(f"flag --config: no such file {path!r}")
    try:
        spec = importlib.util.spec_from_file_location("arjax_user_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(variant) if variant else module.get_config()
    except ConfigError as e:
        raise cli.UsageError(f"flag --config={arg}: {e}") from None
    except SyntaxError as e:
        raise cli.UsageError(f"{path}:{e.lineno}: syntax error: {e.msg}") from e
    except Exception as e:  # a user's config file can raise anything
        msg = f"flag --config: cannot load {path!r}: {type(e).__name__}: {cli.exception_text(e)}"
        raise cli.UsageError(msg) from e
    for a in args:
        if a.startswith("--config."):
            _check_field(config, a[len("--config.") :].split("=", 1)[0])


def _has(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def _check_field(config, dotted: str) -> None:
    """Raises a UsageError naming ``dotted``'s first unknown part and the nearest field."""
    if dotted in RENAMED_FIELDS and not _has(config, dotted):
        raise cli.UsageError(
            f"flag --config.{dotted}: the field is now --config.{RENAMED_FIELDS[dotted]}"
        )
    node, done = config, []
    for part in dotted.split("."):
        keys = sorted(node.keys()) if hasattr(node, "keys") else []
        if done == ["method"] and part in ATTACK_ALIASES and "attack" in keys:
            raise cli.UsageError(
                f"flag --config.{dotted}: the training attack is one spec now, e.g. "
                f"--config.method.attack={node['attack']} ({FORMAT})"
            )
        if part not in keys:
            section = ".".join(done) or "the config"
            near = cli.closest(part, keys)
            if near is not None:
                hint = f"did you mean {'.'.join([*done, near])!r}?"
            else:
                hint = f"fields of {section}: {', '.join(keys)}" if keys else f"{section} has none"
            raise cli.UsageError(f"flag --config.{dotted}: unknown field {dotted!r}; {hint}")
        node, done = node[part], [*done, part]


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Parses ``argv``, trains (or resumes), prints the summary; exits 2 on bad input.

    Returns:
      the report, or None when the run was preempted (rerun to resume).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    cli.set_debug(args)
    if "--help" not in args and "-h" not in args:
        try:
            preflight(args)
        except ConfigError as e:
            cli.fail(PROG, str(e))
    fv, _ = cli.parse(PROG, __doc__, args, define_flags)
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
        try:
            distributed.initialize(fv.coordinator_address, fv.num_processes, fv.process_id)
        except ValueError as e:
            raise cli.UsageError(str(e)) from None
        report = train.run(config, workdir, progress=fv.progress and distributed.is_primary())
        if not distributed.is_primary():
            return report
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
