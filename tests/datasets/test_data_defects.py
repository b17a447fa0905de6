"""Data defects found at load time, before any compute: labels, duplicates, images, DICOM."""

import logging
import os

import numpy as np
import pytest
from PIL import Image

from arjax.config_lib import ConfigError
from arjax.data import decode_image, load_dataset
from arjax.data.checks import check_model_outputs, check_num_classes, inspect_image
from arjax.data.images import is_dicom

pydicom = pytest.importorskip("pydicom")  # in the [dev] extra: these tests run in CI

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _gray(i, shape=(8, 8)):
    return np.full(shape, 10 * i % 250, np.uint8)


def _manifest(root, labels, paths=None, header="path,label"):
    """m.csv with one row per label; PNGs written for ``img/<i>.png`` rows."""
    paths = paths or [f"img/{i}.png" for i in range(len(labels))]
    for i, path in enumerate(paths):
        full = os.path.join(root, path)
        if path.endswith(".png") and not os.path.exists(full):
            _png(full, _gray(i))
    rows = [f"{p},{label}" for p, label in zip(paths, labels, strict=True)]
    with open(os.path.join(root, "m.csv"), "w") as f:
        f.write(header + "\n" + "\n".join(rows) + "\n")
    return os.path.join(root, "m.csv")


def _load(manifest, **kw):
    cfg = dict(name="csv_manifest", manifest=manifest, image_size=8, test_fraction=0.0,
               val_fraction=0.0, **kw)  # fmt: skip
    return load_dataset(cfg)


# --- 1. mistyped labels --------------------------------------------------------------------------

DISK = ["disk", "normal"] * 6  # 12 rows, lines 2..13


@pytest.mark.parametrize(
    "labels, kw, match",
    [
        ([*DISK, "dsik"], {}, r"m.csv:14: label 'dsik' \(1 row\(s\)\) looks like a typo of 'disk'"),
        (DISK + ["Disk"] * 6, {},
         r"m.csv:14: label 'Disk' .* differs only in case or spacing from 'disk'"),
        ([*DISK, "NaN"], {},
         r"m.csv:14: label 'NaN' is a missing value; .*labels found: NaN, disk"),
        ([*DISK, "7"], {}, r"m.csv:14: label '7' mixes integer and named labels"),
        (["0", "1"] * 6 + ["7"], {}, r"m.csv:14: label '7' makes 8 classes 0..7, but classes "
                                     r"2, 3, 4, 5, 6 have no row"),
        # The class count the config expects.
        (["0", "1"] * 6 + ["7"], dict(num_classes=2),
         r"m.csv:14: unknown label '7'; valid labels: 0, 1"),
        ([*DISK, "ring"], dict(num_classes=2),
         r"m.csv: the labels give 3 classes \(disk, normal, ring\), but data.num_classes "
         r"expects 2"),
        # With label_names the labels are checked against them.
        ([*DISK, "dsik"], dict(label_names=("normal", "disk")),
         r"m.csv:14: unknown label 'dsik'; valid labels: normal, disk"),
    ],
)  # fmt: skip
def test_mistyped_labels_fail_at_load(tmp_path, labels, kw, match):
    with pytest.raises(ConfigError, match=match):
        _load(_manifest(tmp_path, labels), **kw)


def test_plausible_labels_still_load(tmp_path):
    # Names differing in digits only, balanced or not, and integer labels with num_classes.
    ds = _load(_manifest(tmp_path, ["class1"] * 10 + ["class2"]))
    assert ds.splits["train"].class_names == ("class1", "class2")
    ds = _load(_manifest(tmp_path, ["0", "2"] * 3), num_classes=3)
    assert ds.num_classes == 3 and sorted(set(ds.splits["train"].labels.tolist())) == [0, 2]


def test_check_num_classes_and_model_outputs():
    check_num_classes(3, None, "x")
    check_num_classes(3, 3, "x")
    with pytest.raises(ConfigError, match=r"^x: the labels give 3 classes \(a, b, c\), but "
                                          r"model.num_outputs expects 2"):  # fmt: skip
        check_num_classes(3, 2, "x", expected_from="model.num_outputs", classes="abc")
    for num_classes, num_outputs in ((3, 0), (3, 3), (2, 1)):
        check_model_outputs(num_classes, num_outputs, "x")
    with pytest.raises(ConfigError, match=r"model.num_outputs=2, but x has 3 classes; valid: 0"):
        check_model_outputs(3, 2, "x")
    # Any registered dataset: data.num_classes is checked against what the data give.
    with pytest.raises(ConfigError, match=r"data.name='moons': the labels give 2 classes, but "
                                          r"data.num_classes expects 3"):  # fmt: skip
        load_dataset(dict(name="moons", sizes=dict(train=8), noise=0.1, seed=0, num_classes=3))


# --- 2. duplicate manifest paths -----------------------------------------------------------------


@pytest.mark.parametrize(
    "second, match",
    [
        ("img/1.png", r"m.csv:5: .*img/1.png is listed twice \(also at .*m.csv:3, same label\)"),
        ("img/./1.png", r"m.csv:5: .*1.png is listed twice \(also at .*m.csv:3, labels 'normal' "
                        r"and 'disk'\)"),
    ],
)  # fmt: skip
def test_duplicate_paths_name_both_lines(tmp_path, second, match):
    labels = ["disk", "normal", "disk", "normal" if second == "img/1.png" else "disk"]
    paths = ["img/0.png", "img/1.png", "img/2.png", second]
    with pytest.raises(ConfigError, match=match):
        _load(_manifest(tmp_path, labels, paths))


# --- 4. undecodable images found before compute --------------------------------------------------


def _corrupt(root):
    """Writes one bad file of each kind; returns name -> expected reason."""
    png = os.path.join(root, "img", "0.png")
    with open(png, "rb") as f:
        whole = f.read()
    _png(os.path.join(root, "img", "x.jpg"), np.zeros((8, 8, 3), np.uint8))
    with open(os.path.join(root, "img", "x.jpg"), "rb") as f:
        jpeg = f.read()
    nifti = bytearray(352)
    nifti[:4] = (348).to_bytes(4, "little")
    nifti[344:348] = b"n+1\0"
    bad = {
        "cut.png": (whole[: len(whole) - 20], r"truncated PNG"),
        "cut.jpg": (jpeg[: len(jpeg) // 2], r"truncated JPEG"),
        "text.png": (b"not a png", r"not a PNG, JPEG or DICOM image"),
        "empty.png": (b"", r"empty file"),
        "vol.img": (bytes(nifti), r"NIfTI volume"),
    }
    for name, (data, _) in bad.items():
        with open(os.path.join(root, "img", name), "wb") as f:
            f.write(data)
    return {name: reason for name, (_, reason) in bad.items()}


def test_undecodable_images_fail_at_load_with_line_and_count(tmp_path):
    _manifest(tmp_path, DISK)
    for name, reason in _corrupt(tmp_path).items():
        paths = [f"img/{i}.png" for i in range(12)]
        paths[3] = f"img/{name}"  # line 5
        paths[5] = "img/empty.png" if name == "text.png" else "img/text.png"
        manifest = _manifest(tmp_path, DISK, paths)
        with pytest.raises(ConfigError, match=rf"m.csv:5: .*img/{name}: {reason}.* \(2 of 12 "
                                              r"image files fail the check"):  # fmt: skip
            _load(manifest)
    assert inspect_image(os.path.join(tmp_path, "img", "0.png")).kind == "PNG"


def test_conversions_are_counted_in_one_log_line(tmp_path, caplog):
    paths = [f"img/{i}.png" for i in range(6)]
    _png(os.path.join(tmp_path, paths[0]), np.zeros((8, 8, 3), np.uint8))  # RGB
    _png(os.path.join(tmp_path, paths[1]), np.zeros((8, 8, 4), np.uint8))  # RGBA
    _png(os.path.join(tmp_path, paths[2]), np.zeros((8, 8), np.uint16))  # 16-bit
    _png(os.path.join(tmp_path, paths[3]), np.zeros((8, 12), np.uint8))  # non-square
    _png(os.path.join(tmp_path, paths[4]), np.zeros((16, 16), np.uint8))  # resized
    with caplog.at_level(logging.INFO, logger="arjax.data.checks"):
        _load(_manifest(tmp_path, ["a", "b"] * 3, paths))
    (record,) = [r for r in caplog.records if r.name == "arjax.data.checks"]
    assert record.levelno == logging.WARNING
    assert "6 image files decodable (PNG 6)" in record.getMessage()
    for part in ("1 >8-bit -> 8-bit", "1 alpha dropped", "2 colour -> grey",
                 "1 non-square, stretched to 8x8", "1 resized to 8x8"):  # fmt: skip
        assert part in record.getMessage()


# --- 7. DICOM: palette, no suffix, transfer syntaxes without a decoder ---------------------------


def _dicom(path, pixels, syntax=ExplicitVRLittleEndian, **attrs):
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = pixels.shape[:2] if pixels is not None else attrs.pop("shape")
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    if pixels is not None:
        ds.PixelData = pixels.tobytes()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_dicom_palette_colour_is_applied(tmp_path):
    index = np.arange(64, dtype=np.uint8).reshape(8, 8) % 4
    red = np.array([0, 65535, 0, 65535], np.uint16)
    green = np.array([0, 0, 65535, 65535], np.uint16)
    blue = np.array([65535, 0, 0, 0], np.uint16)
    path = os.path.join(tmp_path, "p.dcm")
    _dicom(path, index, PhotometricInterpretation="PALETTE COLOR",
           RedPaletteColorLookupTableDescriptor=[4, 0, 16],
           GreenPaletteColorLookupTableDescriptor=[4, 0, 16],
           BluePaletteColorLookupTableDescriptor=[4, 0, 16],
           RedPaletteColorLookupTableData=red.tobytes(),
           GreenPaletteColorLookupTableData=green.tobytes(),
           BluePaletteColorLookupTableData=blue.tobytes())  # fmt: skip
    rgb = decode_image(path, 8, channels=3)
    want = np.stack([red, green, blue], -1)[index] // 257
    np.testing.assert_array_equal(rgb, want.astype(np.uint8))


def test_dicom_without_suffix_is_recognised(tmp_path):
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    path = os.path.join(tmp_path, "img", "IM0001")
    _dicom(path, pixels)
    assert is_dicom(path) and not is_dicom(os.path.join(tmp_path, "none.png"))
    paths = ["img/IM0001", *(f"img/{i}.png" for i in range(1, 4))]
    ds = _load(_manifest(tmp_path, ["a", "b"] * 2, paths))
    image = ds.splits["train"].gather(np.array([0]))["image"][0, ..., 0]
    assert image[0, 0] == 0.0 and image[-1, -1] == 1.0 and np.all(np.diff(image[:, 0]) > 0)


@pytest.mark.parametrize(
    "syntax, bits, match",
    [
        ("1.2.840.10008.1.2.4.80", 8, r"'JPEG-LS Lossless Image Compression' .* needs a decoder "
                                      r"plugin: .*pylibjpeg"),
        ("1.2.840.10008.1.2.4.51", 12, r".* with 12-bit samples: Pillow decodes 8-bit JPEG only"),
    ],
)  # fmt: skip
def test_dicom_without_a_decoder_fails_at_load(tmp_path, syntax, bits, match):
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder

    decoder = get_decoder(syntax)
    if set(decoder.available_plugins) - {"pillow"}:
        pytest.skip(f"a decoder plugin for {syntax} is installed: {decoder.available_plugins}")
    path = os.path.join(tmp_path, "img", "c.dcm")
    _dicom(path, None, syntax, shape=(8, 8), BitsAllocated=16 if bits > 8 else 8,
           BitsStored=bits, HighBit=bits - 1)  # fmt: skip
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    paths = ["img/c.dcm", *(f"img/{i}.png" for i in range(1, 4))]
    with pytest.raises(ConfigError, match=rf"m.csv:2: .*c.dcm: DICOM transfer syntax {match}"):
        _load(_manifest(tmp_path, ["a", "b"] * 2, paths))
