"""Segmentation (IMA "Experiments on Segmentation"): Dice / TVDI / ADI, the U-Net, BPGD with
Dice-thresholded correctness and the margin shrink rule.

Segmentation IMA trains end to end in ``tests/experiment/test_segmentation_run.py``
(``segmentation_ima.py:smoke``).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from arjax import attacks, losses, margins
from arjax.losses import segmentation as seg
from arjax.models import build_model
from arjax.models.unet import UpConv


def _logits_of(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Confident logits ``[B, H, W, C]`` whose argmax is ``pred``."""
    return 10.0 * np.eye(num_classes, dtype=np.float32)[pred]


# Two 3x4 samples, classes {0, 1, 2}. Sample 0: class 1 TP 2, FP 1, FN 1; class 2 TP 1,
# FP 0, FN 1. Sample 1: class 1 TP 0 FP 0 FN 0 (absent), class 2 TP 3 FP 1 FN 0.
MASK = np.array(
    [
        [[1, 1, 1, 0], [2, 2, 0, 0], [0, 0, 0, 0]],
        [[2, 2, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    ],
    np.int32,
)
PRED = np.array(
    [
        [[1, 1, 0, 1], [2, 0, 0, 0], [0, 0, 0, 0]],
        [[2, 2, 2, 2], [0, 0, 0, 0], [0, 0, 0, 0]],
    ],
    np.int32,
)


def test_dice_tvdi_adi_on_hand_made_masks():
    logits = _logits_of(PRED, 3)
    tp, fp, fn = (np.asarray(v) for v in seg.confusion_counts(logits, MASK))
    np.testing.assert_array_equal(tp, [[2, 1], [0, 3]])
    np.testing.assert_array_equal(fp, [[1, 0], [0, 1]])
    np.testing.assert_array_equal(fn, [[1, 1], [0, 0]])
    dice = np.asarray(seg.hard_dice(logits, MASK))
    # 2TP / (2TP + FP + FN): 4/6, 2/3; absent class -> 1; 6/7
    np.testing.assert_allclose(dice, [[4 / 6, 2 / 3], [1.0, 6 / 7]], rtol=1e-6)
    np.testing.assert_allclose(seg.dice_score(logits, MASK), [2 / 3, (1 + 6 / 7) / 2], rtol=1e-6)
    # Eq. 9: sums over samples first. class 1: 2*2 / (4 + 1 + 1); class 2: 2*4 / (8 + 1 + 1)
    np.testing.assert_allclose(seg.tvdi(tp, fp, fn), [4 / 6, 8 / 10])
    # Eq. 10: mean of the per-sample Dice
    np.testing.assert_allclose(seg.adi(tp, fp, fn), [(4 / 6 + 1) / 2, (2 / 3 + 6 / 7) / 2])
    # IMA's rule (Dice >= 0.6) through the shared correctness of every head
    np.testing.assert_array_equal(losses.predictions_correct(logits, MASK), [True, True])
    np.testing.assert_array_equal(
        losses.predictions_correct(logits, MASK, dice_threshold=0.7), [False, True]
    )
    assert losses.head_kind(logits, MASK) == "segmentation"


def test_pixel_losses_and_soft_dice():
    logits = _logits_of(PRED, 3)
    # the "ce" attack objective of a segmentation head is the pixel-mean cross-entropy
    ce = np.asarray(attacks.attack_objective("ce", logits, MASK))
    wrong = (PRED != MASK).reshape(2, -1).mean(-1)
    np.testing.assert_allclose(ce, wrong * (10 + np.log1p(2 * np.exp(-10))), rtol=1e-4)
    margin = np.asarray(attacks.attack_objective("margin", logits, MASK))
    np.testing.assert_allclose(margin, 10 * wrong - 10 * (1 - wrong), rtol=1e-5)
    # confident logits: the soft Dice of a present class is its hard Dice; an absent class
    # has only the smoothing term over the tiny probability mass (nnU-Net's per-sample form)
    soft, hard = np.asarray(seg.soft_dice(logits, MASK)), np.asarray(seg.hard_dice(logits, MASK))
    present = np.array([[True, True], [False, True]])
    np.testing.assert_allclose(soft[present], hard[present], atol=1e-3)
    assert soft[1, 0] < 0.1
    value = np.asarray(seg.dice_ce_loss(logits, MASK))
    expect = ce + 1 - np.asarray(seg.soft_dice(logits, MASK)).mean(-1)
    np.testing.assert_allclose(value, expect, rtol=1e-5)
    with pytest.raises(ValueError, match="must be integer class ids"):
        losses.head_kind(logits, MASK.astype(np.float32))


def test_unet_shapes_deep_supervision_and_upconv():
    cfg = ml_collections.ConfigDict(dict(name="unet", widths=(4, 8, 8), deep_supervision=True))
    fns, params, stats = build_model(cfg, (16, 16, 1), 3, 0)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 1))
    logits, features, _ = jax.jit(fns.apply)(params, stats, x)
    assert logits.shape == (2, 16, 16, 3)
    assert features["features"].shape == (2, 16, 16, 4)
    assert [a.shape for a in features["deep_supervision"]] == [(2, 8, 8, 3)]
    loss = seg.deep_supervision_loss(
        logits, features["deep_supervision"], jnp.zeros((2, 16, 16), int)
    )
    assert loss.shape == (2,) and np.all(np.isfinite(loss))
    with pytest.raises(ValueError, match="not divisible by 4"):
        build_model(cfg, (18, 16, 1), 3, 0)
    # UpConv is ConvTranspose2d(k=2, s=2): output pixel (2i+a, 2j+b) = W[a, b]^T x[i, j] + bias
    from flax import nnx

    up = UpConv(3, 2, rngs=nnx.Rngs(0))
    z = jax.random.normal(jax.random.PRNGKey(2), (1, 2, 3, 3))
    out = np.asarray(nnx.jit(lambda m, v: m(v))(up, z))
    w = np.asarray(up.conv.kernel[...])[0, 0].reshape(3, 2, 2, 2)  # [c_in, a, b, c_out]
    expect = np.einsum("bijc,cxyo->bixjyo", np.asarray(z), w).reshape(1, 4, 6, 2)
    expect = expect + np.asarray(up.bias[...])  # one bias per channel, as ConvTranspose2d
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)


# A per-pixel linear "segmenter": foreground iff x > 0.5. The 2x2 block of the mask is
# foreground with x = 0.8, 0.85, 0.9, 0.95, the rest 0. Dice 2TP / (2TP + FP + FN) < 0.9
# needs one wrong pixel (0.3 away at least); < 0.6 at least three, the cheapest being the
# three least confident foreground pixels: sqrt(0.3^2 + 0.35^2 + 0.4^2) in L2.
def _pixel_model(x):
    z = 10.0 * (x[..., 0] - 0.5)
    return jnp.stack([jnp.zeros_like(z), z], axis=-1)


SEG_Y = np.zeros((1, 4, 4), np.int32)
SEG_Y[0, 1:3, 1:3] = 1
SEG_X = np.zeros((1, 4, 4, 1), np.float32)
SEG_X[0, 1:3, 1:3, 0] = [[0.8, 0.85], [0.9, 0.95]]


def _dice(images):
    return float(seg.dice_score(_pixel_model(images), SEG_Y)[0])


def test_bpgd_crosses_the_dice_threshold_within_bisection_tolerance():
    nb = 10

    def run(threshold, eps, side):
        correct = functools.partial(losses.predictions_correct, dice_threshold=threshold)
        return attacks.bpgd(
            _pixel_model, SEG_X, SEG_Y, jax.random.PRNGKey(0), eps=eps, num_steps=20,
            num_bisections=nb, norm="l2", random_start=False, correct_fn=correct, side=side,
        )  # fmt: skip

    found = {}
    for threshold, minimum in ((0.6, np.sqrt(0.09 + 0.1225 + 0.16)), (0.9, 0.3)):
        near, far = run(threshold, 2.0, "correct"), run(threshold, 2.0, "wrong")
        assert bool(near.crossed[0]) and bool(far.crossed[0])
        # the two ends of the final bracket straddle the threshold ...
        assert _dice(near.images) >= threshold > _dice(far.images)
        # ... and are at most eps / 2^N_binary apart (bisection from x, bracket <= eps)
        gap = float(jnp.linalg.norm((far.images - near.images).ravel()))
        assert gap <= 2.0 / 2**nb * (1 + 1e-4)
        # no point closer than the fewest pixel flips that cross can be below the threshold
        assert float(far.distance[0]) >= minimum * (1 - 1e-3)
        found[threshold] = float(near.distance[0])
    # along the same PGD ray the stricter threshold is met first
    assert found[0.9] < found[0.6]
    # a radius below the cheapest flip cannot cross: case-0, the clean input comes back
    small = run(0.6, 0.45, "middle")
    assert not bool(small.crossed[0])
    np.testing.assert_array_equal(small.images, SEG_X)


def test_margin_shrink_rule_of_the_segmentation_variant():
    current = jnp.array([0.5, 0.5, 0.5, 0.15])
    correct = jnp.array([False, True, True, False])
    crossed = jnp.array([True, True, False, True])
    distance = jnp.array([0.0, 0.3, 0.0, 0.0])
    kw = dict(delta=0.1, eps_max=1.0)
    paper = margins.update(current, correct, crossed, distance, **kw)
    np.testing.assert_allclose(paper, [0.1, 0.3, 0.6, 0.1])  # re-initialise to delta
    shrink = margins.update(current, correct, crossed, distance, shrink_misclassified=True, **kw)
    np.testing.assert_allclose(shrink, [0.4, 0.3, 0.6, 0.1])  # eps - delta, floored at delta
