"""CI policy: a test skipped because a ``[dev]`` or ``[torch]`` dependency is missing fails.

``pip install -e '.[dev,torch]'`` must bring everything the suite needs except
torchvision and torchattacks (``[bench]``; torchvision has no CPU wheel on PyPI).
With ``ARJAX_NO_SKIPS=1`` (``.ci/run`` sets it) the hooks in ``conftest.py`` pass
every skipped report through ``enforce``: a skip whose reason names a missing module
that one of the ``CI_EXTRAS``' distributions provides becomes a failure naming the
extras; other skips (torchattacks, a plugin that happens to be installed, a jaxlib
option) stay skips.
"""

import importlib.metadata
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
ENV_VAR = "ARJAX_NO_SKIPS"
CI_EXTRAS = ("dev", "torch")  # what .ci/run installs

# How a skip names a module that is not installed (or older than required):
# pytest.importorskip's reasons ("could not import 'X': No module named 'X'",
# "module 'X' has __version__ ..."), ImportError's text, and the "X not
# installed" reasons written by hand in skipif marks.
_MISSING = (
    re.compile(r"could not import '([\w.]+)'"),
    re.compile(r"No module named '([\w.]+)'"),
    re.compile(r"\b([A-Za-z_][\w.-]*) (?:is )?not installed"),
    re.compile(r"module '([\w.]+)' has __version__"),  # importorskip(minversion=...): too old
)


def canonical(name: str) -> str:
    """PEP 503 normalised distribution (or module) name: ``Pytest_XDist`` -> ``pytest-xdist``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def extra_requirements(extra: str = "dev", pyproject: Path = PYPROJECT) -> set[str]:
    """Canonical distribution names listed in ``[project.optional-dependencies].<extra>``."""
    with open(pyproject, "rb") as f:
        specs = tomllib.load(f)["project"]["optional-dependencies"][extra]
    return {canonical(re.split(r"[\s<>=!~;\[(]", spec, maxsplit=1)[0]) for spec in specs}


def _providers(module: str) -> set[str]:
    """Distributions that provide top-level ``module`` (by name, or by installed metadata)."""
    top = module.split(".")[0]
    installed = importlib.metadata.packages_distributions().get(top, [])
    return {canonical(top), *(canonical(d) for d in installed)}


def missing_modules(reason: str) -> list[str]:
    """Module names a skip reason says are missing, in order of appearance."""
    found = []
    for pattern in _MISSING:
        found += [m for m in pattern.findall(reason) if m not in found]
    return found


def ci_requirements() -> set[str]:
    """Canonical distribution names of every extra in :data:`CI_EXTRAS`."""
    return set().union(*(extra_requirements(extra) for extra in CI_EXTRAS))


def dev_dependency_in(reason: str, dev: Iterable[str]) -> str | None:
    """The required distribution (of ``dev``) whose absence a skip reason reports, or None."""
    dev = set(dev)
    for module in missing_modules(reason):
        hit = sorted(_providers(module) & dev)
        if hit:
            return hit[0]
    return None


def skip_reason(report) -> str | None:
    """A skipped report's reason text (``longrepr`` is ``(path, line, reason)``), else None."""
    if not report.skipped:
        return None
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def enforce(report, dev: Iterable[str]) -> bool:
    """Turns ``report`` (a test or collection report) into a failure if it skips for ``dev``.

    Args:
      report: a ``pytest.TestReport`` or ``pytest.CollectReport``; changed in place.
      dev: canonical distribution names CI installs (:func:`ci_requirements`).

    Returns:
      Whether the report was turned into a failure.
    """
    reason = skip_reason(report)
    if reason is None:
        return False
    dist = dev_dependency_in(reason, dev)
    if dist is None:
        return False
    report.outcome = "failed"
    report.longrepr = (
        f"skipped for a missing [dev,torch] dependency ({dist}): {reason}\n"
        f"{ENV_VAR}=1 makes this a failure: pip install -e '.[dev,torch]' should bring {dist}"
    )
    return True
