"""The one flag style of ``arjax-train``, ``arjax-evaluate`` and ``arjax-compare``.

All three define absl flags on their own :class:`absl.flags.FlagValues` (not the
process-global ``FLAGS``), so each is callable in-process as ``main(argv)`` any
number of times (tests, notebooks); ``--name=value`` and ``--name value`` both
work, booleans read ``--flag`` / ``--noflag``, lists are comma-separated.
``--help`` prints every flag and exits 0; a bad flag or value prints one line
``<prog>: error: ...`` and exits with status 2, as do config errors found later.
"""

import difflib
import errno
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from absl import flags

from arjax.config_lib import ConfigError


class UsageError(ConfigError):
    """A command-line argument is missing or invalid (exit status 2)."""


# ``--debug`` (every command): errors print their traceback before the one line.
_debug = False


def parse(
    prog: str,
    doc: str,
    argv: Sequence[str] | None,
    define: Callable[[flags.FlagValues, list[str]], None],
    *,
    positional: str = "",
) -> tuple[flags.FlagValues, list[str]]:
    """Defines the flags on a fresh FlagValues and parses ``argv`` (without the program).

    Args:
      prog: the command's name (in help and errors).
      doc: the command's description (first lines of ``--help``).
      argv: arguments; None reads ``sys.argv[1:]``.
      define: defines the command's flags on the FlagValues it gets; also gets the full
        argv (``[prog, *argv]``: config flags define their overrides from it).
      positional: name of the positional arguments in the usage line ("" for none).

    Returns:
      ``(flag values, positional arguments)``.

    Raises:
      SystemExit: 0 after ``--help``; 2 with a one-line message for bad flags.
    """
    fv = flags.FlagValues()
    args = list(sys.argv[1:] if argv is None else argv)
    set_debug(args)
    flags.DEFINE_boolean("debug", False, "Show the traceback of an error.", flag_values=fv)
    define(fv, [prog, *args])
    if "--help" in args or "-h" in args or "--helpfull" in args:
        usage = f"usage: {prog} [flags]" + (f" {positional}" if positional else "")
        print(f"{usage}\n\n{doc.strip()}\n\nflags:\n{fv.get_help(include_special_flags=False)}")
        raise SystemExit(0)
    try:
        rest = fv([prog, *args])[1:]
    except flags.Error as e:
        fail(prog, str(e))
    except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
        # ml_collections' config flags raise these for ``--config=missing.py`` or an
        # override of a field the config lacks (``--config.train.batchsize=3``).
        fail(prog, f"bad flag: {exception_text(e)}")
    if not positional and rest:
        fail(prog, f"unexpected arguments: {rest}")
    return fv, rest


def set_debug(args: Sequence[str]) -> None:
    """Reads ``--debug`` from ``args`` (before any check that may fail)."""
    global _debug
    _debug = "--debug" in args


def exception_text(e: BaseException) -> str:
    """A one-line text of ``e`` without the quoting KeyError and AttributeError add.

    A message that embeds a formatted traceback (ml_collections wraps errors raised
    while loading a config file so) is cut to its last line, the original error.
    """
    text = str(e.args[0]) if isinstance(e, KeyError | AttributeError) and e.args else str(e)
    if "Traceback (most recent call last)" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    text = text.replace("\\n", " ").replace("\\'", "'").replace('"', "")
    return text.strip("'")


def closest(name: str, valid: Sequence[str]) -> str | None:
    """The valid name closest to a mistyped ``name`` (difflib), or None when none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return close[0] if close else None


def fail(prog: str, message: str, status: int = 2) -> None:
    """Prints ``<prog>: error: <message>`` (one line) to stderr and exits with ``status``.

    With ``--debug`` the traceback of the error being handled comes first.
    """
    if _debug and sys.exc_info()[0] is not None:
        traceback.print_exc()
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(status)


# OSErrors a user causes (a path, a permission, a full or read-only disk): one line.
_USER_ERRNOS = (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def run_main(prog: str, body: Callable[[], object]) -> object:
    """Runs ``body``; user errors become one line on stderr and an exit status.

    A :class:`ConfigError`, or an ``OSError`` about a path (missing, not permitted,
    read-only or full disk) exits 2; a training run stopped by a non-finite loss
    (``FloatingPointError``) exits 1, a second Ctrl-C / SIGTERM 130. ``--debug``
    adds the traceback.
    """
    try:
        return body()
    except ConfigError as e:
        fail(prog, str(e))
    except OSError as e:
        if e.errno not in _USER_ERRNOS:
            raise
        where = f" ({e.filename})" if e.filename else ""
        fail(prog, f"{e.strerror or e}{where}")
    except FloatingPointError as e:
        fail(prog, str(e), status=1)
    except KeyboardInterrupt:
        fail(prog, "interrupted; rerun the same command to resume", status=130)


def quiet_logging() -> None:
    """INFO logging for arjax, warnings only from absl, JAX internals and orbax."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
