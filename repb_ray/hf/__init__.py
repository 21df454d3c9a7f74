"""RePB (and every policy) in a Hugging Face `Trainer`: `PruningTrainer` with any EpochSource, a
`LocalPruner` (any process layout: one process, torchrun, accelerate, Ray's HF integration) or a started
`PruningSession` (a Ray run's coordinator and pruned Ray Data epochs). Needs `pip install 'repb-ray[hf]'`."""

from repb_ray.hf.losses import causal_lm, sequence_classification
from repb_ray.hf.trainer import PruningTrainer
from repb_ray.torch.pruner import LocalPruner

__all__ = ["PruningTrainer", "LocalPruner", "causal_lm", "sequence_classification"]
