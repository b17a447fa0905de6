"""benchmarks/torch_steps.py: the PyTorch twins compute arjax's functions."""

import pathlib
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from arjax import losses  # noqa: E402
from arjax.models import build_model  # noqa: E402

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def ts(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import torch_steps

    yield torch_steps
    for name in ("torch_steps", "torch_models", "workloads"):
        sys.modules.pop(name, None)


def _unet(ts, seed=0):
    from flax import nnx

    cfg = ml_collections.ConfigDict(dict(name="unet", widths=(4, 8, 16)))
    model, params, stats = build_model(cfg, (8, 8, 1), 3, seed)
    module = nnx.merge(model.graphdef, params, stats)
    return model, params, stats, ts.TorchUNet(module).eval()


def test_the_unet_twin_computes_the_arjax_unet(ts):
    model, params, stats, net = _unet(ts)
    x = np.random.default_rng(0).random((2, 8, 8, 1), np.float32)
    ref = np.asarray(model.logits_fn(params, stats)(jnp.asarray(x)))
    with torch.no_grad():
        got = net(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_losses_and_dice_rule_equal_arjax(ts):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 6, 6, 3)).astype(np.float32)
    masks = rng.integers(0, 3, (4, 6, 6))
    masks[0] = 0  # an empty foreground: its Dice is 1 when the prediction is empty too
    logits[0, ..., 0] += 10
    z, y = torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(masks)
    np.testing.assert_allclose(
        ts.dice_ce(z, y).numpy(), np.asarray(losses.dice_ce_loss(logits, masks)), rtol=1e-5
    )
    for threshold in (0.3, 0.6):
        ours = np.asarray(losses.segmentation_correct(jnp.asarray(logits), masks, threshold))
        assert (ts.dice_correct(z, y, threshold).numpy() == ours).all()
    assert ts.dice_correct(z, y, 0.6)[0]
    multi = (rng.random((5, 4)) < 0.3).astype(np.float32)
    scores = rng.normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(
        ts.weighted_bce(torch.from_numpy(scores), torch.from_numpy(multi)).numpy(),
        np.asarray(losses.weighted_bce(scores, multi)),
        rtol=1e-5,
    )


def test_segmentation_bpgd_stays_in_the_ball_and_bounds(ts):
    *_, net = _unet(ts)
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.random((4, 1, 8, 8), np.float32))
    y = torch.from_numpy(rng.integers(0, 3, (4, 8, 8)))
    eps = torch.tensor([0.5, 1.0, 2.0, 0.25])
    clean_ok = torch.tensor([True, True, True, False])
    images, crossed = ts.segmentation_bpgd(net, x, y, eps, 3, 4, 4.0, (0.0, 1.0), 0.0, clean_ok)
    dist = (images - x).flatten(1).norm(dim=1)
    assert (dist <= eps + 1e-5).all() and images.min() >= 0 and images.max() <= 1
    # threshold 0: every sample is "correct" everywhere, so nothing crosses and nothing moves;
    # the clean-wrong sample counts as crossed but is never moved
    assert crossed.tolist() == [False, False, False, True] and torch.equal(images, x)
    images, crossed = ts.segmentation_bpgd(net, x, y, eps, 3, 4, 4.0, (0.0, 1.0), 1.1, clean_ok)
    assert crossed.all()  # threshold above 1: every iterate is "wrong"


def test_the_steps_train(ts):
    *_, net = _unet(ts)
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.random((4, 1, 8, 8), np.float32))
    y = torch.from_numpy(rng.integers(0, 3, (4, 8, 8)))
    before = [p.detach().clone() for p in net.parameters()]
    step = ts.ImaSegmentationStep(net, x, y, torch.full((4,), 0.5), steps=2, bisections=2)
    values = [float(step()) for _ in range(2)]
    assert all(np.isfinite(values))
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))
    y5 = torch.from_numpy((rng.random((4, 5)) < 0.4).astype(np.float32))
    khakzar = ts.KhakzarStep(head, x, y5, eps=0.01, bounds=(0.0, 1.0))
    losses_ = [float(khakzar()[0]) for _ in range(8)]
    assert losses_[-1] < losses_[0]
