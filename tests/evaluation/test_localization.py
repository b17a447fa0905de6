"""CAM localisation against boxes (arjax.evaluation.localization, Khakzar et al. §3.3)."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from arjax.data.lesions import build_synthetic_lesions
from arjax.evaluation import interpret, localization
from arjax.losses import classification_loss
from arjax.models import CamCNN, build_model, split_model


def test_iou_of_hand_made_masks_and_boxes():
    mask = np.zeros((3, 8, 8), bool)
    mask[0, 2:5, 1:4] = True  # exactly the box (x=1, y=2, w=3, h=3)
    mask[1, 2:5, 2:5] = True  # shifted one column: 6 shared of 12
    box = np.array([1.0, 2.0, 3.0, 3.0])
    np.testing.assert_allclose(localization.iou(mask, box), [1.0, 0.5, 0.0])
    assert localization.box_mask(box, (8, 8)).sum() == 9
    assert float(localization.iou(np.zeros((4, 4), bool), [0, 0, 0, 0])) == 0.0


def test_iou_curve_equals_thresholded_masks():
    cam = np.floor(np.random.default_rng(0).random((3, 12, 12)) * 256).astype(np.float32)
    cam[:, 0, 0] = 255.0
    boxes = np.array([[0, 0, 5, 4], [3, 2, 6, 7], [6.0, 6.0, 6.0, 6.0]], np.float32)
    curve = np.asarray(localization.iou_curve(jnp.asarray(cam), jnp.asarray(boxes)))
    assert curve.shape == (3, 256)
    for t in (0, 1, 100, 200, 255):
        want = localization.iou(cam >= t, boxes)
        np.testing.assert_allclose(curve[:, t], want, atol=1e-6)
    np.testing.assert_allclose(curve[:, 0], [20 / 144, 42 / 144, 36 / 144], atol=1e-6)


def test_choose_threshold_known_answer():
    # 3 boxes x 4 thresholds.
    table = np.array([[0.05, 0.30, 0.50, 0.90], [0.05, 0.30, 0.10, 0.15], [0.05, 0.25, 0.35, 0.05]])
    values, index = localization.choose_threshold(table, [0.2, 0.4, 0.95], [10, 20, 30, 40])
    # T=0.2: t=20 localises all 3 boxes. T=0.4: columns 2 and 3 localise one box each;
    # the tie goes to the larger mean IoU (column 3: 0.367 > 0.317). T=0.95: none anywhere,
    # so the best mean IoU (column 3) wins over the lower thresholds.
    np.testing.assert_array_equal(index, [1, 3, 3])
    np.testing.assert_array_equal(values, [20, 40, 40])
    with pytest.raises(ValueError, match="thresholds"):
        localization.choose_threshold(table, 0.5, [1, 2])


def test_random_box_ious():
    boxes = np.array([[0, 0, 16, 16], [2, 3, 4, 4]], np.float64)
    ious = localization.random_box_ious(boxes, (16, 16), 1000, 0)
    np.testing.assert_allclose(ious[0], 1.0)
    assert 0 < ious[1].mean() < 0.1 and ious[1].min() >= 0 and ious[1].max() <= 1


def _identity_cam_model(num_outputs: int):
    """A CamCNN whose CAM of every output is the (non-negative) input image itself."""
    model = CamCNN((1,), num_outputs, in_channels=1, input_norm="none", rngs=nnx.Rngs(0))
    for conv in model.stages[0]:
        conv.kernel.value = jnp.zeros((3, 3, 1, 1)).at[1, 1, 0, 0].set(1.0)
        conv.bias.value = jnp.zeros((1,))
    model.fc.kernel.value = jnp.ones((1, num_outputs))
    return split_model(model)


def test_report_on_hand_made_images_has_known_accuracies(tmp_path):
    """Class 0: the bright square is the box (IoU 1); class 1: shifted by half (IoU 1/3)."""
    rng = np.random.default_rng(0)
    n, size = 12, 16
    images = np.zeros((2 * n + 2, size, size, 1), np.float32)
    boxes = {}
    for i in range(2 * n + 2):
        x, y = rng.integers(0, size - 6, 2)
        shift = 2 if i >= n else 0
        images[i, y : y + 4, x + shift : x + shift + 4] = 1.0
        boxes[i] = [(0 if i < n else 1 if i < 2 * n else 2, float(x), float(y), 4.0, 4.0)]
    data = dict(image=images, boxes=boxes, class_names=("a", "b", "c"))
    fns, params, stats = _identity_cam_model(3)
    report = localization.localization_report(fns, params, stats, data, batch_size=5)
    assert report["num_boxes"] == 2 * n + 2 and report["skipped"] == {"c": 2}
    np.testing.assert_allclose(report["classes"]["a"]["accuracy"], 1.0)
    np.testing.assert_allclose(report["classes"]["b"]["accuracy"], [1, 1, 1, 0, 0, 0, 0])
    assert report["classes"]["a"]["count"] == n
    assert np.array(report["classes"]["a"]["thresholds"]).shape == (5, 7)
    assert np.all(np.array(report["classes"]["a"]["random_box"]) < 0.2)
    json.dumps(report)
    text = localization.localization_table(report)
    assert "b (n=12)" in text and "c: skipped" in text
    plot = localization.plot_localization({"one": report, "two": report}, tmp_path / "loc.png")
    assert plot.stat().st_size > 0
    with pytest.raises(ValueError, match=r"ious must lie in \(0, 1\)"):
        localization.localization_report(fns, params, stats, data, ious=(0.0, 0.5))
    with pytest.raises(ValueError, match="folds=1"):
        localization.localization_report(fns, params, stats, data, folds=1)
    with pytest.raises(ValueError, match=r"out of range: \[30\]"):
        localization.localization_report(
            fns, params, stats, {**data, "boxes": {30: [(0, 1, 1, 2, 2)]}}
        )
    with pytest.raises(ValueError, match="only 2 outputs"):
        localization.localization_report(*_identity_cam_model(2), data)


@pytest.fixture(scope="module")
def trained_lesion_model(tmp_path_factory):
    """A tiny CAM network trained for 80 steps to tell lesion / no lesion at 32 x 32."""
    root = tmp_path_factory.mktemp("lesions") / "set"
    splits = build_synthetic_lesions(
        ml_collections.ConfigDict(dict(root=str(root), num_images=300, image_size=32))
    ).splits
    cfg = ml_collections.ConfigDict(dict(name="cam_cnn", widths=(8, 16, 32), binary_head=True))
    fns, params, stats = build_model(cfg, (32, 32, 1), 2, 0)
    train = splits["train"].gather(np.arange(len(splits["train"])))
    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss(p):
            return classification_loss(fns.apply(p, stats, x)[0], y).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state, rng = opt.init(params), np.random.default_rng(0)
    for _ in range(80):
        idx = rng.integers(0, len(train["image"]), 32)
        params, opt_state = step(params, opt_state, train["image"][idx], train["label"][idx])
    return fns, params, stats, splits["test"]


def test_trained_cam_localises_lesions_above_random_boxes(trained_lesion_model, tmp_path):
    fns, params, stats, test = trained_lesion_model
    report = localization.localization_report(fns, params, stats, test, batch_size=16)
    print(localization.localization_table(report))
    disk = report["classes"]["disk"]
    assert disk["count"] == len(test.boxes) >= 20
    assert disk["accuracy"][0] >= 0.8
    assert disk["accuracy"][0] > disk["random_box"][0] + 0.5
    # Saliency of lesion images is brighter inside the boxes than outside.
    positions = np.array(sorted(test.boxes))[:8]
    x = test.gather(positions)["image"]
    sal = np.asarray(interpret.model_saliency(fns, params, stats, x, np.ones(8, np.int32)))
    inside = np.asarray(localization.box_mask([test.boxes[p][0][1:] for p in positions], (32, 32)))
    assert sal[inside].mean() > 1.5 * sal[~inside].mean()
    grid = interpret.save_box_grid(tmp_path / "grid.png", fns, params, stats, test, num_images=8)
    assert grid.stat().st_size > 0


def test_threshold_folds_keep_each_image_on_one_side():
    """Khakzar §3.3 holds out 20 % of the images: no image's boxes are split."""
    rng = np.random.default_rng(0)
    positions = np.repeat(np.arange(40), 3)  # 40 images, 3 boxes each
    classes = rng.integers(0, 2, positions.size)
    for fold_by, split_images in (("image", 0), ("box", None)):
        folds = localization.threshold_folds(classes, positions, 5, seed=0, fold_by=fold_by)
        assert len(folds) == 5
        selected = np.concatenate([select for _, select in folds])
        assert sorted(selected.tolist()) == list(range(positions.size))  # each box once
        shared = [np.intersect1d(positions[e], positions[s]).size for e, s in folds]
        if split_images is not None:
            assert shared == [0] * 5
        else:
            assert sum(shared) > 0  # dealing boxes splits images
        for _, select in folds:
            assert 0.1 < len(select) / positions.size < 0.3
