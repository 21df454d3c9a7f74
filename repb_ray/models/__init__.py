"""Models: small CNN (Fashion-MNIST), CIFAR ResNet-18, MLP (tests)."""

from repb_ray.models.build import build_model

__all__ = ["build_model"]
