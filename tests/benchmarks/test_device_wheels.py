"""benchmarks/device_wheels.py: which of arjax's requirements the GPU image lacks (no network)."""

import importlib.metadata
import pathlib
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def wheels(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import device_wheels

    yield device_wheels
    sys.modules.pop("device_wheels", None)


def test_closure_follows_markers_and_extras_for_python_312(wheels):
    # a -> b[x] -> c (always), e (extra x only); a -> f only below 3.12, g only on Windows,
    # h at 3.12; b is reached again with extra y, which adds i.
    meta = {
        "a": ("1.0", ["b[x]>=2", 'f; python_version < "3.12"', 'g; sys_platform == "win32"',
                      'h; python_version >= "3.12"', "b[y]"]),
        "b": ("2.1", ["c", 'e; extra == "x"', 'i; extra == "y"', 'j; extra == "z"']),
        "c": ("3.0", []), "e": ("0.1", []), "h": ("1.1", []), "i": ("5", []),
    }  # fmt: skip
    nodes = wheels.closure(["a"], requires=lambda name: meta.get(name))
    assert set(nodes) == {"a", "b", "c", "e", "h", "i"}
    assert nodes["b"].extras == {"x", "y"} and nodes["b"].needed_by == "a"
    assert nodes["b"].specifiers == [">=2"]
    lacking = wheels.missing(nodes, device={"c", "h"})
    assert [n.name for n in lacking] == ["a", "b", "e", "i"]
    assert [wheels.pin(n) for n in lacking] == ["a==1.0", "b==2.1", "e==0.1", "i==5"]
    # a requirement not installed here is downloaded by its specifiers
    nodes = wheels.closure(["zz>=1.5,<2"], requires=lambda name: None)
    assert nodes["zz"].version is None and wheels.pin(nodes["zz"]) in ("zz<2,>=1.5", "zz>=1.5,<2")


def test_the_device_lacks_the_data_and_config_packages_not_jax(wheels):
    device = wheels.read_device_packages()
    assert {"jax", "flax", "optax", "orbax-checkpoint", "chex", "torch", "numpy"} <= device
    nodes = wheels.closure(wheels.project_requirements())
    names = {n.name for n in wheels.missing(nodes, device)}
    # arjax's own requirements that the image does not have, and tfds' own
    assert {"grain", "ml-collections", "tensorflow-datasets"} <= names
    # ... every direct requirement of tfds at Python 3.12 that the image lacks is listed
    env = dict(wheels.TARGET_ENV, extra="")
    reqs = [Requirement(r) for r in importlib.metadata.requires("tensorflow-datasets") or []]
    direct = {canonicalize_name(r.name) for r in reqs if not r.marker or r.marker.evaluate(env)}
    assert direct - device <= names
    assert not names & device
    assert {"jax", "flax", "numpy", "scipy"} & names == set()
    assert all(nodes[n].version for n in names)  # everything is installed here


def test_list_mode_prints_the_missing_packages_without_downloading(wheels, capsys, tmp_path):
    listed = wheels.main(["--list", "--dest", str(tmp_path)])
    out = capsys.readouterr().out
    assert [n.name for n in listed] == sorted(n.name for n in listed)
    for node in listed:
        assert node.name in out
    assert "grain" in out and not list(tmp_path.iterdir())
