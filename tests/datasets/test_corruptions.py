"""MedMNIST-C corruptions (arjax.data.corruptions): identity, monotone severities, references."""

import io
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance
from scipy import ndimage

from arjax.config_lib import ConfigError
from arjax.data.corruptions import (
    CORRUPTIONS,
    PRESETS,
    blur,
    corrupt,
    corruption_names,
    digital,
    intensity,
    severity_parameter,
)

KEY = jax.random.key(0)
PAIRS = [(p, n) for p in PRESETS for n in corruption_names(p)]


def _texture(shape=(2, 48, 48, 1), seed=0) -> np.ndarray:
    """A smooth random image spanning [0, 1] (blur and compression both have work to do)."""
    x = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), (0, 1.5, 1.5, 0))
    return ((x - x.min()) / (x.max() - x.min())).astype(np.float32)


def test_presets_cover_the_grey_scale_sets():
    assert set(corruption_names("chestmnist")) == {
        "pixelate", "jpeg_compression", "gaussian_noise", "speckle_noise", "impulse_noise",
        "shot_noise", "gaussian_blur", "brightness_up", "brightness_down", "contrast_up",
        "contrast_down", "gamma_corr_up", "gamma_corr_down", "bias_field",
    }  # fmt: skip
    assert corruption_names("organcmnist") == corruption_names("organamnist")
    assert {"motion_blur", "defocus_blur"} <= set(corruption_names("octmnist"))
    assert severity_parameter("pixelate", 2, "pneumoniamnist") == 0.7
    assert severity_parameter("motion_blur", 5, "breastmnist") == (17, 12)
    assert severity_parameter("bias_field", 5, "octmnist") == 0.5  # TorchIO's default


@pytest.mark.parametrize("preset,name", PAIRS)
def test_identity_at_zero_and_monotone_in_severity(preset, name):
    """Mean squared error to the clean image grows strictly with the severity."""
    x = _texture()
    assert corrupt(name, x, 0, KEY, preset=preset) is x
    errors = []
    for severity in range(1, 6):
        y = np.asarray(corrupt(name, x, severity, KEY, preset=preset))
        assert y.shape == x.shape and y.dtype == np.float32
        assert y.min() >= 0.0 and y.max() <= 1.0
        errors.append(float(np.mean((y - x) ** 2)))
    assert errors[0] > 0
    assert all(a < b for a, b in zip(errors, errors[1:], strict=False)), errors


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_dtype_shape_and_key_determinism(name):
    preset = next(p for p in PRESETS if name in corruption_names(p))
    x = _texture((2, 24, 24, 3), seed=1).astype(np.float16)
    y = corrupt(name, x, 3, KEY, preset=preset)
    assert y.shape == x.shape and y.dtype == np.float16
    again = corrupt(name, x, 3, KEY, preset=preset)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(again))
    if CORRUPTIONS[name].random:
        other = corrupt(name, x, 3, jax.random.key(1), preset=preset)
        assert not np.array_equal(np.asarray(y), np.asarray(other))
        with pytest.raises(ValueError, match="random: pass a PRNG key"):
            corrupt(name, x, 3, None, preset=preset)


def test_bad_names_severities_and_shapes():
    x = _texture()
    with pytest.raises(ConfigError, match="valid choices: .*; did you mean 'gaussian_noise'"):
        corrupt("gausian_noise", x, 1, KEY)
    with pytest.raises(ConfigError, match="unknown corruption preset 'chest'"):
        corrupt("pixelate", x, 1, preset="chest")
    with pytest.raises(ConfigError, match="not part of the 'chestmnist' set.*octmnist"):
        corrupt("defocus_blur", x, 1)
    for severity in (6, -1, 1.5, True):
        with pytest.raises(ConfigError, match="valid: 0..5"):
            corrupt("pixelate", x, severity)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        corrupt("pixelate", x[0], 1)


def test_pixelate_equals_pil_box_resizes():
    x = _texture((1, 30, 17, 1))
    for factor in (0.7, 0.35, 0.1):
        pil = Image.fromarray(x[0, ..., 0], mode="F")
        small = pil.resize((int(17 * factor), int(30 * factor)), Image.BOX)
        want = np.asarray(small.resize((17, 30), Image.BOX))
        got = np.asarray(digital.pixelate(jnp.asarray(x), factor))[0, ..., 0]
        np.testing.assert_allclose(got, want, atol=2e-6)


def test_jpeg_equals_pil_on_the_rgb_copy():
    """MedMNIST-C encodes the RGB copy of a grey image; arjax encodes it as 'L'."""
    x = _texture((1, 32, 32, 1))
    u8 = np.round(x[0, ..., 0] * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([u8] * 3, -1), "RGB").save(buffer, "JPEG", quality=15)
    want = np.asarray(Image.open(buffer)).astype(np.float32) / 255
    got = np.asarray(corrupt("jpeg_compression", x, 3))[0]  # quality 15
    np.testing.assert_array_equal(np.broadcast_to(got, want.shape), want)


def test_brightness_contrast_gamma_follow_pil_and_torchvision():
    x = _texture((1, 20, 20, 1))
    u8 = np.round(x[0, ..., 0] * 255).astype(np.uint8)
    image = Image.fromarray(u8, "L")
    q = u8[None, ..., None].astype(np.float32) / 255
    for enhancer, fn, factor in (
        (ImageEnhance.Brightness, intensity.brightness, 1.4),
        (ImageEnhance.Contrast, intensity.contrast, 1.6),
        (ImageEnhance.Contrast, intensity.contrast, 0.4),
    ):
        want = np.asarray(enhancer(image).enhance(factor), np.float32) / 255
        got = np.asarray(fn(jnp.asarray(q), factor))[0, ..., 0]
        # PIL truncates the blended value to 8 bits: it lies up to one level below
        assert np.all(got - want >= -1e-6) and np.all(got - want < 1 / 255 + 1e-6)
    lut = [int(255.999 * (v / 255.0) ** 0.6) / 255 for v in range(256)]  # adjust_gamma
    got = np.asarray(intensity.gamma(jnp.asarray(q), 0.6))[0, ..., 0]
    np.testing.assert_allclose(got, np.asarray(lut)[u8], atol=1.0 / 255)


def test_gaussian_and_defocus_blur_are_mirror_padded_correlations():
    x = _texture((1, 24, 20, 1))
    k = 7
    sigma = 0.15 * k + 0.35  # torchvision's default sigma for kernel size 7
    t = np.arange(k) - 3
    g = np.exp(-(t**2) / (2 * sigma**2))
    g /= g.sum()
    want = ndimage.correlate(x[0, ..., 0].astype(np.float64), np.outer(g, g), mode="mirror")
    got = np.asarray(blur.gaussian_blur(jnp.asarray(x), k))[0, ..., 0]
    np.testing.assert_allclose(got, np.clip(want, 0, 1), atol=1e-5)
    # defocus radius 1.5: the 3 x 3 block of ones (of 17 x 17), smoothed by sigma 0.1
    kernel = blur.disk_kernel(1.5, 0.1)
    assert kernel.shape == (17, 17) and kernel.sum() == pytest.approx(1.0)
    assert np.count_nonzero(kernel > 1e-3) == 9 and kernel[8, 8] == pytest.approx(1 / 9, 1e-3)
    want = ndimage.correlate(x[0, ..., 0].astype(np.float64), kernel, mode="mirror")
    got = np.asarray(blur.defocus_blur(jnp.asarray(x), (1.5, 0.1)))[0, ..., 0]
    np.testing.assert_allclose(got, np.clip(want, 0, 1), atol=1e-5)


def test_motion_blur_follows_imagemagick_taps():
    """Kernel exp(-i^2 / 2 sigma^2), i < 2 ceil(r) + 1; tap i at ceil(i cos a - .5), edges."""
    x = _texture((2, 16, 18, 1))
    radius, sigma = 3.2, 2.0
    kernel = blur.motion_kernel(radius, sigma)
    assert len(kernel) == 9 and kernel[0] == kernel.max()
    angles = np.array([30.0, -45.0])
    dy, dx = (np.asarray(v) for v in blur.motion_offsets(jnp.asarray(angles), 9))
    got = np.asarray(blur.shift_blur(jnp.asarray(x), jnp.asarray(kernel), dy, dx))
    for b, a in enumerate(np.deg2rad(angles)):
        want = np.zeros((16, 18))
        for i, w in enumerate(kernel):
            oy, ox = math.ceil(i * math.sin(a) - 0.5), math.ceil(i * math.cos(a) - 0.5)
            for r in range(16):
                for c in range(18):
                    want[r, c] += w * x[b, min(max(r + oy, 0), 15), min(max(c + ox, 0), 17), 0]
        np.testing.assert_allclose(got[b, ..., 0], want, atol=1e-5)


def test_noise_statistics():
    x = np.full((2, 48, 48, 1), 0.2, np.float32)
    y = np.asarray(corrupt("impulse_noise", x, 5, KEY))  # amount 0.17
    assert np.mean(y != 0.2) == pytest.approx(0.17, abs=0.02)
    assert np.mean(y == 1.0) == pytest.approx(np.mean(y == 0.0), abs=0.02)
    y = np.asarray(corrupt("shot_noise", x, 5, KEY))  # Poisson(0.2 * 5) / 5, rarely clipped
    assert y.mean() == pytest.approx(0.2, abs=0.01)
    assert y.var() == pytest.approx(0.2 / 5, rel=0.1)
    y = np.asarray(corrupt("gaussian_noise", x, 1, KEY))  # sigma 0.04, no clipping here
    assert y.std() == pytest.approx(0.04, rel=0.05)


def test_bias_field_is_an_order_3_polynomial_in_log_space():
    x = np.full((3, 12, 10, 1), 0.25, np.float32)
    y = np.asarray(corrupt("bias_field", x, 2, KEY))  # coefficients in [-0.2, 0.2]
    u = intensity.bias_coordinates(12)[:, None] * np.ones((1, 10))
    v = intensity.bias_coordinates(10)[None, :] * np.ones((12, 1))
    assert u.max() == pytest.approx(1.0) and u.min() == pytest.approx(-1.0)
    basis = np.stack([(u**i * v**j).ravel() for i in range(4) for j in range(4 - i)], 1)
    for b in range(3):
        log_field = np.log(y[b, ..., 0] / 0.25).ravel()
        coeffs, residual, *_ = np.linalg.lstsq(basis, log_field, rcond=None)
        assert np.abs(basis @ coeffs - log_field).max() < 1e-4
        assert np.abs(coeffs).max() <= 0.2 + 1e-4
