"""Running a ``torch.nn.Module`` as a pure JAX function of its parameters and buffers.

torchax (Google's PyTorch-on-JAX library) executes PyTorch operators on JAX arrays:
inside its environment every aten operator a module's ``forward`` calls is answered by
a ``jax.numpy`` / ``lax`` function, so the forward pass traces under ``jax.jit``,
``jax.grad`` and ``lax.fori_loop`` like any JAX function. :class:`TorchRunner` adds what
arjax's pure steps need on top of ``torch.func.functional_call``:

* the parameters and buffers are arguments (JAX arrays), never the module's own
  tensors; buffers the forward pass updates in place (BatchNorm's running mean and
  variance, ``num_batches_tracked``) come back as new arrays;
* train / eval mode is an argument: the runner's private copy of the module is switched
  with ``module.train(mode)`` while the forward pass is traced, so the user's module is
  never touched;
* random operators (dropout) draw from the JAX key passed in, never from a global
  generator (torchax's per-environment key, overridden for the call);
* BatchNorm in train mode updates its running statistics as PyTorch does
  (``running = (1 - momentum) * running + momentum * batch``, the variance with Bessel's
  correction ``n / (n - 1)``): torchax 0.0.14's ``native_batch_norm`` computes the new
  statistics and drops them, so this module registers its own lowering in a private
  torchax environment (the global one is left alone);
* images arrive channels-last ``[B, H, W, C]`` (arjax's layout: its data sets, the Square
  attack's windows and CAMs assume it) and are handed to the module as ``[B, C, H, W]``;
  a 4-D feature map comes back as ``[B, h, w, C]``;
* the features (ARFL's ``L_robust``, CAMs) are read with forward hooks: the output of a
  named submodule, or the input of the last ``nn.Linear`` called ("penultimate").

torch and torchax are imported here, so this module is imported only when a PyTorch
model is built (the ``[torch]`` extra).
"""

import contextlib
import copy
import functools

import jax
import jax.numpy as jnp
import torch
from torchax import tensor as torchax_tensor

from arjax.models.layers import NormStats, standardize
from arjax.types import Array

PENULTIMATE = "penultimate"


def _batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps):
    """``aten.native_batch_norm`` that updates the running statistics in place, as PyTorch.

    Called by torchax with torchax tensors ``input [B, C, ...]``, per-channel ``weight``,
    ``bias``, ``running_mean``, ``running_var`` ``[C]`` (any may be None). The batch mean
    and biased variance normalise (in at least float32, like flax's norms); the running
    variance takes the unbiased one (PyTorch's ``BatchNorm`` documentation).

    Returns:
      ``(output [B, C, ...], batch or running mean [C], inverse std [C])``.
    """
    shape = [1, -1] + [1] * (input.ndim - 2)
    compute = input.float() if input.dtype in (torch.bfloat16, torch.float16) else input
    if training:
        dims = [0] + list(range(2, input.ndim))
        mean = compute.mean(dims)
        var = ((compute - mean.reshape(shape)) ** 2).mean(dims)
        if running_mean is not None:
            n = input.numel() // input.shape[1]
            unbiased = var * (n / max(n - 1, 1))
            running_mean.copy_((1 - momentum) * running_mean + momentum * mean)
            running_var.copy_((1 - momentum) * running_var + momentum * unbiased)
    else:
        mean, var = running_mean.float(), running_var.float()
    invstd = torch.rsqrt(var + eps)
    out = (compute - mean.reshape(shape)) * invstd.reshape(shape)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out.to(input.dtype), mean, invstd


def _expand(value, n: int) -> tuple[int, ...]:
    """A per-spatial-dimension tuple from an int or a list of 1 or ``n`` ints."""
    value = [value] if isinstance(value, int) else list(value)
    return tuple(value * n if len(value) == 1 else value)


def _convolution_channels_last(x, w, b, stride, padding, dilation, groups):
    """``aten.convolution`` (not transposed) computed channels-last: JAX arrays in and out.

    ``x [B, C, *spatial]`` and ``w [O, C / groups, *kernel]`` as PyTorch lays them out;
    the convolution runs on ``x`` moved to ``[B, *spatial, C]`` and the result is moved
    back to ``[B, O, *spatial']``.
    """
    n = w.ndim - 2
    spatial = "DHW"[3 - n :]
    y = jax.lax.conv_general_dilated(
        jnp.moveaxis(x, 1, -1),
        jnp.transpose(w, (*range(2, n + 2), 1, 0)),  # [*kernel, C / groups, O]
        _expand(stride, n),
        [(p, p) for p in _expand(padding, n)],
        rhs_dilation=_expand(dilation, n),
        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
        feature_group_count=groups,
    )
    if b is not None:
        y = y + b.astype(y.dtype)
    return jnp.moveaxis(y, -1, 1)


def _convolution(
    input, weight, bias, stride, padding, dilation, transposed, output_padding, groups
):
    """``aten.convolution`` computed channels-last with an HWIO kernel.

    torchax lowers PyTorch's convolutions in PyTorch's layout (``[B, C, H, W]`` input,
    ``[O, I, kH, kW]`` kernel). XLA:CPU runs such a convolution inside a ``while`` loop
    (every arjax attack, BPGD and TRADES' inner maximisation is a ``lax.fori_loop``) 6-8x
    slower than outside one; with the input channels-last and the kernel ``[kH, kW, I,
    O]`` it runs at the Flax model's speed there too (``benchmarks/vs_torchax.py``). So
    1-3-D convolutions are computed between transposes of the input, kernel and output.
    Transposed and unbatched convolutions keep torchax's lowering.
    """
    env = environment()
    if transposed or input.ndim != weight.ndim or not 1 <= weight.ndim - 2 <= 3:
        from torchax.ops import jaten  # torchax's own lowering, for the rare cases

        args = (stride, padding, dilation, transposed, output_padding, groups)
        jax_bias = None if bias is None else bias.jax()
        return torchax_tensor.Tensor(
            jaten._aten_convolution(input.jax(), weight.jax(), jax_bias, *args), env
        )
    jax_bias = None if bias is None else bias.jax()
    out = _convolution_channels_last(
        input.jax(), weight.jax(), jax_bias, stride, padding, dilation, groups
    )
    return torchax_tensor.Tensor(out, env)


@functools.cache
def environment() -> torchax_tensor.Environment:
    """The private torchax environment: :func:`_batch_norm` and :func:`_convolution` added.

    torchax's global environment is left as torchax makes it.
    """
    env = torchax_tensor.Environment()
    env.override_op_definition(torch.ops.aten.convolution.default, _convolution)
    for op in (
        torch.ops.aten.native_batch_norm.default,
        torch.ops.aten._native_batch_norm_legit.default,
    ):
        env.override_op_definition(op, _batch_norm)
    return env


def check_module(module: torch.nn.Module) -> None:
    """Rejects modules whose forward pass needs host values under tracing.

    Raises:
      ValueError: a BatchNorm with ``momentum=None`` (its cumulative average divides by
        ``float(num_batches_tracked)``, a host number), naming the submodule.
    """
    for name, sub in module.named_modules():
        norm = isinstance(sub, torch.nn.modules.batchnorm._BatchNorm)
        if norm and sub.momentum is None and sub.track_running_stats:
            raise ValueError(
                f"{name or type(module).__name__}: BatchNorm momentum=None (a cumulative "
                "average over float(num_batches_tracked)) cannot be traced; set a momentum"
            )


class _Capture:
    """Forward hooks that record the features while the runner's module runs."""

    def __init__(self, module: torch.nn.Module, features: str | None):
        self.values: list = []
        self._handles = []
        if features == PENULTIMATE:
            for sub in module.modules():
                if isinstance(sub, torch.nn.Linear):
                    hook = sub.register_forward_pre_hook(
                        lambda _, args: self.values.append(args[0])
                    )
                    self._handles.append(hook)
        elif features is not None:
            sub = module.get_submodule(features)
            hook = sub.register_forward_hook(lambda _, args, out: self.values.append(out))
            self._handles.append(hook)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()


def _logits_of(out):
    """The logits of a forward pass's output: a tensor, the first of a tuple, ``out.logits``."""
    if isinstance(out, tuple | list):
        return out[0]
    if isinstance(out, dict) or hasattr(out, "logits"):
        return out["logits"] if isinstance(out, dict) else out.logits
    return out


class TorchRunner:
    """A private copy of a torch module, run by torchax on JAX arrays.

    Static (a jit cache key through the NNX graph definition): equal only to itself.

    Attributes:
      module: the copy (its mode and hooks change while tracing; its tensors are unused).
      features: None, a submodule name, or ``"penultimate"``.
      channels_last: transpose 4-D inputs ``[B, H, W, C] -> [B, C, H, W]`` and 4-D
        features back.
      input_norm: per-channel ``(mean, std)`` applied to the ``[0, 1]`` input, or None.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        features: str | None,
        channels_last: bool,
        input_norm: NormStats | None,
    ):
        check_module(module)
        self.module = copy.deepcopy(module)
        self.features = features
        self.channels_last = channels_last
        self.input_norm = input_norm
        if features not in (None, PENULTIMATE):
            names = [n for n, _ in self.module.named_modules() if n]
            if features not in names:
                raise ValueError(
                    f"features={features!r} is not a submodule of {type(module).__name__}; "
                    f"valid: 'penultimate' or one of {names[:8]}{' ...' if len(names) > 8 else ''}"
                )

    def to_module_layout(self, x: Array) -> Array:
        """Standardised, and ``[B, C, H, W]`` for a 4-D channels-last input."""
        x = standardize(x, self.input_norm)
        if self.channels_last and x.ndim == 4:
            x = jnp.transpose(x, (0, 3, 1, 2))
        return x

    def __call__(
        self, params: dict, buffers: dict, x: Array, *, train: bool, key: jax.Array | None
    ) -> tuple[Array, Array | None, dict]:
        """Runs the module's forward pass on JAX arrays.

        Args:
          params: ``{torch name: array}`` of the trainable parameters.
          buffers: ``{torch name: array}`` of the buffers (and frozen parameters).
          x: inputs ``[B, H, W, C]`` (channels-last) or whatever the module takes.
          train: the module's mode while it runs (BatchNorm batch statistics, dropout on).
          key: PRNG key the random operators draw from (None: torchax's own, fixed).

        Returns:
          ``(logits, features or None, new_buffers)``; ``new_buffers`` has the same keys
          as ``buffers``, with the values the forward pass wrote in place.
        """
        env = environment()
        self.module.train(train)
        p, b, xt = env.j2t_iso((dict(params), dict(buffers), self.to_module_layout(jnp.asarray(x))))
        with _Capture(self.module, self.features) as capture, env:
            with env.override_property(prng=key) if key is not None else contextlib.nullcontext():
                out = torch.func.functional_call(self.module, {**p, **b}, (xt,))
        logits = env.t2j_iso(_logits_of(out))
        features = None
        if self.features is not None:
            if not capture.values:
                raise ValueError(f"features={self.features!r}: the forward pass never reached it")
            features = env.t2j_iso(capture.values[-1])
            if self.channels_last and features.ndim == 4:
                features = jnp.transpose(features, (0, 2, 3, 1))
        return logits, features, env.t2j_iso(b)

    def probe(self, example: torch.Tensor) -> dict:
        """Eager torch run of ``example`` (eval mode): output and feature shapes, CAM head.

        Returns:
          ``{"logits": shape, "features": shape or None, "head": name of the last
          nn.Linear called or None}``.
        """
        called = []
        handles = [
            sub.register_forward_pre_hook(lambda m, _, n=name: called.append(n))
            for name, sub in self.module.named_modules()
            if isinstance(sub, torch.nn.Linear)
        ]
        try:
            self.module.eval()
            with torch.no_grad(), _Capture(self.module, self.features) as capture:
                out = _logits_of(self.module(example))
        finally:
            for handle in handles:
                handle.remove()
        feats = capture.values[-1] if capture.values else None
        if self.features is not None and feats is None:
            raise ValueError(f"features={self.features!r}: the forward pass never reached it")
        return {
            "logits": tuple(out.shape),
            "features": None if feats is None else tuple(feats.shape),
            "head": called[-1] if called else None,
        }


def to_jax(tensors: dict[str, torch.Tensor]) -> dict[str, jax.Array]:
    """CPU torch tensors as JAX arrays (int64 becomes int32 unless x64 is on)."""

    def convert(v: torch.Tensor) -> jax.Array:
        v = v.detach().cpu()
        if v.dtype == torch.bfloat16:  # numpy has no bfloat16
            return jnp.asarray(v.float().numpy()).astype(jnp.bfloat16)
        return jnp.asarray(v.numpy())

    return {k: convert(v) for k, v in tensors.items()}


def numpy_dtype(dtype: torch.dtype):
    """The numpy dtype of a torch dtype (what the exported state dict stores)."""
    if dtype == torch.bfloat16:
        return jnp.dtype(jnp.bfloat16)
    return torch.empty(0, dtype=dtype).numpy().dtype


__all__ = ["PENULTIMATE", "TorchRunner", "check_module", "environment", "numpy_dtype", "to_jax"]
