import dataclasses
import pickle

import grain
import ml_collections
import numpy as np
import pytest

from arjax import data
from arjax.data import (
    ArraySource,
    eval_batches,
    load_dataset,
    make_moons,
    moons_splits,
    steps_per_epoch,
    train_dataset,
)


def _arrays(n=50):
    return {
        "image": np.arange(2 * n, dtype=np.float32).reshape(n, 2),
        "label": (np.arange(n) % 3).astype(np.int32),
    }


# --- moons ---------------------------------------------------------------------------------------


def test_make_moons_deterministic_dtypes_and_seed_dependence():
    a = make_moons(200, 0.1, 3)
    b = make_moons(200, 0.1, 3)
    c = make_moons(200, 0.1, 4)
    assert a["image"].dtype == np.float32 and a["image"].shape == (200, 2)
    assert a["label"].dtype == np.int32 and a["label"].shape == (200,)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.allclose(a["image"], c["image"])
    # Shuffled: labels are not sorted into two blocks.
    assert np.abs(np.diff(a["label"])).sum() > 20


def test_make_moons_balance_and_geometry():
    d = make_moons(1001, 0.0, 0)
    counts = np.bincount(d["label"])
    assert counts.tolist() == [500, 501]
    # Noise-free moons: class 0 lies on the unit circle, class 1 on the circle centred (1, 0.5).
    upper = d["image"][d["label"] == 0]
    lower = d["image"][d["label"] == 1]
    np.testing.assert_allclose(np.linalg.norm(upper, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(lower - [1.0, 0.5], axis=1), 1.0, atol=1e-5)


def test_moons_splits_independent_of_other_sizes():
    a = moons_splits({"train": 300, "test": 100}, 0.2, 7)
    b = moons_splits({"train": 300, "test": 150, "val": 50}, 0.2, 7)
    np.testing.assert_array_equal(a["train"]["image"], b["train"]["image"])
    assert a["test"]["image"].shape == (100, 2) and b["test"]["image"].shape == (150, 2)
    c = moons_splits({"val": 50}, 0.2, 7)
    np.testing.assert_array_equal(b["val"]["image"], c["val"]["image"])
    # Different splits are different draws.
    assert not np.allclose(a["train"]["image"][:100], a["test"]["image"])
    fractions = [np.mean(s["label"]) for s in b.values()]
    assert all(0.45 <= f <= 0.55 for f in fractions)


# --- load_dataset --------------------------------------------------------------------------------


def _data_config(**overrides):
    cfg = ml_collections.ConfigDict(
        {"name": "moons", "sizes": {"train": 100, "test": 40}, "noise": 0.1, "seed": 0}
    )
    cfg.update(overrides)
    return cfg


def test_load_dataset_moons():
    ds = load_dataset(_data_config())
    assert ds.name == "moons" and ds.input_shape == (2,) and ds.num_classes == 2
    assert ds.bounds is None
    assert sorted(ds.splits) == ["test", "train"]
    assert ds.splits["train"]["image"].shape == (100, 2)
    np.testing.assert_array_equal(
        ds.splits["test"]["label"], moons_splits({"test": 40}, 0.1, 0)["test"]["label"]
    )
    assert "moons" in data.DATASETS
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"  # frozen


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"name": "x"}, "unknown data.name 'x'; valid: chestxray14, covid_ct, csv_manifest, moons"),
        ({"sizes": {"test": 10}}, "data.sizes.train"),
        ({"sizes": {"train": 0}}, "data.sizes.train"),
        ({"sizes": {"train": 10, "val": -1}}, "data.sizes.val"),
        ({"noise": -0.1}, "data.noise"),
        ({"seed": -1}, "data.seed"),
    ],
)
def test_load_dataset_errors_name_the_field(overrides, field):
    cfg = _data_config()
    if "sizes" in overrides:
        cfg.sizes = ml_collections.ConfigDict(overrides["sizes"])
    else:
        cfg.update(overrides)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        load_dataset(cfg)


def test_register_dataset_rejects_duplicates():
    with pytest.raises(ValueError, match="moons"):
        data.register_dataset("moons")(lambda cfg: None)


# --- ArraySource ---------------------------------------------------------------------------------


def test_array_source_items_and_gather():
    arrays = _arrays(10)
    src = ArraySource(arrays)
    assert len(src) == 10
    ex = src[7]
    np.testing.assert_array_equal(ex["image"], arrays["image"][7])
    assert ex["label"] == arrays["label"][7] and ex["index"] == 7
    assert ex["index"].dtype == np.int32
    assert src[-1]["index"] == 9
    with pytest.raises(IndexError):
        src[10]
    batch = src.gather(np.array([3, 0, 9]))
    np.testing.assert_array_equal(batch["image"], arrays["image"][[3, 0, 9]])
    np.testing.assert_array_equal(batch["index"], [3, 0, 9])
    # Works as a grain source, with the index attached before grain's shuffle.
    shuffled = grain.MapDataset.source(src).shuffle(seed=1)
    items = [shuffled[i] for i in range(10)]
    assert sorted(int(it["index"]) for it in items) == list(range(10))
    for it in items:
        np.testing.assert_array_equal(it["image"], arrays["image"][it["index"]])


def test_array_source_validation():
    with pytest.raises(ValueError, match=r"'label' has 9 but 'image' has 10"):
        ArraySource({"image": np.zeros((10, 2)), "label": np.zeros(9)})
    with pytest.raises(ValueError, match="empty"):
        ArraySource({"image": np.zeros((0, 2))})
    with pytest.raises(ValueError, match="empty"):
        ArraySource({})
    with pytest.raises(ValueError, match="reserved"):
        ArraySource({"image": np.zeros((3, 2)), "index": np.arange(3)})


# --- train_dataset -------------------------------------------------------------------------------


def test_steps_per_epoch():
    assert steps_per_epoch(10000, 128) == 78
    assert steps_per_epoch(10, 10) == 1
    with pytest.raises(ValueError, match="batch_size 11.*10"):
        steps_per_epoch(10, 11)


def test_train_batches_index_matches_source_and_shapes():
    arrays = _arrays(50)
    ds = train_dataset(arrays, batch_size=8, seed=0, num_epochs=3)
    assert isinstance(ds, grain.MapDataset)
    assert len(ds) == 3 * 6
    for step in (0, 5, 6, 17):
        batch = ds[step]
        assert batch["image"].shape == (8, 2) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int32
        np.testing.assert_array_equal(batch["image"], arrays["image"][batch["index"]])
        np.testing.assert_array_equal(batch["label"], arrays["label"][batch["index"]])


def test_train_epochs_are_permutations_and_differ():
    n, bs = 50, 8
    ds = train_dataset(_arrays(n), batch_size=bs, seed=1)
    spe = steps_per_epoch(n, bs)
    epochs = [np.concatenate([ds[e * spe + k]["index"] for k in range(spe)]) for e in range(3)]
    for idx in epochs:
        assert len(idx) == spe * bs == 48
        assert len(np.unique(idx)) == len(idx)  # no duplicates within an epoch
        assert idx.min() >= 0 and idx.max() < n
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])
    # Over several epochs the dropped remainder changes, so every example is seen.
    assert len(np.unique(np.concatenate(epochs))) == n


def test_train_random_access_is_deterministic():
    arrays = _arrays(50)
    ds = train_dataset(arrays, batch_size=8, seed=5)
    forward = [ds[s]["index"] for s in range(20)]
    # A fresh dataset (a "restart") asked out of order gives the same batches.
    again = train_dataset(arrays, batch_size=8, seed=5)
    for s in reversed(range(20)):
        np.testing.assert_array_equal(again[s]["index"], forward[s])
    other_seed = train_dataset(arrays, batch_size=8, seed=6)
    assert not np.array_equal(other_seed[0]["index"], forward[0])
    # Picklable (grain worker processes).
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(ds))[13]["index"], forward[13])


def test_train_process_sharding_disjoint_and_complete():
    arrays = _arrays(50)
    full = train_dataset(arrays, batch_size=12, seed=2)
    shards = [
        train_dataset(arrays, batch_size=12, seed=2, process_index=p, process_count=3)
        for p in range(3)
    ]
    for step in (0, 3, 4, 11):
        parts = [s[step]["index"] for s in shards]
        assert all(p.shape == (4,) for p in parts)
        joined = np.concatenate(parts)
        assert len(np.unique(joined)) == 12
        np.testing.assert_array_equal(np.sort(joined), np.sort(full[step]["index"]))


def test_train_dataset_errors():
    with pytest.raises(ValueError, match="batch_size 10 must be divisible by process_count 4"):
        train_dataset(_arrays(), batch_size=10, seed=0, process_count=4)
    with pytest.raises(ValueError, match="batch_size 60.*50"):
        train_dataset(_arrays(50), batch_size=60, seed=0)
    with pytest.raises(ValueError, match="process_index"):
        train_dataset(_arrays(), batch_size=8, seed=0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="num_epochs"):
        train_dataset(_arrays(), batch_size=8, seed=0, num_epochs=0)


# --- eval_batches --------------------------------------------------------------------------------


@pytest.mark.parametrize("n, batch_size, multiple_of, padded", [(23, 5, 1, 5), (23, 5, 4, 8)])
def test_eval_batches_cover_once_with_masks(n, batch_size, multiple_of, padded):
    arrays = _arrays(n)
    batches = list(eval_batches(arrays, batch_size=batch_size, multiple_of=multiple_of))
    assert len(batches) == -(-n // padded)
    assert {b["image"].shape for b in batches} == {(padded, 2)}
    mask = np.concatenate([b["mask"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    assert mask.dtype == np.float32 and mask.sum() == n
    np.testing.assert_array_equal(index[mask == 1], np.arange(n))  # order kept, each once
    np.testing.assert_array_equal(mask, (np.arange(len(mask)) < n).astype(np.float32))
    last = batches[-1]
    np.testing.assert_array_equal(
        last["image"][last["mask"] == 0],
        arrays["image"][0][None].repeat(int((last["mask"] == 0).sum()), axis=0),
    )
    for b in batches:
        np.testing.assert_array_equal(b["image"], arrays["image"][b["index"]])


def test_eval_batches_validates_eagerly():
    with pytest.raises(ValueError, match="multiple_of"):
        eval_batches(_arrays(), batch_size=4, multiple_of=0)
    with pytest.raises(ValueError, match="'label' has 3"):
        eval_batches({"image": np.zeros((4, 2)), "label": np.zeros(3)}, batch_size=2)
