"""ResNet / DenseNet / VGG: sizes, feature maps, normalisation modes, registry.

Full-size checks are abstract (``jax.eval_shape``: no compilation, no
compute); numeric checks run 32x32 inputs through the smaller networks.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from helpers import abstract_forward

from arjax.models import (
    MODELS,
    TORCHVISION_MODELS,
    DenseNet,
    ResNet,
    TruncatedDenseNet,
    abstract_module,
    adaptive_avg_pool,
    build_model,
    resnet,
    split_model,
    torchvision_num_outputs,
    vgg16,
)
from arjax.models.layers import standardize
from arjax.models.vgg import VGG, VGG16_CONFIG, adaptive_pool_matrix

# torchvision parameter counts (1000 classes), checked by arithmetic below.
TORCHVISION_COUNTS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "densenet121": 7_978_856,
    "vgg16": 138_357_544,
}

ABSTRACT = {
    "resnet18": lambda rngs: ResNet("basic", (2, 2, 2, 2), rngs=rngs),
    "resnet50": lambda rngs: ResNet("bottleneck", (3, 4, 6, 3), rngs=rngs),
    "densenet121": lambda rngs: DenseNet(rngs=rngs),
    "densenet121_truncated": lambda rngs: TruncatedDenseNet(rngs=rngs),
    "vgg16": lambda rngs: VGG(rngs=rngs),
}


def _arithmetic_count(name: str) -> int:
    """torchvision's parameter count from the published architecture tables (no model code)."""
    conv = lambda cin, cout, k: cin * cout * k * k  # noqa: E731  (no bias)
    bn = lambda c: 2 * c  # noqa: E731
    fc = lambda i, o: i * o + o  # noqa: E731
    if name.startswith("resnet"):
        total, cin = conv(3, 64, 7) + bn(64), 64
        bottleneck = name == "resnet50"
        depths = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
        for stage, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
            for i in range(depth):
                cout = planes * (4 if bottleneck else 1)
                if bottleneck:
                    total += conv(cin, planes, 1) + conv(planes, planes, 3) + conv(planes, cout, 1)
                    total += bn(planes) * 2 + bn(cout)
                else:
                    total += conv(cin, planes, 3) + conv(planes, planes, 3) + 2 * bn(planes)
                if i == 0 and (stage > 0 or cin != cout):
                    total += conv(cin, cout, 1) + bn(cout)
                cin = cout
        return total + fc(cin, 1000)
    if name == "densenet121":
        total, c = conv(3, 64, 7) + bn(64), 64
        for b, n in enumerate((6, 12, 24, 16)):
            for _ in range(n):
                total += bn(c) + conv(c, 128, 1) + bn(128) + conv(128, 32, 3)
                c += 32
            if b < 3:
                total += bn(c) + conv(c, c // 2, 1)
                c //= 2
        return total + bn(c) + fc(c, 1000)
    widths = [w for w in VGG16_CONFIG if w != "M"]
    total = sum(conv(a, b, 3) + b for a, b in zip((3, *widths[:-1]), widths, strict=True))
    return total + fc(512 * 49, 4096) + fc(4096, 4096) + fc(4096, 1000)


@functools.cache
def _abstract(name):
    return abstract_module(ABSTRACT[name])


def _count(model) -> int:
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name", sorted(TORCHVISION_COUNTS))
def test_param_count_matches_torchvision(name):
    assert _arithmetic_count(name) == TORCHVISION_COUNTS[name]
    assert _count(_abstract(name)) == TORCHVISION_COUNTS[name]


# name -> features shape for one 224 x 224 RGB image
FEATURES_224 = {
    "resnet18": (7, 7, 512),
    "resnet50": (7, 7, 2048),
    "densenet121": (7, 7, 1024),
    "densenet121_truncated": (28, 28, 512),
    "vgg16": (14, 14, 512),
}


@pytest.mark.parametrize("name", sorted(FEATURES_224))
def test_output_and_feature_map_shapes_at_224(name):
    logits, features = abstract_forward(_abstract(name), (2, 224, 224, 3))
    assert logits.shape == (2, 1000)
    assert features.shape == (2, *FEATURES_224[name])


def test_truncated_densenet_map_is_4x_the_full_one():
    full = abstract_forward(_abstract("densenet121"), (1, 224, 224, 3))[1].shape
    trunc = abstract_forward(_abstract("densenet121_truncated"), (1, 224, 224, 3))[1].shape
    assert trunc[1] == 4 * full[1] and trunc[2] == 4 * full[2]
    # The truncated net keeps blocks 1-2 and transition 1 only.
    keys = set(_abstract("densenet121_truncated").features.keys())
    assert keys == {"conv0", "norm0", "denseblock1", "transition1", "denseblock2", "norm5"}


def test_parameter_paths_read_like_torchvision():
    def paths(name):
        flat = nnx.to_flat_state(nnx.state(_abstract(name), nnx.Param))
        return {"/".join(map(str, p)) for p, _ in flat}

    assert {"features/28/kernel", "classifier/0/kernel", "classifier/6/bias"} <= paths("vgg16")
    r18 = paths("resnet18")
    assert {"layer4/1/conv2/kernel", "fc/kernel", "layer2/0/downsample/0/kernel"} <= r18
    dense = paths("densenet121")
    assert "features/denseblock3/denselayer24/conv2/kernel" in dense
    assert "features/norm5/scale" in dense and "classifier/kernel" in dense


def test_adaptive_avg_pool_follows_pytorch_bins():
    x = jnp.arange(2 * 14 * 14 * 3, dtype=jnp.float32).reshape(2, 14, 14, 3)
    pairs = x.reshape(2, 7, 2, 7, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(adaptive_avg_pool(x), pairs, rtol=1e-6)
    y = x[:, :7, :7]
    np.testing.assert_allclose(adaptive_avg_pool(y), y, rtol=1e-6)
    # 3 -> 7 bins: [0], [0], [0,1], [1], [1,2], [2], [2]
    expected = np.array([[1, 0, 0], [1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5]])
    np.testing.assert_allclose(adaptive_pool_matrix(3, 7)[:5], expected)
    # 1x1 -> 7x7 replicates (VGG on 32x32 inputs)
    one = jnp.ones((1, 1, 1, 2)) * jnp.array([3.0, -1.0])
    np.testing.assert_allclose(adaptive_avg_pool(one), jnp.broadcast_to(one, (1, 7, 7, 2)))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _apply_jit(fns, params, stats, x, train):
    return fns.apply(params, stats, x, train=train)


def _apply(model, x, train):
    """Jitted ``apply`` (cached per architecture, mode and input shape), numpy outputs."""
    fns, params, stats = split_model(model)
    logits, feats, new_stats = _apply_jit(fns, params, stats, x, train)
    return np.asarray(logits), np.asarray(feats), new_stats


@functools.cache
def _resnet18(norm):
    return resnet("resnet18", 3, 1, norm=norm, seed=1)


def _images(batch=2, size=32, channels=1, seed=0):
    return np.random.default_rng(seed).uniform(size=(batch, size, size, channels)).astype("f4")


def _other_example(x):
    """``x`` with every example but the first replaced."""
    return np.concatenate([x[:1], _images(len(x) - 1, x.shape[1], x.shape[3], seed=9)])


def test_batch_norm_train_mode_updates_running_stats_eval_mode_does_not():
    model = _resnet18("batch")
    x = _images()
    _, _, new_stats = _apply(model, x, train=True)
    _, _, same_stats = _apply(model, x, train=False)
    stats = nnx.state(model, nnx.BatchStat)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(same_stats), jax.tree.leaves(stats), strict=True)
    )
    # First BN: running mean <- 0.9 * 0 + 0.1 * batch mean of conv1's output (PyTorch's 0.1).
    h = np.asarray(jax.jit(lambda v: model.conv1(standardize(v, model.input_stats)))(x))
    mean = np.asarray(new_stats["bn1"]["mean"][...])
    np.testing.assert_allclose(mean, 0.1 * h.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    # running var <- 0.9 * 1 + 0.1 * (biased) batch variance
    var = np.asarray(new_stats["bn1"]["var"][...])
    np.testing.assert_allclose(var, 0.9 + 0.1 * h.var(axis=(0, 1, 2)), rtol=1e-4)
    # eval mode: an example's output does not depend on the rest of the batch ...
    both = _apply(model, x, train=False)[0]
    swapped = _apply(model, _other_example(x), train=False)[0]
    np.testing.assert_allclose(both[0], swapped[0], rtol=1e-4, atol=1e-5)
    # ... in train mode it does (batch statistics)
    train_both = _apply(model, x, train=True)[0]
    train_swapped = _apply(model, _other_example(x), train=True)[0]
    assert not np.allclose(train_both[0], train_swapped[0], atol=1e-3)


def test_instance_norm_resnet_has_no_batch_stats_and_is_per_example():
    model = _resnet18("instance")
    fns, params, stats = split_model(model)
    assert jax.tree.leaves(stats) == []
    # IMA's GroupNorm(C, C): learned per-channel scale and bias, same count as BatchNorm.
    assert _count(model) == _count(_resnet18("batch"))
    # 64 x 64: layer4's map is 2 x 2 (instance norm of a 1 x 1 map is constant)
    x = _images(size=64)
    train, feats, _ = _apply(model, x, train=True)
    evals, _, _ = _apply(model, x, train=False)
    np.testing.assert_allclose(train, evals, rtol=1e-5, atol=1e-6)
    swapped = _apply(model, _other_example(x), train=True)[0]
    np.testing.assert_allclose(train[0], swapped[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(train[1], swapped[1], atol=1e-3)
    assert train.shape == (2, 3) and feats.shape == (2, 2, 2, 512)


def _check_cam(logits, feats, head):
    cam = np.einsum("bhwc,ck->bhwk", feats, np.asarray(head["kernel"][...]))
    assert np.all(feats >= 0)  # post-ReLU map
    mean = cam.mean(axis=(1, 2)) + np.asarray(head["bias"][...])
    np.testing.assert_allclose(mean, logits, rtol=1e-4, atol=1e-5)


def test_logits_are_the_global_average_of_the_class_activation_maps():
    model = _resnet18("batch")
    logits, feats, _ = _apply(model, _images(), train=False)
    _check_cam(logits, feats, nnx.state(model, nnx.Param)["fc"])
    cfg = ml_collections.ConfigDict(dict(name="densenet121_truncated", num_outputs=0))
    fns, params, stats = build_model(cfg, (32, 32, 3), 4, seed=0)
    logits, feats, _ = _apply_jit(fns, params, stats, _images(2, 32, 3), False)
    assert logits.shape == (2, 4) and feats.shape == (2, 4, 4, 512)
    _check_cam(np.asarray(logits), np.asarray(feats), params["classifier"])


def test_registry_and_head_width_rules():
    assert set(TORCHVISION_MODELS) <= set(MODELS)
    c = lambda **kw: ml_collections.ConfigDict(dict(name="resnet18", **kw))  # noqa: E731
    assert torchvision_num_outputs(c(num_outputs=0), 2) == 2
    assert torchvision_num_outputs(c(num_outputs=0, binary_head=True), 2) == 1
    assert torchvision_num_outputs(c(num_outputs=0, binary_head=True), 14) == 14
    assert torchvision_num_outputs(c(num_outputs=5), 2) == 5
    assert torchvision_num_outputs(c(), 3) == 3


def test_binary_grayscale_resnet_through_build_model():
    cfg = ml_collections.ConfigDict(dict(name="resnet18", num_outputs=0, binary_head=True))
    fns, params, stats = build_model(cfg, (32, 32, 1), 2, seed=0)
    assert params["conv1"]["kernel"].shape == (7, 7, 1, 64)
    assert params["fc"]["kernel"].shape == (512, 1)
    logits, feats, _ = _apply_jit(fns, params, stats, _images(), False)
    assert logits.shape == (2,) and feats.shape == (2, 1, 1, 512)
    assert np.all(np.isfinite(np.asarray(logits)))


def test_vgg_uses_torchvision_init():
    model = vgg16(2, hidden=256, seed=0)
    w = np.asarray(model.classifier["3"].kernel[...])  # N(0, 0.01), zero bias
    assert abs(w.std() / 0.01 - 1) < 0.02 and not np.any(model.classifier["3"].bias[...])
    k = np.asarray(model.features["28"].kernel[...])  # kaiming-normal fan-out
    assert abs(k.std() / np.sqrt(2 / (9 * 512)) - 1) < 0.02
    assert not np.any(model.features["28"].bias[...])


def test_same_seed_same_model_and_different_seed_differs():
    a = resnet("resnet18", 2, seed=3)
    b = resnet("resnet18", 2, seed=3)
    c = resnet("resnet18", 2, seed=4)
    ka, kb, kc = (np.asarray(m.layer3[0].conv1.kernel[...]) for m in (a, b, c))
    assert np.array_equal(ka, kb) and not np.array_equal(ka, kc)
    # kaiming-normal fan-out: std sqrt(2 / (3*3*256))
    assert abs(ka.std() / np.sqrt(2 / (9 * 256)) - 1) < 0.02


@pytest.mark.parametrize(
    "overrides, shape, match",
    [
        (dict(name="resnet18", norm="group"), (32, 32, 3), "valid: \\['batch', 'instance'\\]"),
        (dict(name="densenet121", norm="instance"), (32, 32, 3), "only the ResNets"),
        (dict(name="vgg16"), (16, 16, 3), "H, W >= 32"),
        (dict(name="resnet50", input_norm="z"), (32, 32, 3), "valid: \\['cifar10', 'half'"),
        (dict(name="resnet18", pretrained="/nonexistent/w.safetensors"), (32, 32, 3), "not found"),
    ],
)
def test_bad_model_config_fails_with_a_clear_message(overrides, shape, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        build_model(ml_collections.ConfigDict(overrides), shape, 10, seed=0)
