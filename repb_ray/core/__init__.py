"""Pure numpy core: pruning policies, epoch plans and CTR weights; no Ray, MLflow or torch."""

from repb_ray.core.bandits import EpsilonGreedyPolicy, UCBPolicy
from repb_ray.core.baselines import FullPolicy, RandomPolicy
from repb_ray.core.budget import epoch_sizes, total_steps
from repb_ray.core.infobatch import InfoBatchPolicy
from repb_ray.core.local import LocalPolicy
from repb_ray.core.plan import EpochPlan, PlanChunk, plan_digest
from repb_ray.core.policy import Policy
from repb_ray.core.protocol import Call, drive, split_range
from repb_ray.core.registry import POLICIES, POLICY_NAMES, make_policy, policy_class
from repb_ray.core.repb import (
                                RePBPolicy,
                                below_window_mean,
                                ctr_weights,
                                lwp_keep,
                                next_epoch_set,
                                prune_windows,
                                resample,
)

__all__ = [
    "EpochPlan", "PlanChunk", "plan_digest", "Policy", "LocalPolicy", "Call", "drive", "make_policy", "policy_class",
    "split_range", "POLICIES", "POLICY_NAMES", "RePBPolicy", "InfoBatchPolicy", "RandomPolicy", "FullPolicy",
    "EpsilonGreedyPolicy", "UCBPolicy", "prune_windows", "below_window_mean", "lwp_keep", "resample",
    "next_epoch_set", "ctr_weights", "epoch_sizes", "total_steps",
]
