"""Device check, part ``table1``: ARFL Table 1, all rows x seeds, as one stacked program.

    python benchmarks/table1_program.py --json table1.json [--dry-run]

Rows A-H of ``configs/moons_arfl.py`` (standard, standard_arfl, adversarial,
adversarial_arfl, dual, dual_arfl, trades, mirst; Hao et al. Table 1) share the data,
the 2-10-10-1 MLP and Adam, so every run's state has the same shapes. Each row's
seeds are stacked on a leading axis (``train.vmap_seeds``' machinery: each seed its own
initialisation, base key and data shuffle), and all rows train in ONE compiled program:
a ``lax.scan`` over ``--steps-per-call`` steps whose body takes every row's vmapped train
step (``make_train_step`` of the row's method, exactly what a run compiles), so XLA can
fuse the rows' small kernels and the host dispatches once per call for all 40 runs.

Three measurements, in this order:

* ``full``: ``--epochs`` (the paper's 5000) end to end: building the configs, data and
  states, compiling, training (batches of every seed gathered on the host one call
  ahead by a thread), and the final evaluation of every run with the report's code
  (``suite.evaluate``: clean accuracy and FGSM eps 0.2 accuracy on the 1000 test
  points, the run's evaluation key). Wall time, and each row's mean (std) accuracies
  next to the paper's.
* ``profile``: three more calls of the program under ``jax.profiler``
  (``device_profile.kernel_profile``, not counted in the wall time): device events
  (kernels) per step, their time, and the device's busy fraction: where the time goes.
* ``equality``: ``--equality-epochs`` of the same stacked program next to the
  sequential runs (each run alone through ``compile_multi_step``, as
  ``train.vmap_seeds=False`` trains it), evaluated the same way: how many of the runs'
  accuracies are equal, and the largest difference.

Batches are the pipeline's (``train_dataset(seed=seed)``): gathered with one numpy
index per call from the same per-epoch permutations, checked against ``ds[step]``.
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from device_budget import PartRecord, part_parser
from device_profile import kernel_profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))

import moons_arfl  # noqa: E402

from arjax import data as data_lib  # noqa: E402
from arjax import methods, parallel  # noqa: E402
from arjax.data.prefetch import Prefetcher  # noqa: E402
from arjax.evaluation import suite  # noqa: E402
from arjax.experiment import setup  # noqa: E402
from arjax.experiment import train as train_lib  # noqa: E402
from arjax.experiment.final_eval import EVAL_KEY_TAG  # noqa: E402
from arjax.experiment.migrate import migrate  # noqa: E402
from arjax.training.step import compile_multi_step, make_train_step  # noqa: E402

ROWS = (
    "standard",
    "standard_arfl",
    "adversarial",
    "adversarial_arfl",
    "dual",
    "dual_arfl",
    "trades",
    "mirst",
)
# Hao et al. Table 1: standard / adversarial accuracy (%) (configs/moons_arfl.py).
PAPER = {
    "standard": (95.2, 71.4),
    "standard_arfl": (93.8, 73.0),
    "adversarial": (84.4, 81.8),
    "adversarial_arfl": (84.8, 81.8),
    "dual": (95.8, 72.6),
    "dual_arfl": (96.0, 79.6),
    "trades": (95.6, 77.2),
    "mirst": (92.0, 76.4),
}


class Table:
    """The rows' configs, the shared data and model, each run's initial state."""

    def __init__(self, rows, seeds, epochs: int):
        self.rows, self.seeds = tuple(rows), tuple(seeds)
        self.cfgs = {}
        for row in self.rows:
            cfg = moons_arfl.get_config(row)
            cfg.seeds, cfg.train.num_epochs = self.seeds, epochs
            cfg.train.num_devices = 1  # these programs are tiny: one device holds them
            cfg = migrate(cfg.copy_and_resolve_references())
            train_lib.validate(cfg)
            self.cfgs[row] = cfg
        first = self.cfgs[self.rows[0]]
        if any(c.data.to_dict() != first.data.to_dict() for c in self.cfgs.values()):
            raise ValueError("the rows must share one data section to share batches")
        self.dataset = setup.load_folds(first)[0]
        self.mesh = parallel.make_mesh(1)
        self.train = data_lib.split_arrays(self.dataset.splits["train"])
        self.batch = first.train.batch_size
        self.spe = data_lib.steps_per_epoch(len(self.train["label"]), self.batch)
        self.total = self.spe * epochs
        self.states, self.steps, self.tx = {}, {}, {}
        for row, cfg in self.cfgs.items():
            runs = []
            for seed in self.seeds:
                self.model, params, stats = setup.make_model(cfg, self.dataset, seed)
                state, tx = setup.initial_state(cfg, self.dataset, params, stats, seed, self.mesh)
                runs.append(state)
            self.states[row] = runs
            self.tx[row] = tx
            self.steps[row] = make_train_step(self.loss_fn(row), tx)

    def loss_fn(self, row):
        method = setup.build_method(self.cfgs[row])
        return methods.make_loss(method, self.model, self.dataset.bounds)

    def indices(self, seed: int, start: int, stop: int) -> np.ndarray:
        """Example positions ``[stop - start, B]`` of steps ``start..stop-1`` of ``seed``."""
        n = len(self.train["label"])
        out = []
        for step in range(start, stop):
            epoch, k = divmod(step, self.spe)
            if k == 0 or not out:
                perm = np.random.default_rng([seed, epoch]).permutation(n)
            out.append(perm[k * self.batch : (k + 1) * self.batch])
        return np.stack(out)

    def check_batches(self, steps) -> None:
        """The gathered positions equal the pipeline's ``ds[step]["index"]`` (every seed)."""
        for seed in self.seeds:
            ds = data_lib.train_dataset(
                self.dataset.splits["train"],
                batch_size=self.batch,
                seed=seed,
                num_epochs=self.total // self.spe,
            )
            for step in steps:
                ours = self.indices(seed, step, step + 1)[0]
                if not np.array_equal(ours, ds[step]["index"]):
                    raise AssertionError(f"seed {seed} step {step}: batch differs from ds[step]")

    def batches(self, seeds, start: int, k: int) -> tuple[dict, np.ndarray]:
        """Host batches ``[k, S, B, ...]`` of steps ``start..start+k-1`` and ``valid [k]``."""
        stop = min(start + k, self.total)
        idx = np.stack([self.indices(s, start, stop) for s in seeds], axis=1)  # [n, S, B]
        if stop - start < k:
            idx = np.concatenate([idx, np.repeat(idx[-1:], k - (stop - start), 0)])
        out = {key: v[idx] for key, v in self.train.items()}
        out["index"] = idx.astype(np.int32)
        return out, np.arange(k) < stop - start

    def evaluate(self, row: str, params, stats, seed: int) -> tuple[float, float]:
        """The report's clean and adversarial (FGSM eps 0.2) accuracy of one run."""
        cfg = self.cfgs[row]
        arrays = data_lib.split_arrays(self.dataset.splits["test"])
        key = jax.random.fold_in(jax.random.key(seed), EVAL_KEY_TAG)
        report, _ = suite.evaluate_split(
            self.model,
            params,
            stats,
            arrays,
            cfg.eval,
            self.dataset.bounds,
            key,
            self.mesh,
            curves=False,
        )
        return report["clean"]["accuracy"], report["adversarial"]["accuracy"]


def stacked_program(table: Table):
    """One jitted program: ``k`` steps of every row's vmapped (over seeds) train step."""
    rows = table.rows

    def body(states, inputs):
        batch, ok = inputs  # batch [S, B, ...]
        out, losses = [], []
        for row, state in zip(rows, states, strict=True):
            new, metrics = jax.vmap(table.steps[row])(state, batch)
            out.append(jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state))
            losses.append(metrics["loss"])
        return tuple(out), jnp.stack(losses)  # [R, S]

    def program(states, batches, valid):
        return jax.lax.scan(body, states, (batches, valid))

    return jax.jit(program, donate_argnums=0)


def train_stacked(table: Table, k: int, profile_calls: int = 0) -> tuple[dict, dict]:
    """Every row and seed for ``table.total`` steps; returns (final states, timings).

    ``profile_calls > 0``: afterwards, :func:`device_profile.kernel_profile` of that many
    more calls (on copies of the final states, which are returned) goes in the timings.
    """
    t0 = time.perf_counter()
    program = stacked_program(table)
    stack = jax.jit(lambda *s: jax.tree.map(lambda *a: jnp.stack(a), *s))
    states = tuple(stack(*table.states[row]) for row in table.rows)
    starts = list(range(0, table.total, k))
    feed = Prefetcher((table.batches(table.seeds, s, k) for s in starts), depth=2)
    losses, first = None, None
    try:
        for i, _ in enumerate(starts):
            batches, valid = feed.next()
            states, losses = program(states, jax.device_put(batches), jax.device_put(valid))
            if i == 0:
                jax.block_until_ready(losses)
                first = time.perf_counter() - t0
        final = np.asarray(losses)[np.asarray(valid)][-1]  # [R, S], waits for the last call
    finally:
        feed.close()
    if not np.isfinite(final).all():
        raise FloatingPointError(f"non-finite final losses {final}")
    timing = {
        "first_call_s": first,
        "train_s": time.perf_counter() - t0,
        "calls": len(starts),
        "final_loss": final.tolist(),
    }
    if profile_calls:
        inputs = [jax.tree.map(jnp.copy, states), jax.device_put(batches), jax.device_put(valid)]

        def call():
            inputs[0], out = program(*inputs)
            return out

        t1 = time.perf_counter()
        timing["profile"] = kernel_profile(call, (), calls=profile_calls, steps_per_call=k)
        timing["profile_s"] = time.perf_counter() - t1
    return dict(zip(table.rows, states, strict=True)), timing


def evaluate_all(table: Table, states: dict) -> dict:
    """row -> [(clean, adversarial) per seed] for stacked states ``[S, ...]``."""
    out = {}
    for row, state in states.items():
        out[row] = [
            table.evaluate(
                row,
                jax.tree.map(lambda a, i=i: a[i], state.params),
                jax.tree.map(lambda a, i=i: a[i], state.batch_stats),
                seed,
            )
            for i, seed in enumerate(table.seeds)
        ]
    return out


def train_sequential(table: Table, k: int) -> tuple[dict, dict]:
    """Each run alone, as ``train.vmap_seeds=False`` trains it: row -> [final state]."""
    t0 = time.perf_counter()
    sharding = parallel.batch_sharding(table.mesh, leading_axes=2)
    out, compile_s = {}, 0.0
    for row in table.rows:
        multi = compile_multi_step(table.loss_fn(row), table.tx[row], table.mesh)
        out[row] = []
        for seed, state in zip(table.seeds, table.states[row], strict=True):
            state = jax.tree.map(jnp.copy, state)  # the stacked run reuses the originals
            for start in range(0, table.total, k):
                batches, valid = table.batches((seed,), start, k)
                batches = parallel.put_batch({n: v[:, 0] for n, v in batches.items()}, sharding)
                t1 = time.perf_counter()
                state, metrics = multi(state, batches, jnp.asarray(valid))
                if start == 0 and seed == table.seeds[0]:
                    jax.block_until_ready(metrics)
                    compile_s += time.perf_counter() - t1
            out[row].append(state)
        jax.block_until_ready(out[row][-1])
    return out, {"train_s": time.perf_counter() - t0, "first_calls_s": compile_s}


def equality(table: Table, k: int) -> dict:
    """The stacked program's accuracies next to the sequential runs' (same epochs)."""
    seq_states, seq_time = train_sequential(table, k)
    seq = {
        row: [
            table.evaluate(row, s.params, s.batch_stats, seed)
            for s, seed in zip(states, table.seeds, strict=True)
        ]
        for row, states in seq_states.items()
    }
    stacked_states, stacked_time = train_stacked(table, k)
    stacked = evaluate_all(table, stacked_states)
    diffs = [
        abs(a - b)
        for row in table.rows
        for s, v in zip(seq[row], stacked[row], strict=True)
        for a, b in zip(s, v, strict=True)
    ]
    runs = len(table.rows) * len(table.seeds)
    equal = sum(s == v for row in table.rows for s, v in zip(seq[row], stacked[row], strict=True))
    return {
        "epochs": table.total // table.spe,
        "runs": runs,
        "equal_runs": int(equal),
        "all_equal": bool(equal == runs),
        "max_abs_diff": max(diffs),
        "sequential": seq,
        "stacked": stacked,
        "sequential_time": seq_time,
        "stacked_time": stacked_time,
    }


def full_run(rows, seeds, epochs: int, k: int) -> dict:
    """Build, compile, train and evaluate every run: wall time and the rows' accuracies."""
    t0 = time.perf_counter()
    table = Table(rows, seeds, epochs)
    table.check_batches([0, table.total - 1])
    build_s = time.perf_counter() - t0
    states, timing = train_stacked(table, k, profile_calls=3)
    t1 = time.perf_counter()
    accuracies = evaluate_all(table, states)
    eval_s = time.perf_counter() - t1
    wall = time.perf_counter() - t0 - timing["profile_s"]  # the profile is not the run's
    summary = {}
    for row, runs in accuracies.items():
        a = 100 * np.asarray(runs)  # [S, 2]
        summary[row] = {
            "clean_mean": a[:, 0].mean(),
            "clean_std": a[:, 0].std(),
            "adversarial_mean": a[:, 1].mean(),
            "adversarial_std": a[:, 1].std(),
            "paper": PAPER[row],
        }
    steps = table.total * len(rows) * len(seeds)
    return {
        "epochs": epochs,
        "rows": list(rows),
        "seeds": list(seeds),
        "steps_per_call": k,
        "wall_s": wall,
        "build_s": build_s,
        "eval_s": eval_s,
        **timing,
        "run_steps_per_s": steps / (timing["train_s"] - timing["first_call_s"]),
        "accuracies": accuracies,
        "summary": summary,
    }


def main(argv=None):
    parser = part_parser(__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5000)
    parser.add_argument("--equality-epochs", type=int, default=50)
    parser.add_argument("--steps-per-call", type=int, default=100)
    args = parser.parse_args(argv)
    rows = args.rows.split(",")
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown --rows {unknown}; valid: {', '.join(ROWS)}")
    rec = PartRecord(args.json, "table1", args.cap_s, args.dry_run)
    seeds, epochs, eq_epochs, k = args.seeds, args.epochs, args.equality_epochs, args.steps_per_call
    if args.dry_run:
        from arjax import compilation_cache

        compilation_cache.enable("auto")
        seeds, epochs, eq_epochs, k = min(seeds, 2), 2, 1, 20
    seeds = tuple(range(seeds))
    rec.set(
        "config",
        dict(
            rows=rows,
            seeds=list(seeds),
            epochs=epochs,
            equality_epochs=eq_epochs,
            steps_per_call=k,
            backend=jax.default_backend(),
        ),
    )
    full = full_run(rows, seeds, epochs, k)  # first: the number the part is for
    rec.set("full", full)
    rec.line(
        f"Table 1 ({len(rows)} rows x {len(seeds)} seeds x {epochs} epochs, one program): "
        f"{full['wall_s']:.1f} s end to end (compile {full['first_call_s']:.1f} s, train "
        f"{full['train_s']:.1f} s, evaluation {full['eval_s']:.1f} s)"
    )
    for row, s in full["summary"].items():
        rec.line(
            f"  {row:17s} clean {s['clean_mean']:.1f} ({s['clean_std']:.1f})  adversarial "
            f"{s['adversarial_mean']:.1f} ({s['adversarial_std']:.1f})  paper "
            f"{s['paper'][0]:.1f} / {s['paper'][1]:.1f}"
        )
    profile = full["profile"]
    rec.line(
        f"  one step of all {len(rows) * len(seeds)} runs: {profile['wall_us_per_step']:.0f} us "
        f"(profiled), {profile['events_per_step']:.0f} device events, busy "
        f"{100 * profile['busy_fraction']:.0f}% of the time"
    )
    eq = equality(Table(rows, seeds, eq_epochs), k)
    rec.set("equality", eq)
    rec.line(
        f"Table 1 stacked vs sequential at {eq_epochs} epochs: {eq['equal_runs']}/{eq['runs']} "
        f"runs with equal accuracies (max difference {eq['max_abs_diff']:.4f})"
    )
    rec.finish()


if __name__ == "__main__":
    main()
