"""Plain PyTorch use without Ray: the epoch contract (LocalPruner, EpochSteps), id-carrying dataset,
plan sampler, weighted loss, scores, gathering, the plan-following LR schedules."""

from repb_ray.core.budget import total_steps
from repb_ray.torch.dataset import IndexedDataset
from repb_ray.torch.distributed import end_process_group, gather_observations
from repb_ray.torch.epoch import EpochSource, EpochSteps
from repb_ray.torch.loss import weighted_loss
from repb_ray.torch.pruner import LocalPruner
from repb_ray.torch.sampler import PlanSampler
from repb_ray.torch.schedule import PlanCosineLR, RealStepLR, build_optimizer
from repb_ray.torch.scores import SCORES, Scorer

__all__ = ["LocalPruner", "EpochSource", "EpochSteps", "IndexedDataset", "PlanSampler", "weighted_loss", "Scorer",
           "SCORES", "gather_observations", "end_process_group", "PlanCosineLR", "RealStepLR", "build_optimizer",
           "total_steps"]
