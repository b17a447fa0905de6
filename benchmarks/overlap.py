"""Training-loop throughput with and without host/device overlap (``train.prefetch``).

Runs the phase loop of ``configs/covid_ct_ima.py:ce,smoke`` (ResNet-18 with instance
norm, synthetic lesion images) at ``--image-size`` (224 by default) for ``--steps``
steps, once with ``train.prefetch=0`` (read, put, run, fetch: synchronous) and once with
``--prefetch`` (batches put on the devices ahead by a thread, metrics fetched one call
late), alternating ``--rounds`` times. The first call (compilation) is left out: the
rate is examples per second over the remaining steps, from the loop's own
``metrics.jsonl`` records (``log_every=1``)::

    python benchmarks/overlap.py --steps 6 --json overlap.json
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(image_size: int, steps: int, batch: int, prefetch: int):
    spec = importlib.util.spec_from_file_location(
        "covid", os.path.join(ROOT, "configs/covid_ct_ima.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config("ce,smoke")
    cfg.data.image_size = image_size
    cfg.data.num_images = 4 * batch * (steps + 1)  # the train split holds >= steps batches
    cfg.train.update(batch_size=batch, log_every=1, eval_every=0, checkpoint_every=0)
    cfg.train.prefetch = prefetch
    return cfg


def train_steps(cfg, workdir: str, steps: int):
    """Runs the first ``steps`` steps of seed 0's single phase of ``cfg``; returns the phase."""
    import tqdm

    from arjax import parallel
    from arjax.experiment import evals, phases, setup
    from arjax.experiment.migrate import migrate
    from arjax.experiment.phase_loop import PhaseLoop
    from arjax.training.checkpoint import Checkpointer, PreemptionFlag

    cfg = migrate(cfg)
    dataset = setup.load_folds(cfg)[0]
    evaluators, policy = evals.build(cfg, dataset.splits)
    mesh = parallel.make_mesh(0)
    model, params, batch_stats = setup.make_model(cfg, dataset, 0)
    state, tx = setup.initial_state(cfg, dataset, params, batch_stats, 0, mesh)
    phase = phases.plan(cfg, setup.build_method(cfg), workdir)[0]
    loop = PhaseLoop(
        cfg, [phase], [0], dataset, model, mesh, [Checkpointer(phase.checkpoint_dir)], 0,
        evaluators=evaluators, policy=policy,
    )  # fmt: skip
    loop.total = steps
    flag = PreemptionFlag()
    try:
        loop.run(state, tx, tqdm.tqdm(disable=True), flag)
    finally:
        loop.close()
        flag.close()
    return phase


def run_loop(cfg, workdir: str, steps: int) -> float:
    """Examples/s of steps 2..``steps`` of one phase loop (step 1 compiles)."""
    phase = train_steps(cfg, workdir, steps)
    with open(os.path.join(phase.directory, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    times = [cfg.train.batch_size / r["examples_per_s"] for r in records[1:]]
    return (len(times) * cfg.train.batch_size) / sum(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"prefetch=0": [], f"prefetch={args.prefetch}": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, depth in (("prefetch=0", 0), (f"prefetch={args.prefetch}", args.prefetch)):
                cfg = _config(args.image_size, args.steps, args.batch, depth)
                rate = run_loop(cfg, os.path.join(tmp, f"{r}_{depth}"), args.steps)
                rates[name].append(rate)
                print(f"round {r} {name}: {rate:.2f} examples/s", flush=True)
    out = {
        "model": "resnet18 (instance norm)",
        "image_size": args.image_size,
        "batch": args.batch,
        "steps": args.steps,
        "examples_per_s": rates,
        "median": {k: statistics.median(v) for k, v in rates.items()},
    }
    print(json.dumps(out["median"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
