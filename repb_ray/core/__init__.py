"""Pure numpy core: pruning policies, epoch plans and CTR weights; no Ray, MLflow or torch."""

from repb_ray.core.plan import EpochPlan, plan_digest
from repb_ray.core.policy import Policy, make_policy, POLICY_NAMES
from repb_ray.core.repb import RePBPolicy, prune_windows, resample, ctr_weights
from repb_ray.core.infobatch import InfoBatchPolicy
from repb_ray.core.baselines import RandomPolicy, FullPolicy

__all__ = [
    "EpochPlan", "plan_digest", "Policy", "make_policy", "POLICY_NAMES",
    "RePBPolicy", "InfoBatchPolicy", "RandomPolicy", "FullPolicy",
    "prune_windows", "resample", "ctr_weights",
]
