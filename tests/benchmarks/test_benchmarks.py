"""The benchmark scripts run end to end on a tiny workload (numbers are not asserted)."""

import json
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


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
         "--repeats", "1", "--skip-train", "--skip-autoattack", "--xla-options", "both",
         "--json", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert [r["xla_options"] for r in result["results"]] == ["arjax", "default"]
    for r in result["results"]:
        rows = r["rows"]
        assert {"forward", "pgd2_linf", "bpgd2+1", "fab2_l2", "fmn2_l2"} <= set(rows)
        assert all(row["step_s"] > 0 and not row["recompiled"] for row in rows.values())
        assert rows["bpgd2+1"]["limit_ratio"] > 0 and rows["bpgd2+1"]["cost_vs_pgd"] > 0
    import workloads

    workloads.use_xla_options("arjax")  # leave the module default as found


def test_autoattack_rows_and_their_ratios(attack_throughput, tmp_path):
    out = tmp_path / "aa.json"
    attack_throughput.main(
        ["--model", "moons_mlp", "--batch", "8", "--steps", "2", "--bisections", "1",
         "--repeats", "1", "--skip-train", "--json", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["machine"]["cpu"] and result["machine"]["cores"] >= 1
    (r,) = result["results"]
    assert "apgd-ce2_linf" not in r["rows"]  # its own group, with its own references
    rows = r["autoattack"]
    members = ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert set(rows) == {"forward", "forward+input_grad", "pgd2_linf", "apgd-ce2_linf",
                         "autoattack2_linf", *(f"autoattack2/{m}" for m in members)}  # fmt: skip
    for name, row in rows.items():
        assert row["step_s"] > 0 and row["compile_s"] > 0 and not row["recompiled"], name
        assert row["images_per_s"] == pytest.approx(8 / row["step_s"])
    aa = rows["autoattack2_linf"]
    assert aa["parts_s"] == pytest.approx(sum(rows[f"autoattack2/{m}"]["step_s"] for m in members))
    assert aa["time_vs_parts"] == pytest.approx(aa["step_s"] / aa["parts_s"])
    for name in ("apgd-ce2_linf", "autoattack2_linf"):
        assert rows[name]["cost_vs_pgd"] == pytest.approx(
            rows[name]["step_s"] / rows["pgd2_linf"]["step_s"]
        )
    # two classes: one APGD-T target; the ensemble's passes are its members' plus five
    # forwards (the clean input and one per member keeping what it broke)
    passes = attack_throughput.autoattack_passes(2, 2)
    assert passes["autoattack2/apgd-t"] == (3, 1) and passes["autoattack2/square"] == (0, 101)
    assert passes["autoattack2/fab-t"] == (2, 3)
    assert passes["autoattack2_linf"] == (8, 105 + 5)
    unit, fwd = rows["forward+input_grad"]["step_s"], rows["forward"]["step_s"]
    assert aa["ideal_s"] == pytest.approx(8 * unit + 110 * fwd)
    assert aa["limit_ratio"] == pytest.approx(aa["ideal_s"] / aa["step_s"])


@pytest.fixture
def bench_module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    imported = []

    def load(name):
        imported.append(name)
        return __import__(name)

    yield load
    for name in (*imported, "workloads", "moons_arfl"):
        sys.modules.pop(name, None)


def test_roofline_counts_the_cnn_flops_and_the_pgd_budget(bench_module, tmp_path):
    roofline = bench_module("roofline")
    out = tmp_path / "roofline.json"
    roofline.main(["--batch", "2", "--gemm", "64", "--repeats", "1",
                   "--torch-pgd20-ms", "300", "--json", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    layers = result["layers"]
    # fmnist: 28 -> 14 -> 7 -> 4 -> 1; conv 1 is 64 -> 128 channels, 5x5, 7x7 outputs
    assert [r["output"] for r in layers] == [[14, 14, 64], [7, 7, 128], [4, 4, 256], [1, 1, 512]]
    assert layers[1]["gflop"] == pytest.approx(2 * 2 * 7 * 7 * 25 * 64 * 128 / 1e9)
    net = result["network"]
    assert net["gflop"] == pytest.approx(2 * sum(r["gflop"] for r in layers))
    assert result["pgd_iteration_budget_ms"] == pytest.approx(300 / 20 / 1.5)
    for row in layers:
        assert row["forward_ms"] > 0 and row["input_grad_gflops"] > 0
    assert net["full_ms"] > 0 and net["convolutions_only_ms"] > 0


def test_stacked_step_times_one_seed_against_the_stack(bench_module, tmp_path):
    stacked_step = bench_module("stacked_step")
    out = tmp_path / "stacked.json"
    stacked_step.main(["--row", "adversarial", "--seeds", "2", "--options", "ynn_off",
                       "--layouts", "feature_major,batch_major", "--repeats", "1",
                       "--profile", "3", "--json", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert set(result["rows"]) == {"feature_major/ynn_off", "batch_major/ynn_off"}
    for row in result["rows"].values():
        ratio = row["stacked_us_per_step"] / row["one_seed_us_per_step"]
        assert row["ratio"] == pytest.approx(ratio)
    profile = result["profile"]["2_stacked/feature_major/ynn_off"]
    top = profile["top"]
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1] > 0
    assert profile["thunk_us_per_step"] >= sum(us for _, us, _ in top)
    assert profile["thunks_per_step"] >= 3
    from arjax.models import mlp

    assert mlp.FEATURE_MAJOR  # the benchmark restores arjax's layout
    with pytest.raises(SystemExit, match="valid: default, ynn_off, individual_dot"):
        stacked_step.main(["--options", "fast"])
    with pytest.raises(SystemExit, match="valid: feature_major, batch_major"):
        stacked_step.main(["--layouts", "row_major"])
