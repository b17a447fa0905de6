"""How arjax compiles: ``jax.jit`` plus XLA options that make the CPU backend faster.

XLA:CPU (jaxlib 0.10) hands convolutions and matrix products to the YNNPACK library by
default. On the Xeon (AVX-512) machines this project measures on, YNNPACK's
convolutions are slower than XLA's own (Eigen) ones for every network we ship: the
Fashion-MNIST CNN's forward pass takes 59 ms instead of 41 ms at batch 128, ResNet-18's
forward+input-gradient 650 ms instead of 513 ms at batch 8, and the adversarial train
step compiles in 6.2 s instead of 4.7 s (``benchmarks/README.md``). Keeping YNNPACK for
individual matrix products only (``CPU_COMPILER_OPTIONS``) recovers the convolutions.
Programs without a convolution (MLPs) keep XLA's defaults, whose YNNPACK reduction
fusions make them 5-15 % faster than these options would.

:func:`jit` is ``jax.jit`` with these options on the CPU backend, for programs that
have a convolution (decided at the first call), and none elsewhere.
Every function arjax compiles goes through it; notebook users who jit arjax attacks
themselves can use ``arjax.jit`` in place of ``jax.jit`` for the same effect. The
options are per compilation (``jax.jit(..., compiler_options=...)``), so nothing global
changes, and a user's own ``XLA_FLAGS`` naming one of the options wins.
"""

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp

# XLA debug options (DebugOptions fields) for the CPU backend.
CPU_COMPILER_OPTIONS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}

log = logging.getLogger(__name__)


@functools.cache
def compiler_options() -> dict[str, str]:
    """The XLA options arjax compiles with on the default backend (cached per process).

    ``CPU_COMPILER_OPTIONS`` on the CPU backend, minus any option the user's ``XLA_FLAGS``
    sets; empty on GPU/TPU. The first call compiles a one-op function with the options
    to check that this jaxlib knows them, and falls back to ``{}`` (with a log message)
    if it does not, so a newer jaxlib that drops an option still runs.

    Returns:
      a dict for ``jax.jit(..., compiler_options=...)``.
    """
    if jax.default_backend() != "cpu":
        return {}
    user_flags = os.environ.get("XLA_FLAGS", "")
    options = {k: v for k, v in CPU_COMPILER_OPTIONS.items() if k not in user_flags}
    if not options:
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(jnp.float32(0)).compile()
    except Exception as err:  # noqa: BLE001 -- any failure means "not supported here"
        log.info("XLA rejected arjax's CPU compiler options %s (%s); using defaults", options, err)
        return {}
    return options


def has_convolution(jaxpr: jax.extend.core.Jaxpr) -> bool:
    """Whether a jaxpr (or any jaxpr nested in its equations) has a convolution."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            return True
        if any(has_convolution(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params)):
            return True
    return False


class _LazyJit:
    """``jax.jit(fun, compiler_options=...)`` with the options chosen at the first call.

    The first top-level call traces ``fun`` (JAX caches the trace, so the compile that
    follows does not trace it again) and compiles with :func:`compiler_options` if the
    program has a convolution, else with XLA's defaults (the options only help
    convolutions; XLA's default YNNPACK fusions are faster for convolution-free programs
    such as MLPs). The choice then holds for every later call. Nothing is built before
    the first use, so ``import arjax`` does not initialise a JAX backend (module-level
    jitted functions would otherwise query it before a user could pick a platform).

    JAX accepts compiler options only on a top-level jit, so a call made while an outer
    function is being traced (it is inlined there and compiled with the outer function's
    options) goes to a plain ``jax.jit`` of the same function. Attributes of the jitted
    function (``lower``, ``trace``, ``eval_shape``, ``clear_cache``, ...) are forwarded;
    before the first call they use the convolution options.
    """

    def __init__(self, fun: Callable, kwargs: dict[str, Any]):
        self._fun, self._kwargs = fun, kwargs
        self._chosen: Any = None
        self.chosen_options: dict[str, str] | None = None  # set by the first call
        functools.update_wrapper(self, fun)

    def _with_options(self, options: dict[str, str]) -> Any:
        kwargs = dict(self._kwargs)
        options = {**options, **(kwargs.pop("compiler_options", None) or {})}
        return jax.jit(self._fun, compiler_options=options or None, **kwargs)

    @functools.cached_property
    def _jitted(self) -> Any:
        return self._with_options(compiler_options())

    @functools.cached_property
    def _nested(self) -> Any:
        kwargs = {k: v for k, v in self._kwargs.items() if k != "compiler_options"}
        return jax.jit(self._fun, **kwargs)

    def _choose(self, args: tuple, kwargs: dict) -> Any:
        options = compiler_options()
        if options and not has_convolution(self._nested.trace(*args, **kwargs).jaxpr.jaxpr):
            options = {}
        self.chosen_options = options
        return self._with_options(options)

    def __call__(self, *args, **kwargs):
        leaves = jax.tree.leaves((args, kwargs))
        if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
            return self._nested(*args, **kwargs)
        try:
            if self._chosen is None:
                self._chosen = self._choose(args, kwargs)
            return self._chosen(*args, **kwargs)
        except ValueError as err:  # traced inside an outer jit with no traced argument
            if "compiler_options" not in str(err):
                raise
            return self._nested(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_fun", "_kwargs", "_jitted", "_nested", "_chosen"):
            raise AttributeError(name)
        return getattr(self._chosen or self._jitted, name)


def jit(fun: Callable | None = None, **kwargs: Any) -> Any:
    """``jax.jit`` with arjax's backend compiler options (:func:`compiler_options`).

    The options apply when the function's program has a convolution (checked on the
    first call's trace, which JAX then reuses for compiling); ``.chosen_options`` says
    what the first call picked.

    Same arguments as ``jax.jit`` (``static_argnums``, ``in_shardings``,
    ``donate_argnums``, ...); options given in ``compiler_options`` override arjax's. Usable
    as ``arjax.jit(f, ...)``, ``@arjax.jit`` or ``@functools.partial(arjax.jit, ...)``.

    Args:
      fun: the function to compile; None returns a decorator taking it.
      **kwargs: passed to ``jax.jit``.

    Returns:
      the jitted function (a thin wrapper; ``.lower`` / ``.trace`` work as on ``jax.jit``).
    """
    if fun is None:
        return functools.partial(jit, **kwargs)
    return _LazyJit(fun, kwargs)
