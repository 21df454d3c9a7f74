"""repb_ray.train.prefetch: the first item is fetched before anyone iterates; nothing is lost or reordered."""

import threading

import pytest

from repb_ray.train.prefetch import Ahead

pytestmark = pytest.mark.unit  # in-process, seconds


def test_the_first_item_is_fetched_in_the_background_and_all_items_follow_in_order():
    started = threading.Event()

    def items():
        started.set()
        yield from range(5)
    ahead = Ahead(items())
    assert started.wait(5)  # fetched without being iterated
    assert list(ahead) == [0, 1, 2, 3, 4]


def test_empty_and_failing_iterators():
    assert list(Ahead(iter(()))) == []

    def broken():
        raise OSError("no blocks")
        yield
    with pytest.raises(OSError, match="no blocks"):
        list(Ahead(broken()))

