"""Host-side batch streams over a step-addressed training dataset.

``train_dataset(...)[step]`` is the batch of a global step. In-memory splits
are read in the host loop's thread (a vectorised gather takes microseconds);
file-backed splits (medical image folders) decode images, so their batches
are produced by grain worker processes, ahead of the training step.
"""

import sys

import grain
import numpy as np


def _ensure_absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; parse defaults outside an absl app."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1], known_only=True)


class BatchStream:
    """Consecutive batches ``ds[start], ds[start + 1], ...``.

    Args:
      ds: a ``grain.MapDataset`` whose item ``step`` is that step's batch.
      start: first step to read (the resumed step).
      num_workers: 0 reads in this thread; ``n > 0`` decodes in ``n`` grain
        worker processes (``mp_prefetch``), for file-backed sources.
    """

    def __init__(self, ds: grain.MapDataset, start: int, num_workers: int = 0):
        self._ds = ds
        self._step = start
        self._iter = None
        if num_workers > 0 and start < len(ds):
            _ensure_absl_flags_parsed()
            # One read thread and a short buffer per worker: the defaults (16
            # threads, 500 batches) thrash 2 cores and hold GBs of image batches.
            read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
            options = grain.MultiprocessingOptions(num_workers=num_workers)
            self._iter = iter(ds[start:].to_iter_dataset(read).mp_prefetch(options))

    def next(self) -> dict[str, np.ndarray]:
        """The next step's batch."""
        if self._iter is not None:
            batch = next(self._iter)
        else:
            batch = self._ds[self._step]
        self._step += 1
        return batch

    def close(self) -> None:
        """Stops worker processes, if any."""
        it, self._iter = self._iter, None
        if it is not None and hasattr(it, "close"):
            it.close()
