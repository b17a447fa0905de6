"""Multi-process training: two local processes x 4 CPU devices (gloo) = one 8-device run.

The processes start through ``arjax.launch``'s ``--coordinator_address`` flags,
as ``launch/multiprocess.sh`` starts them. A SIGTERM scheduled in both (at
different steps, ``ARJAX_FAULT=step@n:TERM``) stops both at the first one's step
with one checkpoint; the same command resumes; the final report equals the
single-process 8-device run's, and process 0 alone wrote the files.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
from helpers import tiny_config, write_tiny_config

from arjax import distributed, faults
from arjax.experiment import train as loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(config: str, workdir: str, signals: tuple[str, str]) -> list[str]:
    """Runs the launch command as processes 0 and 1 of 2 (4 CPU devices each)."""
    address = f"127.0.0.1:{_free_port()}"
    procs = []
    for i, fault in enumerate(signals):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "JAX_NUM_CPU_DEVICES": "4"}
        env.pop(faults.ENV, None)
        if fault:
            env[faults.ENV] = fault
        cmd = [sys.executable, "-m", "arjax.launch", "--noprogress", f"--config={config}"]
        cmd += [f"--workdir={workdir}", f"--coordinator_address={address}"]
        cmd += ["--num_processes=2", f"--process_id={i}"]
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, out[-3000:]
        outs.append(out)
    return outs


def _numbers(report: dict) -> dict:
    return {k: v["mean"] for k, v in report["summary"].items()}


def test_two_processes_preempt_resume_and_match_one_process(tmp_path):
    config = write_tiny_config(tmp_path / "tiny.py")
    reference = loop.run(tiny_config(), str(tmp_path / "one"), progress=False)  # 8 devices

    workdir = tmp_path / "two"
    # SIGTERM to both: process 1 after its 3rd call (step 12), process 0 after its 4th;
    # both stop at step 12 (the loop agrees on it), with one checkpoint.
    outs = _two_processes(config, str(workdir), ("step@4:TERM", "step@3:TERM"))
    assert "process 1 of 2: 4 local of 8 devices" in outs[1]
    assert "preempted: checkpoint saved" in outs[0]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["12"]
    assert not (workdir / "report.json").exists()

    outs = _two_processes(config, str(workdir), ("", ""))
    assert "report:" in outs[0] and "report:" not in outs[1]  # process 1 prints nothing
    with open(workdir / "report.json") as f:
        two = json.load(f)
    a, b = _numbers(reference), _numbers(two)
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    # every logged step once: process 1 wrote no records (nor resumed-over ones twice)
    with open(workdir / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f if "train/loss" in line]
    assert steps == list(range(4, 33, 4))


def test_only_the_primary_process_writes(tmp_path, monkeypatch):
    """A non-primary process trains and evaluates but writes no file of the workdir."""
    monkeypatch.setattr(distributed, "is_primary", lambda: False)
    workdir = tmp_path / "run"
    workdir.mkdir()
    report = loop.run(tiny_config(num_epochs=1), str(workdir), progress=False)
    assert report["summary"]["clean/accuracy"]["mean"] > 0  # it did evaluate
    written = sorted(
        os.path.relpath(os.path.join(root, f), workdir)
        for root, _, files in os.walk(workdir)
        for f in files
    )
    # orbax writes checkpoints from every process (each its own shards); nothing else
    assert [w for w in written if not w.startswith("checkpoints" + os.sep)] == []
    assert any(w.startswith("checkpoints") for w in written)


def test_partial_multiprocess_flags_are_one_usage_error(tmp_path, capsys):
    from arjax import launch

    config = write_tiny_config(tmp_path / "tiny.py")
    args = [f"--config={config}", f"--workdir={tmp_path / 'w'}", "--num_processes=2"]
    with pytest.raises(SystemExit) as e:
        launch.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--coordinator_address, --num_processes and --process_id go together" in err
    assert not (tmp_path / "w").exists()  # nothing ran
