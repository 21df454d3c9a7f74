"""repb_ray.train.prefetch: the first item is fetched before anyone iterates; nothing is lost or reordered;
each epoch's fetch starts the next one's once its data is in hand."""

import threading

import pytest

from repb_ray.train.prefetch import Ahead, EpochsAhead

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



def test_each_epochs_fetch_starts_the_next_once_its_data_is_in_hand_up_to_the_last():
    """Epoch e's source calls then() before its last batch (the shuffle buffer still serves): epoch e + 1's
    fetch starts there, not after e's batches; none past `last`; a resumed epoch skips and chains the same."""
    events = []

    def source(epoch, skip, then):
        events.append(("made", epoch, skip))

        def batches():
            for i in range(skip, 3):
                if i == 2 and then is not None:
                    then()  # the data's last block is in hand
                events.append(("batch", epoch, i))
                yield (epoch, i)
        return batches()

    feed = EpochsAhead(source, last=3)
    feed.start(1)
    assert [b for e in (1, 2, 3) for b in feed.batches(e)] == [(e, i) for e in (1, 2, 3) for i in range(3)]
    made = [x for x in events if x[0] == "made"]
    assert made == [("made", 1, 0), ("made", 2, 0), ("made", 3, 0)]  # nothing past the last epoch
    for e in (2, 3):  # made while the previous epoch still had its last batch to serve
        assert events.index(("made", e, 0)) < events.index(("batch", e - 1, 2))

    events.clear()
    resumed = EpochsAhead(source, last=3)
    assert list(resumed.batches(2, skip=1)) == [(2, 1), (2, 2)]
    assert list(resumed.batches(3)) == [(3, 0), (3, 1), (3, 2)]
    assert [x for x in events if x[0] == "made"] == [("made", 2, 1), ("made", 3, 0)]
