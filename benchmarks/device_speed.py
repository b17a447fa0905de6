"""Device check, parts ``speed_<group>``: arjax next to PyTorch on the same device.

    python benchmarks/device_speed.py --group resnet18 --json speed.json [--dry-run]

Groups (:data:`GROUPS`): ``fmnist`` (IMA's Fashion-MNIST CNN, batch 128: PGD-20,
BPGD-20+10, the PGD-10 adversarial train step), ``resnet18`` (224x224, batch 128: the
PGD-10 adversarial train step), ``densenet_khakzar`` (the truncated DenseNet-121 at
224x224, batch 32, Khakzar's FGSM-on-half-the-batch step with the weighted BCE and SGD)
and ``unet_ima`` (IMA's U-Net at 64x64, batch 128: one IMA step, BPGD-20+10 in L2).

Each row is timed as arjax in float32 and bfloat16 (``model.dtype``), PyTorch eager in
float32 and bfloat16 (``torch.autocast``), and ``torch.compile`` of the network in both
(skipped when the part's time cap runs short), all interleaved (``workloads.interleaved``:
round r runs each once). The PyTorch networks hold arjax's weights; their float32 logits
are checked against arjax's at full precision first. float32 runs with TF32 matrix
products in both frameworks (JAX's default on these GPUs; set for PyTorch, whose cuDNN
convolutions use TF32 by default), and PyTorch's cuDNN autotuner is on
(``cudnn.benchmark``).

Reported per row and variant: median step time, compile time (arjax) or first call
(PyTorch: includes ``torch.compile``), images/s, ``speedup`` = PyTorch time / arjax
time in the same dtype, and model FLOP utilisation: the row's model FLOPs (``passes``:
its forward, forward + input-gradient and forward + parameter-gradient passes, each
counted by XLA's cost analysis of that pass alone) per second over the chip's dense
datasheet peak (bf16, or TF32 for float32 rows) and over the measured matrix-product
ceiling when the ``env`` part measured one.
"""

import copy
import dataclasses
import json
import math
import os
import traceback

import jax
import numpy as np
import optax
import workloads as wl
from device_budget import PartRecord, part_parser
from device_env import chip_peaks
from device_profile import kernel_profile

from arjax import compilation_cache, methods

try:
    import torch
    import torch_models as tm
    import torch_steps as ts
except ImportError:  # the [bench] extra is optional
    torch = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = {
    "fmnist": dict(model="fmnist_cnn", batch=128, rows=("pgd", "bpgd", "adversarial")),
    "resnet18": dict(model="resnet18", batch=128, rows=("adversarial",)),
    "densenet_khakzar": dict(model="densenet121_truncated", batch=32, rows=("khakzar",)),
    "unet_ima": dict(model="unet_seg", batch=128, rows=("ima",)),
}
DRY = {  # tiny sizes for --dry-run (CPU): batch and per-example shape
    "fmnist": dict(batch=4),
    "resnet18": dict(batch=2, shape=(32, 32, 3)),
    "densenet_khakzar": dict(batch=2, shape=(32, 32, 3)),
    "unet_ima": dict(batch=2, shape=(16, 16, 1)),
}
IMPLS = (
    "arjax_f32",
    "torch_f32",
    "arjax_bf16",
    "torch_bf16",
    "torch_compile_bf16",
    "torch_compile_f32",
)
KHAKZAR_EPS, IMA_MARGIN, IMA_EPS_MAX = 0.005, 1.0, 2.0
LOGITS_TOL = 1e-3  # full-precision float32 twins: reduction order only


def sizes(dry_run: bool) -> dict:
    """PGD/BPGD steps, bisections, the adversarial step's PGD steps, max timed rounds."""
    if dry_run:
        return dict(steps=2, bisections=1, train_steps=1, max_repeats=2)
    return dict(steps=20, bisections=10, train_steps=10, max_repeats=20)


def row_name(row: str, k: int, n: int, kt: int) -> str:
    return {
        "pgd": f"pgd{k}_linf",
        "bpgd": f"bpgd{k}+{n}",
        "adversarial": f"train_step/adversarial_pgd{kt}",
        "khakzar": "train_step/khakzar_fgsm",
        "ima": f"train_step/ima_bpgd{k}+{n}",
    }[row]


def passes(row: str, k: int, n: int, kt: int) -> dict:
    """The row's model passes: ``G`` forward + input gradient, ``F`` forward, ``P``
    forward + parameter gradient (see the module docstring)."""
    return {
        "pgd": {"G": k, "F": 0, "P": 0},
        "bpgd": {"G": k, "F": n + 2, "P": 0},  # + final iterate, bisections, random start
        "adversarial": {"G": kt, "F": 0, "P": 2},  # (CE(x) + CE(x_adv)) / 2
        "khakzar": {"G": 0.5, "F": 1, "P": 1},  # FGSM on half; clean metrics pass; mixed loss
        "ima": {"G": k, "F": n + 1, "P": 2},  # BPGD reuses the clean logits; clean + noisy loss
    }[row]


def multi_hot(batch: int, classes: int, seed: int = 0) -> np.ndarray:
    """Random multi-hot labels ``[B, C]`` (about 10 % positive, at least one per row)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((batch, classes)) < 0.1).astype(np.float32)
    y[np.arange(batch), rng.integers(0, classes, batch)] = 1.0
    return y


def setups(group: dict, dry_run: bool) -> dict:
    """``{"float32": Setup, "bfloat16": Setup}`` (same weights and batch)."""
    dry = DRY[group["name"]] if dry_run else {}
    batch, shape = dry.get("batch", group["batch"]), dry.get("shape")
    out = {
        d: wl.setup(group["model"], batch, dtype=d, shape=shape) for d in ("float32", "bfloat16")
    }
    if "khakzar" in group["rows"]:
        y = jax.numpy.asarray(multi_hot(batch, out["float32"].num_classes))
        out = {d: dataclasses.replace(s, y=y) for d, s in out.items()}
    return out


def arjax_rows(s: wl.Setup, rows, k: int, n: int, kt: int) -> dict:
    """row name -> (fn, args) for arjax on setup ``s``."""
    attacks = wl.attack_workloads(s, k, n)
    out = {}
    for row in rows:
        name = row_name(row, k, n, kt)
        if row in ("pgd", "bpgd"):
            out[name] = attacks[name]
        elif row == "adversarial":
            method = methods.Adversarial(attack=f"pgd:linf:{s.eps!r}:{kt}")
            out[name] = (wl.StatefulStep(s, method, optax.adam(1e-3)), ())
        elif row == "khakzar":
            method = methods.Adversarial(
                cls_loss="weighted_bce",
                r=0.0,
                perturb_fraction=0.5,
                attack=f"fgsm:linf:{KHAKZAR_EPS!r}:loss=weighted_bce",
            )
            out[name] = (wl.StatefulStep(s, method, optax.sgd(0.01, momentum=0.9)), ())
        else:
            method = methods.IMA(
                cls_loss="dice_ce",
                eps_max=IMA_EPS_MAX,
                delta=IMA_EPS_MAX / 50,
                beta=0.5,
                norm="l2",
                num_steps=k,
                num_bisections=n,
                dice_threshold=0.6,
                shrink_misclassified=True,
            )
            out[name] = (wl.StatefulStep(s, method, optax.adam(1e-3), margin=IMA_MARGIN), ())
    return out


def model_flops(s: wl.Setup) -> dict:
    """XLA's FLOP count of one forward (F), forward + input gradient (G) and forward +
    parameter gradient (P) pass on the batch (loop-free programs, lowered, not run)."""
    w = wl.attack_workloads(s, 1, 1)
    out = {}
    for key, name in (("F", "forward"), ("G", "forward+input_grad"), ("P", "forward+param_grad")):
        fn, args = w[name]
        cost = fn.lower(*args).cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        out[key] = float(cost["flops"]) if cost and "flops" in cost else math.nan
    return out


def torch_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def synced(fn, autocast: bool):
    """``fn()`` under bf16 autocast (or not), waiting for the device before returning."""
    dev = torch_device()

    def run():
        if autocast:
            with torch.autocast(dev, dtype=torch.bfloat16):
                out = fn()
        else:
            out = fn()
        if dev == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def torch_rows(s: wl.Setup, net, rows, k: int, n: int, kt: int, autocast: bool) -> dict:
    """row name -> (fn, ()) for PyTorch on ``net`` (its own copy per call of this)."""
    dev = torch_device()
    x = torch.from_numpy(np.array(s.x)).to(dev)
    x = x.permute(0, 3, 1, 2).contiguous() if x.dim() == 4 else x
    y = torch.from_numpy(np.array(s.y)).to(dev)
    y = y.float() if y.dim() == 2 else y.long()
    eps, bounds, out = s.eps, s.bounds, {}
    for row in rows:
        name = row_name(row, k, n, kt)
        if row == "pgd":
            fn = lambda: tm.pgd(net, x, y, eps, 4 * eps / k, k, bounds)  # noqa: E731
        elif row == "bpgd":
            radii = torch.full((x.shape[0],), eps, device=dev)
            fn = lambda r=radii: tm.bpgd(net, x, y, r, k, n, 4.0, bounds)  # noqa: E731
        elif row == "adversarial":
            fn = tm.TrainStep(net, x, y, eps, kt, bounds)
        elif row == "khakzar":
            fn = ts.KhakzarStep(net, x, y, KHAKZAR_EPS, bounds)
        else:
            margins = torch.full((x.shape[0],), IMA_MARGIN, device=dev)
            fn = ts.ImaSegmentationStep(net, x, y, margins, steps=k, bisections=n)
        out[name] = (synced(fn, autocast), ())
    return out


def logits_error(s: wl.Setup, net) -> float:
    """max |arjax - PyTorch| / max |arjax| of the float32 logits, both at full precision."""
    with jax.default_matmul_precision("highest"):
        ref = np.asarray(
            jax.jit(lambda p, st, x: s.model.logits_fn(p, st)(x))(s.params, s.stats, s.x)
        )
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        x = torch.from_numpy(np.array(s.x)).to(torch_device())
        with torch.no_grad():
            got = net(x.permute(0, 3, 1, 2).contiguous() if x.dim() == 4 else x)
        got = got.float().cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    if got.ndim == 4:  # segmentation logits NCHW -> NHWC
        got = got.transpose(0, 2, 3, 1)
    return float(np.max(np.abs(ref - got)) / max(float(np.max(np.abs(ref))), 1e-12))


def time_items(items: dict, rec: PartRecord, label: str, max_repeats: int, min_left: float) -> dict:
    """First call of each item (skipping the rest once fewer than ``min_left`` s remain),
    one warm call, then as many interleaved rounds as the cap allows (3 to ``max_repeats``).
    An item whose first calls raise is left out with a note.

    Returns:
      key -> ``workloads.interleaved``'s row, with this function's ``first_call_s`` and
      ``compile_s``.
    """
    kept, first, warm = {}, {}, {}
    for key, (fn, args) in items.items():
        if rec.left() < min_left:
            rec.note(f"{label}: {key} skipped, {rec.left():.0f} s of the part's cap left")
            continue
        try:
            first[key] = wl.first_call(fn, args)
            warm[key] = wl.first_call(fn, args)[0]
        except Exception as e:  # one variant failing (e.g. torch.compile) must not end the part
            traceback.print_exc()
            rec.note(f"{label}: {key} failed: {type(e).__name__}: {str(e)[:300]}")
            continue
        kept[key] = (fn, args)
    if not kept:
        return {}
    round_s = sum(warm.values())
    repeats = int(max(3, min(max_repeats, (rec.left() - 5) / max(round_s, 1e-6))))
    rows = wl.interleaved(kept, repeats, warmup=0, label=label)
    for key, row in rows.items():
        row.update(first_call_s=first[key][0], compile_s=first[key][1], repeats=repeats)
        row.pop("times_s", None)
    return rows


def summarise(rows: dict, batch: int, flops: dict, passes_: dict, peaks, measured) -> dict:
    """images/s, model TFLOP/s, utilisation and speed-ups of one row's variants."""
    total = sum(passes_[p] * flops[p] for p in ("F", "G", "P"))
    for impl, r in rows.items():
        dtype = "bfloat16" if impl.endswith("bf16") else "float32"
        r["images_per_s"] = batch / r["step_s"]
        r["model_tflops"] = total / r["step_s"] / 1e12
        peak = (peaks or {}).get("bfloat16" if dtype == "bfloat16" else "tf32")
        r["mfu_vs_datasheet"] = r["model_tflops"] / peak if peak else None
        ceiling = (measured or {}).get(f"matmul_{dtype}_tflops")
        r["mfu_vs_measured_matmul"] = r["model_tflops"] / ceiling if ceiling else None
        ours = rows.get(f"arjax_{impl.rsplit('_', 1)[1]}")
        if not impl.startswith("arjax") and ours:
            r["speedup"] = r["step_s"] / ours["step_s"]  # > 1: arjax is faster
    return {"model_flops_per_step": total, "passes": passes_, "impls": rows}


def run_group(name: str, rec: PartRecord, dry_run: bool, env: dict) -> None:
    group = dict(GROUPS[name], name=name)
    sz = sizes(dry_run)
    k, n, kt = sz["steps"], sz["bisections"], sz["train_steps"]
    ss = setups(group, dry_run)
    s32 = ss["float32"]
    batch = int(s32.x.shape[0])
    rec.set(
        "config",
        dict(
            model=group["model"],
            batch=batch,
            input_shape=list(s32.x.shape[1:]),
            steps=k,
            bisections=n,
            train_pgd_steps=kt,
        ),
    )
    flops = model_flops(s32)
    rec.set("flops_per_pass", flops)
    names = [row_name(r, k, n, kt) for r in group["rows"]]
    impls = {
        "arjax_f32": arjax_rows(s32, group["rows"], k, n, kt),
        "arjax_bf16": arjax_rows(ss["bfloat16"], group["rows"], k, n, kt),
    }
    if torch is None:
        rec.note("PyTorch is not installed: arjax rows only (install the [bench] extra)")
    else:
        dev = torch_device()
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        for limit in ("recompile_limit", "cache_size_limit"):  # train/eval x grad x autocast
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, 64)
        backend = "eager" if dry_run else "inductor"  # dry run: dynamo's tracing, no codegen
        if dry_run:  # OpenMP's spinning threads crawl on a shared 2-core CPU (2 s vs 54 ms)
            torch.set_num_threads(1)
        rec.set(
            "torch_settings",
            dict(device=dev, allow_tf32=True, cudnn_benchmark=True, compile_backend=backend),
        )
        torch.manual_seed(0)
        net = ts.from_arjax(s32).to(dev)
        err = logits_error(s32, net)
        rec.set("logits_rel_err", err)
        if not err <= LOGITS_TOL:
            rec.note(f"{name}: PyTorch and arjax float32 logits differ (relative {err:.1e})")
        for impl in (i for i in IMPLS if i.startswith("torch")):
            m = copy.deepcopy(net)  # each variant trains its own copy
            m = torch.compile(m, backend=backend) if "compile" in impl else m
            impls[impl] = torch_rows(s32, m, group["rows"], k, n, kt, impl.endswith("bf16"))
    peaks = chip_peaks(env.get("jax", {}).get("device_kind", "")) if not dry_run else None
    measured = env.get("ceilings")
    results = {row: {} for row in names}
    compile_left = 0.3 * rec.cap_s if math.isfinite(rec.cap_s) else 0.0
    # bf16 first: the target is bf16, and a short cap skips the variants at the end
    compiled = ("arjax_bf16", "arjax_f32", "torch_compile_bf16", "torch_compile_f32")
    for phase, chosen, min_left in (
        ("eager", ("arjax_bf16", "torch_bf16", "arjax_f32", "torch_f32"), 15.0),
        ("compile", compiled, compile_left),
    ):
        items = {f"{r}|{impl}": impls[impl][r] for impl in chosen if impl in impls for r in names}
        if phase == "compile" and not any("torch" in key for key in items):
            continue
        timed = time_items(items, rec, f"{name} ({phase})", sz["max_repeats"], min_left)
        for row, kind in zip(names, group["rows"], strict=True):
            rows = {key.split("|")[1]: r for key, r in timed.items() if key.startswith(row + "|")}
            if rows:
                how = passes(kind, k, n, kt)
                results[row][phase] = summarise(rows, batch, flops, how, peaks, measured)
                rec.set("rows", results)
                rec.line(summary_line(name, row, batch, phase, results[row][phase]["impls"]))
        if phase == "eager":  # before torch.compile, which may not finish within the cap
            for row in names:  # where arjax's bf16 step spends its time on the device
                if rec.left() > 20 and "arjax_bf16" in impls:
                    fn, args = impls["arjax_bf16"][row]
                    prof = kernel_profile(fn, args, calls=3, steps_per_call=1)
                    results[row]["profile_arjax_bf16"] = prof
                    rec.set("rows", results)


def _fmt(r: dict | None) -> str:
    if not r:
        return "-"
    mfu = f", MFU {100 * r['mfu_vs_datasheet']:.0f}%" if r.get("mfu_vs_datasheet") else ""
    return f"{1e3 * r['step_s']:.1f} ms ({r['images_per_s']:.0f} img/s{mfu})"


def summary_line(group: str, row: str, batch: int, phase: str, impls: dict) -> str:
    """One line per row and phase: arjax against PyTorch eager or ``torch.compile``."""
    parts = []
    for dt in ("bf16", "f32"):
        theirs = impls.get(f"torch_{dt}" if phase == "eager" else f"torch_compile_{dt}")
        label = "torch eager" if phase == "eager" else "torch.compile"
        text = f"{dt}: arjax {_fmt(impls.get(f'arjax_{dt}'))}, {label} {_fmt(theirs)}"
        if theirs and "speedup" in theirs:
            text += f" -> {theirs['speedup']:.2f}x"
        parts.append(text)
    return f"{group} {row} b{batch}: " + " | ".join(parts)


def main(argv=None):
    parser = part_parser(__doc__.splitlines()[0])
    parser.add_argument("--group", required=True, choices=tuple(GROUPS))
    parser.add_argument("--env-json", default="", help="the env part's JSON (peaks, ceilings)")
    args = parser.parse_args(argv)
    rec = PartRecord(args.json, f"speed_{args.group}", args.cap_s, args.dry_run)
    if args.dry_run:  # a rerun of the dry run loads its programs from disk (not on a GPU:
        compilation_cache.enable("auto")  # there compile time is reported)
    env = {}
    if args.env_json and os.path.exists(args.env_json):
        with open(args.env_json) as f:
            env = json.load(f)
    if not env.get("jax"):
        env["jax"] = {"device_kind": jax.devices()[0].device_kind}
    rec.set("device", env["jax"]["device_kind"])
    run_group(args.group, rec, args.dry_run, env)
    rec.finish()


if __name__ == "__main__":
    main()
