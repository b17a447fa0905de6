"""The benchmark scripts run end to end on a tiny workload (numbers are not asserted)."""

import json
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def attack_throughput(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import attack_throughput

    yield attack_throughput
    for name in ("attack_throughput", "workloads"):
        sys.modules.pop(name, None)


def test_attack_throughput_times_both_option_sets(attack_throughput, tmp_path):
    out = tmp_path / "at.json"
    attack_throughput.main(
        ["--model", "moons_mlp", "--batch", "16", "--steps", "2", "--bisections", "1",
         "--repeats", "1", "--skip-train", "--xla-options", "both", "--json", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert [r["xla_options"] for r in result["results"]] == ["arjax", "default"]
    for r in result["results"]:
        rows = r["rows"]
        assert {"forward", "pgd2_linf", "bpgd2+1"} <= set(rows)
        assert all(row["step_s"] > 0 and not row["recompiled"] for row in rows.values())
        assert rows["bpgd2+1"]["limit_ratio"] > 0 and rows["bpgd2+1"]["cost_vs_pgd"] > 0
    import workloads

    workloads.use_xla_options("arjax")  # leave the module default as found
