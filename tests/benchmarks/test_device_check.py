"""benchmarks/device_check.sh: its dry run on the CPU, its time caps and its report.

The whole ``--dry-run`` (every part) takes minutes on two CPU cores; the test runs the
one command with the parts ``env``, ``tests`` (collection) and ``table1`` (two rows, one
seed), and checks the other parts' pieces directly (time caps, targets, the PyTorch
twins of the speed part, the pipeline's rates).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    yield __import__
    for name in ("device_check", "device_budget", "device_tests", "device_speed", "device_env",
                 "input_pipeline", "workloads", "torch_steps", "torch_models"):  # fmt: skip
        sys.modules.pop(name, None)


def test_the_dry_run_runs_the_parts_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    rows = "table1=--rows standard,dual_arfl --seeds 1"
    cmd = ["bash", str(BENCH / "device_check.sh"), "--dry-run", "--parts", "env,table1",
           "--part-args", rows, "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    parts = report["parts"]
    assert report["dry_run"] and list(parts) == ["env", "table1"]
    assert all(p["status"] == "ok" for p in parts.values()), {
        k: p["status"] for k, p in parts.items()
    }
    env_part = parts["env"]["result"]
    assert env_part["done"] and env_part["versions"]["jax"] == jax.__version__
    assert env_part["jax"]["backend"] == "cpu" and env_part["ceilings"]["matmul_float32_tflops"] > 0
    table = parts["table1"]["result"]
    assert table["done"] and table["config"]["rows"] == ["standard", "dual_arfl"]
    eq = table["equality"]
    assert eq["runs"] == 2 and eq["equal_runs"] == 2 and eq["max_abs_diff"] == 0.0
    full = table["full"]
    assert full["wall_s"] >= full["train_s"] > 0 and full["calls"] == 2
    for runs in full["accuracies"].values():
        assert all(0.0 < a <= 1.0 for run in runs for a in run)
    text = (out / "summary.txt").read_text()
    assert "DRY RUN" in text and "[table1] ok" in text and "Table 1 stacked vs sequential" in text
    assert (out / "device_check.log").stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == [
        "device_check.json", "device_check.log", "summary.txt"]  # fmt: skip


def test_a_part_past_its_cap_is_stopped_and_keeps_its_results(bench, tmp_path):
    check = bench("device_check")
    result = tmp_path / "part.json"
    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from device_budget import PartRecord\n"
        "rec = PartRecord(sys.argv[2], 'slow', 60.0); rec.set('measured', 1.5); time.sleep(60)"
    )
    with open(tmp_path / "log", "w") as log:
        t0 = time.perf_counter()
        code, seconds = check.run_process(
            [sys.executable, "-c", script, str(BENCH), str(result)], dict(os.environ), 8.0, log
        )
    assert code is None and 8.0 <= seconds < 30 and time.perf_counter() - t0 < 30
    partial = json.loads(result.read_text())
    assert partial["measured"] == 1.5 and partial["done"] is False


def test_parts_that_do_not_fit_the_budget_are_skipped(bench, tmp_path):
    check = bench("device_check")
    report = check.main(["--dry-run", "--parts", "env,table1", "--budget-s", "10",
                         "--out", str(tmp_path)])  # fmt: skip
    assert {p["status"] for p in report["parts"].values()} == {"skipped"}
    saved = json.loads((tmp_path / "device_check.json").read_text())
    assert saved["parts"].keys() == {"env", "table1"}
    with pytest.raises(SystemExit, match="unknown --parts"):
        check.main(["--parts", "env,gpu_burn"])
    with pytest.raises(SystemExit, match="--caps: bad item"):
        check.main(["--caps", "env"])


def test_targets_are_read_off_the_parts(bench):
    check = bench("device_check")
    impls = {"arjax_bf16": {"images_per_s": 2000.0}, "torch_bf16": {"speedup": 1.25}}
    parts = {
        "speed_resnet18": {"result": {"rows": {"train_step/adversarial_pgd10": {
            "eager": {"impls": impls}}}}},
        "table1": {"result": {"full": {"wall_s": 42.0}}},
        "pipeline": {"result": {
            "rates": {k: {"images_per_s": v} for k, v in
                      (("decode", 500.0), ("cache_fill", 450.0), ("cached", 8000.0))},
            "real_run": {"no_cache": {"data_wait_fraction": 0.6},
                         "cached": {"data_wait_fraction": 0.002}}}},
    }  # fmt: skip
    t = check.targets(parts)
    assert t["resnet18_bf16_vs_torch_eager"] == {"value": 1.25, "target": 1.3, "met": False}
    assert t["table1_wall_s"]["met"] is True
    assert t["data_wait_fraction"]["no_cache"]["met"] is False
    assert t["data_wait_fraction"]["cached"]["met"] is True
    assert t["pipeline_vs_resnet18_step"]["decode_over_step"] == pytest.approx(0.25)
    assert t["pipeline_vs_resnet18_step"]["cached_over_step"] == pytest.approx(4.0)
    report = {"dry_run": False, "started": "now", "elapsed_s": 1.0, "budget_s": 470,
              "parts": {"table1": {"status": "ok", "seconds": 50, "cap_s": 90,
                                   "result": {"summary": ["Table 1 ..."], "notes": []}}},
              "targets": t}  # fmt: skip
    text = check.summary_text(report)
    assert "[table1] ok (50 s of a 90 s cap)" in text and "met: False" in text
    assert check.targets({})["resnet18_bf16_vs_torch_eager"]["value"] is None


def test_speed_rows_count_model_flops_and_utilisation(bench):
    speed = bench("device_speed")
    s = speed.wl.setup("fmnist_cnn", 2)
    flops = speed.model_flops(s)
    # one forward < forward + input gradient < forward + parameter gradient (conv nets)
    assert 0 < flops["F"] < flops["G"] < flops["P"] < 4 * flops["F"]
    passes = speed.passes("adversarial", 20, 10, 10)
    rows = {"arjax_bf16": {"step_s": 0.01}, "torch_bf16": {"step_s": 0.02},
            "arjax_f32": {"step_s": 0.04}}  # fmt: skip
    peaks = {"bfloat16": 1000.0, "tf32": 500.0}
    out = speed.summarise(rows, 2, flops, passes, peaks, {"matmul_bfloat16_tflops": 800.0})
    total = 10 * flops["G"] + 2 * flops["P"]
    assert out["model_flops_per_step"] == pytest.approx(total)
    bf16 = out["impls"]["arjax_bf16"]
    assert bf16["images_per_s"] == pytest.approx(200.0)
    assert bf16["mfu_vs_datasheet"] == pytest.approx(total / 0.01 / 1e12 / 1000.0)
    assert bf16["mfu_vs_measured_matmul"] == pytest.approx(total / 0.01 / 1e12 / 800.0)
    assert out["impls"]["torch_bf16"]["speedup"] == pytest.approx(2.0)
    f32 = out["impls"]["arjax_f32"]
    assert f32["mfu_vs_datasheet"] == pytest.approx(total / 0.04 / 1e12 / 500.0)
    assert f32["mfu_vs_measured_matmul"] is None and "speedup" not in f32


def test_the_pipeline_rates_decode_and_cache_the_folder(bench, tmp_path):
    pipeline = bench("input_pipeline")
    manifest = pipeline.write_folder(str(tmp_path / "pngs"), 8, 48, workers=1)
    assert len(list((tmp_path / "pngs").glob("*.png"))) == 8
    rates = pipeline.rates(manifest, 16, batch=2, epochs=2, workers=0, cache=str(tmp_path / "c"))
    assert set(rates) == {"decode", "cache_fill", "cached"}
    # 4 batches an epoch; the first batch of a stream (worker start-up) is not timed
    assert rates["decode"]["images"] == 2 * (2 * 4 - 1)
    assert rates["cache_fill"]["images"] == 2 * 3 and rates["cached"]["images"] == 2 * 2 * 4
    assert all(r["images_per_s"] > 0 for r in rates.values())
    assert len(list((tmp_path / "c").glob("images_*.npy"))) == 1


def test_junit_results_are_grouped_and_say_whether_resume_is_bit_identical(bench, tmp_path):
    tests = bench("device_tests")
    xml = tmp_path / "t.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_faults" name="test_kill_9_then_the_same_command_gives'
        '_the_same_report[step@2]"/>'
        '<testcase classname="tests.test_faults" name="test_kill_9_then_the_same_command_gives'
        '_the_same_report[step@6]"><failure message="assert 0.5 == 0.51">x</failure></testcase>'
        '<testcase classname="tests.test_precision" name="test_bf16_attacks_stay_inside_the_ball'
        '_and_the_bounds[pgd]"/>'
        '<testcase classname="tests.test_x" name="test_other"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    out = tests.junit(str(xml))
    assert (out["passed"], out["failed"], out["skipped"]) == (2, 1, 1)
    assert out["by_group"]["resume_after_kill"] == {"passed": 1, "failed": 1, "skipped": 0}
    assert out["by_group"]["bf16"]["passed"] == 1 and out["by_group"]["other"]["skipped"] == 1
    assert "step@6" in out["failures"][0] and "0.51" in out["failures"][0]
    assert tests._resume_ok(out) is False
    out["by_group"]["resume_after_kill"]["failed"] = 0
    assert tests._resume_ok(out) is True
    assert tests._resume_ok(tests.junit(str(tmp_path / "missing.xml"))) is None


def test_the_gpu_selection_names_collected_tests():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "--collect-only", "-q",
         "tests/attacks/test_bpgd.py", "tests/models/test_precision.py", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    counts = dict(line.split(": ") for line in done.stdout.splitlines() if ": " in line)
    assert counts == {"tests/attacks/test_bpgd.py": "3", "tests/models/test_precision.py": "4"}


def _junit_xml(path, failed: bool):
    case = ('<testcase classname="tests.test_faults" name="test_kill_9_then_the_same_command_'
            'gives_the_same_report[step@6]">' + ('<failure message="differs"/>' if failed else "")
            + "</testcase>")  # fmt: skip
    path.write_text(f'<testsuites><testsuite name="pytest">{case}</testsuite></testsuites>')


@pytest.mark.parametrize("no_cache_fails", [False, True])
def test_the_tests_part_runs_deterministic_kernels_only_when_needed(
    bench, tmp_path, monkeypatch, no_cache_fails
):
    tests = bench("device_tests")
    monkeypatch.setattr(tests, "deterministic_flag", lambda env: "--xla_gpu_deterministic_ops=true")
    calls = []

    def fake_run(cmd, env, timeout, log):
        xml = pathlib.Path(next(a for a in cmd if a.startswith("--junitxml=")).split("=", 1)[1])
        mode = xml.stem.split("_", 1)[1]
        calls.append((mode, cmd, env))
        _junit_xml(xml, failed=no_cache_fails and mode == "no_cache")
        return 0, 1.0

    with open(tmp_path / "log", "w") as log:
        out = tests.run_tests(False, 300.0, str(tmp_path), {"XLA_FLAGS": "--x=1"}, log, fake_run)
    modes = [m for m, _, _ in calls]
    assert modes == (["default", "no_cache", "deterministic"] if no_cache_fails
                     else ["default", "no_cache"])  # fmt: skip
    _, default_cmd, default_env = calls[0]
    assert "-k" not in default_cmd and default_env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert "ARJAX_CACHE_DIR" not in default_env or default_env["ARJAX_CACHE_DIR"] != "off"
    for _, cmd, env in calls[1:]:
        assert cmd[cmd.index("-k") + 1] == tests.RESUME_SUBSET and env["ARJAX_CACHE_DIR"] == "off"
    result = out["result"]
    assert result["resume_bit_identical"]["no_cache"] is (not no_cache_fails)
    if no_cache_fails:
        assert calls[2][2]["XLA_FLAGS"] == "--x=1 --xla_gpu_deterministic_ops=true"
        assert result["resume_bit_identical"]["deterministic"] is True


def test_a_stopped_check_stops_its_part_and_keeps_the_report(tmp_path):
    cmd = [sys.executable, str(BENCH / "device_check.py"), "--dry-run", "--parts", "env,table1",
           "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    log = tmp_path / "device_check.log"
    deadline = time.time() + 120
    while not (log.exists() and "device_env.py" in log.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    part = next(ln for ln in log.read_text().splitlines() if "device_env.py" in ln)
    marker = part.split("--json ")[1].split()[0]  # the part's own result path
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["interrupted"] and "table1" not in report["parts"]
    assert "INTERRUPTED" in (tmp_path / "summary.txt").read_text()
    assert [p for p in pathlib.Path("/proc").iterdir() if marker in _cmdline(p)] == []


def _cmdline(proc: pathlib.Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:  # not a process, or it ended meanwhile
        return ""


def test_without_pytorch_the_speed_part_times_arjax_alone(bench, tmp_path, monkeypatch):
    speed = bench("device_speed")
    monkeypatch.setattr(speed, "torch", None)
    monkeypatch.setitem(speed.GROUPS, "tiny", dict(model="moons_mlp", batch=8,
                                                  rows=("pgd", "adversarial")))  # fmt: skip
    monkeypatch.setitem(speed.DRY, "tiny", dict(batch=8))
    out = tmp_path / "speed.json"
    speed.main(["--group", "tiny", "--json", str(out), "--dry-run", "--cap-s", "600"])
    result = json.loads(out.read_text())
    assert result["done"] and any("PyTorch is not installed" in n for n in result["notes"])
    rows = result["rows"]
    assert set(rows) == {"pgd2_linf", "train_step/adversarial_pgd1"}
    for row in rows.values():
        assert set(row["eager"]["impls"]) == {"arjax_f32", "arjax_bf16"} and "compile" not in row
        assert all(r["step_s"] > 0 and not r["recompiled"] for r in row["eager"]["impls"].values())
        prof = row["profile_arjax_bf16"]
        assert prof["device"] == "cpu" and prof["events_per_step"] > 0
        assert 0 < prof["busy_us_per_step"] <= prof["event_us_per_step"] + 1e-6
    assert all("torch eager -" in line for line in result["summary"])
