"""Multi-process runs: ``jax.distributed`` start-up, the primary process, agreement.

One training run can span several processes (hosts, or several processes on one
machine), each driving its local devices; the ``('data',)`` mesh of
:mod:`arjax.parallel` then covers the devices of all of them and XLA's collectives
(NCCL on GPUs, ICI on TPUs, gloo on CPUs) reduce the gradients across processes.
Every process runs the same program on its own slice of each global batch
(``arjax.data.train_dataset(..., process_index, process_count)``).

:func:`initialize` starts ``jax.distributed`` before any JAX computation when the
process is one of several, found from (first match wins):

1. explicit arguments (``--coordinator_address --num_processes --process_id``);
2. ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID``
   (what ``launch/multiprocess.sh`` sets);
3. a SLURM job step with ``SLURM_NTASKS > 1`` (``srun``; jax's SLURM detection picks
   the coordinator from the node list);
4. ``ARJAX_DISTRIBUTED=auto``: jax's own cluster auto-detection (Cloud TPU VMs,
   GKE, Open MPI), as ``launch/tpu_vm.sh`` sets it.

Only the primary process (index 0) writes files (metrics, plots, reports, the
workdir's config): :func:`is_primary` is what the writers ask. Decisions that
must be the same everywhere (stop after a SIGTERM that one host got, the workdir
lock) go through :func:`any_process` / :func:`agree`, so no process waits in a
collective that another has left.
"""

import itertools
import logging
import os

import jax
import numpy as np

log = logging.getLogger("arjax")

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _from_environment() -> dict | None:
    """``jax.distributed.initialize`` arguments from the environment, or None (one process)."""
    address, count, index = (os.environ.get(name) for name in _ENV)
    if address and count is not None and index is not None:
        return dict(coordinator_address=address, num_processes=int(count), process_id=int(index))
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in os.environ:
        return {}  # jax reads SLURM_* (coordinator: the first node of the step)
    if os.environ.get("ARJAX_DISTRIBUTED", "") == "auto":
        return {}
    return None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Starts ``jax.distributed`` when this process is one of several.

    Call it before anything touches a JAX device. On CPU backends it selects
    gloo collectives (``jax_cpu_collectives_implementation``), without which
    XLA:CPU cannot reduce across processes.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator service.
      num_processes: number of processes in the run.
      process_id: this process's index in ``[0, num_processes)``.

    Returns:
      True when ``jax.distributed`` was initialised (by this call or before).

    Raises:
      ValueError: only some of the three explicit arguments given, or an index
        out of range.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError(
                "--coordinator_address, --num_processes and --process_id go together; got "
                f"{coordinator_address!r}, {num_processes!r}, {process_id!r}"
            )
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} must be in [0, {num_processes})")
        kwargs = dict(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    else:
        kwargs = _from_environment()
    if kwargs is None or kwargs.get("num_processes") == 1:
        return False
    if jax.distributed.is_initialized():
        return True
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    log.info(
        "process %d of %d: %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def is_primary() -> bool:
    """This process writes the run's files (process 0; always True in one process)."""
    return jax.process_index() == 0


def _client():
    """The coordination service's client of ``jax.distributed`` (None if unavailable)."""
    try:
        from jax._src import distributed as jax_distributed
    except ImportError:  # a jax without the module: fall back to a device collective
        return None
    return getattr(jax_distributed.global_state, "client", None)


_rounds = itertools.count(1)
_WAIT_MS = 3_600_000  # the processes run the same steps; one hour covers a slow host


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is True on at least one.

    Every process must call it at the same point (it counts the calls). The vote
    goes through the coordination service's key-value store, host to host, so it
    does not queue behind the running device program (a device all-gather would
    wait for it, and undo the host/device overlap once per call); without the
    store it falls back to ``process_allgather``. One process returns ``flag``.
    """
    if jax.process_count() == 1:
        return bool(flag)
    client = _client()
    if client is None:
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray([int(bool(flag))], np.int32))
        return bool(np.asarray(flags).any())
    n, me = next(_rounds), jax.process_index()
    client.key_value_set(f"arjax/any/{n}/{me}", "1" if flag else "0")
    votes = [
        client.blocking_key_value_get(f"arjax/any/{n}/{p}", _WAIT_MS)
        for p in range(jax.process_count())
    ]
    if n > 2:  # every process has read round n - 2 before it voted in round n - 1
        client.key_value_delete(f"arjax/any/{n - 2}/{me}")
    return "1" in votes


def agree(value: int) -> int:
    """Process 0's ``value``, on every process (a collective; identity in one process)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int32)))


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (no-op in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
