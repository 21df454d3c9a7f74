"""Pure numpy core: pruning policies, epoch plans and CTR weights; no Ray, MLflow or torch."""

from repb_ray.core.plan import EpochPlan, PlanChunk, plan_digest
from repb_ray.core.policy import POLICY_NAMES, Call, Policy, drive, make_policy, policy_class, split_range
from repb_ray.core.repb import RePBPolicy, ctr_weights, prune_windows, resample
from repb_ray.core.infobatch import InfoBatchPolicy
from repb_ray.core.baselines import FullPolicy, RandomPolicy
from repb_ray.core.bandits import EpsilonGreedyPolicy, UCBPolicy

__all__ = [
    "EpochPlan", "PlanChunk", "plan_digest", "Policy", "Call", "drive", "make_policy", "policy_class",
    "split_range", "POLICY_NAMES", "RePBPolicy", "InfoBatchPolicy", "RandomPolicy", "FullPolicy",
    "EpsilonGreedyPolicy", "UCBPolicy", "prune_windows", "resample", "ctr_weights",
]
