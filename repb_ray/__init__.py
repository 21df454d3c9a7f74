"""repb_ray: dynamic data pruning (RePB and baselines) for PyTorch, on one machine or a Ray cluster."""

from repb_ray.task import Task, TaskError

__version__ = "0.2.0"
__all__ = ["Task", "TaskError", "__version__"]
