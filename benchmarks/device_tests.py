"""Device check, part ``tests``: the GPU-relevant tests with JAX on the device.

Runs ``pytest -m gpu`` (``tests/gpu_selection.py``: sharding on the real device count,
bf16, attacks inside the ball and the bounds, trace counts, resume after ``kill -9``,
vmapped seeds equal to sequential runs) in up to three modes:

* ``default``: as arjax runs, with its persistent compilation cache: a resumed run
  loads the very executable the killed run compiled;
* ``no_cache``: the resume-equality subset (``gpu_selection.RESUME_SUBSET``) with
  ``ARJAX_CACHE_DIR=off``: every process compiles, and autotunes, its own kernels;
* ``deterministic``: the same subset, no cache, with XLA's deterministic GPU kernels
  (``--xla_gpu_deterministic_ops=true``, or ``--xla_gpu_exclude_nondeterministic_ops``
  where the jaxlib only knows that); run only when ``no_cache`` fails.

``resume_bit_identical`` says, per mode, whether the resumed runs' reports equalled the
uninterrupted ones exactly (``test_kill_9_...``) and the vmapped seeds matched. The dry
run only collects the selection (the tests themselves run in the CPU suite).
"""

import importlib.util
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from gpu_selection import RESUME_SUBSET, names  # noqa: E402

DETERMINISTIC_FLAGS = (
    "--xla_gpu_deterministic_ops=true",
    "--xla_gpu_exclude_nondeterministic_ops=true",
)
XDIST_WORKERS = 4


def junit(path: str) -> dict:
    """Counts, failures and per-group outcomes of a pytest JUnit XML file."""
    groups = names()
    out = {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "by_group": {}}
    if not os.path.exists(path):
        return out
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        outcome = (
            "failed"
            if bad is not None
            else ("skipped" if case.find("skipped") is not None else "passed")
        )
        out[outcome] += 1
        group = groups.get(name.split("[")[0], "other")
        counts = out["by_group"].setdefault(group, {"passed": 0, "failed": 0, "skipped": 0})
        counts[outcome] += 1
        if bad is not None:
            message = (bad.get("message") or bad.text or "").strip().splitlines()
            out["failures"].append(f"{case.get('classname')}::{name}: {message[:1]}")
    return out


def deterministic_flag(env: dict) -> str | None:
    """The first of :data:`DETERMINISTIC_FLAGS` this jaxlib accepts on the device."""
    for flag in DETERMINISTIC_FLAGS:
        probe = dict(env, XLA_FLAGS=f"{env.get('XLA_FLAGS', '')} {flag}".strip())
        out = subprocess.run(
            [sys.executable, "-c", "import jax; jax.devices()"],
            env=probe,
            capture_output=True,
            timeout=120,
        )
        if out.returncode == 0:
            return flag
    return None


def _resume_ok(result: dict) -> bool | None:
    groups = result["by_group"]
    chosen = [groups[g] for g in ("resume_after_kill", "vmapped_seeds") if g in groups]
    if not chosen or not any(c["passed"] + c["failed"] for c in chosen):
        return None
    return all(c["failed"] == 0 for c in chosen)


def run_tests(dry_run: bool, timeout: float, work: str, env: dict, log, run_process) -> dict:
    """The part: returns ``{"status", "seconds", "cap_s", "result"}`` like the others."""
    t0 = time.perf_counter()
    result = {"part": "tests", "summary": [], "notes": [], "modes": {}}
    base = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:randomly"]
    if dry_run:
        modes = {
            "collect": ["--collect-only", "-q"],
            "collect_resume": ["--collect-only", "-q", "-k", RESUME_SUBSET],
        }
        for mode, extra in modes.items():
            out = subprocess.run(
                base + extra + ["tests"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=max(timeout, 1),
            )
            log.write(out.stdout + out.stderr)
            count = sum(
                int(ln.rsplit(":", 1)[1])
                for ln in out.stdout.splitlines()
                if ln.startswith("tests") and ln.rsplit(":", 1)[1].strip().isdigit()
            )
            result["modes"][mode] = {"returncode": out.returncode, "collected": count}
        ok = all(m["returncode"] == 0 and m["collected"] > 0 for m in result["modes"].values())
        result["summary"].append(
            f"GPU tests (dry run: collected only): {result['modes']['collect']['collected']} "
            f"selected, {result['modes']['collect_resume']['collected']} in the resume subset"
        )
        return {
            "status": "ok" if ok else "failed",
            "seconds": time.perf_counter() - t0,
            "cap_s": timeout,
            "result": result,
        }
    env = dict(env, XLA_PYTHON_CLIENT_PREALLOCATE="false")  # several processes share the GPU
    if importlib.util.find_spec("xdist") is not None:
        base += ["-n", str(XDIST_WORKERS)]
    runs = [
        ("default", {}, None),
        ("no_cache", {"ARJAX_CACHE_DIR": "off"}, RESUME_SUBSET),
        ("deterministic", {"ARJAX_CACHE_DIR": "off"}, RESUME_SUBSET),
    ]
    status = "ok"
    for mode, extra_env, subset in runs:
        left = timeout - (time.perf_counter() - t0)
        if mode == "deterministic":
            if result["modes"].get("no_cache", {}).get("resume_bit_identical") is not False:
                result["notes"].append("deterministic mode not run: no_cache did not fail")
                continue
            flag = deterministic_flag(env)
            result["deterministic_flag"] = flag
            if flag is None:
                result["notes"].append("no deterministic-ops XLA flag is accepted by this jaxlib")
                continue
            extra_env = dict(extra_env, XLA_FLAGS=f"{env.get('XLA_FLAGS', '')} {flag}".strip())
        if left < 15:
            result["notes"].append(f"{mode} not run: {left:.0f} s of the cap left")
            status = "timed_out"
            continue
        xml = os.path.join(work, f"tests_{mode}.xml")
        cmd = (
            base + ["-q", "-rfE", f"--junitxml={xml}", "tests"] + (["-k", subset] if subset else [])
        )
        code, seconds = run_process(cmd, dict(env, **extra_env), left, log)
        parsed = junit(xml)
        parsed.update(
            returncode=code, seconds=seconds, env=extra_env, resume_bit_identical=_resume_ok(parsed)
        )
        result["modes"][mode] = parsed
        if code is None:
            status = "timed_out"
        result["summary"].append(
            f"GPU tests, {mode}: {parsed['passed']} passed, {parsed['failed']} failed, "
            f"{parsed['skipped']} skipped ({seconds:.0f} s); resume bit-identical: "
            f"{parsed['resume_bit_identical']}"
        )
        result["summary"] += [f"  FAILED {f}" for f in parsed["failures"][:10]]
    result["resume_bit_identical"] = {
        m: r.get("resume_bit_identical") for m, r in result["modes"].items()
    }
    return {
        "status": status,
        "seconds": time.perf_counter() - t0,
        "cap_s": timeout,
        "result": result,
    }
