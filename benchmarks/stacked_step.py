"""One seed's train step next to S seeds stacked (``train.vmap_seeds``), per step.

    python benchmarks/stacked_step.py --row dual_arfl --json stacked_step.json
    python benchmarks/stacked_step.py --row dual_arfl --options default --profile 12

Builds the ARFL Table 1 row's model, method and optimiser exactly as a run does
(``configs/moons_arfl.py``, ``arjax.experiment.setup``), then times the run's compiled
multi-step (``train.steps_per_call`` steps in one ``lax.scan``) for one seed and for
``--seeds`` seeds vmapped, interleaved, for each XLA:CPU option set in ``--options``
(``default``: XLA's; ``ynn_off``: no YNNPACK; ``individual_dot``: YNNPACK for single
matrix products only, what ``arjax.jit`` uses for convolutions) and each MLP layout in
``--layouts`` (``feature_major``: what arjax runs, activations ``[width, B]``;
``batch_major``: the layer-by-layer ``[B, width]`` loop, ``arjax.models.mlp.FEATURE_MAJOR``
off). ``ratio`` = stacked time / one seed's time: ``S`` means stacking saves nothing per
step, 1 that the seeds come for free. ``seed_stacking.py`` measures the same end to end.

``--profile K`` also records a ``jax.profiler`` trace of a few calls of every workload
and lists its K costliest XLA:CPU thunks (fusions, matrix products; summed over the
runtime's threads) in microseconds per step, with the number of thunks a step runs and
their total time: where the step's time goes.
"""

import argparse
import collections
import glob
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import workloads as wl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))

import moons_arfl  # noqa: E402

from arjax import methods, parallel  # noqa: E402
from arjax.experiment import setup  # noqa: E402
from arjax.models import mlp  # noqa: E402
from arjax.training.step import make_multi_step, make_train_step  # noqa: E402

OPTION_SETS = {
    "default": None,
    "ynn_off": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "individual_dot": {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
    },
}
LAYOUTS = {"feature_major": True, "batch_major": False}
# Profiler events that hold other thunks (a loop, the executor) or mark an end, not work.
CONTAINER_EVENTS = ("ThunkExecutor", "end: ", "while", "conditional", "call")


def _choices(text: str, valid: dict, flag: str) -> list[str]:
    names = text.split(",")
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise SystemExit(f"unknown {flag} {unknown}; valid: {', '.join(valid)}")
    return names


def thunk_profile(fn, args: tuple, *, calls: int, steps: int, top: int) -> dict:
    """The costliest XLA:CPU thunks of ``fn(*args)``, per train step.

    Runs ``fn`` ``calls`` times under ``jax.profiler.trace`` and sums each thunk's events
    over the runtime's worker threads (``tf_XLAEigen`` lines; a thunk split across
    threads counts each part; loops and the executor, which hold other thunks, are left
    out). The compiled program must already be warm.

    Returns:
      ``{"thunks_per_step", "thunk_us_per_step", "top": [[name, us per step, runs per
      step], ...]}``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(calls):
                jax.block_until_ready(fn(*args))
        (path,) = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    total, count = collections.Counter(), collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:
                continue
            for event in line.events:
                if event.name.startswith(CONTAINER_EVENTS):
                    continue
                total[event.name] += event.duration_ns
                count[event.name] += 1
    per = calls * steps
    return {
        "thunks_per_step": sum(count.values()) / per,
        "thunk_us_per_step": sum(total.values()) / 1e3 / per,
        "top": [[n, t / 1e3 / per, count[n] / per] for n, t in total.most_common(top)],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", default="dual_arfl", help=", ".join(moons_arfl.VARIANTS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--options", default=",".join(OPTION_SETS))
    parser.add_argument("--layouts", default="feature_major", help=", ".join(LAYOUTS))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--profile", type=int, default=0, help="list the K costliest thunks")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    names = _choices(args.options, OPTION_SETS, "--options")
    layouts = _choices(args.layouts, LAYOUTS, "--layouts")

    cfg = moons_arfl.get_config(args.row)
    dataset = setup.load_folds(cfg)[0]
    mesh = parallel.make_mesh(0)
    states = []
    for seed in range(args.seeds):
        model, params, stats = setup.make_model(cfg, dataset, seed)
        state, tx = setup.initial_state(cfg, dataset, params, stats, seed, mesh)
        states.append(state)
    loss = methods.make_loss(setup.build_method(cfg), model, dataset.bounds)
    k, batch = cfg.train.steps_per_call, cfg.train.batch_size
    rng = np.random.default_rng(0)
    shape = (args.seeds, k, batch)
    batches = {
        "image": rng.normal(size=(*shape, 2)).astype(np.float32),
        "label": rng.integers(0, 2, shape).astype(np.int32),
        "index": np.broadcast_to(np.arange(batch, dtype=np.int32), shape).copy(),
    }
    one = jax.tree.map(lambda a: a[0], batches)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
    valid = np.ones(k, bool)

    workloads, keys, arjax_layout = {}, [], mlp.FEATURE_MAJOR
    for layout in layouts:
        mlp.FEATURE_MAJOR = LAYOUTS[layout]  # read at trace time: compile each layout now
        try:
            for name in names:
                opts, key = OPTION_SETS[name], f"{layout}/{name}"
                multi = make_multi_step(make_train_step(loss, tx))  # a fresh trace per entry
                single = jax.jit(multi, compiler_options=opts)
                vmapped = jax.jit(jax.vmap(multi, in_axes=(0, 0, None)), compiler_options=opts)
                jax.block_until_ready(single(states[0], one, valid))  # traced under layout
                jax.block_until_ready(vmapped(stacked, batches, valid))
                workloads[f"1_seed/{key}"] = (single, (states[0], one, valid))
                workloads[f"{args.seeds}_stacked/{key}"] = (vmapped, (stacked, batches, valid))
                keys.append(key)
        finally:
            mlp.FEATURE_MAJOR = arjax_layout
    rows = wl.interleaved(workloads, args.repeats, label=f"{args.row}, {k} steps per call")
    out = {"machine": wl.machine(), "args": vars(args), "steps_per_call": k, "rows": {}}
    print(f"{args.row}: batch {batch}, {k} steps per call, median per step")
    for key in keys:
        a, b = rows[f"1_seed/{key}"], rows[f"{args.seeds}_stacked/{key}"]
        row = {
            "one_seed_us_per_step": 1e6 * a["step_s"] / k,
            "stacked_us_per_step": 1e6 * b["step_s"] / k,
            "ratio": b["step_s"] / a["step_s"],
        }
        out["rows"][key] = row
        print(
            f"  {key:28s} 1 seed {row['one_seed_us_per_step']:7.1f} us   {args.seeds} stacked "
            f"{row['stacked_us_per_step']:7.1f} us   ratio {row['ratio']:.2f}"
        )
    if args.profile:
        out["profile"] = {}
        for label, (fn, fn_args) in workloads.items():
            prof = thunk_profile(fn, fn_args, calls=5, steps=k, top=args.profile)
            out["profile"][label] = prof
            print(
                f"{label}: {prof['thunks_per_step']:.0f} thunks per step, "
                f"{prof['thunk_us_per_step']:.1f} us of thunk time per step"
            )
            for thunk, us, runs in prof["top"]:
                print(f"  {us:8.1f} us  x{runs:4.2f}  {thunk}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
