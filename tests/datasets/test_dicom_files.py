"""The DICOM reader on real scanner files: pydicom's bundled test data (nothing downloaded).

``CT_small.dcm`` (CT, 128 x 128 int16, RescaleSlope 1, RescaleIntercept -1024,
no window), ``MR_small.dcm`` (MR, 64 x 64, window 600 / 1600) in four transfer
syntaxes, ``rtdose.dcm`` (15 frames) and ``SC_rgb_rle_2frame.dcm`` (2 RGB
frames). MONOCHROME1 and other rescales are the same real pixels with the
header tag changed. The expected images are computed here from the raw stored
values with DICOM's formulas (PS3.3 C.11.1 modality rescale, C.11.2.1.2.1
linear window), independently of pydicom's look-up-table helpers.
"""

import numpy as np
import pytest

from arjax.config_lib import ConfigError
from arjax.data import decode_image
from arjax.data.checks import ImageProblem, inspect_image, verify_images

pydicom = pytest.importorskip("pydicom")  # in the [dev] extra: these run in CI
from pydicom.data import get_testdata_file  # noqa: E402

# Only files the pydicom wheel bundles (get_testdata_file downloads the others; never here).
CT, MR = "CT_small.dcm", "MR_small.dcm"
MR_SYNTAXES = ("MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm")


def _bundled(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with pydicom {pydicom.__version__}"
    return path


def _rewritten(name: str, tmp_path, **tags) -> str:
    """A bundled file with some header tags changed (its pixels untouched)."""
    ds = pydicom.dcmread(_bundled(name))
    for tag, value in tags.items():
        if value is None:
            delattr(ds, tag)
        else:
            setattr(ds, tag, value)
    out = str(tmp_path / f"{len(tags)}_{name}")
    ds.save_as(out)
    return out


def _raw(name: str) -> np.ndarray:
    return pydicom.dcmread(_bundled(name)).pixel_array.astype(np.float64)


def _window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, output range [0, 1]."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _as_uint8(x: np.ndarray) -> np.ndarray:
    """Min-max scaling to uint8, as ``decode_image`` documents it."""
    x = (x - x.min()) / (x.max() - x.min())
    return np.rint(255 * x).astype(np.uint8)


def _decode(path: str, size: int, channels: int = 1) -> np.ndarray:
    return decode_image(path, size, channels)[..., 0].astype(np.int16)


def _assert_within_one_level(got, want):
    assert got.shape == want.shape
    assert np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= 1


def test_ct_hounsfield_rescale_is_applied_before_the_window(tmp_path):
    raw = _raw(CT)
    assert raw.shape == (128, 128) and raw.min() >= 0  # stored values, not yet HU
    # no window: a positive-slope rescale does not change a min-max scaled image
    _assert_within_one_level(_decode(_bundled(CT), 128), _as_uint8(raw))
    # a soft-tissue window (centre 40 HU, width 400) is in HU: the intercept must come first
    windowed = _rewritten(CT, tmp_path, WindowCenter=40, WindowWidth=400)
    want = _as_uint8(_window(raw * 1.0 - 1024.0, 40, 400))
    got = _decode(windowed, 128)
    _assert_within_one_level(got, want)
    assert np.abs(got - _as_uint8(_window(raw, 40, 400))).max() > 100  # intercept ignored


def test_ct_negative_rescale_slope_inverts(tmp_path):
    flipped = _rewritten(CT, tmp_path, RescaleSlope=-2, RescaleIntercept=100)
    _assert_within_one_level(_decode(flipped, 128), 255 - _as_uint8(_raw(CT)))


def test_mr_window_is_applied():
    raw = _raw(MR)
    got = _decode(_bundled(MR), 64)
    _assert_within_one_level(got, _as_uint8(_window(raw, 600, 1600)))
    assert 0 < (got == 255).mean() < 0.5  # the window clips some, not all, bright pixels


@pytest.mark.parametrize("name", MR_SYNTAXES)
def test_mr_transfer_syntaxes_decode_alike(name):
    syntax = pydicom.dcmread(_bundled(name), stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert syntax != pydicom.dcmread(_bundled(MR)).file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(decode_image(_bundled(name), 32), decode_image(_bundled(MR), 32))


def test_monochrome1_is_inverted(tmp_path):
    mono1 = _rewritten(MR, tmp_path, PhotometricInterpretation="MONOCHROME1")
    _assert_within_one_level(_decode(mono1, 64), 255 - _decode(_bundled(MR), 64))
    assert inspect_image(mono1).mode == "MONOCHROME1"


def test_resized_and_three_channel_reads():
    rgb = decode_image(_bundled(CT), 32, channels=3)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])  # grey replicated
    full = decode_image(_bundled(CT), 128)[..., 0].astype(np.float64)
    blocks = full.reshape(32, 4, 32, 4).mean(axis=(1, 3))  # the same image, 4x smaller
    assert abs(rgb[..., 0].mean() - full.mean()) < 2  # uint8 levels
    assert np.corrcoef(rgb[..., 0].ravel(), blocks.ravel())[0, 1] > 0.99
    info = inspect_image(_bundled(CT))
    assert (info.kind, info.width, info.height, info.bits) == ("DICOM", 128, 128, 16)


@pytest.mark.parametrize("name, frames", [("rtdose.dcm", 15), ("SC_rgb_rle_2frame.dcm", 2)])
def test_multi_frame_is_refused_with_its_frame_count(name, frames):
    path = _bundled(name)
    with pytest.raises(ValueError, match=rf"{name}: .*multi-frame DICOM \({frames} frames\)"):
        decode_image(path, 16)
    with pytest.raises(ImageProblem, match=rf"multi-frame DICOM \({frames} frames\)"):
        inspect_image(path)
    # at load time, before any compute: the manifest row is named
    with pytest.raises(ConfigError, match=rf"m.csv:2: .*{name}: multi-frame"):
        verify_images([path], ["m.csv:2"], channels=1, image_size=16, source="m.csv")


def test_single_frame_header_with_number_of_frames_one_reads(tmp_path):
    one = _rewritten(MR, tmp_path, NumberOfFrames=1)
    np.testing.assert_array_equal(decode_image(one, 32), decode_image(_bundled(MR), 32))
