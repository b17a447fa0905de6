"""Named kill points for fault-injection tests of "nothing lost on interruption".

Set ``ARJAX_FAULT=<point>[@<n>]`` and the process SIGKILLs itself (no handler,
no cleanup, as ``kill -9`` or a lost node would) the ``n``-th time (default 1st)
it reaches :func:`point` with that name. The points the training loop passes:

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


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(ENV, "")
    if not spec:
        return None
    name, _, count = spec.partition("@")
    if name not in POINTS or (count and not count.isdigit()):
        raise ValueError(f"{ENV}={spec!r}: expected <point>[@<n>], point one of {POINTS}")
    return name, int(count or 1)


def point(name: str) -> None:
    """Kills this process with SIGKILL if ``ARJAX_FAULT`` names this point and count."""
    target = _target()
    if target is None or target[0] != name:
        return
    _counts[name] += 1
    if _counts[name] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
