"""Fault injection: kill -9 at named points, corrupt checkpoints, a second process.

Each killed run is restarted with the same command and must end with the
report of a run that was never interrupted, with a ``metrics.jsonl`` that
parses and holds every logged step exactly once.
"""

import json
import logging
import os
import random
import signal
import subprocess
import sys

import pytest
from helpers import tiny_config, write_tiny_config

from arjax import faults, launch
from arjax.config_lib import ConfigError
from arjax.experiment import train as loop
from arjax.experiment import workdir as workdir_lib

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)
# tiny_config: 32 steps, 4 per compiled call, a record every 4, checkpoints at 16 and 32.
_rng = random.Random(19)
KILLS = [
    f"step@{_rng.randint(1, 3)}",  # before the first checkpoint: restart from scratch
    f"step@{_rng.randint(5, 7)}",  # after it: resume from step 16
    f"record@{_rng.randint(2, 11)}",
    "checkpoint@1",  # orbax is writing step 16
    "checkpoint@2",  # ... the final step 32
    "evaluate@1",
    "report@1",
]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    return write_tiny_config(tmp_path_factory.mktemp("config") / "tiny.py")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, config_file):
    workdir = tmp_path_factory.mktemp("straight")
    return launch.main(["--noprogress", f"--config={config_file}", f"--workdir={workdir}"])


def _killed_run(config_file, workdir, fault, *overrides):
    return subprocess.run(
        [sys.executable, "-m", "arjax.launch", "--noprogress"]
        + [f"--config={config_file}", f"--workdir={workdir}", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, faults.ENV: fault},
    )


def _train_steps(path):
    with open(path) as f:
        records = [json.loads(line) for line in f]  # every line parses
    return [r["step"] for r in records if "train/loss" in r]


@pytest.mark.parametrize("fault", KILLS)
def test_kill_9_then_the_same_command_gives_the_same_report(
    tmp_path, config_file, uninterrupted, fault
):
    killed = _killed_run(config_file, tmp_path, fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "report.json").exists()

    resumed = launch.main(["--noprogress", f"--config={config_file}", f"--workdir={tmp_path}"])
    assert resumed["summary"] == uninterrupted["summary"]
    assert resumed["runs"][0]["robust_curve"] == uninterrupted["runs"][0]["robust_curve"]
    assert _train_steps(tmp_path / "metrics.jsonl") == list(range(4, 33, 4))


def _truncate_largest_file(directory):
    files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)


def _remove_metadata(directory):
    os.remove(os.path.join(directory, "default", "_METADATA"))


@pytest.mark.parametrize("damage", [_truncate_largest_file, _remove_metadata])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(
    tmp_path, config_file, caplog, damage
):
    every8 = ["--noprogress", f"--config={config_file}", "--config.train.checkpoint_every=8"]
    straight = launch.main([*every8, f"--workdir={tmp_path / 'a'}"])
    work = tmp_path / "b"
    # Killed while writing step 32 (orbax finished 24 first); then step 24 is damaged.
    killed = _killed_run(config_file, work, "checkpoint@4", "--config.train.checkpoint_every=8")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    damage(str(work / "checkpoints" / "24"))

    with caplog.at_level(logging.WARNING, logger="arjax"):
        resumed = launch.main([*every8, f"--workdir={work}"])
    assert "checkpoint step 24" in caplog.text and "resumed from step 16" in caplog.text
    assert resumed["summary"] == straight["summary"]
    assert os.listdir(work / "corrupt_checkpoints")[0].startswith("24.")
    assert _train_steps(work / "metrics.jsonl") == list(range(4, 33, 4))


def test_no_restorable_checkpoint_is_one_clear_error(tmp_path):
    cfg = tiny_config(checkpoint_every=8, num_epochs=1)
    loop.run(cfg, str(tmp_path), progress=False)
    for name in ("result.json", "report.json"):
        os.remove(tmp_path / name)
    _remove_metadata(str(tmp_path / "checkpoints" / "8"))
    with pytest.raises(ConfigError, match="no checkpoint can be restored.*step 8"):
        loop.run(cfg, str(tmp_path), progress=False)
    assert (tmp_path / "checkpoints" / "8").exists()  # nothing moved when nothing restores


def test_a_second_process_on_a_workdir_in_use_is_refused(tmp_path, capsys):
    with workdir_lib.WorkdirLock(str(tmp_path)):
        with pytest.raises(SystemExit) as exit_info:
            launch.main(["--noprogress", "--config=configs/quickstart.py", f"--workdir={tmp_path}"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0
        assert f"pid {os.getpid()} on host" in err and "is in use" in err
    assert not (tmp_path / "config.json").exists()  # refused before writing anything


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, caplog):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from arjax.experiment.workdir import WorkdirLock\n"
            f"WorkdirLock({str(tmp_path)!r}).__enter__(); print('held', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match=f"in use by pid {holder.pid}"):
        workdir_lib.WorkdirLock(str(tmp_path)).__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with caplog.at_level(logging.INFO, logger="arjax"):
        with workdir_lib.WorkdirLock(str(tmp_path)):
            pass
    assert f"taking over the lock of pid {holder.pid}" in caplog.text


def test_fault_spec_is_checked():
    os.environ[faults.ENV] = "nowhere"
    try:
        with pytest.raises(ValueError, match="point one of"):
            faults.point("step")
    finally:
        del os.environ[faults.ENV]
