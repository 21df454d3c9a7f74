"""The policies by name: the one place a new policy is listed; runs anywhere."""

from __future__ import annotations

from repb_ray.core.bandits import EpsilonGreedyPolicy, UCBPolicy
from repb_ray.core.baselines import FullPolicy, RandomPolicy
from repb_ray.core.checks import suggest
from repb_ray.core.infobatch import InfoBatchPolicy
from repb_ray.core.local import LocalPolicy
from repb_ray.core.orderdp import OrderDPPolicy
from repb_ray.core.policy import Policy
from repb_ray.core.repb import RePBPolicy

POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (
    RePBPolicy, InfoBatchPolicy, RandomPolicy, FullPolicy, EpsilonGreedyPolicy, UCBPolicy, OrderDPPolicy)}
POLICY_NAMES = tuple(POLICIES)


def policy_class(name: str) -> type[Policy]:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}{suggest(str(name), POLICIES)}; "
                         f"choose one of: {', '.join(POLICY_NAMES)}")
    return POLICIES[name]


def make_policy(name: str, *, num_samples: int, seed: int = 0, world_size: int = 1, shards: int = 1, bounds=None,
                **params) -> LocalPolicy:
    """A policy by name ('repb', 'infobatch', 'random', 'full', 'egreedy', 'ucb' or 'orderdp') with its shards in
    this process: the API of a plain loop."""
    k = len(bounds) if bounds is not None else shards
    return LocalPolicy(policy_class(name)(num_samples=num_samples, seed=seed, world_size=world_size, shards=k,
                                          **params), bounds=bounds)
