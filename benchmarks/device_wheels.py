"""Wheels for the GPU machine: arjax's runtime requirements that its image lacks.

The GPU machine has no network and its own Python (3.12, manylinux x86_64) with JAX,
flax, optax, orbax, chex, torch, ... (``device_packages.txt``) but not everything arjax
needs (grain, ml-collections, tensorflow-datasets and their requirements). Run this on a
machine with package access, from the repository root::

    python benchmarks/device_wheels.py          # list the missing packages, download them
    python benchmarks/device_wheels.py --list   # list only (no network)

It walks the dependency closure of ``pyproject.toml``'s ``dependencies`` through the
metadata of the distributions installed here (markers evaluated for CPython 3.12 on
Linux x86_64, extras followed), removes every package the image has, prints the rest
(name, version installed here, the package that needs it) and downloads exactly those
wheels, at the versions installed here (the ones arjax was tested with), into ``.whl/``
(ignored by git; ``.whl/*.whl`` is replaced). A requirement that is not installed here
is downloaded at the newest version its specifier allows. A package published only as
a source archive is built into a wheel here, if that wheel is pure Python.
``benchmarks/device_check.sh`` installs ``.whl/`` first; pass ``.whl`` in the device
call's ``carry``.
"""

import argparse
import dataclasses
import glob
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterable

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_PACKAGES = os.path.join(ROOT, "benchmarks", "device_packages.txt")
WHEELS = os.path.join(ROOT, ".whl")
# The device machine's interpreter, for marker evaluation (PEP 508 environment markers).
TARGET_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
# pip matches manylinux tags exactly: name every glibc level up to the image's.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(17, 40)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


@dataclasses.dataclass
class Node:
    """One distribution of the closure."""

    name: str  # canonical
    version: str | None  # installed here; None: not installed here
    extras: set[str]
    needed_by: str  # the first requirer ("arjax" for pyproject's own)
    specifiers: list[str]  # every specifier seen, e.g. [">=1.0"]


def read_device_packages(path: str = DEVICE_PACKAGES) -> set[str]:
    """Canonical names of the packages the device image holds (one a line, ``#`` comments)."""
    with open(path) as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return {canonicalize_name(line) for line in lines if line}


def project_requirements(pyproject: str = os.path.join(ROOT, "pyproject.toml")) -> list[str]:
    """``[project] dependencies`` of ``pyproject.toml``: arjax's runtime requirements."""
    with open(pyproject, "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def _applies(req: Requirement, extras: Iterable[str], env: dict) -> bool:
    """Whether ``req`` (one of a distribution's requirements) applies for these extras."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": e}) for e in ("", *sorted(extras)))


def closure(
    requirements: Iterable[str],
    requires: Callable[[str], tuple[str, list[str]] | None] | None = None,
    env: dict | None = None,
) -> dict[str, Node]:
    """The dependency closure of ``requirements`` for the environment ``env``.

    Args:
      requirements: PEP 508 requirement strings (the roots).
      requires: name -> ``(version, requirement strings)`` of that distribution, or None
        when it is not installed (default: this interpreter's installed metadata).
      env: marker environment (default :data:`TARGET_ENV`).

    Returns:
      canonical name -> :class:`Node`, every distribution the roots need there, with the
      extras asked of it; a distribution reached again with new extras is walked again.
    """
    requires = requires or installed_requires
    env = env or TARGET_ENV
    nodes: dict[str, Node] = {}
    todo = [(Requirement(r), "arjax") for r in requirements]
    todo = [(r, who) for r, who in todo if _applies(r, (), env)]
    while todo:
        req, who = todo.pop(0)
        name = canonicalize_name(req.name)
        node = nodes.get(name)
        found = requires(name)
        if node is not None:
            if str(req.specifier):
                node.specifiers.append(str(req.specifier))
            if set(req.extras) <= node.extras:
                continue
            node.extras |= set(req.extras)
        else:
            version = found[0] if found else None
            specs = [str(req.specifier)] if str(req.specifier) else []
            node = nodes[name] = Node(name, version, set(req.extras), who, specs)
        if found is None:
            continue
        for text in found[1]:
            sub = Requirement(text)
            if _applies(sub, node.extras, env):
                todo.append((sub, name))
    return nodes


def installed_requires(name: str) -> tuple[str, list[str]] | None:
    """``(version, Requires-Dist)`` of an installed distribution, or None."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return dist.version, list(dist.requires or [])


def missing(nodes: dict[str, Node], device: set[str]) -> list[Node]:
    """The closure's distributions the device lacks, sorted by name."""
    return sorted((n for n in nodes.values() if n.name not in device), key=lambda n: n.name)


def pin(node: Node) -> str:
    """What to download: ``name==version`` installed here, else the specifiers seen."""
    if node.version is not None:
        return f"{node.name}=={node.version}"
    return node.name + ",".join(s for s in node.specifiers if s)


def _pip(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def download(nodes: list[Node], dest: str = WHEELS) -> list[str]:
    """Downloads one wheel per node for CPython 3.12 manylinux x86_64 into ``dest``.

    ``dest``'s old ``*.whl`` files are removed first (two versions of one package stop
    the install on the device).

    Raises:
      RuntimeError: naming the package when pip finds no wheel for it and its source
        archive does not build into a pure-Python wheel.
    """
    os.makedirs(dest, exist_ok=True)
    for old in glob.glob(os.path.join(dest, "*.whl")):
        os.remove(old)
    target = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]
    target += ["--abi", "abi3", "--abi", "none"]
    for platform in PLATFORMS:
        target += ["--platform", platform]
    for node in nodes:
        spec = pin(node)
        out = _pip(
            ["download", "-q", "--no-deps", "--only-binary=:all:", *target, "-d", dest, spec]
        )
        if out.returncode == 0:
            continue
        with tempfile.TemporaryDirectory() as tmp:  # a source archive only: build it here
            built = _pip(["wheel", "-q", "--no-deps", "--no-binary=:all:", "-w", tmp, spec])
            wheels = glob.glob(os.path.join(tmp, "*.whl"))
            if built.returncode or len(wheels) != 1 or not wheels[0].endswith("-none-any.whl"):
                raise RuntimeError(
                    f"no wheel of {spec} for CPython 3.12 manylinux x86_64, and its source "
                    f"does not build into a pure-Python wheel:\n{out.stderr[-1500:]}"
                )
            shutil.copy(wheels[0], dest)
    return sorted(glob.glob(os.path.join(dest, "*.whl")))


def main(argv: list[str] | None = None) -> list[Node]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list only, download nothing")
    parser.add_argument("--dest", default=WHEELS)
    parser.add_argument("--device-packages", default=DEVICE_PACKAGES)
    args = parser.parse_args(argv)
    nodes = closure(project_requirements())
    lacking = missing(nodes, read_device_packages(args.device_packages))
    print(
        f"arjax's runtime closure for CPython 3.12 x86_64: {len(nodes)} distributions; "
        f"the device image lacks {len(lacking)}:"
    )
    for node in lacking:
        here = node.version or "not installed here"
        print(f"  {node.name:28s} {here:20s} needed by {node.needed_by}")
    if args.list or not lacking:
        return lacking
    wheels = download(lacking, args.dest)
    size = sum(os.path.getsize(w) for w in wheels)
    for wheel in wheels:
        print(f"  {os.path.getsize(wheel) / 1e6:7.2f} MB  {os.path.basename(wheel)}")
    print(f"{len(wheels)} wheels, {size / 2**20:.1f} MiB in {args.dest}")
    return lacking


if __name__ == "__main__":
    main()
