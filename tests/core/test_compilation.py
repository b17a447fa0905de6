"""arjax.jit: jax.jit plus arjax's CPU compiler options (arjax/compilation.py)."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import arjax
from arjax import compilation

YNN = "xla_cpu_experimental_ynn_fusion_type"


def _conv_relu(x, k):
    y = jax.lax.conv_general_dilated(
        x, k, (2, 2), ((2, 2), (2, 2)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.maximum(y, 0.0)


def _conv_args():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((128, 14, 14, 64)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((5, 5, 64, 128)) / 40, jnp.float32)
    return x, k


def test_cpu_options_are_probed_and_used():
    options = arjax.compiler_options()
    if jax.default_backend() != "cpu":
        assert options == {}
        return
    if not options:
        pytest.skip("this jaxlib rejects arjax's CPU options (fallback to XLA defaults)")
    assert options == compilation.CPU_COMPILER_OPTIONS
    x, k = _conv_args()
    f = arjax.jit(_conv_relu)
    f(x, k)
    assert f.chosen_options == options
    ours = f.lower(x, k).compile().as_text()
    # The convolution stays XLA's own (Eigen) instead of a YNNPACK library fusion.
    assert "convolution(" in ours and "ynn" not in ours
    np.testing.assert_allclose(
        arjax.jit(_conv_relu)(x, k), jax.jit(_conv_relu)(x, k), rtol=1e-5, atol=1e-5
    )


def test_users_xla_flags_win(monkeypatch):
    flags = os.environ.get("XLA_FLAGS", "")
    monkeypatch.setenv("XLA_FLAGS", f"{flags} --{YNN}=LIBRARY_FUSION_TYPE_DOT")
    compilation.compiler_options.cache_clear()
    try:
        assert YNN not in arjax.compiler_options()
    finally:
        monkeypatch.setenv("XLA_FLAGS", flags)
        compilation.compiler_options.cache_clear()
    assert arjax.compiler_options() == arjax.compiler_options()  # cached again


def test_jit_forwards_jax_jit_arguments_and_traces_once():
    traces = []

    @functools.partial(arjax.jit, static_argnames="power", donate_argnums=0)
    def f(x, power):
        traces.append(power)
        return x**power

    assert f.__name__ == "f"
    out = f(jnp.arange(4.0), power=2)
    np.testing.assert_array_equal(out, [0.0, 1.0, 4.0, 9.0])
    f(jnp.arange(4.0) + 1, power=2)
    assert traces == [2] and f._cache_size() == 1
    f(jnp.arange(4.0), power=3)
    assert traces == [2, 3]
    lowered = f.lower(jnp.arange(4.0), power=2)
    assert isinstance(lowered, jax.stages.Lowered)  # .lower reaches the jitted function
    assert arjax.jit()(lambda x: x + 1)(1.0) == 2.0  # decorator with no arguments


def test_explicit_compiler_options_merge():
    f = arjax.jit(lambda x: x * 2, compiler_options={"xla_cpu_enable_fast_math": False})
    assert float(f(jnp.float32(3.0))) == 6.0


def test_import_does_not_start_a_backend():
    code = (
        "import arjax, jax._src.xla_bridge as xb; "
        "print(len(xb._backends)); arjax.jit(lambda x: x)(1.0); print(len(xb._backends))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "0" and int(out[1]) >= 1


def test_nested_inside_an_outer_jit_or_grad():
    inner = arjax.jit(lambda x: jnp.sin(x) * 2)

    @arjax.jit
    def outer(x):
        return inner(x) + inner(jnp.float32(1.0))  # a traced and a constant argument

    x = jnp.float32(0.5)
    np.testing.assert_allclose(outer(x), 2 * (np.sin(0.5) + np.sin(1.0)), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(inner)(x), 2 * np.cos(0.5), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(inner))(x), 2 * np.cos(0.5), rtol=1e-6)


def test_programs_without_convolution_keep_xla_defaults():
    w = jnp.ones((8, 4))
    f = arjax.jit(lambda x: jnp.mean(jnp.tanh(x @ w), axis=-1))
    assert f.chosen_options is None  # nothing chosen before the first call
    np.testing.assert_allclose(f(jnp.ones((3, 8))), np.tanh(8.0) * np.ones(3), rtol=1e-6)
    assert f.chosen_options == {}
    assert not compilation.has_convolution(jax.make_jaxpr(lambda x: x @ w)(jnp.ones((2, 8))).jaxpr)
    conv = jax.make_jaxpr(jax.grad(lambda x, k: jnp.sum(_conv_relu(x, k))))(*_conv_args())
    assert compilation.has_convolution(conv.jaxpr)
