"""Pinned reports: a run's ``report.json`` compared with the one the code wrote before a change.

The smoke run of every config is pinned in ``tests/data/smoke_reports/`` (written by the
code before the architecture redesign of issue 29), so a refactor that moves code must leave
every number where it was. ``ARJAX_WRITE_PINS=1`` rewrites the pins instead of comparing:
only for a deliberate change of numbers, said so in the commit.

Numbers agree to 1e-6 on the CPU model that wrote the pin (recorded in the file) and to
1e-3 elsewhere (XLA:CPU rounds differently on other CPU models). A report may gain keys
(new sections); every pinned key must still be there with its value.
"""

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PINS = ROOT / "tests" / "data" / "smoke_reports"
WRITE = os.environ.get("ARJAX_WRITE_PINS") == "1"


def cpu_model() -> list[str] | None:
    """``[vendor_id, cpu family, model]`` of the first CPU, or None off Linux."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return None
    return [fields.get("vendor_id", ""), fields.get("cpu family", ""), fields.get("model", "")]


def flatten(d, prefix=""):
    """``{"a/b/0": leaf}`` for nested dicts and lists."""
    if isinstance(d, dict):
        return {k2: v2 for k, v in d.items() for k2, v2 in flatten(v, f"{prefix}{k}/").items()}
    if isinstance(d, list):
        return {k2: v2 for i, v in enumerate(d) for k2, v2 in flatten(v, f"{prefix}{i}/").items()}
    return {prefix: d}


def pin_name(spec: str) -> str:
    """``moons_ima.py:mma0.2,smoke`` -> ``moons_ima__mma0.2_smoke.json``."""
    path, _, variant = spec.partition(":")
    return f"{Path(path).stem}__{variant.replace(',', '_')}.json"


def check_report(spec: str, report: dict) -> None:
    """Compares ``report`` with the pin of ``spec`` (or writes it with ARJAX_WRITE_PINS=1)."""
    path = PINS / pin_name(spec)
    report = json.loads(json.dumps(report))
    if WRITE:
        PINS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"cpu": cpu_model(), "report": report}, indent=1) + "\n")
        return
    pinned = json.loads(path.read_text())
    tol = 1e-6 if pinned["cpu"] == cpu_model() else 1e-3
    got = flatten(report)
    for key, value in flatten(pinned["report"]).items():
        assert key in got, f"{spec}: report lost {key!r}"
        if isinstance(value, float) and not isinstance(got[key], str):
            assert got[key] == pytest.approx(value, abs=tol, nan_ok=True), f"{spec}: {key}"
        else:
            assert got[key] == value, f"{spec}: {key}"
