"""Raju et al.'s epsilon-greedy and UCB selection, and InfoBatch without annealing (InfoBatch*),
against hand-computed cases."""

import numpy as np
import pytest

from repb_ray.core import make_policy

pytestmark = pytest.mark.unit  # in-process, seconds


def _observe_plan(p, score_of):
    ids = p.plan.ids
    p.observe(0, ids.copy(), np.array([score_of[i] for i in ids], np.float32))


def test_egreedy_takes_top_scores_then_the_smallest_uniforms_of_the_rest():
    n = 10
    p = make_policy("egreedy", num_samples=n, seed=5, prune_ratio=0.5, epsilon=0.4, ema_alpha=0.5)
    assert len(p.plan) == n                          # epoch 1: full data
    scores = {i: s for i, s in enumerate([3, 9, 1, 9, 4, 0, 2, 8, 5, 7])}
    _observe_plan(p, scores)
    plan = p.finish_epoch()
    # k = 5: greedy 3 (ids 1, 3 tie at 9 -> both; then 7 at 8), explore 2 among the other 7
    u = np.random.default_rng([5, 2]).random(n)
    rest = [i for i in range(n) if i not in (1, 3, 7)]
    explore = sorted(rest, key=lambda i: u[i])[:2]
    assert plan.ids.tolist() == sorted([1, 3, 7] + explore)
    assert (plan.weights == 1).all() and p.history[-1] == {"size": 5, "selected": True}


def test_egreedy_scores_are_moving_averages_and_stay_stale_when_pruned():
    p = make_policy("egreedy", num_samples=4, seed=0, prune_ratio=0.5, epsilon=0.0, ema_alpha=0.5)
    _observe_plan(p, {0: 1, 1: 2, 2: 3, 3: 4})
    assert p.finish_epoch().ids.tolist() == [2, 3]
    _observe_plan(p, {2: 1, 3: 0})
    plan = p.finish_epoch()
    assert p.shards[0].mean.tolist() == [1.0, 2.0, 2.0, 2.0]  # EMA: ids 2, 3 -> 2.0; ids 0, 1 stale
    assert plan.ids.tolist() == [1, 2]                 # ties at 2.0 broken by the lower id


@pytest.mark.parametrize("c,expected", [(1.0, [2, 5]), (0.0, [2, 3])])
def test_ucb_ranks_by_mean_plus_c_std(c, expected):
    p = make_policy("ucb", num_samples=6, seed=0, prune_ratio=2 / 3, ucb_c=c, ema_alpha=0.5)
    _observe_plan(p, {0: 1, 1: 2, 2: 5.5, 3: 5, 4: 3, 5: 6})
    assert p.finish_epoch().ids.tolist() == [2, 5]       # variance 0 after one look: by mean
    _observe_plan(p, {2: 8, 5: 3})
    plan = p.finish_epoch()
    # id 2: mean 6.75, var 0.5 * 0.5 * 2.5**2 -> std 1.25;  id 5: mean 4.5, std 1.5;  id 3: stale 5, std 0
    assert p.shards[0].mean.tolist() == [1.0, 2.0, 6.75, 5.0, 3.0, 4.5]
    assert p.shards[0].var.tolist() == [0.0, 0.0, 1.5625, 0.0, 0.0, 2.25]
    assert plan.ids.tolist() == expected      # c=1: 8.0, 6.0 vs 5.0; c=0: 6.75, 5.0 vs 4.5


def test_select_every_keeps_the_subset_between_selections():
    p = make_policy("ucb", num_samples=6, seed=0, prune_ratio=0.5, select_every=2)
    _observe_plan(p, {i: i for i in range(6)})
    first = p.finish_epoch().ids.tolist()                # epoch 2: a selection
    _observe_plan(p, {i: 10 - i for i in first})
    assert p.finish_epoch().ids.tolist() == first        # epoch 3: kept
    _observe_plan(p, {i: -100 for i in first})
    assert p.finish_epoch().ids.tolist() == [0, 1, 2]    # epoch 4: selected again
    assert [h.get("selected") for h in p.history] == [None, True, False, True]


def test_infobatch_without_annealing_prunes_every_epoch_after_the_first():
    p = make_policy("infobatch", num_samples=2000, seed=0, prune_ratio=0.5, num_epochs=4, anneal=False)
    a = make_policy("infobatch", num_samples=2000, seed=0, prune_ratio=0.5, num_epochs=4)  # delta 0.875
    for e in range(4):
        for q in (p, a):
            _observe_plan(q, {i: float((i * 7 + e) % 13) for i in q.plan.ids.tolist()})
            q.finish_epoch()
    assert [x < 2000 for x in p.plan_sizes[1:]] == [True] * 4
    assert a.plan_sizes[-1] == 2000 and p.plan_sizes[-1] < 2000    # epoch 5 > 0.875 * 4: full with annealing
