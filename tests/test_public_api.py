"""The public API is the documented contract (issue 29): each subpackage's ``__all__`` is
what the README, the docs and the notebooks name, and the names resolve as documented."""

import importlib
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS += sorted((ROOT / "notebooks").glob("*.py"))
CURATED = ["arjax.attacks", "arjax.evaluation", "arjax.losses", "arjax.methods"]


def _documented() -> set[str]:
    words = set()
    for path in DOCS:
        words |= set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", path.read_text()))
    return words


@pytest.mark.parametrize("package", CURATED)
def test_every_exported_name_is_documented_and_resolves(package):
    module = importlib.import_module(package)
    documented = _documented()
    missing = sorted(n for n in module.__all__ if n not in documented)
    assert missing == [], f"{package} exports names no document mentions: {missing}"
    assert len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name


@pytest.mark.parametrize(
    "first",
    ["import arjax.evaluation", "import arjax.evaluation.autoattack_eval",
     "from arjax.evaluation.masking import masking_checks", "import arjax; arjax.evaluation"],
)  # fmt: skip
def test_autoattack_is_the_function_in_every_import_order(first):
    code = (
        f"{first}\nimport arjax.evaluation\nfrom arjax.evaluation import autoattack as aa\n"
        "assert callable(arjax.evaluation.autoattack) and aa is arjax.evaluation.autoattack\n"
        "assert arjax.evaluation.autoattack.__name__ == 'autoattack'"
    )
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr[-1500:]


def test_internal_helpers_are_not_exported_but_stay_importable():
    import arjax.attacks as attacks
    from arjax.attacks.pgd import ascent_step, start_delta  # noqa: F401

    for name in ("ascent_step", "start_delta", "objective_grad_fn", "check_attack_args"):
        assert name not in attacks.__all__ and not hasattr(attacks, name)
