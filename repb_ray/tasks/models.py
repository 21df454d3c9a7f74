"""Models of the built-in tasks: a small CNN (Fashion-MNIST), CIFAR ResNet-18, an MLP (with BatchNorm: mlp_bn)."""

from __future__ import annotations

import torch
import torch.nn as nn


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head (~40k parameters, ~1M multiply-adds per 28x28 image). Its weights
    and activations are channels-last: on a CPU, oneDNN's convolutions then run a training step 1.8-1.9x
    and an evaluation 2.9x faster than in the default layout (benchmarks/channels_last.py, 1 thread)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, num_classes))
        self.to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.head(self.features(x.contiguous(memory_format=torch.channels_last)))


def mlp(dim: int, num_classes: int, hidden: int = 64, batch_norm: bool = False) -> nn.Module:
    norm = [nn.BatchNorm1d(hidden)] if batch_norm else []
    return nn.Sequential(nn.Flatten(), nn.Linear(dim, hidden), *norm, nn.ReLU(), nn.Linear(hidden, num_classes))


def resnet18_cifar(num_classes: int, in_channels: int = 3) -> nn.Module:
    """torchvision ResNet-18 with the usual CIFAR stem: 3x3 first conv, no max-pool."""
    import torchvision
    m = torchvision.models.resnet18(num_classes=num_classes)
    m.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    m.maxpool = nn.Identity()
    return m


MODELS = ("cnn", "resnet18", "mlp", "mlp_bn")


def build_model(name: str, input_shape: tuple, num_classes: int) -> nn.Module:
    if name in ("mlp", "mlp_bn"):
        dim = 1
        for s in input_shape:
            dim *= s
        return mlp(dim, num_classes, batch_norm=name == "mlp_bn")
    if name == "cnn":
        return SmallCNN(input_shape[0], num_classes)
    return resnet18_cifar(num_classes, input_shape[0])
