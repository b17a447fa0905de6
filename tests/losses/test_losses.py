import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax import losses

LOG2 = 0.6931471805599453
SIG = {0: 0.5, 1: 0.7310585786300049, 2: 0.8807970779778823, 3: 0.9525741268224334}


def test_softmax_cross_entropy_hand_value():
    logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    got = losses.softmax_cross_entropy(logits, jnp.array([2, 1]))
    # log(e + e^2 + e^3) - 3 = 0.40760596;  log(3) = 1.09861229.
    np.testing.assert_allclose(got, [0.40760596, 1.09861229], rtol=1e-6)


def test_sigmoid_bce_hand_values_and_shapes():
    z = jnp.array([0.0, 2.0])
    y = jnp.array([1, 0])
    # -log sigmoid(0) = log 2;  -log(1 - sigmoid(2)) = log(1 + e^2) = 2.12692801.
    expected = [LOG2, 2.12692801]
    np.testing.assert_allclose(losses.sigmoid_binary_cross_entropy(z, y), expected, rtol=1e-6)
    np.testing.assert_allclose(
        losses.sigmoid_binary_cross_entropy(z[:, None], y.astype(jnp.float32)), expected, rtol=1e-6
    )
    # multi-label sums the classes: one example holding both entries above.
    got = losses.sigmoid_binary_cross_entropy(z[None, :], y[None, :])
    np.testing.assert_allclose(got, [LOG2 + 2.12692801], rtol=1e-6)


def test_weighted_bce_hand_value_batch_beta():
    z = jnp.array([[0.0, 2.0], [-1.0, 0.0]])
    y = jnp.array([[1, 0], [0, 0]])
    # 1 positive entry, 3 negative -> beta = 3.
    # ex 0: 3 * log 2 + log(1 + e^2) = 4.20636953; ex 1: log(1 + e^-1) + log 2 = 1.00640887.
    got = losses.weighted_bce(z, y)
    np.testing.assert_allclose(got, [4.20636953, 1.00640887], rtol=1e-6)
    # explicit beta=1 is plain multi-label BCE.
    np.testing.assert_allclose(
        losses.weighted_bce(z, y, beta=1.0), losses.sigmoid_binary_cross_entropy(z, y), rtol=1e-6
    )
    # jittable with beta from the batch.
    np.testing.assert_allclose(jax.jit(losses.weighted_bce)(z, y), got, rtol=1e-6)


def test_weighted_bce_mask_excludes_padding_from_beta():
    z = jnp.array([[0.0, 2.0], [-1.0, 0.0], [5.0, -5.0]])
    y = jnp.array([[1, 0], [0, 0], [1, 1]])  # padded row would make beta = 3 / 3 = 1
    got = losses.weighted_bce(z, y, mask=jnp.array([1, 1, 0]))
    np.testing.assert_allclose(got[:2], [4.20636953, 1.00640887], rtol=1e-6)
    unmasked = losses.weighted_bce(z, y)
    assert not np.allclose(unmasked[:2], got[:2])


def test_weighted_bce_no_positives_is_finite_plain_bce():
    z = jnp.array([[0.5, -1.0], [2.0, 0.0]])
    y = jnp.zeros((2, 2))
    got = losses.weighted_bce(z, y)
    grad = jax.grad(lambda z: losses.weighted_bce(z, y).sum())(z)
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(got, losses.sigmoid_binary_cross_entropy(z, y), rtol=1e-6)


def test_classification_loss_dispatch():
    k = jax.random.PRNGKey(0)
    z3 = jax.random.normal(k, (4, 3))
    y3 = jnp.array([0, 2, 1, 2])
    np.testing.assert_allclose(
        losses.classification_loss(z3, y3), losses.softmax_cross_entropy(z3, y3), rtol=1e-6
    )
    zb = jnp.array([0.0, 2.0])
    yb = jnp.array([1, 0])
    np.testing.assert_allclose(losses.classification_loss(zb, yb), [LOG2, 2.12692801], rtol=1e-6)
    np.testing.assert_allclose(
        losses.classification_loss(zb[:, None], yb), [LOG2, 2.12692801], rtol=1e-6
    )
    ym = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(
        losses.classification_loss(z3, ym),
        losses.sigmoid_binary_cross_entropy(z3, ym),
        rtol=1e-6,
    )
    assert losses.head_kind(z3, y3) == "softmax"
    assert losses.head_kind(z3, ym) == "multilabel"
    assert losses.head_kind(zb[:, None], yb) == "binary"


@pytest.mark.parametrize(
    ("logits_shape", "labels", "match"),
    [
        ((4, 3), jnp.zeros((4, 2)), "match no head"),
        ((4, 3), jnp.zeros((5,), jnp.int32), "batch dimension"),
        ((4, 3), jnp.zeros((4,), jnp.float32), "integer class ids"),
        ((4, 2, 2), jnp.zeros((4,), jnp.int32), "match no head"),
    ],
)
def test_classification_loss_shape_errors(logits_shape, labels, match):
    with pytest.raises(ValueError, match=match):
        losses.classification_loss(jnp.zeros(logits_shape), labels)


def test_predictions_correct_all_heads():
    z = jnp.array([[1.0, 3.0, 2.0], [2.0, 0.0, 1.0]])
    np.testing.assert_array_equal(losses.predictions_correct(z, jnp.array([1, 2])), [True, False])
    zb = jnp.array([0.5, -0.5, 2.0])
    np.testing.assert_array_equal(
        losses.predictions_correct(zb, jnp.array([1, 1, 0.0])), [True, False, False]
    )
    np.testing.assert_array_equal(
        losses.predictions_correct(zb[:, None], jnp.array([1, 0, 1])), [True, True, True]
    )
    ym = jnp.array([[1, 1, 1], [1, 0, 0]])  # predicted [[1, 1, 1], [1, 0, 1]]
    np.testing.assert_array_equal(losses.predictions_correct(z, ym), [True, False])


def test_arfl_robust_hand_value_and_label_flip():
    f = jnp.array([[0.0, 1.0], [-2.0, 3.0]])
    y = jnp.array([1.0, -1.0])
    expected = [-(SIG[0] + SIG[1]) / 2, -(SIG[2] + SIG[3]) / 2]  # [-0.61552929, -0.91668561]
    np.testing.assert_allclose(losses.arfl_robust(f, y), expected, rtol=1e-6)
    np.testing.assert_allclose(losses.arfl_robust(f, -y), expected, rtol=1e-6)


def test_arfl_robust_conv_map_mean_over_positions_and_channels():
    # [B=1, H=2, W=1, C=2]: mean over the four entries.
    f = jnp.array([[[[0.0, 1.0]], [[-2.0, 3.0]]]])
    got = losses.arfl_robust(f, losses.labels_to_pm1(jnp.array([0])))
    np.testing.assert_allclose(got, [-(SIG[0] + SIG[1] + SIG[2] + SIG[3]) / 4], rtol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        losses.arfl_robust(f, jnp.ones((2,)))


def test_labels_to_pm1():
    got = losses.labels_to_pm1(jnp.array([0, 1, 1]))
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, [-1.0, 1.0, 1.0])
