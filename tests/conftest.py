"""Test setup: 8 fake CPU devices, so data-parallel code runs as on 8 chips.

The flag must be set before JAX initialises its backends, hence at import
time of this conftest (pytest imports it before any test module).

The suite compiles through JAX's persistent compilation cache in
``.pytest_cache/arjax`` (``$ARJAX_CACHE_DIR``, unless already set), so a second run of a
test file loads most programs from disk instead of compiling them.
"""

import os

_TESTS = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "ARJAX_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "arjax"),
)
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

from arjax import compilation_cache  # noqa: E402

compilation_cache.enable("auto")

import pytest  # noqa: E402
from dependency_skips import ENV_VAR, ci_requirements, enforce  # noqa: E402

_NO_SKIPS = os.environ.get(ENV_VAR) == "1"
_DEV = ci_requirements() if _NO_SKIPS else set()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With ``ARJAX_NO_SKIPS=1``, a test skipped for a missing ``[dev,torch]`` module fails."""
    outcome = yield
    if _NO_SKIPS:
        enforce(outcome.get_result(), _DEV)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped at import (``pytest.importorskip`` at the top)."""
    outcome = yield
    if _NO_SKIPS:
        enforce(outcome.get_result(), _DEV)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gpu: a test whose answer can change on an accelerator (tests/gpu_selection.py)"
    )


def pytest_collection_modifyitems(config, items):
    """Marks the tests of ``gpu_selection.GPU_TESTS`` with ``gpu`` (by function name).

    With ``-m gpu`` a listed name that matches no collected test is a usage error, so a
    renamed test cannot silently drop out of the device check.
    """
    from gpu_selection import names

    listed = names()
    found = set()
    for item in items:
        name = getattr(item, "originalname", item.name)
        if name in listed:
            item.add_marker(pytest.mark.gpu)
            found.add(name)
    whole_suite = all(os.path.abspath(a) == _TESTS for a in config.args or [_TESTS])
    if "gpu" in (config.getoption("markexpr") or "") and whole_suite and not config.option.keyword:
        missing = sorted(set(listed) - found)
        if missing:
            raise pytest.UsageError(
                f"tests/gpu_selection.py names tests that were not collected: {missing}"
            )
