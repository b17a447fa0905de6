"""Workdirs written by older code (``tests/fixtures/old_workdirs``) resume and re-evaluate.

The fixtures were written by the code before the architecture redesign (issue 29;
``tests/fixtures/make_old_workdirs.py``): an IMA run and a two-phase run stopped right after
a checkpoint, and a finished MMA run. Each must continue with today's code to the report
the uninterrupted run gave then (same numbers), and re-evaluate to its training numbers.
"""

import json
import os
import shutil
import sys

import pytest
from report_pins import flatten

from arjax.experiment import final_eval as evaluate_lib
from arjax.experiment import train as loop

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(os.path.dirname(HERE), "fixtures")
sys.path.insert(0, FIXTURES)
from make_old_workdirs import configs  # noqa: E402


def _copy(name, tmp_path) -> str:
    target = str(tmp_path / name)
    shutil.copytree(os.path.join(FIXTURES, "old_workdirs", name), target)
    return target


def _expected(workdir) -> dict:
    with open(os.path.join(workdir, "expected_report.json")) as f:
        return json.load(f)


def _assert_same_numbers(got: dict, expected: dict) -> None:
    got, expected = flatten(json.loads(json.dumps(got))), flatten(expected)
    for key, value in expected.items():
        if key.startswith("runs/0/schedule/"):  # a phase summary, not a metric
            continue
        assert key in got, key
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("name", ["ima_interrupted", "two_phase_interrupted"])
def test_an_interrupted_old_run_resumes_to_the_uninterrupted_report(name, tmp_path):
    workdir = _copy(name, tmp_path)
    lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
    assert lines and json.loads(lines[-1])["step"] == 16  # stopped mid-run
    report = loop.run(configs()[name], workdir, progress=False)
    _assert_same_numbers(report, _expected(workdir))


def test_a_finished_old_run_re_evaluates_and_is_not_retrained(tmp_path):
    workdir = _copy("mma_finished", tmp_path)
    expected = _expected(workdir)
    again = loop.run(configs()["mma_finished"], workdir, progress=False)
    _assert_same_numbers(again, expected)
    evaluated = evaluate_lib.evaluate_workdir(workdir, progress=False)
    run = expected["runs"][0]
    for section in ("clean", "adversarial"):
        for metric, value in run[section].items():
            if isinstance(value, float):
                assert evaluated[section][metric] == pytest.approx(value, abs=1e-6), metric
    assert evaluated["margins"]["median"] == pytest.approx(run["margins"]["median"], abs=1e-7)
