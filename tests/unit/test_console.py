"""The driver's console: an honest progress bar (no rate or ETA from an epoch's first moments)."""

import pytest

pytestmark = pytest.mark.unit  # in-process, seconds


def test_the_progress_bar_shows_no_rate_before_the_epoch_has_trained_a_while():
    """On the first batch of an epoch of 60,000 kept samples, no rate and no ETA (an early one said 4531 s
    for a 13 s epoch); once two seconds have passed, the rate of the samples trained since then."""
    from repb_ray.train.console import bar
    p = {"epoch": 1, "samples": 128, "kept": 60000, "start": 0.0}
    assert bar(p, 15, first=(100.0, 128), now=100.5) == "[repb_ray] epoch 1/15 [" + "." * 24 + "] 128/60000 kept samples"
    later = bar({**p, "samples": 10128}, 15, first=(100.0, 128), now=102.0)
    assert later.endswith("10128/60000 kept samples, 5,000/s, ETA 10s")
