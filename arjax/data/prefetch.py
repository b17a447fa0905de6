"""A bounded queue of ready inputs, filled by a background thread.

The training loop reads its batches through :class:`Prefetcher`: while the device
runs call ``i``, a thread reads, stacks and transfers (``jax.device_put`` /
``make_array_from_process_local_data``) the batches of calls ``i + 1 ... i + depth``,
so the next call can be dispatched as soon as the loop asks for it. The queue is
bounded (``depth`` items), so at most ``depth`` calls' batches sit in device memory
besides the running one. ``depth=0`` produces each item in the caller's thread, when
asked (no thread, no queue).
"""

import queue
import threading
from collections.abc import Iterator
from typing import Any

_END = object()


class _Failure:
    """An exception raised by the producer, handed to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """``next()`` returns the items of ``items`` in order, produced up to ``depth`` ahead.

    Args:
      items: the iterator to run ahead (its ``next`` runs in the background thread).
      depth: how many produced items may wait in the queue (0: no thread).

    Raises (from ``next``):
      StopIteration: ``items`` is exhausted.
      Exception: whatever ``items`` raised, re-raised in the consumer's thread.
    """

    def __init__(self, items: Iterator[Any], depth: int):
        self._items = items
        self._stop = threading.Event()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._produce, name="arjax-prefetch")
            self._thread.daemon = True
            self._thread.start()

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._offer(item):
                    return
            self._offer(_END)
        except BaseException as e:  # handed to the consumer, raised there
            self._offer(_Failure(e))

    def _offer(self, item: Any) -> bool:
        """Puts ``item`` once there is room; False when the consumer closed meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> Any:
        """The next item (waits for the producer when the queue is empty)."""
        if self._queue is None:
            return next(self._items)
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # later calls see the end too
            raise StopIteration
        if isinstance(item, _Failure):
            raise item.error
        return item

    def close(self) -> None:
        """Stops the producer and drops what it queued (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.1)
                except queue.Empty:
                    pass
            self._thread.join()
            self._thread = None
