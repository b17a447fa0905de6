"""The CI skip policy (``tests/dependency_skips.py``), exercised on real pytest reports."""

import pytest
from dependency_skips import (
    PYPROJECT,
    ci_requirements,
    enforce,
    extra_requirements,
    missing_modules,
)


def _skipped(reason: str, when: str = "call") -> pytest.TestReport:
    return pytest.TestReport(
        "tests/test_x.py::test_y", ("tests/test_x.py", 3, "test_y"), {}, "skipped",
        ("tests/test_x.py", 3, f"Skipped: {reason}"), when,
    )  # fmt: skip


def test_dev_extra_is_read_from_pyproject():
    dev = extra_requirements("dev")
    assert {"pytest", "pytest-xdist", "hypothesis", "ruff", "pydicom"} <= dev
    assert "torch" not in dev and "torch" in extra_requirements("bench")
    assert {"torch", "torchax"} <= ci_requirements() and dev <= ci_requirements()
    assert "torchvision" not in ci_requirements()
    assert PYPROJECT.name == "pyproject.toml"


@pytest.mark.parametrize(
    "reason, module",
    [
        ("could not import 'pydicom': No module named 'pydicom'", "pydicom"),
        ("pydicom not installed (extra arjax[medical])", "pydicom"),
        ("hypothesis is not installed", "hypothesis"),
        ("No module named 'xdist.plugin'", "xdist.plugin"),
        ("module 'pydicom' has __version__ '2.4.4', required is: '3.0'", "pydicom"),
    ],
)
def test_missing_module_is_read_from_the_reason(reason, module):
    assert missing_modules(reason)[0] == module


def test_skip_for_a_missing_dev_dependency_becomes_a_failure():
    dev = ci_requirements()
    for reason in (
        "could not import 'pydicom': No module named 'pydicom'",
        "could not import 'torch': No module named 'torch'",  # [torch]: CI installs it
        "pydicom not installed (extra arjax[medical])",
        "No module named 'xdist'",  # module xdist is provided by distribution pytest-xdist
    ):
        report = _skipped(reason, when="setup")
        assert enforce(report, dev), reason
        assert report.failed and not report.skipped
        assert "missing [dev,torch] dependency" in str(report.longrepr)
        assert reason in str(report.longrepr)


def test_other_skips_stay_skips():
    dev = ci_requirements()
    for reason in (
        "could not import 'torchattacks': No module named 'torchattacks'",  # [bench] only
        "could not import 'torchvision': No module named 'torchvision'",
        "a decoder plugin for 1.2.840.10008.1.2.4.50 is installed: ['pydicom', 'pillow']",
        "this jaxlib rejects arjax's CPU options (fallback to XLA defaults)",
    ):
        report = _skipped(reason)
        assert not enforce(report, dev), reason
        assert report.skipped
    passed = pytest.TestReport("t::p", ("t", 0, "p"), {}, "passed", None, "call")
    assert not enforce(passed, dev) and passed.passed


def test_collection_skip_becomes_a_failure():
    report = pytest.CollectReport(
        "tests/test_x.py", "skipped", ("tests/test_x.py", 15, "Skipped: No module named 'ruff'"), []
    )
    assert enforce(report, extra_requirements("dev"))
    assert report.failed


def test_ci_runs_the_readme_test_command_with_the_policy_on():
    root = PYPROJECT.parent
    readme_command = "python -m pytest -n 2 tests"
    readme = (root / "README.md").read_text()
    assert f"pip install -e '.[dev,torch]' && {readme_command}" in readme
    lines = [ln.strip() for ln in (root / ".ci" / "run").read_text().splitlines()]
    commands = [ln for ln in lines if ln and not ln.startswith("#")]
    assert commands[-1] == readme_command
    assert "export ARJAX_NO_SKIPS=1" in commands[: commands.index(readme_command)]
    assert "python -m pip install -q -e '.[dev,torch]'" in commands
