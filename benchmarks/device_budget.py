"""One part of the device check: its time cap, and results that survive being stopped.

``device_check.py`` runs each part (``device_env.py``, ``device_speed.py``,
``input_pipeline.py``, ``table1_program.py``) as its own process with a wall-clock cap,
and kills it at the cap. A part therefore writes what it has measured as soon as it
has it: :class:`PartRecord` rewrites the part's JSON file after every change
(atomically: a reader never sees half a file), and :meth:`PartRecord.left` tells the
part how much of its cap remains, so it can skip optional work (e.g. ``torch.compile``)
rather than be killed in the middle of it.
"""

import argparse
import json
import math
import os
import sys
import time


def part_parser(description: str) -> argparse.ArgumentParser:
    """The flags every part takes: ``--json``, ``--dry-run``, ``--cap-s``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", required=True, help="this part's result file")
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on the CPU: checks the code runs"
    )
    parser.add_argument("--cap-s", type=float, default=math.inf, help="this part's time cap")
    return parser


def _jsonable(value):
    """Floats that JSON can hold (NaN and infinities become None), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class PartRecord:
    """A part's results, rewritten to ``path`` after every change.

    Args:
      path: the JSON file.
      part: the part's name.
      cap_s: the part's wall-clock cap (seconds from construction).
      dry_run: the part runs at its tiny CPU sizes.
    """

    def __init__(self, path: str, part: str, cap_s: float = math.inf, dry_run: bool = False):
        self.path, self.cap_s = path, cap_s
        self._t0 = time.perf_counter()
        self.data = {"part": part, "dry_run": dry_run, "summary": [], "notes": [], "done": False}
        self.flush()

    def left(self) -> float:
        """Seconds left of the cap."""
        return self.cap_s - (time.perf_counter() - self._t0)

    def elapsed(self) -> float:
        """Seconds since the part started."""
        return time.perf_counter() - self._t0

    def set(self, key: str, value) -> None:
        """Stores ``value`` under ``key`` and rewrites the file."""
        self.data[key] = value
        self.flush()

    def line(self, text: str) -> None:
        """A line of the check's text summary (also printed)."""
        self.data["summary"].append(text)
        print(text, flush=True)
        self.flush()

    def note(self, text: str) -> None:
        """A note: something skipped or not comparable, and why (also printed)."""
        self.data["notes"].append(text)
        print(f"note: {text}", file=sys.stderr, flush=True)
        self.flush()

    def finish(self) -> None:
        """Marks the part complete (a killed part's file keeps ``done: false``)."""
        self.data["seconds"] = self.elapsed()
        self.set("done", True)

    def flush(self) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(_jsonable(self.data), f, indent=1)
        os.replace(tmp, self.path)
