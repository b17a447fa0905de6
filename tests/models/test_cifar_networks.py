"""PreAct ResNet-18 and WideResNet: reference parameter counts, shapes, modes, registry.

Full-size networks are built abstractly (``abstract_module``: shapes only, nothing
computed); numeric checks run tiny widths / depths on 8x8 and 16x16 inputs.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from helpers import abstract_forward

from arjax.config_lib import ConfigError
from arjax.evaluation.interpret import cam_head, class_activation_maps
from arjax.models import (
    MODELS,
    Conv,
    PreActResNet,
    WideResNet,
    abstract_module,
    build_model,
    export_torchvision,
    import_torchvision,
    split_model,
    wide_resnet,
)

# Parameter counts of the reference PyTorch code (10 classes): locuslab/robust_overfitting
# preactresnet.py PreActResNet18() and wideresnet.py WideResNet(depth, 10, widen_factor=10),
# counted with sum(p.numel() for p in model.parameters()).
REFERENCE_COUNTS = {"preact18": 11_172_170, "wrn28_10": 36_479_194, "wrn34_10": 46_160_474}
ABSTRACT = {
    "preact18": lambda rngs: PreActResNet(rngs=rngs),
    "wrn28_10": lambda rngs: WideResNet(28, 10, rngs=rngs),
    "wrn34_10": lambda rngs: WideResNet(34, 10, rngs=rngs),
}


def _arithmetic_count(name: str) -> int:
    """The same counts from the architecture description alone (bias-free convs)."""
    conv = lambda cin, cout, k: cin * cout * k * k  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731

    def block(cin, cout):  # pre-activation block, 1x1 shortcut where the shape changes
        return (
            bn(cin)
            + conv(cin, cout, 3)
            + bn(cout)
            + conv(cout, cout, 3)
            + (conv(cin, cout, 1) if cin != cout else 0)
        )

    if name == "preact18":
        stem, widths, per_stage = conv(3, 64, 3), (64, 64, 128, 256, 512), 2
    else:
        depth, k = int(name[3:5]), int(name.split("_")[1])
        stem, widths, per_stage = conv(3, 16, 3), (16, 16 * k, 32 * k, 64 * k), (depth - 4) // 6
    total = stem
    for cin, cout in zip(widths[:-1], widths[1:], strict=True):
        total += block(cin, cout) + (per_stage - 1) * block(cout, cout)
    return total + bn(widths[-1]) + widths[-1] * 10 + 10


def _count(model) -> int:
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_parameter_counts_equal_the_reference_code(name):
    assert _arithmetic_count(name) == REFERENCE_COUNTS[name]
    model = abstract_module(ABSTRACT[name])
    assert _count(model) == REFERENCE_COUNTS[name]
    logits, features = abstract_forward(model, (2, 32, 32, 3))
    assert logits.shape == (2, 10)
    # the map pooled into the head: 4x4x512 (PreAct), 8x8x640 (WRN-d-10) on CIFAR
    assert features.shape == ((2, 4, 4, 512) if name == "preact18" else (2, 8, 8, 640))


def test_parameter_paths_are_the_reference_module_names():
    pre = export_torchvision(PreActResNet(widths=(4, 8, 8, 8), rngs=nnx.Rngs(0)))
    for name in (
        "conv1.weight",
        "layer1.0.bn1.weight",
        "layer2.0.shortcut.0.weight",
        "layer4.1.conv2.weight",
        "bn.running_var",
        "linear.weight",
        "linear.bias",
    ):
        assert name in pre, name
    assert "layer1.0.shortcut.0.weight" not in pre  # identity where the shape is kept
    wrn = export_torchvision(wide_resnet(10, 1, seed=0))
    for name in (
        "conv1.weight",
        "block1.layer.0.bn1.weight",
        "block2.layer.0.convShortcut.weight",
        "bn1.weight",
        "fc.weight",
    ):
        assert name in wrn, name
    # WRN-10-1's first stage keeps 16 channels: no shortcut conv there
    assert not any("block1.layer.0.convShortcut" in n or "shortcut.0" in n for n in wrn)


def _tiny_preact(num_outputs=10, input_norm="cifar10"):
    return PreActResNet((1, 1, 1, 1), num_outputs, 3, input_norm, widths=(4, 8, 8, 8),
                        rngs=nnx.Rngs(0))  # fmt: skip


@pytest.mark.parametrize("kind", ["preact", "wrn"])
def test_forward_in_train_and_eval_mode(kind):
    model = _tiny_preact() if kind == "preact" else wide_resnet(10, 1, 10, seed=0)
    fns, params, stats = split_model(model)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 16, 16, 3)), jnp.float32)
    hash(fns)  # a static jit argument of the training step: the graph must hash
    apply = jax.jit(fns.apply, static_argnames="train")
    logits_e, feats_e, stats_e = apply(params, stats, x, train=False)
    logits_t, feats_t, stats_t = apply(params, stats, x, train=True)
    assert logits_e.shape == logits_t.shape == (4, 10)
    assert feats_e.shape == ((4, 2, 2, 8) if kind == "preact" else (4, 4, 4, 64))
    assert np.all(np.asarray(feats_e) >= 0)  # post-ReLU map
    # eval mode leaves the running statistics alone; train mode moves them towards the batch
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), stats, stats_e)
    assert all(jax.tree.leaves(same))
    moved = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), stats, stats_t)
    assert not any(jax.tree.leaves(moved))
    # fresh running stats (mean 0, var 1) differ from the batch's: the logits differ too
    assert not np.allclose(np.asarray(logits_e), np.asarray(logits_t))
    # CAM identity: the logits are the head applied to the map's global average
    cams = class_activation_maps(fns, params, stats, x)
    head = cam_head(model)
    assert head is (model.linear if kind == "preact" else model.fc)
    pooled_cams = np.asarray(cams).mean(axis=(1, 2)) + np.asarray(head.bias[...])
    np.testing.assert_allclose(np.asarray(logits_e), pooled_cams, rtol=1e-5, atol=1e-6)


def test_registry_builders_fields_and_initialisation():
    assert {"preact_resnet18", "wide_resnet"} <= set(MODELS)
    cfg = ml_collections.ConfigDict(
        dict(
            name="wide_resnet",
            depth=10,
            widen_factor=2,
            binary_head=True,
            conv_impl="xla",
            dtype="bfloat16",
        )
    )
    fns, params, stats = build_model(cfg, (16, 16, 1), 2, seed=0)
    assert params["conv1"]["kernel"].shape == (3, 3, 1, 16)
    assert params["fc"]["kernel"].shape == (128, 1)
    # TRADES' init: conv N(0, 2 / (9 C_out)), fc bias 0, bn 1 / 0
    k = np.asarray(params["block3"]["layer"][0]["conv2"]["kernel"])
    assert abs(k.std() / np.sqrt(2 / (9 * 128)) - 1) < 0.03
    assert not np.any(np.asarray(params["fc"]["bias"]))
    assert np.all(np.asarray(params["bn1"]["scale"]) == 1)
    logits, feats, _ = jax.jit(fns.apply)(params, stats, jnp.zeros((2, 16, 16, 1)))
    assert logits.shape == (2,) and feats.shape == (2, 4, 4, 128)
    # mixed precision: bfloat16 network, float32 parameters and outputs
    assert fns.dtype == "bfloat16" and k.dtype == logits.dtype == jnp.float32
    # every convolution is a layers.Conv built with the configured implementation
    model = nnx.merge(fns.graphdef, params, stats)
    convs = [n for _, n in nnx.iter_graph(model) if isinstance(n, Conv)]
    assert len(convs) == 1 + 3 * 2 + 3 and {c.impl for c in convs} == {"xla"}
    # same seed, same WRN
    again = build_model(cfg, (16, 16, 1), 2, seed=0)[1]
    same_seed = again["conv1"]["kernel"], params["conv1"]["kernel"]
    assert np.array_equal(*map(np.asarray, same_seed))
    # the PreAct builder follows the data's channels and classes (built abstractly)
    pre = ml_collections.ConfigDict(dict(name="preact_resnet18"))
    built = nnx.eval_shape(lambda: MODELS["preact_resnet18"](pre, (32, 32, 1), 7, nnx.Rngs(0)))
    assert built.conv1.kernel.shape == (3, 3, 1, 64) and built.linear.kernel.shape == (512, 7)
    (mean,), (std,) = built.input_stats  # gray: the averages of the CIFAR-10 RGB values
    assert (mean, std) == pytest.approx((0.4734, 0.2507), abs=1e-4)


@pytest.mark.parametrize(
    "overrides, shape, match",
    [
        (dict(name="wide_resnet", depth=30), (32, 32, 3), "model.depth=30 .*6n \\+ 4"),
        (dict(name="wide_resnet", widen_factor=0), (32, 32, 3), "model.widen_factor=0"),
        (dict(name="preact_resnet18", input_norm="cifar"), (32, 32, 3), "'cifar10', 'half'"),
        (dict(name="preact_resnet18"), (32, 3), "needs \\[H, W, C\\] inputs"),
    ],
)
def test_bad_config_fails_naming_the_field(overrides, shape, match):
    with pytest.raises(ConfigError, match=match):
        build_model(ml_collections.ConfigDict(overrides), shape, 10, seed=0)


def test_state_dict_round_trip_drops_trades_unused_sub_block():
    a, b = wide_resnet(10, 1, 10, seed=0), wide_resnet(10, 1, 10, seed=1)
    state = export_torchvision(a)
    # TRADES' file also carries sub_block1, a copy of block1 that forward never calls
    state.update({k.replace("block1", "sub_block1"): v for k, v in state.items()
                  if k.startswith("block1.")})  # fmt: skip
    report = import_torchvision(b, state)
    assert report.dropped and all(
        n.startswith("sub_block1.") or n.endswith("num_batches_tracked") for n in report.dropped
    )
    pa, pb = nnx.state(a, nnx.Param), nnx.state(b, nnx.Param)
    assert all(jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), pa, pb)))
