"""repb_ray: dynamic data pruning (RePB and baselines) for PyTorch, on one machine or a Ray cluster."""

__version__ = "0.1.0"
