"""Device check, part ``env``: what the numbers were measured on, and the chip's ceilings.

Records the accelerator (``nvidia-smi``: name, driver, CUDA, memory, clocks, power
limit), the software (Python, jax, jaxlib and its CUDA plugin, flax, optax, orbax,
torch and its CUDA / cuDNN), the JAX backend and device kind, the datasheet peaks of
the chip (:data:`PEAKS_TFLOPS`, dense, no sparsity) and two measured ceilings: a
matrix product ``n x n x n`` on random data in bfloat16 and in float32 (JAX's default
precision: TF32 on Ampere and later GPUs), and a device-to-device copy (bytes read plus
bytes written per second). The speed part's model FLOP utilisation is against these.
"""

import importlib.metadata
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

from device_budget import PartRecord, part_parser

# Dense peak TFLOP/s by device name (vendor datasheets; first match wins). float32 rows
# of the speed part run with TF32 in both frameworks (JAX's default on these GPUs, and
# set for PyTorch), so their utilisation is against "tf32".
PEAKS_TFLOPS = (
    ("H200", {"bfloat16": 989.4, "tf32": 494.7, "float32": 66.9}),
    ("H100 PCIe", {"bfloat16": 756.0, "tf32": 378.0, "float32": 51.2}),
    ("H100", {"bfloat16": 989.4, "tf32": 494.7, "float32": 66.9}),  # SXM (80GB HBM3)
    ("A100", {"bfloat16": 312.0, "tf32": 156.0, "float32": 19.5}),
)
PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda13-plugin",
    "jax-cuda12-plugin",
    "flax",
    "optax",
    "orbax-checkpoint",
    "chex",
    "numpy",
    "grain",
    "ml-collections",
    "tensorflow-datasets",
    "torch",
    "torchvision",
    "triton",
)


def chip_peaks(device_kind: str) -> dict | None:
    """Datasheet peaks ``{dtype: TFLOP/s}`` of a device named ``device_kind``, or None."""
    for key, peaks in PEAKS_TFLOPS:
        if key.lower() in device_kind.lower():
            return dict(peaks, matched=key)
    return None


def versions() -> dict:
    """Installed versions of the packages the check depends on (None: not installed)."""
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def nvidia_smi() -> dict | None:
    """The GPU as ``nvidia-smi`` reports it, or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    fields = "name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit,temperature.gpu"
    query = [f"--query-gpu={fields}", "--format=csv,noheader"]
    out = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True, timeout=30)
    header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    cuda = next(
        (
            ln.split("CUDA Version:")[1].split()[0]
            for ln in header.splitlines()
            if "CUDA Version:" in ln
        ),
        None,
    )
    gpus = [
        dict(zip(fields.split(","), (v.strip() for v in line.split(",")), strict=False))
        for line in out.stdout.strip().splitlines()
    ]
    return {"gpus": gpus, "cuda_driver_api": cuda}


def torch_info() -> dict | None:
    """PyTorch's view of the device, or None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    info = {"version": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=torch.cuda.get_device_name(0),
            multiprocessors=props.multi_processor_count,
            memory_gib=props.total_memory / 2**30,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def _median_seconds(fn, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ceilings(n: int, copy_mib: int, repeats: int) -> dict:
    """Measured matrix-product TFLOP/s (bf16, f32 at JAX's default precision) and copy GB/s.

    Each product is ``[n, n] @ [n, n]`` on random data, chained ``chain`` times in one
    program so launch overhead does not count; the copy moves ``copy_mib`` MiB.
    """
    import jax
    import jax.numpy as jnp

    out = {"matmul_n": n, "copy_mib": copy_mib}
    key = jax.random.key(0)
    chain = 8

    @jax.jit
    def products(a, b):
        for _ in range(chain):
            a = (a @ b) * n**-0.5  # random data stays O(1): no zeros, no denormals
        return a

    for dtype in ("bfloat16", "float32"):
        a, b = (jax.random.normal(k, (n, n), dtype) for k in jax.random.split(key))
        seconds = _median_seconds(lambda a=a, b=b: products(a, b), repeats)
        out[f"matmul_{dtype}_tflops"] = 2 * n**3 * chain / seconds / 1e12
    x = jax.random.uniform(key, (copy_mib * 2**18,), jnp.float32)
    copy = jax.jit(lambda v: v + 1.0)  # reads and writes every element once
    seconds = _median_seconds(lambda: copy(x), repeats)
    out["copy_gb_per_s"] = 2 * x.nbytes / seconds / 1e9
    return out


def main(argv=None):
    args = part_parser(__doc__.splitlines()[0]).parse_args(argv)
    rec = PartRecord(args.json, "env", args.cap_s, args.dry_run)
    rec.set("versions", versions())
    rec.set("nvidia_smi", nvidia_smi())
    import jax

    device = jax.devices()[0]
    rec.set(
        "jax",
        {
            "backend": jax.default_backend(),
            "device_kind": device.device_kind,
            "device_count": jax.device_count(),
            "platform_version": getattr(device.client, "platform_version", None),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "jax_platforms": os.environ.get("JAX_PLATFORMS", ""),
        },
    )
    rec.set("peaks_tflops", chip_peaks(device.device_kind))
    rec.set("torch", torch_info())
    rec.set("host", {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()})
    smi = rec.data["nvidia_smi"]
    gpu = smi["gpus"][0] if smi and smi["gpus"] else {}
    rec.line(
        f"device: {device.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s)), "
        f"driver {gpu.get('driver_version', '-')}, CUDA {smi and smi['cuda_driver_api']}; "
        f"jax {jax.__version__}, jaxlib {rec.data['versions']['jaxlib']}, "
        f"torch {rec.data['versions']['torch']}"
    )
    n, mib, repeats = (256, 16, 3) if args.dry_run else (8192, 2048, 10)
    rec.set("ceilings", ceilings(n, mib, repeats))
    c = rec.data["ceilings"]
    rec.line(
        f"measured ceilings: matmul {n}^3 bf16 {c['matmul_bfloat16_tflops']:.1f} TFLOP/s, "
        f"f32 (default precision) {c['matmul_float32_tflops']:.1f} TFLOP/s; "
        f"copy {c['copy_gb_per_s']:.0f} GB/s"
    )
    rec.finish()


if __name__ == "__main__":
    main()
