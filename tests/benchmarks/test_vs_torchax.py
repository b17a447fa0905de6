"""benchmarks/vs_torchax.py runs end to end on a tiny workload (numbers are not asserted)."""

import json
import pathlib
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchax")

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def vs_torchax(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import vs_torchax

    yield vs_torchax
    for name in ("vs_torchax", "vs_pytorch", "workloads", "torch_models"):
        sys.modules.pop(name, None)


def test_three_implementations_side_by_side(vs_torchax, tmp_path):
    out = tmp_path / "vt.json"
    vs_torchax.main(
        ["--model", "moons_mlp", "--batch", "8", "--steps", "2", "--repeats", "1",
         "--only", "pgd2", "--json", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["machine"]["torchax"]
    (r,) = result["results"]
    assert r["logits_rel_err"]["torchax"] < 1e-4
    assert set(r["rows"]) == {"pgd2_linf"}  # the train step rows share the code path
    for workload, rows in r["rows"].items():
        assert {"arjax_flax", "arjax_flax_xla", "arjax_torchax"} < set(rows), workload
        assert any(impl.startswith("torch") for impl in rows), workload
        assert all(row["step_s"] > 0 and not row["recompiled"] for row in rows.values())
        assert rows["arjax_torchax"]["compile_s"] > 0
