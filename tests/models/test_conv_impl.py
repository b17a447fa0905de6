"""The CPU convolution path ("patches") computes what XLA's convolution computes.

Outputs, input gradients, kernel gradients and second derivatives of
``conv2d(impl="patches")`` and ``impl="auto"`` equal ``impl="xla"`` within float32
rounding, for the kernel sizes, strides and paddings of arjax's networks; ``auto``
compiles on CPU without the lhs-dilated convolution (XLA:CPU's slow path) and is XLA's
convolution on other backends; ``Conv`` takes its implementation from ``conv_impl_scope``
at construction, and ``build_model`` from ``model.conv_impl``.
"""

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from arjax.config_lib import ConfigError
from arjax.experiment import train as loop
from arjax.models import build_model, convolution
from arjax.models.convolution import (
    CONV_IMPLS,
    conv2d,
    conv_impl_scope,
    default_conv_impl,
    extract_patches,
    fold_patches,
)
from arjax.models.layers import Conv

CONFIGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs"
)

# (kernel, stride, padding, H, W): IMA CNNs (5/2/2, 4/1/0 one-pixel output, 3/1/1, 3/2/1),
# ResNet/DenseNet (7/2/3 stem, 1x1 convolutions and 1x1/2 shortcuts), odd sizes and an
# unused border row/column (4/2/0 on 7x6).
CASES = [
    (5, 2, 2, 9, 8),
    (5, 2, 2, 7, 7),
    (4, 1, 0, 4, 4),
    (3, 1, 1, 6, 5),
    (3, 2, 1, 7, 6),
    (7, 2, 3, 11, 10),
    (1, 1, 0, 5, 4),
    (1, 2, 0, 5, 6),
    (4, 2, 0, 7, 6),
]


def _inputs(k, h, w, seed, c_in=3, c_out=4, batch=2):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, h, w, c_in)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, c_in, c_out)) / k, jnp.float32)
    return x, kernel


def _close(a, b, tol=2e-5):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = max(np.abs(b).max(), 1e-6)
    assert np.abs(a - b).max() <= tol * scale, np.abs(a - b).max() / scale


@pytest.mark.parametrize("k, stride, padding, h, w", CASES)
def test_outputs_and_gradients_equal_xla(k, stride, padding, h, w):
    x, kernel = _inputs(k, h, w, seed=k * 100 + stride * 10 + padding)

    def objective(impl):
        # A nonlinear function of the output, so the cotangent is not constant.
        return lambda x, kernel: jnp.sum(jnp.sin(conv2d(x, kernel, stride, padding, impl)))

    @jax.jit
    def everything(x, kernel):
        out = {}
        for impl in CONV_IMPLS:
            y = conv2d(x, kernel, stride, padding, impl)
            dx, dk = jax.grad(objective(impl), argnums=(0, 1))(x, kernel)
            out[impl] = (y, dx, dk)
        return out

    out = everything(x, kernel)
    ref = out["xla"]
    out_hw = ((h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1)
    assert ref[0].shape[1:3] == out_hw
    assert float(jnp.abs(ref[1]).max()) > 0 and float(jnp.abs(ref[2]).max()) > 0
    for impl in ("patches", "auto"):
        for got, want in zip(out[impl], ref, strict=True):
            _close(got, want)


@pytest.mark.parametrize("k, stride, padding", [(3, 2, 1), (4, 1, 0)])
def test_second_order_reverse_mode_equals_xla(k, stride, padding):
    h = 4 if padding == 0 else 5
    x, kernel = _inputs(k, h, h, seed=7)

    def penalty_grads(impl):
        # Gradient of an input-gradient penalty ||d loss / dx||^2: reverse over reverse.
        def loss(x, kernel):
            return jnp.sum(jnp.tanh(conv2d(x, kernel, stride, padding, impl)) ** 2)

        def penalty(x, kernel):
            return jnp.sum(jax.grad(loss)(x, kernel) ** 2)

        return jax.jit(jax.grad(penalty, argnums=(0, 1)))(x, kernel)

    ref = penalty_grads("xla")
    assert min(float(jnp.abs(r).max()) for r in ref) > 0
    for impl in ("patches", "auto"):
        for got, want in zip(penalty_grads(impl), ref, strict=True):
            _close(got, want, tol=1e-4)


def test_forward_mode_needs_xla():
    x, kernel = _inputs(3, 6, 6, seed=4)
    tangent = jnp.ones_like(x)
    _, jvp = jax.jvp(lambda x: conv2d(x, kernel, 2, 1, "xla"), (x,), (tangent,))
    _close(jvp, conv2d(tangent, kernel, 2, 1, "xla"))  # linear in x
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: conv2d(x, kernel, 2, 1, "patches"), (x,), (tangent,))


def test_extract_patches_is_the_im2col_of_the_kernel_layout():
    x, kernel = _inputs(3, 6, 5, seed=3)
    patches = extract_patches(x, 3, 2, 1)
    assert patches.shape == (2, 3, 3, 3 * 3 * 3)
    xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    # patches[b, i, j, (di * k + dj) * C + c] == xpad[b, 2i + di, 2j + dj, c]
    np.testing.assert_array_equal(np.asarray(patches)[1, 2, 1, (2 * 3 + 1) * 3 + 2], xp[1, 6, 3, 2])
    _close(patches @ kernel.reshape(-1, 4), conv2d(x, kernel, 2, 1, "xla"))


# Stride 1, 2 (odd and even kernels, an unused border), 3 (kernel not a multiple), 1 pixel.
FOLD_CASES = [(3, 1, 1, 6, 5), (5, 2, 2, 9, 8), (4, 2, 0, 7, 6), (4, 3, 2, 9, 9), (4, 1, 0, 4, 4)]


@pytest.mark.parametrize("k, stride, padding, h, w", FOLD_CASES)
def test_fold_patches_is_the_adjoint_of_extract_patches(k, stride, padding, h, w):
    # <extract(x), d> == <x, fold(d)> for all x, d: fold is extract's transpose.
    x, _ = _inputs(k, h, w, seed=5)
    shape = jax.eval_shape(lambda x: extract_patches(x, k, stride, padding), x).shape
    d = jnp.asarray(np.random.default_rng(6).normal(size=shape), jnp.float32)

    @jax.jit
    def products(x, d):
        extract = lambda x: extract_patches(x, k, stride, padding)  # noqa: E731
        folded = fold_patches(d, x.shape, k, stride, padding)
        (transposed,) = jax.linear_transpose(extract, x)(d)
        return jnp.vdot(extract(x), d), jnp.vdot(x, folded), folded, transposed

    lhs, rhs, folded, transposed = products(x, d)
    assert folded.shape == x.shape
    assert abs(float(lhs - rhs)) <= 1e-5 * max(abs(float(lhs)), 1.0)
    _close(folded, transposed, tol=1e-6)


def test_auto_input_gradient_of_strided_conv_is_no_convolution_on_cpu():
    x, kernel = _inputs(5, 7, 7, seed=1, c_in=4, c_out=8)

    def convolutions(impl):
        f = jax.grad(lambda x: jnp.sum(conv2d(x, kernel, 2, 2, impl) ** 2))
        return jax.jit(f).lower(x).compile().as_text().count(" convolution(")

    # XLA: the forward and the transposed (dilated) convolution. patches: the forward
    # only; the input gradient is a matrix product and a fold, the unused kernel
    # gradient is dropped by jit.
    assert convolutions("xla") == 2
    assert convolutions("auto") == convolutions("patches") == 1


def test_input_gradients_in_a_loop_use_hwio_kernels_on_cpu():
    # Inside a while loop (every PGD), XLA folds a kernel transpose into the convolution's
    # dimension numbers (01oi), which XLA:CPU runs on a slow generic path; "auto" keeps
    # every convolution of a looped input gradient in the HWIO (01io) form.
    x, kernel = _inputs(3, 6, 6, seed=9, c_in=4, c_out=8)
    k1 = jnp.asarray(np.random.default_rng(1).normal(size=(1, 1, 8, 4)), jnp.float32)

    def dim_labels(impl):
        def net(x):
            h = jnp.tanh(conv2d(x, kernel, 1, 1, impl))
            return jnp.sum(jnp.tanh(conv2d(h, k1, 1, 0, impl)) ** 2)

        def pgd_like(x):
            return jax.lax.fori_loop(0, 2, lambda _, z: z + jnp.sign(jax.grad(net)(z)), x)

        text = jax.jit(pgd_like).lower(x).compile().as_text()
        return {line.split("dim_labels=")[1].split(",")[0] for line in text.splitlines()
                if " convolution(" in line}  # fmt: skip

    assert dim_labels("auto") == {"b01f_01io->b01f"}
    assert "b01f_01oi->b01f" in dim_labels("xla")  # what the test guards against


def test_strided_input_gradient_tiled_over_the_batch_equals_xla(monkeypatch):
    # A 20-byte budget cuts the batch of 6 into tiles of 1 example (lax.map); 400 bytes
    # (2 examples' im2col cotangent of 4x4x(3*3*3) floats = 1728 bytes each) gives 1.
    assert convolution.batch_tile(6, 1728, 20) == 1
    assert convolution.batch_tile(6, 1728, 4000) == 2
    assert convolution.batch_tile(6, 1728, 1 << 20) == 6
    x, kernel = _inputs(3, 7, 8, seed=4, batch=6)
    g = jnp.asarray(np.random.default_rng(5).normal(size=(6, 4, 4, 4)), jnp.float32)

    def input_grad(impl):
        return jax.vjp(lambda x: conv2d(x, kernel, 2, 1, impl), x)[1](g)[0]

    ref = input_grad("xla")
    for budget in (20, 4000):
        monkeypatch.setattr(convolution, "INPUT_GRAD_TILE_BYTES", budget)
        text = jax.jit(lambda x: input_grad("patches")).lower(x).as_text()
        assert "while" in text  # tiled
        _close(jax.jit(lambda x: input_grad("patches"))(x), ref)


def test_vmap_and_batch_independence():
    x, kernel = _inputs(3, 6, 6, seed=2)
    per_example = jax.vmap(lambda xi: conv2d(xi[None], kernel, 2, 1, "auto")[0])(x)
    _close(per_example, conv2d(x, kernel, 2, 1, "xla"))


def test_conv_impl_scope_sets_the_layer_implementation():
    assert default_conv_impl() == "auto"
    assert Conv(1, 2, 3, rngs=nnx.Rngs(0)).impl == "auto"
    with conv_impl_scope("xla"):
        assert Conv(1, 2, 3, rngs=nnx.Rngs(0)).impl == "xla"
        assert Conv(1, 2, 3, impl="patches", rngs=nnx.Rngs(0)).impl == "patches"
        with pytest.raises(RuntimeError):
            with conv_impl_scope("patches"):
                assert default_conv_impl() == "patches"
                raise RuntimeError
        assert default_conv_impl() == "xla"  # restored after the exception
    assert default_conv_impl() == "auto"
    with pytest.raises(ValueError, match="auto, xla, patches"):
        Conv(1, 2, 3, impl="fft", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="valid"):
        conv_impl_scope("cudnn").__enter__()
    with pytest.raises(ValueError, match="valid"):
        conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), 1, 1, "fft")


def test_auto_is_xla_off_cpu(monkeypatch):
    # On GPU/TPU "auto" must trace to XLA's convolution and its autodiff, no custom VJP.
    x, kernel = _inputs(3, 6, 6, seed=8)

    def jaxpr(impl):
        f = jax.grad(lambda x, kernel: jnp.sum(conv2d(x, kernel, 2, 1, impl) ** 2), (0, 1))
        return str(jax.make_jaxpr(f)(x, kernel))

    assert "custom_vjp" in jaxpr("auto") and "custom_vjp" not in jaxpr("xla")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert jaxpr("auto") == jaxpr("xla")
    assert "custom_vjp" in jaxpr("patches")


def test_build_model_applies_model_conv_impl_to_every_conv():
    for impl in (None, "xla", "patches"):
        cfg = ml_collections.ConfigDict(dict(name="ima_cnn", variant="fmnist"))
        if impl is not None:
            cfg.conv_impl = impl
        model, params, stats = build_model(cfg, (28, 28, 1), 10, seed=0)
        module = nnx.merge(model.graphdef, params, stats)
        convs = [m for _, m in nnx.iter_graph(module) if isinstance(m, Conv)]
        assert len(convs) == 4 and {c.impl for c in convs} == {impl or "auto"}
    assert default_conv_impl() == "auto"  # the scope ended with the build
    cfg = ml_collections.ConfigDict(dict(name="ima_cnn", variant="fmnist", conv_impl="cudnn"))
    with pytest.raises(ConfigError, match=r"model\.conv_impl 'cudnn'.*auto, xla, patches"):
        build_model(cfg, (28, 28, 1), 10, seed=0)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "*.py"))))
def test_every_config_exposes_model_conv_impl(path):
    # `--config.model.conv_impl=xla` needs the field (the CLI locks the config's keys).
    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config(None)
    if cfg.model.name == "torch":  # a PyTorch module's convolutions are torchax's
        assert "conv_impl" not in cfg.model
        return
    assert cfg.model.conv_impl == "auto"


def test_bad_conv_impl_fails_in_validation_before_any_data(tmp_path):
    path = os.path.join(CONFIGS, "chestxray14_khakzar.py")
    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config("clean")
    cfg.model.conv_impl = "cudnn"  # data.root is empty too: the model field must fail first
    with pytest.raises(ConfigError, match=r"model\.conv_impl 'cudnn'.*auto, patches, xla"):
        loop.run(cfg, str(tmp_path), progress=False)
