"""The prefetch thread keeps the order, bounds what it reads ahead, hands errors on, and stops."""

import random
import time

import pytest

from jtransfer.prefetch import Prefetcher


def _slow_square(x: int) -> int:
    time.sleep(random.uniform(0, 0.002))
    return x * x


@pytest.mark.parametrize("size", [0, 1, 3])
def test_order_is_the_input_order(size):
    prefetcher = Prefetcher(range(100), _slow_square, size)
    assert list(prefetcher) == [x * x for x in range(100)]
    prefetcher.close()


def test_reads_at_most_size_ahead_and_stops_on_close():
    taken = []

    def endless():
        i = 0
        while True:
            taken.append(i)
            yield i
            i += 1

    prefetcher = Prefetcher(endless(), lambda x: x, size=2)
    assert [next(prefetcher) for _ in range(3)] == [0, 1, 2]
    time.sleep(0.2)
    # three consumed, two waiting in the queue, one held by the blocked producer
    assert len(taken) <= 3 + 2 + 1
    prefetcher.close()
    assert not prefetcher._thread.is_alive()


def test_an_error_arrives_where_it_happened():
    def items():
        yield from range(3)
        raise OSError("disk gone")

    prefetcher = Prefetcher(items(), lambda x: x, size=2)
    assert [next(prefetcher) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(OSError, match="disk gone"):
        next(prefetcher)
    with pytest.raises(StopIteration):
        next(prefetcher)
    prefetcher.close()
