"""Cross-validation folds: disjoint, covering, patient-grouped; views; one run per fold."""

import json
import pickle

import ml_collections
import numpy as np
import pytest
from helpers import tiny_config

from arjax import data as data_lib
from arjax.config_lib import ConfigError
from arjax.data import folds
from arjax.experiment import train as loop
from arjax.experiment.final_eval import evaluate_workdir
from arjax.experiment.presets import method_config


def test_folds_are_disjoint_cover_and_keep_patients_together():
    rng = np.random.default_rng(0)
    patients = rng.integers(0, 40, size=300).astype(str)  # 1-15 images per patient
    labels = rng.integers(0, 3, size=300)
    fold = folds.fold_of_examples(labels, 5, seed=1, groups=patients)
    assert fold.shape == (300,) and set(fold.tolist()) == set(range(5))  # covers, none empty
    for p in np.unique(patients):
        assert len(set(fold[patients == p].tolist())) == 1, p  # a patient in one fold
    # Stratified: every fold holds every class.
    assert all(len(set(labels[fold == k].tolist())) == 3 for k in range(5))
    # Deterministic given the seed; another seed deals patients differently.
    np.testing.assert_array_equal(fold, folds.fold_of_examples(labels, 5, 1, patients))
    assert not np.array_equal(fold, folds.fold_of_examples(labels, 5, 2, patients))
    # Multi-hot labels (not stratifiable) still group patients.
    multi = (rng.random((300, 4)) < 0.3).astype(np.float32)
    fold_m = folds.fold_of_examples(multi, 3, seed=0, groups=patients)
    assert all(len(set(fold_m[patients == p].tolist())) == 1 for p in np.unique(patients))
    with pytest.raises(ValueError, match="folds=50 needs 2 <= folds <= the 40 training patients"):
        folds.fold_of_examples(labels, 50, 0, patients)


def test_kfold_views_partition_train_without_copying():
    dataset = data_lib.load_dataset(
        dict(name="moons", sizes=dict(train=90, test=30), noise=0.2, seed=0)
    )
    train = dataset.splits["train"]
    parts = folds.kfold_datasets(dataset, 3, seed=0, holdout="val")
    held = [p.splits["val"] for p in parts]
    # Disjoint and covering the training split; train = the complement.
    all_held = np.sort(np.concatenate([v.indices for v in held]))
    np.testing.assert_array_equal(all_held, np.arange(90))
    for p, v in zip(parts, held, strict=True):
        assert set(p.splits["train"].indices.tolist()).isdisjoint(v.indices.tolist())
        assert len(p.splits["train"]) + len(v) == 90
        assert p.splits["test"] is dataset.splits["test"]
    view = parts[0].splits["train"]
    batch = view.gather(np.array([2, 0]))
    np.testing.assert_array_equal(batch["image"], train["image"][view.indices[[2, 0]]])
    np.testing.assert_array_equal(batch["index"], [2, 0])  # positions in the view (margins)
    np.testing.assert_array_equal(view.labels, train["label"][view.indices])
    assert data_lib.split_length(view) == len(view.indices)
    again = pickle.loads(pickle.dumps(view))  # grain workers receive the view
    np.testing.assert_array_equal(again.gather(np.array([1]))["image"], view.gather([1])["image"])
    with pytest.raises(ValueError, match="cv.holdout='test', but the data already have"):
        folds.kfold_datasets(dataset, 3, seed=0, holdout="test")


def test_manifest_folds_and_patient_ids_of_file_sources(tmp_path):
    data = ml_collections.ConfigDict(
        dict(
            name="synthetic_lesions", num_images=40, image_size=16, root=str(tmp_path / "d"), seed=0
        )
    )
    parts = folds.fold_datasets(data, 5, mode="manifest")
    tests = [p.splits["test"] for p in parts]
    paths = [set(t.paths) for t in tests]
    assert sum(len(p) for p in paths) == len(set().union(*paths)) == 40  # disjoint, cover all
    for k, part in enumerate(parts):  # validation = the next fold's test set
        assert set(part.splits["val"].paths) == paths[(k + 1) % 5]
        patients = {s: set(src.patients.tolist()) for s, src in part.splits.items()}
        assert patients["train"].isdisjoint(patients["test"] | patients["val"])
    # k-fold inside a file-backed train split keeps the manifest's patients together.
    train = parts[0].splits["train"]
    fold = folds.fold_of_examples(train.labels, 3, 0, train.patients)
    for p in np.unique(train.patients):
        assert len(set(fold[train.patients == p].tolist())) == 1
    view = folds.SubsetSource(train, np.flatnonzero(fold == 0))
    boxed = [i for i, r in enumerate(view.indices) if r in train.boxes]
    assert sorted(view.boxes) == boxed and view.image_size == 16
    with pytest.raises(ValueError, match="fold 4: data.val_fold=5 matches no row"):
        folds.fold_datasets(data, 6, mode="manifest")  # 6 folds of a 5-fold manifest


@pytest.mark.parametrize(
    "top,expect",
    [
        (dict(folds=1), "folds=1; valid: 0 .* or an int >= 2"),
        (dict(folds=2, cv=dict(mode="loo", holdout="val")), "unknown cv.mode 'loo'; valid"),
        (dict(folds=2, cv=dict(mode="kfold", holdout="x")), "unknown cv.holdout 'x'; valid"),
        (dict(folds=2, cv=dict(mode="manifest", holdout="val")), "data.name 'moons' has none"),
        (dict(folds=2, cv=dict(mode="kfold", holdout="test")), "cv.holdout='test', but"),
        (dict(folds=3, train=dict(batch_size=400)), "batch_size=400 exceeds the 341 .* fold 0"),
    ],
)
def test_bad_fold_fields_are_named(tmp_path, top, expect):
    cfg = tiny_config()
    cfg.update(top)
    with pytest.raises(ConfigError, match=expect):
        loop.run(cfg, str(tmp_path), progress=False)


def test_two_folds_make_two_runs_and_an_aggregate(tmp_path):
    cfg = tiny_config(num_epochs=2, eval_every=8, steps_per_call=8, log_every=8, num_devices=1)
    cfg.data.sizes = dict(train=256, test=64)
    cfg.eval.update(batch_size=64, num_steps=2, eps=(0.0, 0.1), losses=("ce",))
    cfg.method = method_config("standard")
    cfg.folds = 2
    report = loop.run(cfg, str(tmp_path), progress=False)
    for k in range(2):
        run = tmp_path / f"fold_{k}"
        assert (run / "checkpoints").is_dir() and (run / "result.json").exists()
        records = [json.loads(x) for x in open(run / "metrics.jsonl")]
        assert any("val/loss" in r for r in records)  # the held-out fold validates
    assert report["folds"] == [0, 1] and [r["fold"] for r in report["runs"]] == [0, 1]
    acc = report["summary"]["clean/accuracy"]
    values = [r["clean"]["accuracy"] for r in report["runs"]]
    assert acc["n"] == 2 and acc["mean"] == pytest.approx(np.mean(values))
    assert acc["std"] == pytest.approx(np.std(values, ddof=1))
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["summary"] == json.loads(json.dumps(report["summary"]))
    # arjax.evaluate finds both fold runs, rebuilds each fold's splits and
    # reproduces the numbers training wrote.
    ev = evaluate_workdir(str(tmp_path), progress=False)
    assert ev["runs"] == ["fold_0", "fold_1"]
    again = [json.loads((tmp_path / f"fold_{k}" / "eval.json").read_text()) for k in range(2)]
    assert [r["clean"]["accuracy"] for r in again] == pytest.approx(values)
