"""The example notebooks run headless, top to bottom, at smoke size, and show their figures.

Each notebook is a jupytext percent script in ``notebooks/``; it is converted with
jupytext and executed with nbclient in a fresh kernel (which inherits this process's
environment: the worktree's ``PYTHONPATH``, CPU-only JAX). ``ARJAX_NOTEBOOK_SMOKE=1``
selects the notebooks' tiny sizes. Every notebook ends by printing ``SUMMARY {...}``
(a Python literal of its measured numbers), which the tests check.
"""

import ast
import os
import pathlib

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
ROOT = NOTEBOOKS.parent


def execute(name, tmp_path, monkeypatch):
    """Runs ``notebooks/<name>.py`` in ``tmp_path``; returns ``(notebook, summary dict)``."""
    monkeypatch.setenv("ARJAX_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("ARJAX_REPO", str(ROOT))
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), path) if p))
    # One CPU device is enough in the kernel (the fake 8 of conftest only cost compile time).
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    lines = [line for line in text.splitlines() if line.startswith("SUMMARY ")]
    assert lines, f"{name} printed no SUMMARY line; output:\n{text[-2000:]}"
    return nb, ast.literal_eval(lines[-1].removeprefix("SUMMARY "))


def inline_figures(nb):
    """Number of PNG images the notebook displayed."""
    return sum(
        "image/png" in o.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )


def test_attack_your_model(tmp_path, monkeypatch):
    nb, s = execute("attack_your_model", tmp_path, monkeypatch)
    assert inline_figures(nb) == 2  # the adversarial images and the robust-accuracy curve
    assert s["clean"] > 0.6  # the notebook's CNN learnt the stripes
    assert s["pgd"] <= s["fgsm"] <= s["clean"]
    curve = s["curve"]
    assert curve[0] == s["clean"] and curve[-1] < curve[0]
    assert 0 < s["bpgd_crossed"] <= 1


def test_attack_your_pytorch_model(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("torchax")
    nb, s = execute("attack_your_pytorch_model", tmp_path, monkeypatch)
    assert inline_figures(nb) == 1  # clean, PGD and AutoAttack images
    assert s["clean"] > 0.8  # the PyTorch training learnt the stripes
    assert s["logits_gap"] < 1e-4 and s["tuned_gap"] < 1e-4  # arjax computes torch's logits
    assert s["pgd"] == s["torch_pgd"] < s["clean"]  # the adversarial images fool torch too
    assert s["autoattack"] <= s["clean"]


def test_train_from_python(tmp_path, monkeypatch):
    nb, s = execute("train_from_python", tmp_path, monkeypatch)
    # margin growth + histogram, the decision boundaries, the robust-accuracy curves
    assert inline_figures(nb) == 3
    growth = s["margin_mean"]
    assert all(b > a for a, b in zip(growth, growth[1:], strict=False))
    lo, hi = s["margins_min_max"]
    assert 0 < lo < hi <= 0.3 + 1e-6
    assert set(s["curves"]) == {"IMA", "ARFL", "TRADES"}
    for curve in s["curves"].values():
        assert curve[0] > 0.7 and curve[-1] <= curve[0]
    for method in ("ima", "arfl", "trades"):
        assert (tmp_path / "runs" / "notebook_moons_smoke" / method / "report.json").is_file()


def test_evaluate_a_workdir(tmp_path, monkeypatch):
    nb, s = execute("evaluate_a_workdir", tmp_path, monkeypatch)
    assert inline_figures(nb) == 1
    r, table = s["results"], s["evaluate_workdir"]
    assert set(r) == {
        "clean",
        "fgsm:linf:0.1",
        "pgd:linf:0.1:10",
        "apgd-ce:linf:0.1:10",
        "square:linf:0.1:50",
        "autoattack-fast:linf:0.1",
    }
    assert r["clean"] > 0.7 and all(v <= r["clean"] for v in r.values())
    assert r["pgd:linf:0.1:10"] <= r["fgsm:linf:0.1"]
    # evaluate_workdir's deterministic FGSM agrees with the notebook's own run_attack call
    assert abs(table["fgsm_linf_0.1/accuracy"] - r["fgsm:linf:0.1"]) < 1e-6
    assert {"fgsm_linf_0.1/accuracy", "pgd10_linf_0.1/accuracy"} <= set(table)
    assert (tmp_path / "runs" / "notebook_quickstart_smoke" / "eval.json").is_file()


def test_medical_saliency_cam(tmp_path, monkeypatch):
    nb, s = execute("medical_saliency_cam", tmp_path, monkeypatch)
    assert inline_figures(nb) == 2  # image / CAM / saliency grid, localisation curve
    loc = s["localization"]
    assert len(loc["accuracy"]) == len(loc["random_box"]) == 7
    assert all(0 <= a <= 1 for a in loc["accuracy"])
    assert loc["accuracy"][0] > loc["random_box"][0]
    assert 0 <= s["auc"] <= 1
