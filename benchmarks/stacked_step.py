"""One seed's train step next to S seeds stacked (``train.vmap_seeds``), per step.

    python benchmarks/stacked_step.py --row dual_arfl --json stacked_step.json

Builds the ARFL Table 1 row's model, method and optimiser exactly as a run does
(``configs/moons_arfl.py``, ``arjax.experiment.setup``), then times the run's compiled
multi-step (``train.steps_per_call`` steps in one ``lax.scan``) for one seed and for
``--seeds`` seeds vmapped, interleaved, for each XLA:CPU option set in ``--options``
(``default``: XLA's; ``ynn_off``: no YNNPACK; ``individual_dot``: YNNPACK for single
matrix products only, what ``arjax.jit`` uses for convolutions). ``ratio`` = stacked
time / one seed's time: ``S`` means stacking saves nothing per step, 1 that the seeds
come for free. ``seed_stacking.py`` measures the same end to end.
"""

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import workloads as wl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))

import moons_arfl  # noqa: E402

from arjax import methods, parallel  # noqa: E402
from arjax.experiment import setup  # noqa: E402
from arjax.training.step import make_multi_step, make_train_step  # noqa: E402

OPTION_SETS = {
    "default": None,
    "ynn_off": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "individual_dot": {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
    },
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", default="dual_arfl", help=", ".join(moons_arfl.VARIANTS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--options", default=",".join(OPTION_SETS))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    names = args.options.split(",")
    unknown = sorted(set(names) - set(OPTION_SETS))
    if unknown:
        raise SystemExit(f"unknown --options {unknown}; valid: {', '.join(OPTION_SETS)}")

    cfg = moons_arfl.get_config(args.row)
    dataset = setup.load_folds(cfg)[0]
    mesh = parallel.make_mesh(0)
    states = []
    for seed in range(args.seeds):
        model, params, stats = setup.make_model(cfg, dataset, seed)
        state, tx = setup.initial_state(cfg, dataset, params, stats, seed, mesh)
        states.append(state)
    loss = methods.make_loss(cfg.method, model, dataset.bounds)
    multi = make_multi_step(make_train_step(loss, tx))
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

    workloads = {}
    for name in names:
        opts = OPTION_SETS[name]
        workloads[f"1_seed/{name}"] = (
            jax.jit(multi, compiler_options=opts),
            (states[0], one, valid),
        )
        workloads[f"{args.seeds}_stacked/{name}"] = (
            jax.jit(jax.vmap(multi, in_axes=(0, 0, None)), compiler_options=opts),
            (stacked, batches, valid),
        )
    rows = wl.interleaved(workloads, args.repeats, label=f"{args.row}, {k} steps per call")
    out = {"machine": wl.machine(), "args": vars(args), "steps_per_call": k, "rows": {}}
    print(f"{args.row}: batch {batch}, {k} steps per call, median per step")
    for name in names:
        a, b = rows[f"1_seed/{name}"], rows[f"{args.seeds}_stacked/{name}"]
        row = {
            "one_seed_us_per_step": 1e6 * a["step_s"] / k,
            "stacked_us_per_step": 1e6 * b["step_s"] / k,
            "ratio": b["step_s"] / a["step_s"],
        }
        out["rows"][name] = row
        print(
            f"  {name:15s} 1 seed {row['one_seed_us_per_step']:7.1f} us   {args.seeds} stacked "
            f"{row['stacked_us_per_step']:7.1f} us   ratio {row['ratio']:.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
