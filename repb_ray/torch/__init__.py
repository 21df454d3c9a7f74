"""Plain PyTorch use without Ray: id-carrying dataset, plan sampler, weighted loss, scores, gathering."""

from repb_ray.torch.dataset import IndexedDataset
from repb_ray.torch.sampler import PlanSampler
from repb_ray.torch.loss import weighted_loss
from repb_ray.torch.scores import compute_scores, SCORE_FUNCTIONS
from repb_ray.torch.distributed import gather_observations
from repb_ray.torch.schedule import PlanCosineLR

__all__ = ["IndexedDataset", "PlanSampler", "weighted_loss", "compute_scores", "SCORE_FUNCTIONS",
           "gather_observations", "PlanCosineLR"]
