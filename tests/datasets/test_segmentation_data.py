"""Segmentation data: the synthetic set round-trips through PNG files, the folder and MSD
NIfTI readers slice and check their inputs, and bad files fail naming the file."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from arjax import data
from arjax.data import nifti
from arjax.data.segmentation import make_pair


def _write_pair(folder, stem, image, mask):
    for sub, array in (("images", image), ("masks", mask)):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        Image.fromarray(array).save(os.path.join(folder, sub, f"{stem}.png"))


def test_synthetic_set_is_written_as_png_pairs_and_read_back(tmp_path):
    cfg = dict(name="synthetic_segmentation", root=str(tmp_path / "syn"),
               sizes=dict(train=6, test=3), image_size=16, num_classes=3, seed=1)  # fmt: skip
    ds = data.load_dataset(cfg)
    assert ds.task == "segmentation" and ds.num_classes == 3 and ds.input_shape == (16, 16, 1)
    train = ds.splits["train"]
    assert train["image"].shape == (6, 16, 16, 1) and train["label"].shape == (6, 16, 16)
    # exactly what the generator drew, decoded from the written files
    rng = np.random.default_rng(1)
    image, mask = make_pair(rng, 16, 3, 2)
    np.testing.assert_array_equal(train["label"][0], mask)
    np.testing.assert_allclose(train["image"][0, ..., 0], image / 255.0, atol=1e-6)
    files = sorted(os.listdir(tmp_path / "syn" / "train" / "masks"))
    assert files == [f"{i:05d}.png" for i in range(6)]
    # every image holds a lesion, and lesions are brighter than the background
    assert np.all(train["label"].reshape(6, -1).max(1) >= 1)
    fg = train["image"][..., 0][train["label"] > 0].mean()
    assert fg > train["image"][..., 0][train["label"] == 0].mean() + 0.15
    with pytest.raises(ValueError, match="params.json"):
        data.load_dataset({**cfg, "seed": 2})


def test_folder_reader_names_the_bad_file(tmp_path):
    ok = np.zeros((8, 8), np.uint8)
    root = tmp_path / "set"
    _write_pair(str(root / "train"), "a", ok, ok)
    base = dict(name="segmentation_folder", root=str(root))
    assert data.load_dataset(base).splits["train"]["label"].shape == (1, 8, 8)
    bad = ok.copy()
    bad[0, 0] = 3
    _write_pair(str(root / "train"), "b", ok, bad)
    with pytest.raises(ValueError, match=r"b\.png: mask values \[3\] are outside the class list"):
        data.load_dataset(base)
    _write_pair(str(root / "train"), "b", ok, np.zeros((8, 6), np.uint8))
    with pytest.raises(ValueError, match=r"b\.png: mask shape \(8, 6\) differs from its image"):
        data.load_dataset(base)
    os.remove(root / "train" / "masks" / "b.png")
    with pytest.raises(ValueError, match=r"images/b\.png: no mask .*masks/b\.png"):
        data.load_dataset(base)
    with pytest.raises(FileNotFoundError, match="no train/ split folder"):
        data.load_dataset({**base, "root": str(tmp_path)})


def _nifti_task(root, shapes, labels=("background", "structure")):
    nib = pytest.importorskip("nibabel")
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump({"labels": {str(i): n for i, n in enumerate(labels)}}, f)
    rng = np.random.default_rng(0)
    for i, (image_shape, label_shape) in enumerate(shapes):
        volume = rng.normal(size=image_shape).astype(np.float32)
        mask = np.zeros(label_shape, np.uint8)
        mask[2:4, 2:5, :] = 1
        nib.save(nib.Nifti1Image(volume, np.eye(4)), os.path.join(root, "imagesTr", f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(mask, np.eye(4)), os.path.join(root, "labelsTr", f"c{i}.nii.gz"))


def test_msd_volumes_are_sliced_to_2d_and_checked(tmp_path):
    root = str(tmp_path / "Task04")
    _nifti_task(root, [((6, 7, 3), (6, 7, 3))] * 3 + [((6, 7, 2, 2), (6, 7, 2))])
    cfg = dict(name="msd", root=root, patch_size=(8, 8), split_cases=(2, 1, 1), seed=0)
    ds = data.load_dataset(cfg)
    assert ds.task == "segmentation" and ds.num_classes == 2 and ds.input_shape == (8, 8, 1)
    sizes = {s: len(a["label"]) for s, a in ds.splits.items()}
    assert sum(sizes.values()) == 3 * 3 + 2  # one example per slice along the last axis
    x, y = ds.splits["train"]["image"], ds.splits["train"]["label"]
    assert x.min() >= 0.0 and x.max() <= 1.0 and y.dtype == np.int32
    # 6x7 slices zero-padded to 8x8, centred: the 2:4 x 2:5 block moves by (1, 0)
    assert y[0, 3:5, 2:5].all() and y[0].sum() == 6
    _nifti_task(root, [((6, 7, 3), (6, 7, 4))])
    with pytest.raises(ValueError, match=r"c0\.nii\.gz: label volume shape \(6, 7, 4\) differs"):
        data.load_dataset(cfg)
    other = str(tmp_path / "bad_labels")
    _nifti_task(other, [((6, 7, 3), (6, 7, 3))] * 2, labels=("background",))
    with pytest.raises(ValueError, match=r"mask values \[1\] are outside the class list"):
        data.load_dataset({**cfg, "root": other, "split_cases": (2, 0, 0)})
    os.remove(os.path.join(other, "labelsTr", "c1.nii.gz"))
    with pytest.raises(ValueError, match=r"c1\.nii\.gz: no label volume"):
        nifti.list_cases(other)
    with pytest.raises(ValueError, match="data.patch_size"):
        data.load_dataset({**cfg, "patch_size": (8,)})
