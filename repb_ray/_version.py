"""The version of repb_ray: read by the package and by its build (pyproject's dynamic version)."""

__version__ = "0.3.0"
