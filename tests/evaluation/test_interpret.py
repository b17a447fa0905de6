"""Saliency maps, class activation maps and image grids (arjax.evaluation.interpret)."""

import jax
import jax.numpy as jnp
import matplotlib.image
import ml_collections
import numpy as np
import pytest
from flax import nnx

from arjax.evaluation import interpret
from arjax.models import CamCNN, ResNet, build_model, ima_cnn, split_model
from arjax.models.densenet import DenseNet
from arjax.models.vgg import VGG


def _known_gradient():
    """A [16, 12, 2] weight with a spike: the input gradient of sum(w * x)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 12, 2)).astype(np.float32)
    w[1, 3, 0] = 40.0  # far beyond 3 std: must be clipped
    return w


def _expected(s: np.ndarray, k: float = 3.0) -> np.ndarray:
    s = np.clip(s, s.mean() - k * s.std(), s.mean() + k * s.std())
    return (s - s.min()) / (s.max() - s.min())


def test_saliency_clips_at_three_std_and_scales_to_unit_range():
    w = _known_gradient()
    x = jnp.zeros((3, 16, 12, 2))
    sal = np.asarray(interpret.saliency(lambda v: jnp.sum(v * w, axis=(1, 2, 3)), x))
    want = _expected(np.abs(w).max(-1))
    assert sal.shape == (3, 16, 12)
    np.testing.assert_allclose(sal, np.broadcast_to(want, sal.shape), atol=1e-5)
    assert sal.min() == 0.0 and sal.max() == pytest.approx(1.0)
    # The spike is clipped: the runner-up is more than twice as bright as without clipping.
    s = np.sort(np.abs(w).max(-1).ravel())
    assert np.sort(sal[0].ravel())[-2] > 2 * (s[-2] - s[0]) / (s[-1] - s[0])
    signed = np.asarray(
        interpret.saliency(lambda v: jnp.sum(v * w, axis=(1, 2, 3)), x, signed=True)
    )
    np.testing.assert_allclose(signed[1], _expected(w.sum(-1)), atol=1e-5)


def test_saliency_of_a_loss_follows_the_gradient_magnitude():
    """BCE of a linear logit: grad = (sigmoid(z) - y) w, the same map as |w| after scaling."""
    w = _known_gradient()[..., :1]
    x = jnp.full((2, 16, 12, 1), 0.1)
    y = jnp.array([0, 1])
    sal = np.asarray(interpret.saliency(lambda v: jnp.sum(v * w, axis=(1, 2, 3)), x, y))
    np.testing.assert_allclose(sal[1], _expected(np.abs(w[..., 0])), atol=1e-5)
    with pytest.raises(ValueError, match="one value per example"):
        interpret.saliency(lambda v: v.sum(), x)


def _hand_built(num_outputs: int):
    model = CamCNN((3, 4), num_outputs, in_channels=1, input_norm="none", rngs=nnx.Rngs(0))
    kernel = np.arange(4 * num_outputs, dtype=np.float32).reshape(4, num_outputs) - 3.0
    model.fc.kernel.value = jnp.asarray(kernel)
    model.fc.bias.value = jnp.linspace(-1.0, 1.0, num_outputs)
    return (*split_model(model), kernel)


@pytest.mark.parametrize("num_outputs", [1, 3])
def test_cam_is_the_head_weighted_sum_of_feature_maps(num_outputs):
    fns, params, stats, kernel = _hand_built(num_outputs)
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
    cams, logits = interpret.class_activation_maps(fns, params, stats, x, with_logits=True)
    _, features, _ = fns.apply(params, stats, x)
    features = np.asarray(features)
    assert cams.shape == (2, 4, 4, num_outputs)
    want = sum(kernel[c] * features[..., c, None] for c in range(4))
    np.testing.assert_allclose(cams, want, rtol=1e-5, atol=1e-5)
    bias = np.linspace(-1.0, 1.0, num_outputs)
    mean = np.asarray(cams).mean(axis=(1, 2)) + bias
    np.testing.assert_allclose(mean.reshape(np.shape(logits)), logits, rtol=1e-5, atol=1e-5)


def test_cam_head_lookup_for_registered_networks():
    resnet = nnx.eval_shape(lambda: ResNet("basic", (1, 1, 1, 1), 3, 1, rngs=nnx.Rngs(0)))
    assert interpret.cam_head(resnet) is resnet.fc
    dense = nnx.eval_shape(lambda: DenseNet((1, 1), 14, 1, rngs=nnx.Rngs(0)))
    assert interpret.cam_head(dense) is dense.classifier  # and its subclass TruncatedDenseNet
    vgg = nnx.eval_shape(lambda: VGG(num_outputs=2, hidden=8, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="global average pooling.*resnet18"):
        interpret.cam_head(vgg)
    cnn = nnx.eval_shape(lambda: ima_cnn("fmnist", 10, (28, 28, 1), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="ImaCNN has none"):
        interpret.cam_head(cnn)
    cfg = ml_collections.ConfigDict(dict(name="mlp", hidden=(3,)))
    fns, params, stats = build_model(cfg, (2,), 2, 0)
    with pytest.raises(ValueError, match="MLP has none"):
        interpret.class_activation_maps(fns, params, stats, jnp.zeros((1, 2)))
    cfg = ml_collections.ConfigDict(dict(name="cam_cnn", widths=(4, 4, 4, 4)))
    with pytest.raises(ValueError, match="too small for 3 poolings"):
        build_model(cfg, (6, 6, 1), 2, 0)


def test_upsample_cam_is_bilinear_and_spans_0_255():
    cam = jnp.zeros((2, 2, 2, 2)).at[0, :, 1, 0].set(1.0).at[1, ..., 1].set(5.0)
    up = np.asarray(interpret.upsample_cam(cam, 4))
    assert up.shape == (2, 4, 4, 2)
    # Half-pixel centres: columns sample the 2-pixel row [0, 1] at -0.25, 0.25, 0.75, 1.25.
    np.testing.assert_allclose(up[0, 2, :, 0], [0.0, 63.75, 191.25, 255.0], atol=1e-3)
    assert up[0, ..., 0].min() == 0.0 and up[0, ..., 0].max() == pytest.approx(255.0)
    np.testing.assert_array_equal(up[1, ..., 1], 0.0)  # a constant map has no extent
    assert interpret.upsample_cam(cam, (6, 3)).shape == (2, 6, 3, 2)


def test_save_grid_writes_one_row_per_image(tmp_path):
    images = np.random.default_rng(0).random((3, 16, 16, 1))
    cams = np.random.default_rng(1).random((3, 16, 16)) * 255
    boxes = [[(1, 2, 3, 5, 4)], [], [(2.0, 2.0, 8.0, 8.0)]]
    path = interpret.save_grid(
        tmp_path / "g" / "grid.png", images, cams, cams / 255, boxes, titles=["a", "b", "c"],
        class_names=("normal", "disk"),
    )  # fmt: skip
    h, w = matplotlib.image.imread(path).shape[:2]
    one = interpret.save_grid(tmp_path / "one.png", images[:1], cams[:1], None, boxes[:1])
    h1, w1 = matplotlib.image.imread(one).shape[:2]
    assert h > 2.5 * h1 and w > 1.3 * w1  # 3 rows vs 1; 3 panels vs 2
    with pytest.raises(ValueError, match="do not match"):
        interpret.save_grid(tmp_path / "x.png", images, cams[:, :8], None, None)
