"""Device check, part ``pipeline``: decoding 1024x1024 PNGs to 224 against the training step.

    python benchmarks/input_pipeline.py --json pipeline.json [--dry-run]

Writes a folder of ``--images`` greyscale 1024x1024 PNGs (ChestX-ray14's format: a
smooth random field plus noise, so they compress like radiographs rather than like
white noise) and a CSV manifest, read by arjax's own pipeline: ``csv_manifest`` ->
``ImageFileSource`` (Pillow decode, bilinear resize to 224, grey to 3 channels) ->
``train_dataset`` -> ``BatchStream`` with ``--workers`` grain worker processes. Measured:

* ``decode``: images/s of batches of 128 decoded and resized by the workers, no cache;
* ``cache_fill`` and ``cached``: with ``data.cache_dir``, one stream: its first epoch
  (decode, then the uint8 224x224 copies written to the memmap) and its later epochs
  (memmap reads);
* ``real_run``: the training loop itself (``PhaseLoop``: ``train.num_workers`` workers,
  ``train.prefetch`` 2) running ResNet-18 PGD-10 adversarial training in bfloat16 (the
  fastest step, so the strictest test of the input side) on these files, with the warm
  cache and then, if the cap allows, without it: step images/s, and the fraction of the
  loop's time spent waiting for the next batch (``Prefetcher.next``), counted from the
  second call (the first compiles). 0 means no step waited on data.

Rates exclude the first batch (worker start-up). The ResNet-18 step without data comes
from the ``speed_resnet18`` part; ``device_check.py`` puts the two side by side.
"""

import csv
import multiprocessing
import os
import shutil
import tempfile
import time
import traceback

import numpy as np
from device_budget import PartRecord, part_parser
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png(args) -> str:
    path, size, seed = args
    rng = np.random.default_rng(seed)
    low = Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8))
    field = np.asarray(low.resize((size, size), Image.Resampling.BICUBIC), np.float32)
    pixels = np.clip(field + rng.normal(0.0, 6.0, (size, size)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def write_folder(folder: str, count: int, size: int, workers: int) -> str:
    """``count`` PNGs ``size x size`` and ``manifest.csv`` (path, label) in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    jobs = [(os.path.join(folder, f"img_{i:05d}.png"), size, i) for i in range(count)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_png, jobs, chunksize=8)
    manifest = os.path.join(folder, "manifest.csv")
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([os.path.basename(p), i % 2] for i, (p, _, _) in enumerate(jobs))
    return manifest


def data_config(manifest: str, image_size: int, cache_dir: str | None) -> dict:
    """The ``data`` section: every row in the training split, 3 channels, optional cache."""
    return dict(
        name="csv_manifest",
        manifest=manifest,
        image_size=image_size,
        channels=3,
        cache_dir=cache_dir or "",
        test_fraction=0.0,
        val_fraction=0.0,
        verify_images=False,
    )


def stream_times(source, batch: int, epochs: int, workers: int) -> tuple[float, list[float]]:
    """Seconds to the first batch (worker start-up) and of each later batch, in order."""
    from arjax.data import train_dataset
    from arjax.data.streaming import BatchStream

    ds = train_dataset(source, batch_size=batch, seed=0, num_epochs=epochs)
    t0 = time.perf_counter()
    stream = BatchStream(ds, 0, num_workers=workers)
    times = []
    try:
        stream.next()
        first = time.perf_counter() - t0
        for _ in range(len(ds) - 1):
            t1 = time.perf_counter()
            stream.next()
            times.append(time.perf_counter() - t1)
    finally:
        stream.close()
    return first, times


def _rate(times: list[float], batch: int, first: float) -> dict:
    seconds = sum(times)
    n = len(times) * batch
    return {"images_per_s": n / seconds, "images": n, "seconds": seconds, "first_batch_s": first}


def rates(manifest: str, image_size: int, batch: int, epochs: int, workers: int, cache: str):
    """``decode`` (no cache), ``cache_fill`` (the first epoch with the cache: decode and
    write) and ``cached`` (the later epochs of the same stream: memmap reads)."""
    import ml_collections

    from arjax.data.manifest import read_manifest

    def source(cache_dir):
        cfg = ml_collections.ConfigDict(data_config(manifest, image_size, cache_dir))
        return read_manifest(cfg, "pngs").splits["train"]

    first, times = stream_times(source(None), batch, epochs, workers)
    out = {"decode": _rate(times, batch, first)}
    shutil.rmtree(cache, ignore_errors=True)
    cached = source(cache)
    per_epoch = len(cached) // batch
    first, times = stream_times(cached, batch, 1 + epochs, workers)
    out["cache_fill"] = _rate(times[: per_epoch - 1], batch, first)  # epoch 0 after batch 0
    out["cached"] = _rate(times[per_epoch - 1 :], batch, first)
    return out


class _Timed:
    """Wraps ``Prefetcher.next`` to record when each call started and how long it waited."""

    calls: list[tuple[float, float]] = []

    @classmethod
    def install(cls):
        from arjax.experiment import phase_loop

        base = phase_loop.Prefetcher
        if getattr(base, "_timed", False):
            return

        class TimedPrefetcher(base):
            _timed = True

            def next(self):
                t0 = time.perf_counter()
                try:
                    return super().next()
                finally:
                    cls.calls.append((t0, time.perf_counter() - t0))

        phase_loop.Prefetcher = TimedPrefetcher


def real_run(manifest, image_size, batch, steps, workers, cache, workdir, model_args) -> dict:
    """The training loop on the PNG folder: step images/s and the data-wait fraction."""
    from overlap import train_steps

    from arjax.experiment.presets import base_config, method_config

    model_args = dict(model_args)
    pgd_steps = model_args.pop("pgd")
    cfg = base_config()
    cfg.data = data_config(manifest, image_size, cache)
    cfg.model.update(model_args)
    cfg.method = method_config("adversarial", attack=f"pgd:linf:0.01:{pgd_steps}")
    cfg.train.update(
        batch_size=batch, steps_per_call=1, num_workers=workers, prefetch=2, log_every=1,
        eval_every=0, checkpoint_every=0, num_epochs=1000,
    )  # fmt: skip
    _Timed.install()
    _Timed.calls.clear()
    t0 = time.perf_counter()
    train_steps(cfg, workdir, steps)
    total = time.perf_counter() - t0
    calls = _Timed.calls[1:-1]  # from the second call (the first compiles) to the last
    wall = _Timed.calls[-1][0] - calls[0][0]
    waited = sum(w for _, w in calls)
    return {
        "steps": steps, "timed_steps": len(calls), "loop_seconds": total,
        "images_per_s": len(calls) * batch / wall, "data_wait_fraction": waited / wall,
        "data_wait_s": waited, "first_call_s": _Timed.calls[1][0] - _Timed.calls[0][0],
    }  # fmt: skip


def main(argv=None):
    parser = part_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=0, help="0: every core")
    parser.add_argument("--steps", type=int, default=12, help="steps of each real run")
    args = parser.parse_args(argv)
    rec = PartRecord(args.json, "pipeline", args.cap_s, args.dry_run)
    from arjax import compilation_cache

    compilation_cache.enable("auto")  # the real runs' compile time is not measured here
    workers = args.workers or min(16, os.cpu_count() or 1)
    if args.dry_run:
        size, image, batch, count, epochs, steps = 64, 32, 4, 24, 2, 3
        model = dict(name="resnet18", dtype="bfloat16", pgd=1)
        workers = min(workers, 2)
    else:
        size, image, batch, count, epochs, steps = 1024, 224, 128, args.images, 2, args.steps
        model = dict(name="resnet18", dtype="bfloat16", pgd=10)
    rec.set(
        "config",
        dict(
            png_side=size,
            image_size=image,
            batch=batch,
            images=count,
            epochs=epochs,
            workers=workers,
            real_run_steps=steps,
            model=model,
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = write_folder(os.path.join(tmp, "pngs"), count, size, workers)
        megabytes = (
            sum(
                os.path.getsize(os.path.join(tmp, "pngs", f))
                for f in os.listdir(os.path.join(tmp, "pngs"))
            )
            / 1e6
        )
        rec.set("folder", {"write_s": time.perf_counter() - t0, "megabytes": megabytes})
        cache = os.path.join(tmp, "cache")
        r = rates(manifest, image, batch, epochs, workers, cache)
        rec.set("rates", r)
        speeds = {k: f"{v['images_per_s']:.0f}" for k, v in r.items()}
        rec.line(
            f"pipeline ({workers} workers, {size}^2 PNG -> {image}, batch {batch}): decode "
            f"{speeds['decode']} img/s, cache fill {speeds['cache_fill']}, cached "
            f"{speeds['cached']} img/s"
        )
        runs = {}
        for label, cache_dir in (("cached", cache), ("no_cache", None)):
            if rec.left() < 30 and not args.dry_run:
                rec.note(f"real run {label} skipped: {rec.left():.0f} s of the cap left")
                continue
            workdir = os.path.join(tmp, f"run_{label}")
            try:
                x = real_run(manifest, image, batch, steps, workers, cache_dir, workdir, model)
            except Exception as e:  # e.g. a jax that refuses bf16 batch-norm updates
                traceback.print_exc()
                rec.note(f"real run {label} in {model['dtype']} failed ({type(e).__name__}: "
                         f"{str(e)[:200]}); running it in float32")  # fmt: skip
                model = dict(model, dtype="float32")
                x = real_run(manifest, image, batch, steps, workers, cache_dir, workdir + "_f32",
                             model)  # fmt: skip
            runs[label] = dict(x, dtype=model["dtype"])
            rec.set("real_run", runs)
            rec.line(
                f"real run ResNet-18 PGD-{model['pgd']} {model['dtype']} b{batch}, {label}: "
                f"{x['images_per_s']:.0f} img/s, waiting for data "
                f"{100 * x['data_wait_fraction']:.1f}% of the loop"
            )
    rec.finish()


if __name__ == "__main__":
    main()
