import csv
import importlib.util
import os
import pickle

import grain
import numpy as np
import pytest
from absl import flags
from PIL import Image

from arjax.data import (
    CHESTXRAY14_CLASSES,
    ImageFileSource,
    decode_image,
    eval_batches,
    load_dataset,
    train_dataset,
)
from arjax.data.manifest import patient_split

HAS_PYDICOM = importlib.util.find_spec("pydicom") is not None


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _gray(value, shape=(32, 32)):
    rng = np.random.default_rng(value)
    return np.clip(value + rng.integers(-20, 20, shape), 0, 255).astype(np.uint8)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


# --- ChestX-ray14 miniature ----------------------------------------------------------------------

# name, findings, patient; the first six are in train_val_list.txt, the rest in test_list.txt.
CXR = [
    ("00000001_000.png", "Cardiomegaly", 1),
    ("00000001_001.png", "Cardiomegaly|Emphysema", 1),
    ("00000002_000.png", "No Finding", 2),
    ("00000003_000.png", "Hernia", 3),
    ("00000003_001.png", "Infiltration|Mass|Nodule", 3),
    ("00000004_000.png", "No Finding", 4),
    ("00000005_000.png", "Effusion", 5),
    ("00000006_000.png", "Atelectasis|Pneumothorax", 6),
    ("00000006_001.png", "No Finding", 6),
]
BOXES = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
BOXES += "00000005_000.png,Effusion,512,256,128,64,,,\n"
BOXES += "00000006_000.png,Infiltrate,0,0,1024,1024,,,\n"
BOXES += "00000006_000.png,Atelectasis,960,992,64,32,,,\n"


def _chestxray(root, rows=CXR, train_val=6, boxes=BOXES):
    os.makedirs(root, exist_ok=True)
    header = (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
    )
    lines = [f"{n},{f},0,{p},58,M,PA,2682,2749,0.143,0.143\n" for n, f, p in rows]
    _write(os.path.join(root, "Data_Entry_2017.csv"), header + "".join(lines))
    _write(os.path.join(root, "BBox_List_2017.csv"), boxes)
    names = [n for n, _, _ in rows]
    _write(os.path.join(root, "train_val_list.txt"), "\n".join(names[:train_val]) + "\n")
    _write(os.path.join(root, "test_list.txt"), "\n".join(names[train_val:]) + "\n")
    for i, name in enumerate(names):
        # Both published layouts: images/ and images_00k/images/ (Kaggle).
        folder = "images" if i % 2 else "images_001/images"
        _png(os.path.join(root, folder, name), _gray(20 * i + 30))
    # One RGBA image, as in the real set.
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 128
    _png(os.path.join(root, "images", CXR[2][0]), rgba)


def _cxr_config(root, **kw):
    return dict(name="chestxray14", root=str(root), image_size=16, **kw)


def test_chestxray14_labels_splits_boxes_and_rgba(tmp_path):
    _chestxray(tmp_path)
    ds = load_dataset(_cxr_config(tmp_path))
    assert ds.num_classes == 14 and ds.input_shape == (16, 16, 1) and ds.bounds == (0.0, 1.0)
    splits = ds.splits
    names = {s: [os.path.basename(p) for p in src.paths] for s, src in splits.items()}
    # The official test list, in its order; train + val = the train_val list.
    assert names["test"] == [n for n, _, _ in CXR[6:]]
    assert sorted(names["train"] + names["val"]) == [n for n, _, _ in CXR[:6]]
    patient = {n: p for n, _, p in CXR}
    assert not {patient[n] for n in names["train"]} & {patient[n] for n in names["val"]}
    assert len(names["val"]) >= 1
    # Multi-hot exactly: pipe-separated, "No Finding" all zeros.
    findings = {n: f for n, f, _ in CXR}
    for split, src in splits.items():
        for name, row in zip(names[split], src.labels, strict=True):
            expected = np.zeros(14, np.float32)
            for f in findings[name].split("|"):
                if f != "No Finding":
                    expected[CHESTXRAY14_CLASSES.index(f)] = 1
            np.testing.assert_array_equal(row, expected)
    assert splits["test"].labels.dtype == np.float32
    assert CHESTXRAY14_CLASSES.index("Infiltration") == 3
    # Boxes: 1024 -> 16 is a factor 1/64, exactly; "Infiltrate" means Infiltration.
    assert splits["test"].boxes == {
        0: [(2, 8.0, 4.0, 2.0, 1.0)],
        1: [(3, 0.0, 0.0, 16.0, 16.0), (0, 15.0, 15.5, 1.0, 0.5)],
    }
    assert splits["train"].boxes == {} and splits["val"].boxes == {}
    # Stable indices and a second build gives the same splits.
    batch = splits["test"].gather(np.array([2, 0]))
    np.testing.assert_array_equal(batch["index"], [2, 0])
    assert batch["image"].shape == (2, 16, 16, 1) and batch["image"].dtype == np.float32
    again = load_dataset(_cxr_config(tmp_path))
    assert all(again.splits[s].paths == splits[s].paths for s in splits)
    # RGBA -> grayscale luma (alpha ignored), not the alpha channel or the red one.
    rgba_path = os.path.join(tmp_path, "images", CXR[2][0])
    gray = decode_image(rgba_path, 32, 1)
    expected = round((200 * 299 + 100 * 587 + 50 * 114) / 1000)
    assert gray.shape == (32, 32, 1) and np.all(np.abs(gray.astype(int) - expected) <= 1)


def test_chestxray14_max_examples_and_val_fraction(tmp_path):
    _chestxray(tmp_path)
    ds = load_dataset(_cxr_config(tmp_path, max_examples=2, val_fraction=0.5, seed=3))
    assert {s: len(v) for s, v in ds.splits.items()} == {"train": 2, "val": 2, "test": 2}
    full = load_dataset(_cxr_config(tmp_path, val_fraction=0.5, seed=3))
    assert 3 <= len(full.splits["val"]) <= 4  # whole patients: >= half of 6 images


@pytest.mark.parametrize(
    "edit, match",
    [
        (dict(rows=[*CXR[:3], ("00000003_000.png", "Heart", 3), *CXR[4:]]),
         r"Data_Entry_2017.csv:5: unknown label 'Heart'"),
        (dict(boxes=BOXES + "00000005_000.png,Mass,1000,10,100,10,,,\n"),
         r"BBox_List_2017.csv:5: box .* outside the 1024x1024 image"),
        (dict(boxes=BOXES + "00000005_000.png,Lump,1,1,10,10,,,\n"),
         r"BBox_List_2017.csv:5: unknown label 'Lump'"),
        # Patient 4 is also in the test list: leakage between the official lists.
        (dict(rows=[*CXR[:6], ("00000004_001.png", "Mass", 4), *CXR[6:]]),
         r"patient '4' is in both the '(train|val)' and 'test' splits"),
    ],
)  # fmt: skip
def test_chestxray14_errors_name_file_and_line(tmp_path, edit, match):
    _chestxray(tmp_path, **edit)
    with pytest.raises(ValueError, match=match):
        load_dataset(_cxr_config(tmp_path))


def test_chestxray14_missing_image_and_list_entry(tmp_path):
    _chestxray(tmp_path)
    os.remove(os.path.join(tmp_path, "images", CXR[3][0]))
    with pytest.raises(FileNotFoundError, match=r"Data_Entry_2017.csv:5: image file not found"):
        load_dataset(_cxr_config(tmp_path))
    _write(
        os.path.join(tmp_path, "test_list.txt"), "\n".join(n for n, _, _ in CXR[6:]) + "\nx.png\n"
    )
    with pytest.raises(ValueError, match=r"test_list.txt:4: x.png is not in"):
        load_dataset(_cxr_config(tmp_path))


# --- COVID-CT miniature --------------------------------------------------------------------------


def _covid(root, per_class=(6, 7)):
    for label, (folder, count) in enumerate(zip(("non-COVID", "COVID"), per_class, strict=True)):
        for i in range(count):
            _png(os.path.join(root, folder, f"img{i}.png"), _gray(40 * label + i, (20 + i, 30)))


def test_covid_ct_split_counts_labels_and_seed(tmp_path):
    _covid(tmp_path)
    cfg = dict(name="covid_ct", root=str(tmp_path), image_size=12, channels=3, test_per_class=2,
               val_per_class=1)  # fmt: skip
    ds = load_dataset(cfg)
    assert ds.input_shape == (12, 12, 3) and ds.num_classes == 2
    counts = {s: np.bincount(v.labels, minlength=2).tolist() for s, v in ds.splits.items()}
    assert counts == {"train": [3, 4], "val": [1, 1], "test": [2, 2]}
    for src in ds.splits.values():  # label follows the folder
        folders = [os.path.basename(os.path.dirname(p)) for p in src.paths]
        np.testing.assert_array_equal(src.labels, [f == "COVID" for f in folders])
    assert ds.splits["train"].gather(np.arange(2))["image"].shape == (2, 12, 12, 3)
    all_paths = sorted(p for v in ds.splits.values() for p in v.paths)
    assert len(all_paths) == len(set(all_paths)) == 13
    same = load_dataset(cfg)
    assert all(same.splits[s].paths == ds.splits[s].paths for s in ds.splits)
    capped = load_dataset({**cfg, "max_examples": 2})  # the classes alternate within a split
    assert all(v.labels.tolist() == [0, 1] for v in capped.splits.values())
    others = [load_dataset({**cfg, "seed": s}).splits["test"].paths for s in (1, 2, 3)]
    assert any(o != ds.splits["test"].paths for o in others)
    with pytest.raises(ValueError, match=r"/non-COVID holds 6 images; need more than .* = 7"):
        load_dataset({**cfg, "test_per_class": 5, "val_per_class": 2})


# --- CSV manifest --------------------------------------------------------------------------------


def _manifest(root, rows, header="path,label,patient_id,fold", boxes=None):
    for row in rows:
        path = os.path.join(root, row.split(",")[0])
        if path.endswith(".png") and not os.path.exists(path):
            _png(path, _gray(len(row) * 7, (40, 20)))  # width 20, height 40
    _write(os.path.join(root, "m.csv"), header + "\n" + "\n".join(rows) + "\n")
    if boxes is not None:
        _write(os.path.join(root, "b.csv"), "path,class,x,y,w,h\n" + "\n".join(boxes) + "\n")
    return os.path.join(root, "m.csv")


ROWS = [
    f"img/{i}.png,{'benign' if i % 3 else 'malignant'},P{i // 2},{(i // 2) % 5}" for i in range(20)
]


def test_csv_manifest_folds_label_names_and_boxes(tmp_path):
    manifest = _manifest(tmp_path, ROWS, boxes=["img/3.png,malignant,5,10,10,20"])
    cfg = dict(name="csv_manifest", manifest=manifest, image_size=10, test_fold=0, val_fold=1,
               boxes="b.csv")  # fmt: skip
    ds = load_dataset(cfg)
    folds = {s: sorted({int(os.path.basename(p)[:-4]) // 2 % 5 for p in v.paths})
             for s, v in ds.splits.items()}  # fmt: skip
    assert folds == {"train": [2, 3, 4], "val": [1], "test": [0]}
    assert ds.num_classes == 2 and ds.splits["train"].class_names == ("benign", "malignant")
    for src in ds.splits.values():
        index = [int(os.path.basename(p)[:-4]) for p in src.paths]
        np.testing.assert_array_equal(src.labels, [int(i % 3 == 0) for i in index])
        assert src.labels.dtype == np.int32
    # img/3.png (fold 1 -> val) box in a 20x40 (w x h) image, rescaled to 10x10.
    val = ds.splits["val"]
    position = [os.path.basename(p) for p in val.paths].index("3.png")
    assert val.boxes == {position: [(1, 2.5, 2.5, 5.0, 5.0)]}
    named = load_dataset({**cfg, "label_names": ("malignant", "benign")})
    np.testing.assert_array_equal(named.splits["test"].labels, 1 - ds.splits["test"].labels)
    # Integer labels pass through; no fold column -> seeded patient-grouped fractions.
    ints = [f"img/{i}.png,{i % 3},P{i // 4}" for i in range(20)]
    manifest = _manifest(tmp_path, ints, "path,label,patient_id")
    ds = load_dataset(dict(name="csv_manifest", manifest=manifest, image_size=8,
                           test_fraction=0.2, val_fraction=0.2, seed=1))  # fmt: skip
    assert ds.num_classes == 3
    groups = {
        s: {int(os.path.basename(p)[:-4]) // 4 for p in v.paths} for s, v in ds.splits.items()
    }
    assert sum(map(len, groups.values())) == 5 and len(set.union(*groups.values())) == 5
    assert {s: len(v) for s, v in ds.splits.items()} == {"train": 12, "val": 4, "test": 4}


def test_csv_manifest_multi_label_and_patient_split_property():
    rng = np.random.default_rng(0)
    patients = rng.integers(0, 40, 300).astype(str)
    parts = patient_split(patients, {"test": 0.2, "val": 0.1}, seed=5)
    sets = {s: set(patients[r]) for s, r in parts.items()}
    assert not (
        sets["train"] & sets["test"] or sets["train"] & sets["val"] or sets["val"] & sets["test"]
    )
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(300))
    assert 0.2 <= len(parts["test"]) / 300 < 0.3 and 0.1 <= len(parts["val"]) / 300 < 0.2


@pytest.mark.parametrize(
    "rows, boxes, match",
    [
        ([*ROWS[:3], "img/3.png,bogus,P1,1", *ROWS[4:]], None,
         r"m.csv:5: unknown label 'bogus'; valid labels: benign, malignant"),
        ([*ROWS[:6], "img/6.png,benign,P0,2", *ROWS[7:]], None,
         r"patient 'P0' is in both the 'train' and 'test' splits"),
        (ROWS, ["img/3.png,benign,1,1,2,2", "img/4.png,benign,15,1,10,2"],
         r"b.csv:3: box \(x=15.0, y=1.0, w=10.0, h=2.0\) is outside the 20x40 image"),
        (ROWS, ["img/3.png,cyst,1,1,2,2"], r"b.csv:2: unknown label 'cyst'"),
        (ROWS, ["img/99.png,benign,1,1,2,2"], r"b.csv:2: 'img/99.png' is not in"),
    ],
)  # fmt: skip
def test_csv_manifest_errors_name_file_and_line(tmp_path, rows, boxes, match):
    manifest = _manifest(tmp_path, rows, boxes=boxes)
    cfg = dict(name="csv_manifest", manifest=manifest, image_size=8, test_fold=0, val_fold=1,
               label_names=("benign", "malignant"))  # fmt: skip
    with pytest.raises(ValueError, match=match):
        load_dataset({**cfg, "boxes": "b.csv"} if boxes else cfg)


def test_csv_manifest_missing_unreadable_and_dicom(tmp_path):
    manifest = _manifest(tmp_path, ROWS)
    cfg = dict(name="csv_manifest", manifest=manifest, image_size=8, test_fold=0, val_fold=1)
    os.remove(os.path.join(tmp_path, "img", "7.png"))
    with pytest.raises(FileNotFoundError, match=r"m.csv:9: image file not found: .*img/7.png"):
        load_dataset(cfg)
    _write(os.path.join(tmp_path, "img", "7.png"), "not a png")
    # Checked at load time, before any compute: the manifest line and the file.
    with pytest.raises(ValueError, match=r"m.csv:9: .*img/7.png: not a PNG, JPEG or DICOM"):
        load_dataset(cfg)
    ds = load_dataset({**cfg, "verify_images": False})  # unchecked: named when it is read
    src = ds.splits["train"]
    with pytest.raises(ValueError, match=r"unreadable image .*img/7.png"):
        src.gather(np.arange(len(src)))
    if not HAS_PYDICOM:
        _write(os.path.join(tmp_path, "img", "20.dcm"), "")
        _manifest(tmp_path, [*ROWS, "img/20.dcm,benign,P30,3"])
        with pytest.raises(
            ValueError, match=r"m.csv:22: .*20.dcm: .*pip install 'arjax\[medical\]'"
        ):
            load_dataset(cfg)


@pytest.mark.skipif(not HAS_PYDICOM, reason="pydicom not installed (extra arjax[medical])")
def test_csv_manifest_reads_dicom(tmp_path):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = (np.arange(16 * 24).reshape(16, 24) * 10).astype(np.uint16)  # 12-bit range
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 16, 24, 1
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored = "MONOCHROME2", 16, 12
    ds.HighBit, ds.PixelRepresentation, ds.PixelData = 11, 0, pixels.tobytes()
    os.makedirs(os.path.join(tmp_path, "img"))
    try:  # pydicom >= 3
        ds.save_as(os.path.join(tmp_path, "img", "a.dcm"), enforce_file_format=True)
    except TypeError:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(os.path.join(tmp_path, "img", "a.dcm"), write_like_original=False)
    assert pydicom.dcmread(os.path.join(tmp_path, "img", "a.dcm")).pixel_array.shape == (16, 24)
    rows = [f"img/{'a.dcm' if i == 0 else f'{i}.png'},x,P{i},{i % 5}" for i in range(10)]
    manifest = _manifest(tmp_path, rows, boxes=["img/a.dcm,x,12,8,12,8"])
    cfg = dict(name="csv_manifest", manifest=manifest, image_size=24, label_names=("x", "y"),
               test_fold=0, val_fold=1, boxes="b.csv")  # fmt: skip
    test = load_dataset(cfg).splits["test"]
    assert test.boxes == {0: [(0, 12.0, 12.0, 12.0, 12.0)]}  # 24x16 -> 24x24
    image = test.gather(np.array([0]))["image"][0, ..., 0]
    assert image.min() == 0.0 and image.max() == 1.0  # min-max scaled
    assert np.all(np.diff(image[:, 12]) >= 0) and np.all(np.diff(image[12, :]) >= 0)


# --- file source: cache, pickling, grain workers -------------------------------------------------


def test_cache_matches_direct_decoding_and_is_used(tmp_path):
    paths = []
    for i in range(6):
        paths.append(os.path.join(tmp_path, f"{i}.png"))
        _png(paths[-1], _gray(30 * i + 10, (30 + i, 26)))
    wide = np.linspace(0, 65535, 26 * 26).reshape(26, 26).astype(np.uint16)
    _png(paths[5], wide)
    assert Image.open(paths[5]).mode.startswith("I")  # a 16-bit PNG
    labels = np.arange(6) % 2
    direct = ImageFileSource(paths, labels, image_size=16)
    cached = ImageFileSource(paths, labels, image_size=16, cache_dir=str(tmp_path / "cache"))
    order = np.array([4, 1, 5, 1, 0])
    want = direct.gather(order)
    for _ in range(2):  # fills the cache, then reads it
        got = cached.gather(order)
        for key in ("image", "label", "index"):
            np.testing.assert_array_equal(got[key], want[key])
    full = direct.gather(np.arange(6))["image"]
    np.testing.assert_array_equal(cached.gather(np.arange(6))["image"], full)
    corner = decode_image(paths[5], 26, 1)[..., 0]  # 16 bits scaled to 8, not clipped
    np.testing.assert_array_equal(corner, np.rint(wide / 65535 * 255).astype(np.uint8))
    # A new source (another process) reads the filled cache, even with an image gone.
    os.remove(paths[4])
    with pytest.raises(FileNotFoundError, match="4.png"):
        direct.gather(np.array([4]))
    reopened = pickle.loads(pickle.dumps(cached))
    np.testing.assert_array_equal(reopened.gather(np.array([4]))["image"], want["image"][:1])
    assert len(os.listdir(tmp_path / "cache")) == 1
    threaded = ImageFileSource(paths[:4], labels[:4], image_size=16, decode_threads=3)
    np.testing.assert_array_equal(threaded.gather(np.arange(4))["image"], full[:4])


def test_synthetic_lesions_files_boxes_labels_and_pipeline(tmp_path):
    root = str(tmp_path / "lesions")
    cfg = dict(name="synthetic_lesions", root=root, num_images=60, image_size=32, num_classes=3)
    ds = load_dataset(cfg)
    assert ds.name == "synthetic_lesions" and ds.input_shape == (32, 32, 1)
    assert {s: len(v) for s, v in ds.splits.items()} == {"train": 36, "val": 12, "test": 12}
    assert sorted(os.listdir(root)) == ["boxes.csv", "images", "manifest.csv", "params.json"]
    assert len(os.listdir(os.path.join(root, "images"))) == 60
    with open(os.path.join(root, "boxes.csv")) as f:
        recorded = {
            (r["path"], r["class"], *(float(r[c]) for c in "xywh")) for r in csv.DictReader(f)
        }
    names = ("normal", "disk", "ring")
    read = set()
    all_labels = []
    for src in ds.splits.values():
        all_labels += src.labels.tolist()
        images = src.gather(np.arange(len(src)))["image"][..., 0]
        for i, path in enumerate(src.paths):
            rel = os.path.relpath(path, root)
            assert len(src.boxes.get(i, [])) == (src.labels[i] > 0)  # one lesion if positive
            for k, x, y, w, h in src.boxes.get(i, []):
                assert k == src.labels[i]
                read.add((rel, names[k], x, y, w, h))
                inside = np.zeros((32, 32), bool)
                inside[int(y) : int(y + h), int(x) : int(x + w)] = True
                assert images[i][inside].mean() > images[i][~inside].mean() + 0.1
    assert read == recorded and len(recorded) == 40
    assert np.bincount(all_labels).tolist() == [20, 20, 20]
    # Balanced-ish multi-label variant; the same root with other parameters is refused.
    multi = load_dataset({**cfg, "root": str(tmp_path / "multi"), "multi_label": True})
    assert 0.3 < multi.splits["train"].labels.mean() < 0.7
    with pytest.raises(ValueError, match=r"params.json: the folder holds a synthetic set"):
        load_dataset({**cfg, "num_images": 80})
    # Through grain worker processes, as the training loop reads file-backed splits.
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags
        flags.FLAGS(["pytest"], known_only=True)
    train = ds.splits["train"]
    mapped = train_dataset(train, batch_size=6, seed=0, num_epochs=1)
    stream = mapped.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=1))
    batches = list(stream)
    assert len(batches) == 6
    for step, batch in enumerate(batches):
        np.testing.assert_array_equal(batch["image"], mapped[step]["image"])
        np.testing.assert_array_equal(batch["label"], train.labels[batch["index"]])
    evaluated = list(eval_batches(ds.splits["test"], batch_size=5))
    assert sum(b["mask"].sum() for b in evaluated) == 12
