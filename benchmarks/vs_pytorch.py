"""arjax next to PyTorch on the same networks, weights, batch and attacks, interleaved.

    pip install -e '.[bench]'            # torch (CPU) and torchattacks (install --no-deps)
    python benchmarks/vs_pytorch.py --model fmnist_cnn --batch 128 --json vs.json

The PyTorch networks (``torch_models.py``) get the arjax model's weights copied in; the
script checks that the logits agree before timing anything. Workloads, each timed as
arjax and as PyTorch in the same process, round-robin (``workloads.interleaved``):

* ``forward``, ``forward+input_grad``: one pass (the unit every attack repeats);
* ``pgd20_linf``: arjax ``attacks.pgd`` vs a hand-written PyTorch loop vs
  ``torchattacks.PGD`` (same eps, step ``4 eps / k``, random start; torchattacks clamps
  to [0, 1], so it is skipped for the two-moons MLP);
* ``bpgd20+10``: arjax ``attacks.bpgd`` vs an IMA-style PyTorch BPGD (PGD with
  per-sample bookkeeping of the first crossing, then bisection);
* ``train_step/standard`` and ``train_step/adversarial_pgd10``: one Adam step
  (``(CE(x) + CE(x_adv)) / 2`` with PGD-10 for the adversarial one), arjax jitted with
  the state donated vs PyTorch eager.

``speedup`` = PyTorch median time / arjax median time (> 1: arjax is faster). Both
frameworks use every available core (``torch.set_num_threads``; XLA's CPU client
does by default).
"""

import argparse
import json
import re
import sys

import jax
import numpy as np
import workloads as wl

# bfloat16 logits next to PyTorch's float32 ones: bf16's 8-bit mantissa, through the net.
BF16_LOGITS_TOL = 5e-2

try:
    import torch
    import torch_models as tm
except ImportError:  # the [bench] extra is optional
    torch = None
try:
    import torchattacks
except ImportError:
    torchattacks = None


def torch_batch(s: wl.Setup):
    """The arjax batch as PyTorch tensors (images NHWC -> NCHW)."""
    x = np.asarray(s.x)
    if x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.array(x)), torch.from_numpy(np.array(s.y)).long()


def check_logits(s: wl.Setup, net, x, tol: float) -> float:
    """Max |logits_arjax - logits_torch| / max |logits|; raises above ``tol``."""
    ref = np.asarray(s.model.logits_fn(s.params, s.stats)(s.x))
    with torch.no_grad():
        got = net(x).numpy()
    err = float(np.max(np.abs(ref - got)) / max(np.max(np.abs(ref)), 1e-12))
    if not err <= tol:
        raise SystemExit(f"{s.name}: PyTorch and arjax logits differ (relative {err:.2e})")
    return err


def torch_workloads(
    s: wl.Setup, net, x, y, steps: int, bisections: int, threads: int, one_thread: bool = False
) -> dict:
    """PyTorch workloads named like the arjax ones: name -> {impl: (fn, args)}.

    Each runs with ``threads`` intra-op threads; ``one_thread`` adds a 1-thread variant
    (``<impl>/1thread``; OpenMP's barriers suffer most on a loaded machine).
    """
    eps, bounds = s.eps, s.bounds
    margins = torch.full((x.shape[0],), eps)
    out = {
        "forward": {"torch": (lambda: tm.forward(net, x), ())},
        "forward+input_grad": {"torch": (lambda: tm.input_grad(net, x, y), ())},
        f"pgd{steps}_linf": {
            "torch_loop": (lambda: tm.pgd(net, x, y, eps, 4 * eps / steps, steps, bounds), ())
        },
        f"bpgd{steps}+{bisections}": {
            "torch_ima_style": (
                lambda: tm.bpgd(net, x, y, margins, steps, bisections, 4.0, bounds),
                (),
            )
        },
    }
    if torchattacks is not None and bounds == (0.0, 1.0):
        attack = torchattacks.PGD(net, eps=eps, alpha=4 * eps / steps, steps=steps)
        out[f"pgd{steps}_linf"]["torchattacks"] = (lambda: attack(x, y), ())
    for name, pgd_steps in (("standard", 0), ("adversarial_pgd10", 10)):
        step = tm.TrainStep(net, x, y, eps, pgd_steps, bounds)
        out[f"train_step/{name}"] = {"torch": (step, ())}
    for impls in out.values():
        for impl, (fn, fn_args) in list(impls.items()):
            impls[impl] = (with_threads(fn, threads), fn_args)
            if one_thread and threads > 1:
                impls[f"{impl}/1thread"] = (with_threads(fn, 1), fn_args)
    return out


def with_threads(fn, threads: int):
    """``fn`` run with ``threads`` PyTorch intra-op threads."""

    def run(*args):
        torch.set_num_threads(threads)
        return fn(*args)

    return run


def compare(s: wl.Setup, args, s16: wl.Setup | None = None) -> dict:
    """Interleaved timings of every workload in arjax and PyTorch.

    ``s16``: the same model computing in bfloat16 (``model.dtype``); its rows
    (``arjax_bf16``) join each group, with ``bf16_speedup`` = float32 time / bf16 time.
    """
    net = tm.from_arjax(s)
    x, y = torch_batch(s)
    err = check_logits(s, net, x, args.logits_tol)
    k, nb = args.steps, args.bisections
    ours = wl.attack_workloads(s, k, nb)
    ours.update(wl.train_workloads(s, k, nb))
    ours16 = {}
    if s16 is not None:
        err16 = check_logits(s16, net, x, BF16_LOGITS_TOL)
        ours16 = wl.attack_workloads(s16, k, nb)
        ours16.update(wl.train_workloads(s16, k, nb))
    batch = s.x.shape[0]
    print(
        f"\n{s.name}  batch {batch}  logits rel. err {err:.1e}  xla options {args.xla_options}",
        flush=True,
    )
    print(f"{'workload':<30}{'impl':<24}{'compile s':>10}{'median ms':>11}{'speedup':>9}")
    rows = {}
    theirs = torch_workloads(s, net, x, y, k, nb, args.torch_threads, args.one_thread)
    for name, impls in theirs.items():
        if args.only and not re.search(args.only, name):
            continue
        group = {"arjax": ours[name], **impls}
        if ours16:
            group["arjax_bf16"] = ours16[name]
        timed = wl.interleaved(group, args.repeats, pause=args.pause, label=name)
        base = timed["arjax"]["step_s"]
        for impl, r in timed.items():
            if impl == "arjax_bf16":
                r["bf16_speedup"] = base / r["step_s"]
            elif impl != "arjax":
                r["speedup"] = r["step_s"] / base
            if not args.keep_times:
                r.pop("times_s")
            sp = f"{r['speedup']:.2f}x" if "speedup" in r else ""
            sp = f"{r['bf16_speedup']:.2f}x f32" if "bf16_speedup" in r else sp
            print(f"{name:<30}{impl:<24}{r['compile_s']:>10.2f}{1e3 * r['step_s']:>11.2f}{sp:>14}")
        rows[name] = timed
    out = {"model": s.name, "batch": batch, "logits_rel_err": err, "rows": rows}
    if s16 is not None:
        out["logits_rel_err_bf16"] = err16
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist_cnn", help="a model or 'all'")
    parser.add_argument("--batch", type=int, default=None, help="default: 128; 8 at 224x224")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--bisections", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--conv-impl", default="auto", choices=("auto", "xla", "patches"))
    parser.add_argument(
        "--xla-options", default="arjax", choices=wl.XLA_OPTIONS,
        help="compile with arjax.jit (arjax's CPU options) or plain jax.jit (XLA defaults)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "both"),
        help="both: also time arjax with model.dtype='bfloat16' (rows arjax_bf16)",
    )  # fmt: skip
    parser.add_argument("--torch-threads", type=int, default=wl.cores(), help="default: cores")
    parser.add_argument("--one-thread", action="store_true", help="also time PyTorch on 1 thread")
    parser.add_argument("--pause", type=float, default=0.05, help="idle s before each call")
    parser.add_argument("--logits-tol", type=float, default=1e-4)
    parser.add_argument("--only", default=None, help="regex: run matching workloads only")
    parser.add_argument("--keep-times", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    wl.use_xla_options(args.xla_options)
    if torch is None:
        print("vs_pytorch: PyTorch is not installed; skipped. Install the [bench] extra:")
        print("  pip install -e '.[bench]'   (torchattacks: pip install --no-deps torchattacks)")
        return
    if torchattacks is None:
        print("vs_pytorch: torchattacks is not installed; its rows are skipped.")
    torch.manual_seed(0)
    names = tm.supported(wl.available_models()) if args.model == "all" else [args.model]
    results = []
    for name in names:
        if name not in tm.supported(wl.available_models()):
            sys.exit(f"model {name!r} not available; valid: {tm.supported(wl.available_models())}")
        batch = args.batch or wl.default_batch(name)
        s16 = (
            wl.setup(name, batch, args.conv_impl, dtype="bfloat16")
            if args.dtype == "both"
            else None
        )
        results.append(compare(wl.setup(name, batch, args.conv_impl), args, s16))
    machine = wl.machine()
    machine.update(torch=torch.__version__, torch_threads=args.torch_threads)
    if torchattacks is not None:
        machine["torchattacks"] = torchattacks.__version__
    print(f"load average (1, 5, 15 min): {machine['loadavg_1_5_15']}; "
          f"threads: torch {args.torch_threads}, cores {wl.cores()}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=2)
    jax.clear_caches()


if __name__ == "__main__":
    main()
