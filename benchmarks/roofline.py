"""How close the Fashion-MNIST CNN's passes run to this CPU's matrix-product ceiling.

    python benchmarks/roofline.py --json roofline.json

Measures, on the machine it runs on (each a minimum over ``--repeats`` timed calls):

* ``gemm_peak``: XLA's best float32 matrix product here (``n x n x n``, default 2048),
  in GFLOP/s: the ceiling any convolution on XLA's kernels can reach;
* ``layers``: each convolution of the IMA Fashion-MNIST CNN (``arjax.models.cnn``) at the
  benchmark batch: forward, input gradient (arjax's CPU custom VJP) and kernel gradient,
  with their GFLOP/s (``2 * B * H' * W' * k * k * C_in * C_out`` each);
* ``network``: forward + input gradient of the real network (instance norms, LeakyReLU,
  layer norm, cross-entropy) next to the same convolutions alone (biases only), so the
  gap between the two is what everything but the convolutions costs;
* ``pgd_iteration_budget_ms``: given ``--torch-pgd20-ms`` (PyTorch's PGD-20 median from
  ``vs_pytorch.py`` on this machine), the time one forward + input gradient may take for
  arjax's PGD-20 to be ``--target`` times faster, and the GFLOP/s that needs.

The question it answers: whether a speed-up target over PyTorch is reachable with
XLA's kernels at all (issue 17), before tuning anything.
"""

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import workloads as wl

from arjax import compilation
from arjax.models import convolution as cv
from arjax.models.cnn import ARCHITECTURES


def best_ms(fn, *args, repeats: int) -> float:
    """Minimum wall time of ``fn(*args)`` over ``repeats`` calls (after one warm-up), ms."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def gflops(flop: float, ms: float) -> float:
    return flop / ms / 1e6


def layer_rows(batch: int, repeats: int) -> list[dict]:
    """Forward, input-gradient and kernel-gradient throughput of each fmnist convolution."""
    convs, (height, _, _) = ARCHITECTURES["fmnist"]
    rows, size = [], height
    for i, spec in enumerate(convs):
        k, s, p = spec.kernel_size, spec.stride, spec.padding
        out = cv.conv_output_size(size, k, s, p)
        x = jax.random.normal(jax.random.key(i), (batch, size, size, spec.in_channels))
        w = 0.05 * jax.random.normal(
            jax.random.key(100 + i), (k, k, spec.in_channels, spec.out_channels)
        )
        g = jax.random.normal(jax.random.key(200 + i), (batch, out, out, spec.out_channels))
        flop = 2 * batch * out * out * k * k * spec.in_channels * spec.out_channels

        def conv(x, w, s=s, p=p):
            return cv.conv2d(x, w, s, p)

        fns = {
            "forward": compilation.jit(conv),
            "input_grad": compilation.jit(
                lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]
            ),
            "kernel_grad": compilation.jit(
                lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]
            ),
        }
        row = {"layer": i, "input": [size, size, spec.in_channels], "kernel": k, "stride": s}
        row["output"] = [out, out, spec.out_channels]
        row["gflop"] = flop / 1e9
        for name, fn in fns.items():
            args = (x, w) if name == "forward" else (x, w, g)
            ms = best_ms(fn, *args, repeats=repeats)
            row[f"{name}_ms"], row[f"{name}_gflops"] = ms, gflops(flop, ms)
        rows.append(row)
        size = out
    return rows


def network_rows(batch: int, repeats: int, layers: list[dict]) -> dict:
    """Forward + input gradient: the real CNN vs its convolutions alone.

    ``layers`` (from :func:`layer_rows`) gives the FLOP count: each convolution's forward
    plus an input gradient of the same size.
    """
    s = wl.setup("fmnist_cnn", batch)
    full_fn, full_args = wl.attack_workloads(s, 1, 1)["forward+input_grad"]
    convs, _ = ARCHITECTURES["fmnist"]
    shapes = [(c.kernel_size, c.kernel_size, c.in_channels, c.out_channels) for c in convs]
    weights = [0.05 * jax.random.normal(jax.random.key(i), sh) for i, sh in enumerate(shapes)]
    head = 0.05 * jax.random.normal(jax.random.key(99), (convs[-1].out_channels, s.num_classes))

    def convs_only_loss(x, y):
        h = x
        for spec, w in zip(convs, weights, strict=True):
            h = cv.conv2d(h, w, spec.stride, spec.padding)
        logits = h.reshape(h.shape[0], -1) @ head
        return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    convs_fn = compilation.jit(jax.grad(convs_only_loss))
    flop = 2 * sum(r["gflop"] for r in layers) * 1e9
    full_ms = best_ms(full_fn, *full_args, repeats=repeats)
    convs_ms = best_ms(convs_fn, s.x, s.y, repeats=repeats)
    return {
        "gflop": flop / 1e9,
        "full_ms": full_ms,
        "full_gflops": gflops(flop, full_ms),
        "convolutions_only_ms": convs_ms,
        "convolutions_only_gflops": gflops(flop, convs_ms),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--gemm", type=int, default=2048, help="n of the n x n x n product")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--torch-pgd20-ms", type=float, default=None)
    parser.add_argument("--target", type=float, default=1.5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    n = args.gemm
    a = jnp.ones((n, n), jnp.float32)
    gemm_ms = best_ms(compilation.jit(jnp.matmul), a, a, repeats=max(3, args.repeats // 3))
    out = {"machine": wl.machine(), "args": vars(args)}
    out["gemm_peak"] = {"n": n, "ms": gemm_ms, "gflops": gflops(2 * n**3, gemm_ms)}
    out["layers"] = layers = layer_rows(args.batch, args.repeats)
    out["network"] = network_rows(args.batch, args.repeats, layers)
    if args.torch_pgd20_ms:
        budget = args.torch_pgd20_ms / 20 / args.target
        out["pgd_iteration_budget_ms"] = budget
        out["pgd_iteration_budget_gflops"] = gflops(out["network"]["gflop"] * 1e9, budget)

    print(f"{out['machine']['cpu']} ({out['machine'].get('cpu_id', '')}), batch {args.batch}")
    print(f"GEMM {n}^3: {gemm_ms:.1f} ms = {out['gemm_peak']['gflops']:.0f} GFLOP/s")
    for r in layers:
        print(
            f"conv {r['layer']} {r['input']} k{r['kernel']} s{r['stride']}: "
            + "  ".join(
                f"{name} {r[f'{name}_ms']:.1f} ms ({r[f'{name}_gflops']:.0f} GF/s)"
                for name in ("forward", "input_grad", "kernel_grad")
            )
        )
    net = out["network"]
    print(
        f"forward + input gradient ({net['gflop']:.2f} GFLOP): network {net['full_ms']:.1f} ms "
        f"({net['full_gflops']:.0f} GF/s), convolutions alone {net['convolutions_only_ms']:.1f} ms "
        f"({net['convolutions_only_gflops']:.0f} GF/s)"
    )
    if args.torch_pgd20_ms:
        print(
            f"{args.target}x PyTorch's PGD-20 needs one iteration in <= "
            f"{out['pgd_iteration_budget_ms']:.1f} ms "
            f"= {out['pgd_iteration_budget_gflops']:.0f} GF/s"
        )
    print(f"load average (1, 5, 15 min): {out['machine']['loadavg_1_5_15']}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
