"""Named kill points for fault-injection tests of "nothing lost on interruption".

Set ``ARJAX_FAULT=<point>[@<n>]`` and the process SIGKILLs itself (no handler,
no cleanup, as ``kill -9`` or a lost node would) the ``n``-th time (default 1st)
it reaches :func:`point` with that name; ``<point>[@<n>]:TERM`` sends it SIGTERM
instead (a preemption notice, handled by the loop), at a known step. The points
the training loop passes:

- ``step``: after a compiled multi-step call, before its records are written;
- ``record``: after a ``metrics.jsonl`` record is written;
- ``checkpoint``: inside a checkpoint save, after orbax started writing and
  before the save is finalised;
- ``evaluate``: inside a run's final evaluation (its numbers computed, its
  ``result.json`` not yet written);
- ``report``: after the runs, before ``report.json`` is written.

Unset (the normal case) every :func:`point` is one dictionary lookup.
"""

import collections
import os
import signal

ENV = "ARJAX_FAULT"
POINTS = ("step", "record", "checkpoint", "evaluate", "report")

_counts: collections.Counter = collections.Counter()


def _target() -> tuple[str, int, signal.Signals] | None:
    spec = os.environ.get(ENV, "")
    if not spec:
        return None
    where, _, sig = spec.partition(":")
    name, _, count = where.partition("@")
    if name not in POINTS or (count and not count.isdigit()) or sig not in ("", "TERM"):
        raise ValueError(f"{ENV}={spec!r}: expected <point>[@<n>][:TERM], point one of {POINTS}")
    return name, int(count or 1), signal.SIGTERM if sig else signal.SIGKILL


def point(name: str) -> None:
    """Signals this process (SIGKILL, or SIGTERM) if ``ARJAX_FAULT`` names this point and count."""
    target = _target()
    if target is None or target[0] != name:
        return
    _counts[name] += 1
    if _counts[name] == target[1]:
        os.kill(os.getpid(), target[2])
