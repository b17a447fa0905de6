"""Every error a user can cause is one line naming the field or file, exit status 2.

Each case runs ``arjax-train`` in-process (``launch.main(argv)``) from the repo root.
"""

import logging
import os
import signal

import pytest
from helpers import tiny_config

from arjax import cli, launch
from arjax.evaluation import report as report_lib
from arjax.experiment import summary
from arjax.experiment import train as loop
from arjax.experiment import workdir as workdir_lib
from arjax.training.checkpoint import PreemptionFlag

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = "--config=configs/quickstart.py"
LESIONS = "--config=configs/synthetic_lesions.py:smoke"


def _fails(tmp_path, capsys, *args, workdir=None):
    """Runs the command; returns its one stderr line after checking exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        launch.main([*args, f"--workdir={workdir or tmp_path / 'w'}", "--noprogress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("arjax-train: error:"), err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize(
    "args,expect",
    [
        ([QUICK, "--config.train.batchsize=4"], "did you mean 'train.batch_size'?"),
        ([QUICK, "--config.trian.batch_size=4"], "did you mean 'train'?"),
        ([QUICK, "--config.data.root=/x"], "unknown field 'data.root'; fields of data: name,"),
        ([QUICK, "--config.train.batch_size=abc"], "--config.train.batch_size=abc"),
        (["--config=configs/moons_ima.py:nonsense"], "unknown variant 'nonsense'; valid: ce"),
        (["--config=configs/nope.py"], "no such file 'configs/nope.py'"),
        ([QUICK, "--config.train.batch_size=12"], "must be divisible by the 8 devices"),
        ([QUICK, "--config.train.num_devices=9"], "only 8 devices are visible"),
        ([LESIONS, "--config.eval.adv_eps=5.0"], "eval.adv_eps=5.0 is beyond the data range"),
        (
            [
                "--config=configs/synthetic_lesions.py:arfl,smoke",
                "--config.method.attack=fgsm:linf:2",
            ],
            "method.attack='fgsm:linf:2.0': eps=2.0 is beyond",
        ),
        (  # the older spelling names the new one
            ["--config=configs/synthetic_lesions.py:arfl,smoke", "--config.method.eps=2.0"],
            "one spec now, e.g. --config.method.attack=fgsm:linf:0.01",
        ),
        (
            [QUICK, "--config.train.select_best=val/loss"],
            "the field is now --config.train.best.metric",
        ),
        ([QUICK, "--config.method.lamda=1"], "did you mean 'method.lam'?"),
        (
            ["--config=configs/mammo_arfl.py", "--config.data.manifest=/no/such.csv"],
            "/no/such.csv",
        ),
    ],
)
def test_user_error_is_one_line(tmp_path, capsys, args, expect):
    err = _fails(tmp_path, capsys, *args)
    assert expect in err
    assert not (tmp_path / "w" / "config.json").exists()


def test_config_files_that_do_not_load(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    assert f"{bad}:1: syntax error" in _fails(tmp_path, capsys, f"--config={bad}")
    raising = tmp_path / "raising.py"
    raising.write_text("def get_config():\n    return {}['nope']\n")
    assert "cannot load" in _fails(tmp_path, capsys, f"--config={raising}")


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit):
        launch.main(["--config=configs/nope.py", f"--workdir={tmp_path}", "--debug"])
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("arjax-train: error: flag --config")


def test_an_unwritable_workdir_is_named(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    err = _fails(tmp_path, capsys, QUICK, workdir=tmp_path / "file" / "w")
    assert "is not writable" in err and "file/w" in err


def test_a_damaged_checkpoint_in_evaluate_is_one_line(tmp_path, capsys):
    from arjax import evaluate

    loop.run(tiny_config(num_epochs=1, checkpoint_every=8), str(tmp_path), progress=False)
    os.remove(tmp_path / "checkpoints" / "8" / "default" / "_METADATA")
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([f"--workdir={tmp_path}", "--force", "--noprogress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be restored" in err[0], err


def test_finished_run_prints_its_report_on_a_read_only_workdir(tmp_path, monkeypatch):
    cfg = tiny_config(num_epochs=1)
    report = loop.run(cfg, str(tmp_path), progress=False)
    before = sorted(os.listdir(tmp_path))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if m == os.W_OK else real_access(p, m))
    monkeypatch.setattr(workdir_lib, "WorkdirLock", None)  # must not be needed
    assert loop.run(cfg, str(tmp_path), progress=False)["summary"] == report["summary"]
    assert sorted(os.listdir(tmp_path)) == before


def test_results_are_written_with_the_usual_permissions(tmp_path):
    path = report_lib.write_text(tmp_path / "r.json", "{}")
    plain = tmp_path / "plain"
    plain.write_text("")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_a_diverging_loss_is_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="arjax"):
        assert summary.diverged([0.69, 3.0, 4e26], "train (seed 0)")
        assert not summary.diverged([0.69, 0.4, 0.35], "train (seed 0)")
        assert not summary.diverged([0.69, 1.2], "train (seed 0)")  # higher, but not 10x
    assert caplog.text.count("diverged") == 1 and "0.69 to 4e+26" in caplog.text


def test_signals_say_what_happens_and_a_second_one_stops_now(caplog):
    flag = PreemptionFlag()
    try:
        with caplog.at_level(logging.WARNING, logger="arjax"):
            flag._handler(signal.SIGTERM, None)
        assert flag and "SIGTERM received: saving a checkpoint" in caplog.text
        with pytest.raises(KeyboardInterrupt):
            flag._handler(signal.SIGINT, None)
    finally:
        flag.close()


def test_interrupt_is_one_line_exit_130(capsys):
    def body():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        cli.run_main("arjax-train", body)
    assert exit_info.value.code == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


def _bad_manifest(root, edit):
    """A 12-row mammography-style manifest (5 patient folds) with one defect."""
    import numpy as np
    from PIL import Image

    os.makedirs(root / "img", exist_ok=True)
    for i in range(12):
        Image.fromarray(np.full((8, 8), 10 * i, np.uint8)).save(root / "img" / f"{i}.png")
    rows = [f"img/{i}.png,{('benign', 'malignant')[i % 2]},P{i},{i % 5}" for i in range(12)]
    header, rows = edit("path,label,patient_id,fold", rows, root)
    text = "" if header is None else header + "\n" + "".join(r + "\n" for r in rows)
    (root / "m.csv").write_text(text)
    return root / "m.csv"


def _replace(i, row):
    return lambda header, rows, root: (header, [*rows[:i], row, *rows[i + 1 :]])


def _corrupt_png(header, rows, root):
    (root / "img" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return header, rows


@pytest.mark.parametrize(
    "edit,expect",
    [
        (lambda h, r, root: (None, []), "m.csv:1: missing column(s) ['path', 'label']"),
        (lambda h, r, root: (h, []), "m.csv: no rows"),
        (
            lambda h, r, root: (
                "path,patient_id,fold",
                [x.split(",", 2)[0] + "," + x.split(",", 2)[2] for x in r],
            ),
            "missing column(s) ['label']",
        ),  # noqa: E501
        (_replace(3, "img/3.png,malignant,P3,nan"), "m.csv:5: fold must be an int"),
        (_replace(4, "img/404.png,benign,P4,4"), "m.csv:6: image file not found"),
        (
            _replace(4, "img/4.png,bengin,P4,4"),
            "m.csv:6: label 'bengin' (1 row(s)) looks like a typo of 'benign'",
        ),
        (_replace(4, "img/3.png,malignant,P3,3"), "img/3.png"),
        (_corrupt_png, "5.png"),
    ],
)
def test_bad_data_is_one_line_naming_file_and_line(tmp_path, capsys, edit, expect):
    manifest = _bad_manifest(tmp_path, edit)
    args = ["--config=configs/mammo_arfl.py", f"--config.data.manifest={manifest}"]
    err = _fails(tmp_path, capsys, *args, "--config.train.batch_size=8")
    assert expect in err and str(tmp_path) in err


def test_config_errors_come_before_the_heavy_imports():
    """The checks answer before sklearn, the evaluation suite or orbax are imported."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom arjax import launch\ntry:\n"
        "    launch.main(['--config=configs/quickstart.py', '--config.train.batchsize=4'])\n"
        "except SystemExit as e:\n"
        "    print(e.code, sorted(m for m in ('sklearn', 'arjax.evaluation', 'orbax') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == "2 []", out.stderr[-2000:]
    assert "did you mean 'train.batch_size'?" in out.stderr


def test_a_nan_stop_is_one_line_exit_1(tmp_path, capsys):
    config = tmp_path / "nan.py"
    config.write_text(
        f"import sys\nsys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})\n"
        "from helpers import tiny_config\n\ndef get_config():\n"
        "    c = tiny_config()\n    c.optim.learning_rate = 1e38\n    return c\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        launch.main([f"--config={config}", f"--workdir={tmp_path / 'w'}", "--noprogress"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite loss nan at step" in err[0], err
