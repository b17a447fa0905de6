import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from arjax.models import ARCHITECTURES, MODELS, Conv, ImaCNN, build_model
from arjax.models.cnn import ConvSpec, feature_map_shape

# --- Conv against a direct numpy reference --------------------------------------------------------


def _reference_conv(x, kernel, bias, stride, padding):
    """float64 loop: out[b, i, j, o] = sum xpad[b, i*s + di, j*s + dj, c] * k[di, dj, c, o] + b."""
    k = kernel.shape[0]
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ho = (xp.shape[1] - k) // stride + 1
    wo = (xp.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, kernel.shape[-1]))
    for i, j in itertools.product(range(ho), range(wo)):
        patch = xp[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
        out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, kernel) + bias
    return out


def _reference_grads(x, kernel, cotangent, stride, padding):
    """Gradients of sum(cotangent * conv(x)) w.r.t. x and kernel, by the same loop."""
    k = kernel.shape[0]
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    dxp = np.zeros_like(xp)
    dk = np.zeros_like(kernel)
    for i, j in itertools.product(range(cotangent.shape[1]), range(cotangent.shape[2])):
        rows = slice(i * stride, i * stride + k)
        cols = slice(j * stride, j * stride + k)
        g = cotangent[:, i, j, :]
        dxp[:, rows, cols, :] += np.einsum("bo,hwco->bhwc", g, kernel)
        dk += np.einsum("bhwc,bo->hwco", xp[:, rows, cols, :], g)
    h, w = x.shape[1:3]
    return dxp[:, padding : padding + h, padding : padding + w, :], dk


@functools.partial(jax.jit, static_argnums=0)
def _module_forward_and_vjp(graphdef, state, x, cotangent):
    """Conv module output and the vjp of ``cotangent`` w.r.t. the input and the parameters."""
    out, vjp = jax.vjp(lambda st, inputs: nnx.merge(graphdef, st)(inputs), state, x)
    d_state, dx = vjp(cotangent)
    return out, dx, d_state


# Every kernel size with both strides; every (stride, padding) pair once.
CONV_CASES = [(3, 1, 0), (3, 2, 1), (4, 1, 2), (4, 2, 0), (5, 1, 1), (5, 2, 2)]


@pytest.mark.parametrize("kernel_size, stride, padding", CONV_CASES)
def test_conv_matches_reference_outputs_and_gradients(kernel_size, stride, padding):
    conv = Conv(2, 3, kernel_size, stride, padding, rngs=nnx.Rngs(params=kernel_size))
    rng = np.random.default_rng(100 * kernel_size + 10 * stride + padding)
    x = rng.uniform(size=(2, 7, 6, 2)).astype(np.float32)
    kernel = np.asarray(conv.kernel[...], np.float64)
    bias = np.asarray(conv.bias[...], np.float64)
    assert kernel.shape == (kernel_size, kernel_size, 2, 3) and bias.shape == (3,)

    ref = _reference_conv(x.astype(np.float64), kernel, bias, stride, padding)
    assert ref.shape[1:3] == (
        (7 + 2 * padding - kernel_size) // stride + 1,
        (6 + 2 * padding - kernel_size) // stride + 1,
    )
    cotangent = rng.normal(size=ref.shape)
    graphdef, state = nnx.split(conv)
    out, dx, d_state = _module_forward_and_vjp(
        graphdef, state, jnp.asarray(x), jnp.asarray(cotangent, jnp.float32)
    )
    assert out.shape == ref.shape
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)

    ref_dx, ref_dk = _reference_grads(x.astype(np.float64), kernel, cotangent, stride, padding)
    np.testing.assert_allclose(np.asarray(dx), ref_dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(d_state["kernel"][...]), ref_dk, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(d_state["bias"][...]), cotangent.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5
    )
    if (kernel_size, stride, padding) == (4, 2, 0):
        # Rows/columns 0..5 feed the two outputs; the border row 6 is unused: zero gradient.
        np.testing.assert_array_equal(np.asarray(dx)[:, 6], 0.0)
        assert np.abs(np.asarray(dx)[:, 5]).max() > 0


def test_conv_pytorch_default_init_and_validation():
    conv = Conv(128, 256, 5, rngs=nnx.Rngs(params=0))
    bound = 1.0 / np.sqrt(128 * 25)
    kernel = np.asarray(conv.kernel[...])
    assert np.abs(kernel).max() <= bound
    # U(-b, b) has std b / sqrt(3); 819200 draws pin it to well under 1 %.
    assert abs(kernel.std() / (bound / np.sqrt(3)) - 1) < 0.01
    assert abs(kernel.mean()) < 0.01 * bound
    assert np.abs(np.asarray(conv.bias[...])).max() <= bound
    assert np.asarray(conv.bias[...]).std() > 0.3 * bound  # not zero-initialised
    assert Conv(2, 3, 3, use_bias=False, rngs=nnx.Rngs(0)).bias is None
    with pytest.raises(ValueError, match="padding"):
        Conv(2, 3, 3, 1, -1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="stride"):
        Conv(2, 3, 3, 0, rngs=nnx.Rngs(0))


# --- the two paper CNNs --------------------------------------------------------------------------

# Parameter counts by hand from the paper's layer lists: a COV(i, o, k) has k*k*i*o + o
# parameters, InstanceNorm none (PyTorch default affine=False), LN(d) 2d, Linear(d, 10) 10d + 10.
FMNIST_PARAMS = (
    (5 * 5 * 1 * 64 + 64)  # 1_664
    + (5 * 5 * 64 * 128 + 128)  # 204_928
    + (5 * 5 * 128 * 256 + 256)  # 819_456
    + (4 * 4 * 256 * 512 + 512)  # 2_097_664
    + 2 * 512  # LayerNorm
    + (512 * 10 + 10)  # Linear
)
SVHN_PARAMS = (
    (3 * 3 * 3 * 32 + 32)  # 896
    + (3 * 3 * 32 * 32 + 32)  # 9_248
    + (3 * 3 * 32 * 64 + 64)  # 18_496
    + (3 * 3 * 64 * 64 + 64)  # 36_928
    + (3 * 3 * 64 * 128 + 128)  # 73_856
    + (3 * 3 * 128 * 128 + 128)  # 147_584
    + (4 * 4 * 128 * 256 + 256)  # 524_544
    + 2 * 256  # LayerNorm
    + (256 * 10 + 10)  # Linear
)


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


PAPER_INPUTS = {"fmnist": (28, 28, 1), "svhn": (32, 32, 3)}


@pytest.fixture(scope="module")
def paper_models():
    """Each paper CNN built once through the registry: variant -> (ModelFns, params, stats)."""
    return {
        variant: build_model(
            ml_collections.ConfigDict({"name": "ima_cnn", "variant": variant}), shape, 10, seed=0
        )
        for variant, shape in PAPER_INPUTS.items()
    }


@pytest.mark.parametrize(
    "variant, spatial, channels, params",
    [
        ("fmnist", (14, 7, 4, 1), 512, FMNIST_PARAMS),
        ("svhn", (32, 16, 16, 8, 8, 4, 1), 256, SVHN_PARAMS),
    ],
)
def test_paper_cnn_shapes_and_parameter_count(paper_models, variant, spatial, channels, params):
    assert FMNIST_PARAMS == 3_129_866 and SVHN_PARAMS == 814_634
    fns, p, stats = paper_models[variant]
    input_shape = PAPER_INPUTS[variant]
    assert _count(p) == params
    assert jax.tree.leaves(stats) == []  # IN/LN keep no running statistics: train == eval
    convs = ARCHITECTURES[variant][0]
    sizes = [feature_map_shape(convs[: i + 1], input_shape)[0] for i in range(len(convs))]
    assert tuple(sizes) == spatial
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(3, *input_shape)), jnp.float32)
    apply = jax.jit(lambda p, x: fns.apply(p, stats, x)[:2])
    logits, features = apply(p, x)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    assert features.shape == (3, 1, 1, channels)
    assert np.all(np.isfinite(np.asarray(logits)))
    assert float(jnp.std(logits)) > 1e-3  # not a constant output
    # Per-example normalisation: an example's output does not depend on the rest of the batch.
    x_other = x.at[1:].set(jnp.flip(x[1:], axis=1))
    np.testing.assert_allclose(apply(p, x_other)[0][0], logits[0], rtol=1e-5, atol=1e-6)


def test_instance_norm_and_layer_norm_follow_pytorch(paper_models):
    fns, params, stats = paper_models["fmnist"]
    model = nnx.merge(fns.graphdef, params, stats)
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 28, 28, 1)), jnp.float32)
    pre = model.convs[1](jax.nn.leaky_relu(model.convs[0](x), 0.01))
    h = model.norms[1](pre)
    assert h.shape == (2, 7, 7, 128)
    # PyTorch InstanceNorm2d: per (example, channel) plane, biased variance, eps 1e-5, no affine.
    pre = np.asarray(pre, np.float64)
    mean = pre.mean(axis=(1, 2), keepdims=True)
    var = pre.var(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(np.asarray(h), (pre - mean) / np.sqrt(var + 1e-5), atol=2e-5)
    assert model.norms[0] is None  # the paper's first block has no IN
    assert [n is not None for n in model.norms] == [False, True, True]
    # LayerNorm over the flattened 512 features, eps 1e-5, scale 1 and bias 0 at init.
    f = np.random.default_rng(2).normal(size=(2, 512)).astype(np.float32)
    expected = (f - f.mean(-1, keepdims=True)) / np.sqrt(f.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(model.feature_norm(jnp.asarray(f))), expected, atol=2e-5)


def test_jitted_forward_and_gradients_trace_once(paper_models):
    fns, params, stats = paper_models["fmnist"]
    traces = []

    @jax.jit
    def loss_and_grads(params, x, y):
        traces.append(1)

        def loss(params, x):
            logits = fns.apply(params, stats, x)[0]
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

        return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

    rng = np.random.default_rng(0)
    grads = []
    for _ in range(2):
        x = jnp.asarray(rng.uniform(size=(2, 28, 28, 1)), jnp.float32)
        value, (g_params, g_x) = loss_and_grads(params, x, jnp.asarray([3, 7]))
        grads.append(g_x)
    assert len(traces) == 1
    assert np.isfinite(float(value)) and g_x.shape == x.shape
    assert float(jnp.abs(g_x).max()) > 0 and not np.allclose(grads[0], grads[1])
    assert _count(g_params) == FMNIST_PARAMS
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_params))


def test_registry_and_errors():
    assert "ima_cnn" in MODELS

    def cfg(variant):
        return ml_collections.ConfigDict({"name": "ima_cnn", "variant": variant})

    with pytest.raises(ValueError, match=r"model\.variant 'cifar'.*fmnist.*svhn"):
        build_model(cfg("cifar"), (28, 28, 1), 10, 0)
    with pytest.raises(ValueError, match=r"model\.variant 'svhn'.*\(H, W, 3\)"):
        build_model(cfg("svhn"), (28, 28, 1), 10, 0)
    with pytest.raises(ValueError, match="too small"):
        feature_map_shape(ARCHITECTURES["fmnist"][0], (8, 8, 1))
    with pytest.raises(ValueError, match="conv 1 takes 4 channels but conv 0 gives 3"):
        ImaCNN([ConvSpec(1, 3, 3, 1, 1), ConvSpec(4, 5, 3, 1, 1)], (8, 8, 1), rngs=nnx.Rngs(0))
    assert feature_map_shape(ARCHITECTURES["fmnist"][0], (36, 36, 1)) == (2, 2, 512)

    # A larger final map widens LayerNorm and head to h * w * C: 9 -> 5 -> 3, 3 * 3 * 6 = 54.
    def build_and_run():
        model = ImaCNN(
            [ConvSpec(1, 4, 3, 2, 1), ConvSpec(4, 6, 3, 1, 0)], (9, 9, 1), 3, rngs=nnx.Rngs(0)
        )
        return model(jnp.zeros((1, 9, 9, 1))), model.head.kernel[...], model.feature_norm.scale[...]

    (logits, features), head, scale = jax.eval_shape(build_and_run)  # shapes only, no compile
    assert features.shape == (1, 3, 3, 6) and logits.shape == (1, 3)
    assert head.shape == (54, 3) and scale.shape == (54,)
