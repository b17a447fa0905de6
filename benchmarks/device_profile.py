"""Where a compiled step's time goes on the device: kernels per step and busy fraction.

:func:`kernel_profile` runs a warm jitted call a few times under ``jax.profiler.trace``
and reads the trace's device events: on a GPU the kernels and copies of the
``/device:GPU:N`` planes (every stream), on the CPU XLA's thunks on the runtime's
threads. Per training step it gives the number of device events, their summed time,
the time the device was busy (the union of the events' intervals) against the wall
time, and the costliest events by name. Few long kernels and a busy fraction near 1:
arithmetic- or memory-bound; many short kernels and a low busy fraction: launch-bound
(the case for small models, where CUDA graphs or fewer, larger kernels help).
"""

import collections
import glob
import os
import tempfile
import time

import jax

# CPU thunk events that contain other thunks (loops, the executor) or mark an end.
_CONTAINERS = ("ThunkExecutor", "end: ", "while", "conditional", "call", "ThreadpoolListener")


def _device_events(data) -> tuple[str, list]:
    """``(kind, [(name, start_ns, duration_ns)])`` of the trace's device work."""
    gpu = [p for p in data.planes if p.name.startswith("/device:GPU")]
    events = []
    if gpu:
        for plane in gpu:
            for line in plane.lines:
                if line.name.startswith("Stream"):
                    events += [(e.name, e.start_ns, e.duration_ns) for e in line.events]
        return "gpu", events
    for plane in data.planes:
        for line in plane.lines:
            if "XLAEigen" in line.name or "PjRtCpuClient" in line.name:
                events += [
                    (e.name, e.start_ns, e.duration_ns)
                    for e in line.events
                    if not e.name.startswith(_CONTAINERS)
                ]
    return "cpu", events


def _union_ns(events) -> float:
    """Total length of the union of the events' ``[start, start + duration)`` intervals."""
    total, end = 0.0, -float("inf")
    for _, start, duration in sorted(events, key=lambda e: e[1]):
        stop = start + duration
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def kernel_profile(fn, args: tuple, *, calls: int, steps_per_call: int, top: int = 8) -> dict:
    """Device events of ``calls`` calls of ``fn(*args)`` (already compiled), per step.

    Returns:
      ``{"device", "events_per_step", "event_us_per_step", "busy_us_per_step",
      "wall_us_per_step", "busy_fraction", "top": [[name, us per step, runs per step]]}``.
    """
    jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            t0 = time.perf_counter()
            for _ in range(calls):
                jax.block_until_ready(fn(*args))
            wall = time.perf_counter() - t0
        (path,) = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    kind, events = _device_events(data)
    per = calls * steps_per_call
    time_by_name, count = collections.Counter(), collections.Counter()
    for name, _, duration in events:
        time_by_name[name] += duration
        count[name] += 1
    busy = _union_ns(events) / 1e3 / per
    return {
        "device": kind,
        "events_per_step": len(events) / per,
        "event_us_per_step": sum(time_by_name.values()) / 1e3 / per,
        "busy_us_per_step": busy,
        "wall_us_per_step": 1e6 * wall / per,
        "busy_fraction": busy / (1e6 * wall / per),
        "top": [[n, t / 1e3 / per, count[n] / per] for n, t in time_by_name.most_common(top)],
    }
