"""The arjax side of the benchmarks: models, jitted workloads, and the timing protocol.

Shared by ``attack_throughput.py`` (arjax alone) and ``vs_pytorch.py`` (arjax next to
PyTorch). Every workload is a jitted function plus its arguments; train steps thread
their state through calls (donated, as the training loop does), so a timed call is
exactly what a training run repeats.

Timing protocol: the first call (trace + lower + XLA compile + one run) is timed, and
``compile_s`` is the time JAX reports for tracing, lowering and compiling during it
(``jax.monitoring`` duration events, so a slow first run does not count as compile
time); then warm-up calls, then ``repeats`` calls timed one by one with
``jax.block_until_ready``; the median is the steady-state time. Several workloads timed
together are *interleaved* (round r runs every workload once), so a change of machine
load hits all of them alike.
"""

import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import arjax
from arjax import methods
from arjax.models import MODELS as REGISTERED_MODELS
from arjax.models import build_model
from arjax.models.convolution import conv_impl_scope
from arjax.training.state import create_train_state
from arjax.training.step import make_train_step

# name -> (model config, per-example input shape, num_classes, bounds, linf eps, l2 eps).
MODELS = {
    "moons_mlp": (
        dict(
            name="mlp",
            hidden=(32, 64, 128),
            activation="leaky_relu",
            layer_norm=(False, True, True),
            num_outputs=2,
        ),
        (2,),
        2,
        None,
        0.1,
        0.2,
    ),
    "fmnist_cnn": (dict(name="ima_cnn", variant="fmnist"), (28, 28, 1), 10, (0.0, 1.0), 0.1, 1.0),
    "svhn_cnn": (dict(name="ima_cnn", variant="svhn"), (32, 32, 3), 10, (0.0, 1.0), 0.03, 1.0),
    "resnet18": (dict(name="resnet18"), (224, 224, 3), 2, (0.0, 1.0), 0.01, 1.0),
    "densenet121_truncated": (
        dict(name="densenet121_truncated"),
        (224, 224, 3),
        14,
        (0.0, 1.0),
        0.005,
        1.0,
    ),
    # IMA's segmentation net (issue 15): the nnU-Net-style 2-D U-Net, per-pixel logits and
    # integer masks; attacks and IMA's BPGD count a sample correct when its Dice >= 0.6.
    "unet_seg": (
        dict(name="unet", widths=(32, 64, 128, 256)),
        (64, 64, 1),
        2,
        (0.0, 1.0),
        0.03,
        1.0,
    ),  # fmt: skip
}
# Models whose labels are masks [B, H, W] (the others: class ids [B]).
SEGMENTATION_MODELS = ("unet_seg",)


# The jit every workload uses: arjax's (jax.jit + arjax.compilation's CPU options) or, with
# ``use_xla_options("default")``, plain jax.jit (XLA's own defaults, for comparison).
XLA_OPTIONS = ("arjax", "default")
_jit = arjax.jit


def use_xla_options(which: str) -> None:
    """``"arjax"``: compile workloads with ``arjax.jit``; ``"default"``: with ``jax.jit``."""
    global _jit
    if which not in XLA_OPTIONS:
        raise ValueError(f"unknown xla options {which!r}; valid: {', '.join(XLA_OPTIONS)}")
    _jit = arjax.jit if which == "arjax" else jax.jit
    if which == "arjax":
        arjax.compiler_options()  # probe now, not inside the first timed call


# The 224x224 networks take seconds per PGD step on a CPU: a small default batch.
DEFAULT_BATCH = {"resnet18": 8, "densenet121_truncated": 8, "unet_seg": 16}


def default_batch(name: str) -> int:
    """The batch a benchmark uses for ``name`` when ``--batch`` is not given."""
    return DEFAULT_BATCH.get(name, 128)


def available_models() -> list[str]:
    """Benchmark models whose arjax model name is registered (ResNet/DenseNet may not be)."""
    return [name for name, spec in MODELS.items() if spec[0]["name"] in REGISTERED_MODELS]


def cores() -> int:
    """CPU cores this process may run on (the thread count for both frameworks)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@dataclasses.dataclass
class Setup:
    """A built model and one fixed batch."""

    name: str
    model: object  # arjax.models.ModelFns
    params: object
    stats: object
    x: jax.Array
    y: jax.Array
    key: jax.Array
    bounds: tuple[float, float] | None
    num_classes: int
    eps: float
    eps_l2: float


def setup(
    name: str,
    batch: int,
    conv_impl: str = "auto",
    seed: int = 0,
    dtype: str = "float32",
    shape: tuple[int, ...] | None = None,
) -> Setup:
    """Builds the named model (``conv_impl`` for its convolutions, ``dtype`` its compute
    dtype; the same seed gives the same float32 weights for every dtype) and a random batch.
    ``shape`` replaces the model's per-example input shape (e.g. small images for a dry run).
    """
    cfg, default_shape, num_classes, bounds, eps, eps_l2 = MODELS[name]
    shape = tuple(shape or default_shape)
    cfg = ml_collections.ConfigDict({**cfg, "dtype": dtype})
    with conv_impl_scope(conv_impl):
        model, params, stats = build_model(cfg, shape, num_classes, seed)
    rng = np.random.default_rng(seed)
    x = rng.random((batch, *shape), np.float32)
    if bounds is None:  # two-moons points live around [-1, 2] x [-0.5, 1]
        x = 3.0 * x - 1.0
    label_shape = (batch, *shape[:2]) if name in SEGMENTATION_MODELS else (batch,)
    y = rng.integers(0, num_classes, label_shape).astype(np.int32)
    return Setup(
        name, model, params, stats, jnp.asarray(x), jnp.asarray(y), jax.random.key(seed),
        bounds, num_classes, eps, eps_l2,
    )  # fmt: skip


def attack_workloads(s: Setup, steps: int, bisections: int) -> dict[str, tuple[Callable, tuple]]:
    """Jitted model passes and attacks on the batch: name -> (fn, args)."""
    k, nb, eps, bounds = steps, bisections, s.eps, s.bounds
    margins = jnp.full((s.x.shape[0],), eps)

    def logits_fn(p, st):
        return s.model.logits_fn(p, st)

    def total_loss(p, st, x, y):
        return jnp.sum(arjax.losses.classification_loss(logits_fn(p, st)(x), y))

    def attack(text):
        # Every attack row goes through the one registry, as methods and evaluation do
        # (PGD's step is the registry's 4 * eps / k).
        spec = arjax.attacks.parse_attack(text, default_steps=k)

        def fn(p, st, x, y, key=None):
            return arjax.attacks.run_attack(spec, logits_fn(p, st), x, y, key, bounds=bounds)

        return fn

    def bpgd(p, st, x, y, key):
        return arjax.attacks.bpgd(
            logits_fn(p, st), x, y, key, eps=margins, num_steps=k, num_bisections=nb,
            bounds=bounds,
        )  # fmt: skip

    args2, args4, args5 = (s.params, s.stats, s.x), (s.params, s.stats, s.x, s.y), None
    args5 = (*args4, s.key)
    rows = {
        "forward": (_jit(lambda p, st, x: logits_fn(p, st)(x)), args2),
        "forward+input_grad": (_jit(jax.grad(total_loss, argnums=2)), args4),
        "forward+param_grad": (_jit(jax.grad(total_loss, argnums=0)), args4),
        "fgsm": (_jit(attack(f"fgsm:linf:{eps!r}")), args4),
        f"pgd{k}_linf": (_jit(attack(f"pgd:linf:{eps!r}:{k}")), args5),
        f"pgd{k}_l2": (_jit(attack(f"pgd:l2:{s.eps_l2!r}:{k}")), args5),
        f"bpgd{k}+{nb}": (_jit(bpgd), args5),
    }
    if s.name not in SEGMENTATION_MODELS:  # the minimum-norm attacks (k iterations, l2)
        for name in ("fab", "fmn"):
            rows[f"{name}{k}_l2"] = (_jit(attack(f"{name}:l2:{s.eps_l2!r}:{k}")), args5)
    return rows


def autoattack_workloads(
    s: Setup, steps: int, bisections: int
) -> dict[str, tuple[Callable, tuple]]:
    """APGD-CE, the standard AutoAttack ensemble and each of its members alone (l-inf).

    With the references the ratios need, timed in the same interleaved group: the two
    model passes and PGD with as many steps. ``bisections`` is unused (the builders share
    one signature). The members use the ensemble's keys (member i: ``fold_in(key, i)``).
    """
    del bisections
    k, eps, bounds = steps, s.eps, s.bounds
    base = attack_workloads(s, k, 1)
    rows = {n: base[n] for n in ("forward", "forward+input_grad", f"pgd{k}_linf")}

    def registry(text):
        spec = arjax.attacks.parse_attack(text, default_steps=k)

        def fn(p, st, x, y, key):
            logits = s.model.logits_fn(p, st)
            return arjax.attacks.run_attack(spec, logits, x, y, key, bounds=bounds)

        return _jit(fn)

    args = (s.params, s.stats, s.x, s.y, s.key)
    rows[f"apgd-ce{k}_linf"] = (registry(f"apgd-ce:linf:{eps!r}:{k}"), args)
    rows[f"autoattack{k}_linf"] = (registry(f"autoattack:linf:{eps!r}:{k}"), args)
    for i, member in enumerate(arjax.attacks.ensemble.autoattack_members("standard", num_steps=k)):

        def part(p, st, x, y, key, i=i, member=member):
            logits = s.model.logits_fn(p, st)
            k_i = jax.random.fold_in(key, i)
            return member.run(logits, x, y, k_i, eps=eps, norm="linf", bounds=bounds)

        rows[f"autoattack{k}/{member.name}"] = (_jit(part), args)
    return rows


def method_configs(s: Setup, steps: int, bisections: int) -> dict[str, methods.Method]:
    """One method per training method (PGD-10 for the adversarial ones)."""
    eps = s.eps
    return {
        "standard": methods.Standard(),
        "adversarial_pgd10": methods.Adversarial(attack=f"pgd:linf:{eps!r}:10"),
        "arfl_pgd10": methods.ARFL(attack=f"pgd:linf:{eps!r}:10"),
        "ima": methods.IMA(
            delta=eps / 10, eps_max=2 * eps, num_steps=steps, num_bisections=bisections
        ),
    }


class StatefulStep:
    """A jitted, state-donating train step called as ``fn()``; the state threads through.

    ``margin``: the IMA margin table's initial value (default ``s.eps``).
    """

    def __init__(self, s: Setup, method: methods.Method, tx, margin=None):
        loss = methods.make_loss(method, s.model, s.bounds)
        margin = s.eps if margin is None else margin
        table = {"margins": jnp.full((s.x.shape[0],), margin)} if method.name == "ima" else None
        params, stats = jax.tree.map(jnp.copy, (s.params, s.stats))  # donated below
        self.state = create_train_state(params, stats, tx, 0, method_state=table)
        self.step = _jit(make_train_step(loss, tx), donate_argnums=0)
        batch = s.x.shape[0]
        self.batch = {"image": s.x, "label": s.y, "index": jnp.arange(batch, dtype=jnp.int32)}

    def __call__(self):
        self.state, metrics = self.step(self.state, self.batch)
        return metrics


def train_workloads(s: Setup, steps: int, bisections: int) -> dict[str, tuple[Callable, tuple]]:
    """One Adam step per method: name -> (fn, ())."""
    tx = optax.adam(1e-3)
    return {
        f"train_step/{name}": (StatefulStep(s, cfg, tx), ())
        for name, cfg in method_configs(s, steps, bisections).items()
    }


# JAX's compile-phase duration events; first_call sums them while it runs.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_seconds: list[float] = []


def _on_duration(event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS:
        _compile_seconds.append(duration)


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def first_call(fn: Callable, args: tuple) -> tuple[float, float]:
    """(seconds of the first call, seconds of it JAX spent tracing, lowering, compiling)."""
    _compile_seconds.clear()
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0, sum(_compile_seconds)


def interleaved(
    workloads: dict[str, tuple[Callable, tuple]],
    repeats: int,
    warmup: int = 1,
    pause: float = 0.0,
    label: str = "",
) -> dict[str, dict]:
    """Compile time, then steady-state times of several workloads timed round-robin.

    ``pause`` seconds of sleep (untimed) before each timed call let the thread pools of
    the previous workload go idle (XLA's and OpenMP's workers spin-wait after a call).
    Progress (``label``, then one dot per round) goes to stderr.

    Returns:
      name -> ``{"first_call_s", "compile_s", "step_s" (median), "min_s", "times_s",
      "recompiled"}``; ``compile_s``: JAX's trace + lower + compile time within the
      first call (0 for PyTorch), ``recompiled``: the jit cache grew after the first
      call (a shape or static argument changed between calls).
    """
    _progress(f"{label or ', '.join(workloads)}: compiling")
    rows = {}
    for name, (fn, args) in workloads.items():
        first_s, compile_s = first_call(fn, args)
        rows[name] = {"first_call_s": first_s, "compile_s": compile_s}
    _progress(", timing ")
    cache = {name: _cache_size(fn) for name, (fn, _) in workloads.items()}
    for _ in range(warmup):
        for fn, args in workloads.values():
            jax.block_until_ready(fn(*args))
    times = {name: [] for name in workloads}
    for _ in range(repeats):
        for name, (fn, args) in workloads.items():
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
        _progress(".")
    _progress("\n")
    for name, ts in times.items():
        step = statistics.median(ts)
        rows[name].update(step_s=step, min_s=min(ts), times_s=ts)
        rows[name]["recompiled"] = _cache_size(workloads[name][0]) != cache[name]
    return rows


def _progress(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _cache_size(fn) -> int | None:
    """Entries in a jitted function's compilation cache (None for other callables)."""
    fn = getattr(fn, "step", fn)  # StatefulStep
    return fn._cache_size() if hasattr(fn, "_cache_size") else None


VECTOR_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip


def _cpu_id() -> str:
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("cpu family", "model", "stepping") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip():
                    break
    except OSError:
        return ""
    return " ".join(f"{k} {v}" for k, v in fields.items())


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("vendor_id"))
    except (OSError, StopIteration):
        return ""


def machine() -> dict:
    """What the numbers were measured on."""
    import platform

    import jaxlib

    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if "model name" in line)
        flags = set(next(ln.split(":", 1)[1] for ln in lines if ln.startswith("flags")).split())
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "vendor": _cpu_vendor(),
        # a KVM guest may name only "AMD EPYC": family / model / stepping say which one
        "cpu_id": _cpu_id(),
        # the vector extensions that decide which kernels XLA / oneDNN can use
        "cpu_flags": sorted(flags & set(VECTOR_FLAGS)),
        "cores": cores(),
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "devices": len(jax.devices()),
        "jax": jax.__version__,
        "compiler_options_for_convolutions": arjax.compiler_options() if _jit is arjax.jit else {},
        "loadavg_1_5_15": list(os.getloadavg()),
    }
