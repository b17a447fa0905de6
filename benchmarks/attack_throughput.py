"""Attack and train-step throughput, with compile time reported apart (DESIGN §7).

    python benchmarks/attack_throughput.py --model moons_mlp --batch 128 --json out.json

For each workload: compile time (first call, lowering + XLA compile), then the
median wall time of ``--repeats`` steady-state calls (``block_until_ready``),
images/s, and the limit ratio: measured time / (model passes the algorithm
needs x time of one forward+input-gradient pass). PGD-k needs k
forward+gradient passes and one forward; BPGD needs N_PGD forward+gradient
passes, one forward and N_binary forwards (forwards counted as 1/3 of a
forward+gradient pass, which the ``forward`` row lets you check).
"""

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import arjax
from arjax import methods
from arjax.models import build_model
from arjax.training.state import create_train_state
from arjax.training.step import make_train_step

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
        None,
    ),
    "fmnist_cnn": (dict(name="ima_cnn", variant="fmnist"), (28, 28, 1), (0.0, 1.0)),
    "svhn_cnn": (dict(name="ima_cnn", variant="svhn"), (32, 32, 3), (0.0, 1.0)),
}


def timed(fn, *args, repeats):
    """(compile seconds, median steady-state seconds) of ``fn(*args)``."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="moons_mlp")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="PGD / BPGD steps")
    parser.add_argument("--bisections", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args()

    model_cfg, shape, bounds = MODELS[args.model]
    model, params, stats = build_model(ml_collections.ConfigDict(model_cfg), shape, 10, seed=0)
    if args.model == "moons_mlp":
        model, params, stats = build_model(ml_collections.ConfigDict(model_cfg), shape, 2, 0)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((args.batch, *shape), np.float32))
    num_classes = 2 if args.model == "moons_mlp" else 10
    y = jnp.asarray(rng.integers(0, num_classes, args.batch), jnp.int32)
    key = jax.random.key(0)
    eps = 0.1
    k, nb = args.steps, args.bisections

    def logits_fn(p, s):
        return model.logits_fn(p, s)

    @jax.jit
    def forward(p, s, x):
        return logits_fn(p, s)(x)

    @jax.jit
    def input_grad(p, s, x, y):
        f = logits_fn(p, s)
        return jax.grad(lambda z: jnp.sum(arjax.losses.classification_loss(f(z), y)))(x)

    @jax.jit
    def fgsm(p, s, x, y):
        return arjax.attacks.fgsm(logits_fn(p, s), x, y, eps=eps, bounds=bounds)

    @jax.jit
    def pgd(p, s, x, y, key):
        return arjax.attacks.pgd(
            logits_fn(p, s), x, y, key, eps=eps, step_size=4 * eps / k, num_steps=k, bounds=bounds
        )

    @jax.jit
    def pgd_l2(p, s, x, y, key):
        return arjax.attacks.pgd(
            logits_fn(p, s), x, y, key, eps=1.0, num_steps=k, norm="l2", bounds=bounds
        )

    margins = jnp.full((args.batch,), eps)

    @jax.jit
    def bpgd(p, s, x, y, key):
        return arjax.attacks.bpgd(
            logits_fn(p, s),
            x,
            y,
            key,
            eps=margins,
            num_steps=k,
            num_bisections=nb,
            bounds=bounds,
        )

    rows = {}
    common = (params, stats)
    for name, fn, call_args in [
        ("forward", forward, (*common, x)),
        ("forward+input_grad", input_grad, (*common, x, y)),
        ("fgsm", fgsm, (*common, x, y)),
        (f"pgd{k}_linf", pgd, (*common, x, y, key)),
        (f"pgd{k}_l2", pgd_l2, (*common, x, y, key)),
        (f"bpgd{k}+{nb}", bpgd, (*common, x, y, key)),
    ]:
        c, t = timed(fn, *call_args, repeats=args.repeats)
        rows[name] = {"compile_s": c, "step_s": t, "images_per_s": args.batch / t}

    unit = rows["forward+input_grad"]["step_s"]
    fwd = rows["forward"]["step_s"] / unit
    passes = {
        "fgsm": 1 + fwd,
        f"pgd{k}_linf": k + fwd,
        f"pgd{k}_l2": k + fwd,
        f"bpgd{k}+{nb}": k + fwd * (1 + nb),
    }
    for name, n in passes.items():
        rows[name]["limit_ratio"] = n * unit / rows[name]["step_s"]
    rows[f"bpgd{k}+{nb}"]["cost_vs_pgd"] = (
        rows[f"bpgd{k}+{nb}"]["step_s"] / rows[f"pgd{k}_linf"]["step_s"]
    )

    # One train step per method (optimizer update included).
    tx = optax.adam(1e-3)
    batch = {"image": x, "label": y, "index": jnp.arange(args.batch)}
    for mname, mcfg in [
        ("standard", methods.method_config("standard")),
        ("adversarial_pgd10", methods.method_config("adversarial", eps=eps, num_steps=10)),
        ("arfl_pgd10", methods.method_config("arfl", attack="pgd", eps=eps, num_steps=10)),
        ("ima", methods.method_config("ima", delta=0.01, num_steps=k, num_bisections=nb)),
    ]:
        table = jnp.full((args.batch,), eps) if mname == "ima" else None
        state = create_train_state(params, stats, tx, 0, margins=table)
        step = jax.jit(make_train_step(methods.make_loss(mcfg, model, bounds), tx))
        c, t = timed(step, state, batch, repeats=args.repeats)
        rows[f"train_step/{mname}"] = {"compile_s": c, "step_s": t, "images_per_s": args.batch / t}

    result = {
        "model": args.model,
        "batch": args.batch,
        "backend": jax.default_backend(),
        "devices": len(jax.devices()),
        "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "rows": rows,
    }
    print(f"{args.model}  batch {args.batch}  {jax.default_backend()}")
    print(f"{'workload':<26}{'compile s':>10}{'step ms':>10}{'img/s':>12}{'limit':>8}")
    for name, r in rows.items():
        limit = f"{r['limit_ratio']:.2f}" if "limit_ratio" in r else ""
        print(
            f"{name:<26}{r['compile_s']:>10.2f}{1e3 * r['step_s']:>10.3f}"
            f"{r['images_per_s']:>12,.0f}{limit:>8}"
        )
    b = rows[f"bpgd{k}+{nb}"]
    print(f"BPGD / PGD-{k} time: {b['cost_vs_pgd']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
