"""Input prefetch: a background thread puts the next batches on the devices while a step runs.

One producer thread and one bounded FIFO queue, so batches come out in exactly the order the
input iterator made them (resume exactness needs nothing more: the iterator itself starts at the
resumed step) and at most `size` batches wait on the devices (memory). The thread applies `put`
(here `sharding.global_batch`, whose transfers are asynchronous), which is all the overlap a
step needs: while step t computes, batch t+1 is already decoded, assembled and on its way. An
exception in the producer is raised to the consumer where it happened; `close` stops the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_END = object()


class Prefetcher(Iterator):
    """`put(item)` for each item of `iterable`, computed up to `size` items ahead, in order;
    `size` 0 computes each in `next`, with no thread."""

    def __init__(self, iterable: Iterable, put: Callable[[Any], Any], size: int = 2):
        if int(size) != size or size < 0:
            raise ValueError(f"prefetch must be a whole number >= 0, got {size}")
        self._items, self._put, self._size = iter(iterable), put, size
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, name="prefetch", daemon=True)
        if size:
            self._thread.start()

    def _offer(self, entry: tuple[Any, BaseException | None]) -> bool:
        """Blocks until the queue takes `entry` (True) or `close` is called (False)."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._offer((self._put(item), None)):
                    return
            self._offer((_END, None))
        except BaseException as e:  # handed to the consumer, raised there
            self._offer((None, e))

    def __next__(self) -> Any:
        if not self._size:
            return self._put(next(self._items))
        if self._done:
            raise StopIteration
        value, error = self._queue.get()
        self._done = error is not None or value is _END
        if error is not None:
            raise error
        if value is _END:
            raise StopIteration
        return value

    def close(self) -> None:
        self._stop.set()
        if self._size:
            self._thread.join()
