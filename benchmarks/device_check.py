"""The device check: every GPU measurement of arjax in one command, inside a time budget.

    bash benchmarks/device_check.sh              # on the GPU machine (writes to $OUT)
    bash benchmarks/device_check.sh --dry-run    # tiny sizes on the CPU

Runs the parts in order of importance, each as its own process under a wall-clock cap
(``--caps``, and never past the whole check's ``--budget-s``): ``env`` (device, driver,
versions, measured ceilings), ``tests`` (``pytest -m gpu`` with JAX on the device, then
the resume-equality subset without the compilation cache and, if that fails, with
deterministic GPU kernels), ``speed_resnet18``, ``table1``, ``pipeline``,
``speed_fmnist``, ``speed_densenet_khakzar``, ``speed_unet_ima``. A part killed at its
cap keeps what it had written (``device_budget.PartRecord``). After every part the
check rewrites ``device_check.json`` and ``summary.txt`` in ``--out``, so a check that is
itself stopped still leaves its results; every part's output goes to
``device_check.log``. benchmarks/README.md describes the fields.
"""

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from device_tests import run_tests

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
# name -> (script and arguments, cap in seconds on an H100): the order is the priority.
PARTS = {
    "env": (["device_env.py"], 20),
    "tests": (None, 100),
    "speed_resnet18": (["device_speed.py", "--group", "resnet18"], 80),
    "table1": (["table1_program.py"], 100),
    "pipeline": (["input_pipeline.py"], 70),
    "speed_fmnist": (["device_speed.py", "--group", "fmnist"], 40),
    "speed_densenet_khakzar": (["device_speed.py", "--group", "densenet_khakzar"], 35),
    "speed_unet_ima": (["device_speed.py", "--group", "unet_ima"], 35),
}
BUDGET_S = 470  # 8 minutes on one H100, less the wheels' install and the summary
MIN_PART_S = 20  # a part that would get less is skipped
JAX_MEMORY = {"speed": "0.45"}  # JAX and PyTorch share the GPU in the speed parts
_signals = {"starting": False, "pending": None}  # SIGTERM while a part's process starts


def part_env(name: str, dry_run: bool) -> dict:
    """The environment of a part's process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, BENCH, *filter(None, [env.get("PYTHONPATH")])])
    if dry_run:
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    else:
        env["JAX_PLATFORMS"] = "cuda"  # fail loudly rather than fall back to the CPU
        if name.startswith("speed"):
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = JAX_MEMORY["speed"]
    return env


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 5 s if it is still there."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace)
            return
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue


def run_process(cmd, env, timeout: float, log) -> tuple[int | None, float]:
    """Runs ``cmd`` in its own process group; at ``timeout`` s the group is stopped.

    The group stays in this session (no ``setsid``), so whatever ends the check's
    session ends the parts too; if the check itself is stopped (SIGTERM, Ctrl-C) while a
    part runs, it stops the part's group first.

    Returns:
      ``(returncode, seconds)``; returncode None when it was stopped at the timeout.
    """
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    t0 = time.perf_counter()
    _signals["starting"] = True  # a SIGTERM now waits until the part can be stopped
    try:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, process_group=0
        )
    finally:
        _signals["starting"] = False
    try:
        if _signals["pending"] is not None:
            raise KeyboardInterrupt(f"signal {_signals['pending']}")
        code = proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        code = None
        _stop_group(proc)
    except BaseException:
        _stop_group(proc)
        raise
    seconds = time.perf_counter() - t0
    log.write(f"[exit {code} after {seconds:.1f} s]\n")
    log.flush()
    return code, seconds


def part_command(name: str, args, work: str) -> tuple[list[str], str]:
    """The part's command line and its JSON file."""
    script, _ = PARTS[name]
    path = os.path.join(work, f"{name}.json")
    cmd = [sys.executable, os.path.join(BENCH, script[0]), *script[1:], "--json", path]
    if args.dry_run:
        cmd.append("--dry-run")
    if script[0] == "device_speed.py":
        cmd += ["--env-json", os.path.join(work, "env.json")]
    return cmd + shlex.split(args.part_args.get(name, "")), path


def run_part(name: str, args, work: str, timeout: float, log) -> dict:
    """Runs one part; returns its status, time and (partial) result."""
    if name == "tests":
        return run_tests(
            args.dry_run, timeout, work, part_env(name, args.dry_run), log, run_process
        )
    cmd, path = part_command(name, args, work)
    code, seconds = run_process(
        cmd + ["--cap-s", f"{timeout:.0f}"], part_env(name, args.dry_run), timeout, log
    )
    result = None
    if os.path.exists(path):
        with open(path) as f:
            result = json.load(f)
    status = "timed_out" if code is None else ("ok" if code == 0 else "failed")
    return {
        "status": status,
        "returncode": code,
        "seconds": seconds,
        "cap_s": timeout,
        "result": result,
    }


def parse_caps(text: str) -> dict[str, float]:
    """``name=seconds,...`` -> caps, checked against the part names."""
    caps = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in PARTS or not value:
            raise SystemExit(f"--caps: bad item {item!r}; parts: {', '.join(PARTS)}")
        caps[name] = float(value)
    return caps


def parse_part_args(items: list[str]) -> dict[str, str]:
    """``name=ARGS`` (repeatable) -> extra command-line arguments of that part."""
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in PARTS or name == "tests":
            raise SystemExit(f"--part-args: bad part {name!r}; valid: {', '.join(PARTS)} but tests")
        out[name] = value
    return out


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def targets(parts: dict) -> dict:
    """The issue's targets, read off the parts' results (None: not measured)."""
    rows = _get(parts, "speed_resnet18", "result", "rows") or {}
    name = next((r for r in rows if r.startswith("train_step/adversarial_pgd")), None)
    rn = _get(rows, name, "eager", "impls")
    speedup = _get(rn, "torch_bf16", "speedup")
    table = _get(parts, "table1", "result", "full")
    runs = _get(parts, "pipeline", "result", "real_run") or {}
    step = _get(rn, "arjax_bf16", "images_per_s")
    decode = _get(parts, "pipeline", "result", "rates")
    return {
        "resnet18_bf16_vs_torch_eager": {
            "value": speedup,
            "target": 1.3,
            "met": None if speedup is None else speedup >= 1.3,
        },
        "table1_wall_s": {
            "value": _get(table, "wall_s"),
            "target": 60.0,
            "met": None if table is None else table["wall_s"] < 60.0,
        },
        "data_wait_fraction": {
            label: {"value": r["data_wait_fraction"], "met": r["data_wait_fraction"] < 0.01}
            for label, r in runs.items()
        },
        "pipeline_vs_resnet18_step": None
        if not (step and decode)
        else {
            "step_images_per_s_bf16": step,
            **{f"{k}_images_per_s": v["images_per_s"] for k, v in decode.items()},
            "decode_over_step": decode["decode"]["images_per_s"] / step,
            "cached_over_step": decode["cached"]["images_per_s"] / step,
        },
    }


def summary_text(report: dict) -> str:
    lines = [
        f"arjax device check{' (DRY RUN: tiny sizes on the CPU)' if report['dry_run'] else ''}"
        f", {report['started']}, {report['elapsed_s']:.0f} s of {report['budget_s']:.0f} s"
    ]
    if report.get("interrupted"):
        lines.append(f"INTERRUPTED ({report['interrupted']}): the parts below are all it ran")
    for name, part in report["parts"].items():
        lines.append(
            f"[{name}] {part['status']} ({part.get('seconds', 0):.0f} s"
            f" of a {part.get('cap_s', 0):.0f} s cap)"
        )
        result = part.get("result") or {}
        lines += [f"  {s}" for s in result.get("summary", [])]
        lines += [f"  note: {s}" for s in result.get("notes", [])]
    t = report["targets"]
    lines.append("targets:")
    for key in ("resnet18_bf16_vs_torch_eager", "table1_wall_s"):
        lines.append(
            f"  {key}: {t[key]['value']} (target {t[key]['target']}, met: {t[key]['met']})"
        )
    for label, r in t["data_wait_fraction"].items():
        lines.append(
            f"  data wait ({label}): {100 * r['value']:.1f}% of the loop (met: {r['met']})"
        )
    if t["pipeline_vs_resnet18_step"]:
        p = t["pipeline_vs_resnet18_step"]
        lines.append(
            f"  pipeline / ResNet-18 bf16 step images/s: decode {p['decode_over_step']:.2f}"
            f"x, cached {p['cached_over_step']:.2f}x"
        )
    return "\n".join(lines) + "\n"


def write(report: dict, out: str) -> None:
    report["targets"] = targets(report["parts"])
    tmp = os.path.join(out, "device_check.json.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, os.path.join(out, "device_check.json"))
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(summary_text(report))


def _terminated(signum, frame):
    if _signals["starting"]:  # inside Popen: raised once the part's process exists
        _signals["pending"] = signum
        return
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument(
        "--out", default=os.environ.get("OUT") or os.path.join(ROOT, "runs", "device_check")
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated, in order")
    parser.add_argument(
        "--budget-s", type=float, default=None, help=f"default {BUDGET_S} (dry run: none)"
    )
    parser.add_argument("--caps", default="", help="name=seconds,... overriding the caps")
    parser.add_argument(
        "--part-args",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="extra arguments of one part, e.g. table1='--rows dual_arfl --seeds 2'",
    )
    args = parser.parse_args(argv)
    args.part_args = parse_part_args(args.part_args)
    chosen = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown --parts {unknown}; valid: {', '.join(PARTS)}")
    caps = {name: cap for name, (_, cap) in PARTS.items()}
    if args.dry_run:
        caps = dict.fromkeys(caps, 1800.0)
    caps.update(parse_caps(args.caps))
    budget = args.budget_s or (float("inf") if args.dry_run else BUDGET_S)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    report = {
        "command": " ".join(sys.argv),
        "dry_run": args.dry_run,
        "budget_s": budget,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "parts": {},
    }
    work = tempfile.mkdtemp(prefix="arjax_device_check_")
    previous = signal.signal(signal.SIGTERM, _terminated)  # stop the part, keep the report
    try:
        with open(os.path.join(args.out, "device_check.log"), "w") as log:
            for name in chosen:
                left = budget - (time.perf_counter() - t0)
                if left < MIN_PART_S:
                    note = f"{left:.0f} s of the budget left"
                    part = {"status": "skipped", "seconds": 0, "cap_s": 0,
                            "result": {"notes": [note]}}  # fmt: skip
                else:
                    part = run_part(name, args, work, min(caps[name], left - 5), log)
                report["parts"][name] = part
                print(f"[{name}] {part['status']} in {part['seconds']:.0f} s", flush=True)
                report["elapsed_s"] = time.perf_counter() - t0
                write(report, args.out)
    except KeyboardInterrupt as e:  # SIGTERM or Ctrl-C: the parts so far are kept
        report["interrupted"] = str(e) or "KeyboardInterrupt"
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(work, ignore_errors=True)
    report["elapsed_s"] = time.perf_counter() - t0
    write(report, args.out)
    print(summary_text(report), end="")
    return report


if __name__ == "__main__":
    sys.exit(130 if main().get("interrupted") else 0)
