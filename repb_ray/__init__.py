"""repb_ray: dynamic data pruning (RePB and baselines) for PyTorch, on one machine or a Ray cluster."""

from repb_ray._version import __version__
from repb_ray.errors import TaskError
from repb_ray.task import Task

__all__ = ["Task", "TaskError", "__version__"]
