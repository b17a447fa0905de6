"""One network four ways: arjax's Flax model, the PyTorch twin under arjax (torchax), eager.

    pip install -e '.[torch,bench]'        # torch, torchax (+ torchattacks: --no-deps)
    python benchmarks/vs_torchax.py --model svhn_cnn --batch 128 --json torchax.json

The network is built once as an arjax Flax model (``workloads.setup``); its PyTorch twin
(``torch_models.from_arjax``, the same weights) is then

* ``arjax_torchax``: handed to ``arjax.models.from_torch``, so arjax's own jitted
  workloads (the same functions as the Flax rows: ``workloads.attack_workloads`` and
  ``train_workloads``) run the torch ``forward`` through torchax;
* ``torch``: run eagerly by PyTorch (a hand-written PGD loop and Adam step,
  ``vs_pytorch.torch_workloads``), and ``torchattacks`` when it is installed.

``arjax_flax`` is the Flax model as arjax builds it (``conv_impl="auto"``: on the CPU
the input gradient of a convolution goes through patches, ``arjax.models.convolution``);
``arjax_flax_xla`` the same with XLA's convolution, the algorithm torchax's convolution
lowers to, so the two rows apart show what the layout (NCHW vs NHWC) and the torch-side
operators cost separately from arjax's convolution choice. Rows are timed interleaved
(``workloads.interleaved``); ``compile_s`` (JAX's trace + lower + compile, torchax's
tracing included) is kept apart from the steady-state median ``step_s``. ``vs_flax`` =
arjax_flax time / this row's time (< 1: slower than the Flax model).
"""

import argparse
import copy
import dataclasses
import json
import re
import sys

import jax
import workloads as wl

try:
    import torch
    import torch_models as tm
    import vs_pytorch

    from arjax.models import from_torch
except ImportError:  # the [torch] extra is optional
    torch = None

WORKLOADS = ("forward", "forward+input_grad", "pgd{k}_linf", "train_step/adversarial_pgd10")


def torchax_setup(s: wl.Setup, net) -> wl.Setup:
    """``s`` with the PyTorch twin ``net`` as its model, through ``arjax.models.from_torch``."""
    x, _ = vs_pytorch.torch_batch(s)
    model = from_torch(copy.deepcopy(net), x[:2], channels_last=x.ndim == 4)
    return dataclasses.replace(
        s, name=f"{s.name}/torchax", model=model.fns, params=model.params, stats=model.batch_stats
    )


def compare(name: str, args) -> dict:
    """Interleaved timings of the four implementations on one network."""
    batch = args.batch or wl.default_batch(name)
    flax = wl.setup(name, batch, "auto")
    flax_xla = wl.setup(name, batch, "xla")
    net = tm.from_arjax(flax)
    x, y = vs_pytorch.torch_batch(flax)
    errors = {"torch": vs_pytorch.check_logits(flax, net, x, args.logits_tol)}
    tx = torchax_setup(flax, net)
    errors["torchax"] = vs_pytorch.check_logits(tx, net, x, args.logits_tol)
    k = args.steps
    impls = {"arjax_flax": flax, "arjax_flax_xla": flax_xla, "arjax_torchax": tx}
    ours = {}
    for impl, s in impls.items():
        rows = wl.attack_workloads(s, k, 1)
        rows.update(wl.train_workloads(s, k, 1))
        ours[impl] = rows
    theirs = vs_pytorch.torch_workloads(flax, net, x, y, k, 1, args.torch_threads)
    print(f"\n{name}  batch {batch}  logits rel. err vs torch: {errors}", flush=True)
    print(f"{'workload':<30}{'impl':<20}{'compile s':>10}{'median ms':>11}{'vs flax':>9}")
    out = {}
    for pattern in WORKLOADS:
        workload = pattern.format(k=k)
        if args.only and not re.search(args.only, workload):
            continue
        group = {impl: rows[workload] for impl, rows in ours.items()}
        group.update(theirs.get(workload, {}))
        timed = wl.interleaved(group, args.repeats, pause=args.pause, label=workload)
        base = timed["arjax_flax"]["step_s"]
        for impl, r in timed.items():
            r["vs_flax"] = base / r["step_s"]
            if not args.keep_times:
                r.pop("times_s")
            print(
                f"{workload:<30}{impl:<20}{r['compile_s']:>10.2f}{1e3 * r['step_s']:>11.2f}"
                f"{r['vs_flax']:>8.2f}x"
            )
        out[workload] = timed
    return {"model": name, "batch": batch, "logits_rel_err": errors, "rows": out}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="svhn_cnn", help="a benchmark model or 'all'")
    parser.add_argument("--batch", type=int, default=None, help="default: 128; 8 at 224x224")
    parser.add_argument("--steps", type=int, default=20, help="PGD steps")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--torch-threads", type=int, default=wl.cores(), help="default: cores")
    parser.add_argument("--pause", type=float, default=0.05, help="idle s before each call")
    parser.add_argument("--logits-tol", type=float, default=1e-4)
    parser.add_argument("--only", default=None, help="regex: run matching workloads only")
    parser.add_argument("--keep-times", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    wl.use_xla_options("arjax")
    if torch is None:
        print("vs_torchax: torch / torchax are not installed; skipped. Install the extra:")
        print("  pip install -e '.[torch]'")
        return
    torch.manual_seed(0)
    supported = tm.supported(wl.available_models())
    names = supported if args.model == "all" else [args.model]
    results = []
    for name in names:
        if name not in supported:
            sys.exit(f"model {name!r} not available; valid: {supported}")
        results.append(compare(name, args))
    machine = wl.machine()
    import torchax

    machine.update(torch=torch.__version__, torchax=torchax.__version__)
    machine["torch_threads"] = args.torch_threads
    if vs_pytorch.torchattacks is not None:
        machine["torchattacks"] = vs_pytorch.torchattacks.__version__
    print(f"load average (1, 5, 15 min): {machine['loadavg_1_5_15']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=2)
    jax.clear_caches()


if __name__ == "__main__":
    main()
