"""TFDS sources: tfds.testing.mock_data for the paper datasets, a tiny real array_record
dataset (written here with tfds' builder API) for data_dir, split slicing and errors."""

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from arjax.data import DATASETS, eval_batches, load_dataset, train_dataset


def _config(**fields):
    cfg = {
        "name": "tfds",
        "tfds_name": "fashion_mnist",
        "data_dir": None,
        "splits": {"train": "train", "test": "test"},
        "max_examples": 0,
    }
    cfg.update(fields)  # replaces whole fields (ConfigDict.update would merge "splits")
    return ml_collections.ConfigDict(cfg)


def _mock(num_examples):
    # USE_CODE: fake examples generated from the builder's features; no files, no network.
    return tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
    )


# --- mocked Fashion-MNIST / SVHN -----------------------------------------------------------------


def test_fashion_mnist_through_load_dataset_and_pipeline():
    assert "tfds" in DATASETS
    with _mock(40):
        ds = load_dataset(_config())
        raw = tfds.data_source("fashion_mnist", split="train", download=False)
        expected = np.stack([raw[i]["image"] for i in range(40)])
        expected_labels = np.array([raw[i]["label"] for i in range(40)])
    assert ds.name == "tfds" and ds.input_shape == (28, 28, 1) and ds.num_classes == 10
    assert ds.bounds == (0.0, 1.0) and sorted(ds.splits) == ["test", "train"]
    train = ds.splits["train"]
    assert train["image"].shape == (40, 28, 28, 1) and train["image"].dtype == np.float32
    assert train["label"].shape == (40,) and train["label"].dtype == np.int32
    assert 0.0 <= train["image"].min() and train["image"].max() <= 1.0
    assert train["image"].max() > 0.9  # uses the range: uint8 / 255, not / 255**2
    np.testing.assert_array_equal(train["image"], expected.astype(np.float32) / 255)
    np.testing.assert_array_equal(train["label"], expected_labels)
    assert train["label"].min() >= 0 and train["label"].max() < 10
    assert len(np.unique(train["label"])) > 3

    # The pipeline's index points back at the split row it came from.
    batches = train_dataset(train, batch_size=16, seed=0)
    for step in (0, 1, 2):
        batch = batches[step]
        assert batch["image"].shape == (16, 28, 28, 1) and batch["index"].dtype == np.int32
        np.testing.assert_array_equal(batch["image"], train["image"][batch["index"]])
        np.testing.assert_array_equal(batch["label"], train["label"][batch["index"]])
    evals = list(eval_batches(ds.splits["test"], batch_size=16, multiple_of=8))
    index = np.concatenate([b["index"] for b in evals])
    mask = np.concatenate([b["mask"] for b in evals])
    np.testing.assert_array_equal(index[mask == 1], np.arange(40))


def test_max_examples_caps_each_split_and_svhn_is_rgb():
    with _mock(30):
        ds = load_dataset(
            _config(
                tfds_name="svhn_cropped",
                splits={"train": "train", "val": "extra", "test": "test"},
                max_examples=7,
            )
        )
    assert ds.input_shape == (32, 32, 3) and ds.num_classes == 10
    assert {k: v["image"].shape for k, v in ds.splits.items()} == {
        k: (7, 32, 32, 3) for k in ("train", "val", "test")
    }
    assert {len(v["label"]) for v in ds.splits.values()} == {7}


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"splits": {"test": "test"}}, r"data\.splits\.train is required"),
        ({"splits": {"train": ""}}, r"data\.splits\.train must be a TFDS split string"),
        ({"splits": "train"}, r"data\.splits must map"),
        ({"max_examples": -1}, r"data\.max_examples"),
        ({"max_examples": 1.5}, r"data\.max_examples"),
        ({"tfds_name": ""}, r"data\.tfds_name"),
        ({"label_key": "target"}, r"data\.label_key 'target'.*\['image', 'label'\]"),
        ({"image_key": "pixels"}, r"data\.image_key 'pixels'"),
    ],
)
def test_config_errors_name_the_field(fields, match):
    with _mock(4), pytest.raises(ValueError, match=match):
        load_dataset(_config(**fields))


# --- a real array_record dataset -----------------------------------------------------------------


class ArjaxTinyDigits(tfds.core.GeneratorBasedBuilder):
    """12 train / 5 test uint8 8x8x1 images, 3 classes.

    Stored as a Tensor feature: encoding an Image feature (PNG) needs TensorFlow,
    which is not installed; reading decodes both to uint8 arrays alike.
    """

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(12), "test": self._generate_examples(5)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"image": _tiny_image(i), "label": i % 3}


def _tiny_image(i):
    # Pixel (0, 0) holds the example id, so examples can be matched after TFDS's shuffle.
    image = np.full((8, 8, 1), 10 * (i % 3), np.uint8)
    image[0, 0, 0] = i
    image[7, 7, 0] = 255
    image[7, 0, 0] = 0
    return image


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    ArjaxTinyDigits(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return str(data_dir)


def test_real_array_record_split_slices_and_values(tiny_dir):
    ds = load_dataset(
        _config(
            tfds_name="arjax_tiny_digits",
            data_dir=tiny_dir,
            splits={"train": "train[:50%]", "val": "train[50%:]", "test": "test"},
        )
    )
    assert ds.input_shape == (8, 8, 1) and ds.num_classes == 3 and ds.bounds == (0.0, 1.0)
    sizes = {k: len(v["label"]) for k, v in ds.splits.items()}
    assert sizes == {"train": 6, "val": 6, "test": 5}
    ids = {k: np.rint(v["image"][:, 0, 0, 0] * 255).astype(int) for k, v in ds.splits.items()}
    # The two halves of "train" are disjoint and together hold all 12 training examples.
    assert sorted(np.concatenate([ids["train"], ids["val"]]).tolist()) == list(range(12))
    assert sorted(ids["test"].tolist()) == list(range(5))
    for split in ("train", "val", "test"):
        images, labels = ds.splits[split]["image"], ds.splits[split]["label"]
        np.testing.assert_array_equal(labels, ids[split] % 3)
        np.testing.assert_allclose(
            images, np.stack([_tiny_image(i) for i in ids[split]]) / np.float32(255), rtol=1e-7
        )
        assert images.max() == 1.0 and images.min() == 0.0
    capped = load_dataset(_config(tfds_name="arjax_tiny_digits", data_dir=tiny_dir, max_examples=4))
    assert {k: len(v["label"]) for k, v in capped.splits.items()} == {"train": 4, "test": 4}


def test_data_errors_say_what_to_prepare(tiny_dir, tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"data\.data_dir '.*nowhere' does not exist"):
        load_dataset(_config(data_dir=missing))
    with pytest.raises(ValueError, match=r"unknown data\.tfds_name 'no_such_dataset_x'"):
        load_dataset(_config(tfds_name="no_such_dataset_x", data_dir=tiny_dir))
    # An existing directory without the dataset: named, and told to prepare it locally.
    with pytest.raises(
        ValueError,
        match=r"'fashion_mnist' is not prepared .* data\.data_dir=.*prepared locally",
    ):
        load_dataset(_config(data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=r"data\.splits\.val='validation' is not a valid split"):
        load_dataset(
            _config(
                tfds_name="arjax_tiny_digits",
                data_dir=tiny_dir,
                splits={"train": "train", "val": "validation"},
            )
        )
