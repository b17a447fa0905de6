"""Attribution maps (arjax.evaluation.attribution / gradcam) and their use in localisation."""

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from flax import nnx

from arjax.config_lib import ConfigError
from arjax.evaluation import attribution, gradcam, interpret, localization
from arjax.models import CamCNN, ima_cnn, split_model

KEY = jax.random.key(0)


def _cam_cnn(num_outputs: int = 3):
    """CamCNN (two 3x3 stages, GAP, linear head) with a hand-set head kernel [4, K]."""
    model = CamCNN((3, 4), num_outputs, in_channels=1, input_norm="none", rngs=nnx.Rngs(0))
    kernel = np.arange(4 * num_outputs, dtype=np.float32).reshape(4, num_outputs) - 3.0
    model.fc.kernel.value = jnp.asarray(kernel)
    return (*split_model(model), kernel)


class _TanhNet(nnx.Module):
    """A smooth conv net (conv, tanh, GAP, linear): integrated gradients' test subject."""

    def __init__(self):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=nnx.Rngs(0))
        self.fc = nnx.Linear(4, 2, rngs=nnx.Rngs(1))

    def __call__(self, x):
        h = jnp.tanh(2.0 * self.conv(x))
        return self.fc(h.mean(axis=(1, 2))), h


class _OnePixel(nnx.Module):
    """Logits ``(3 x[5, 7], -x[5, 7])``: only pixel (5, 7) matters."""

    def __init__(self):
        self.w = nnx.Param(jnp.array([3.0, -1.0]))

    def __call__(self, x):
        return x[:, 5, 7, 0, None] * self.w[...]


class _NoHead(nnx.Module):
    """Returns a feature map but its logits are not a GAP + linear head of it."""

    def __init__(self):
        self.conv = nnx.Conv(1, 2, (3, 3), rngs=nnx.Rngs(0))

    def __call__(self, x):
        h = self.conv(x)
        return h.max(axis=(1, 2)), h


def test_grad_cam_of_a_gap_linear_network_is_its_relu_cam_up_to_scale():
    fns, params, stats, kernel = _cam_cnn()
    x = jax.random.uniform(KEY, (4, 8, 8, 1))
    channel = jnp.array([0, 1, 2, 1])
    cams = np.asarray(interpret.class_activation_maps(fns, params, stats, x))  # [4, 4, 4, 3]
    cam = cams[np.arange(4), ..., np.asarray(channel)]  # [4, 4, 4]
    got = np.asarray(gradcam.grad_cam(fns, params, stats, x, channel))
    np.testing.assert_allclose(got, np.maximum(cam, 0) / 16, rtol=1e-5, atol=1e-6)  # h w = 16
    assert (cam < 0).any() and (cam > 0).any()  # the ReLU matters on this network
    # Grad-CAM++ on a GAP head: alpha_k = 1 / (2 + W[k, c] mean A_k), w_k = alpha_k ReLU(W)
    _, feats, _ = fns.apply(params, stats, x)
    a = np.asarray(feats, np.float64)
    w = kernel[:, np.asarray(channel)].T  # [4 images, 4 features]
    alpha = 1.0 / (2.0 + w * a.mean(axis=(1, 2)))
    want = np.maximum(np.einsum("bhwk,bk->bhw", a, alpha * np.maximum(w, 0)), 0)
    got = np.asarray(gradcam.grad_cam_pp(fns, params, stats, x, channel))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_feature_heads_reproduce_the_logits():
    model = ima_cnn("fmnist", 10, (28, 28, 1), rngs=nnx.Rngs(0))
    fns, params, stats = split_model(model)
    x = jax.random.uniform(KEY, (2, 28, 28, 1))
    logits, feats, _ = fns.apply(params, stats, x)
    module = nnx.merge(fns.graphdef, params, stats)
    module.eval()
    np.testing.assert_allclose(gradcam.feature_head(module)(feats), logits, rtol=1e-5)
    maps = gradcam.grad_cam(fns, params, stats, x, jnp.array([3, 4]))
    assert maps.shape == (2, 1, 1) and np.all(np.asarray(maps) >= 0)
    fns, params, stats = split_model(_NoHead())
    with pytest.raises(ValueError, match="logits as a function of the feature map"):
        gradcam.grad_cam(fns, params, stats, jnp.zeros((1, 6, 6, 1)), jnp.array([0]))
    fns, params, stats = split_model(_OnePixel())
    with pytest.raises(ValueError, match="last convolutional feature map"):
        gradcam.grad_cam(fns, params, stats, jnp.zeros((1, 8, 9, 1)), jnp.array([0]))


def test_smoothgrad_without_noise_is_the_vanilla_gradient():
    fns, params, stats, _ = _cam_cnn()
    x = jax.random.uniform(KEY, (3, 8, 8, 1))
    channel = jnp.array([2, 0, 1])

    def logit(v):
        return jnp.take_along_axis(fns.logits_fn(params, stats)(v), channel[:, None], 1).sum()

    want = np.abs(np.asarray(jax.grad(logit)(x))).max(-1)
    np.testing.assert_allclose(attribution.gradient(fns, params, stats, x, channel), want)
    plain = attribution.smooth_grad(fns, params, stats, x, channel, noise=0.0, num_samples=3)
    np.testing.assert_allclose(plain, want, rtol=1e-6)
    noisy = attribution.smooth_grad(fns, params, stats, x, channel, KEY, num_samples=8)
    again = attribution.smooth_grad(fns, params, stats, x, channel, KEY, num_samples=8)
    np.testing.assert_array_equal(noisy, again)
    assert noisy.shape == (3, 8, 8) and not np.allclose(noisy, want)
    sq = attribution.smooth_grad(fns, params, stats, x, channel, noise=0.0, squared=True)
    np.testing.assert_allclose(sq, want**2, rtol=1e-5)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        attribution.smooth_grad(fns, params, stats, x, channel)


def test_integrated_gradients_are_complete():
    """sum over pixels of IG = z(x) - z(baseline) (Sundararajan et al., Prop. 1)."""
    fns, params, stats = split_model(_TanhNet())
    x = jax.random.uniform(KEY, (3, 10, 10, 1))
    channel = jnp.array([0, 1, 1])
    score = attribution.class_score(fns, params, stats, channel)
    for baseline in (0.0, 0.5):
        ig = attribution.integrated_gradients(
            fns, params, stats, x, channel, steps=200, baseline=baseline
        )
        gap = np.asarray(score(x) - score(jnp.full_like(x, baseline)))
        assert ig.shape == (3, 10, 10) and np.all(np.abs(gap) > 1e-3)
        np.testing.assert_allclose(np.asarray(ig).sum(axis=(1, 2)), gap, rtol=0.02)


def test_occlusion_highlights_the_only_pixel_the_model_reads():
    fns, params, stats = split_model(_OnePixel())
    x = jax.random.uniform(KEY, (2, 12, 12, 1), minval=0.2, maxval=1.0)
    channel = jnp.array([0, 1])
    single = np.asarray(attribution.occlusion(fns, params, stats, x, channel, patch=1))
    want = np.zeros((2, 12, 12))
    want[:, 5, 7] = np.asarray(x[:, 5, 7, 0]) * np.array([3.0, -1.0])
    np.testing.assert_allclose(single, want, rtol=1e-6)
    wide = np.asarray(attribution.occlusion(fns, params, stats, x, channel, patch=3, stride=1))
    assert np.unravel_index(wide[0].argmax(), (12, 12)) == (5, 7)
    assert wide[0, 5, 7] == pytest.approx(3 * float(x[0, 5, 7, 0]))  # every cover hides it
    assert wide[0, 0, 0] == 0.0 and wide[0, 4, 6] < wide[0, 5, 7]
    assert attribution.patch_starts(12, 5, 4) == [0, 4, 7]  # the last patch is flush


def _square_images(n: int = 12, size: int = 16):
    """Bright 4x4 squares on black, each boxed exactly (class 0)."""
    rng = np.random.default_rng(0)
    images = np.zeros((n, size, size, 1), np.float32)
    boxes = {}
    for i in range(n):
        x, y = rng.integers(0, size - 4, 2)
        images[i, y : y + 4, x : x + 4] = 1.0
        boxes[i] = [(0, float(x), float(y), 4.0, 4.0)]
    return {"image": images, "boxes": boxes, "class_names": ("lesion",)}


def _identity_cam_model():
    """A CamCNN whose CAM of its one output is the (non-negative) input image itself."""
    model = CamCNN((1,), 1, in_channels=1, input_norm="none", rngs=nnx.Rngs(0))
    for conv in model.stages[0]:
        conv.kernel.value = jnp.zeros((3, 3, 1, 1)).at[1, 1, 0, 0].set(1.0)
        conv.bias.value = jnp.zeros((1,))
    model.fc.kernel.value = jnp.ones((1, 1))
    return split_model(model)


def test_every_method_runs_the_localization_protocol(tmp_path):
    fns, params, stats = _identity_cam_model()
    data = _square_images()
    kw = dict(folds=3, batch_size=5, random_draws=10)
    cam = localization.localization_report(fns, params, stats, data, **kw)
    assert "method" not in cam  # CAM reports keep their keys
    np.testing.assert_allclose(cam["mean"]["accuracy"], 1.0)
    # Grad-CAM and IG of this linear network are the CAM up to scale: the same report
    for method in ("grad_cam", "integrated_gradients"):
        report = localization.localization_report(fns, params, stats, data, method=method, **kw)
        assert report["method"] == method
        assert report["classes"] == cam["classes"]
    occluded = localization.localization_report(
        fns, params, stats, data, method="occlusion", method_options={"patch": 4}, **kw
    )
    assert occluded["mean"]["accuracy"][0] == 1.0  # IoU > 0.1 for every box
    for method in ("smoothgrad", "grad_cam_pp", "gradient"):
        opts = {"num_samples": 4} if method == "smoothgrad" else None
        report = localization.localization_report(
            fns, params, stats, data, method=method, method_options=opts, **kw
        )
        assert len(report["mean"]["accuracy"]) == 7
    with pytest.raises(ConfigError, match="did you mean 'grad_cam'"):
        localization.localization_report(fns, params, stats, data, method="gradcam", **kw)
    x = jnp.asarray(data["image"][:2])
    maps = interpret.localization_map(
        "occlusion", fns, params, stats, x, jnp.zeros(2, int), patch=4
    )
    assert maps.shape == (2, 16, 16) and float(maps.min()) == 0.0
    assert float(maps.max()) == pytest.approx(255.0)
    with pytest.raises(ValueError, match="random: pass a PRNG key"):
        interpret.localization_map("smoothgrad", fns, params, stats, x, jnp.zeros(2, int))
    # the grid shows them side by side: input, CAM, saliency, then one column per method
    methods = ("grad_cam", "grad_cam_pp", "smoothgrad", "integrated_gradients", "occlusion")
    plain = interpret.save_box_grid(tmp_path / "plain.png", fns, params, stats, data, num_images=2)
    grid = interpret.save_box_grid(
        tmp_path / "grid.png",
        fns,
        params,
        stats,
        data,
        num_images=2,
        methods=methods,
        key=KEY,
    )
    wide, narrow = matplotlib.image.imread(grid), matplotlib.image.imread(plain)
    assert abs(wide.shape[0] - narrow.shape[0]) < 0.1 * narrow.shape[0]  # same rows
    assert wide.shape[1] > 2.5 * narrow.shape[1]  # 8 columns instead of 3
