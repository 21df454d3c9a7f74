"""RePB (and every policy) in PyTorch Lightning: the `PruningCallback` with the loader of each epoch's
plan and the weighted loss for your training_step. Standalone, under Lightning's DDP, or inside Ray
Train with Ray's Lightning integration. Needs `pip install 'repb-ray[lightning]'`."""

from repb_ray.lightning.callback import PruningCallback

__all__ = ["PruningCallback"]
