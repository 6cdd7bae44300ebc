"""A user's own model, as a test fixture: ``tests.own_model:make`` (for ``cnnviz inspect --model``, ``usercode.load``).

A small CNN with a residual block and parallel branches, so that its layers have dotted names inside blocks
(``res.body.0``) and inside a ``ModuleList`` (``branch.paths.1.0``). The other functions are models the app must
refuse, one reason each.
"""

from __future__ import annotations

import torch
from torch import nn

CLASSES = ("cat", "dog", "bird", "fish")
NOT_A_FUNCTION = 3


class Residual(nn.Module):
    """``relu(x + body(x))``: the addition is not a module, so only the body's layers and the relu are recorded."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.body(x))


class Branches(nn.Module):
    """Two paths side by side, concatenated along channels (as in an Inception block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.paths = nn.ModuleList([
            nn.Conv2d(channels, channels // 2, 1),
            nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1), nn.ReLU()),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([path(x) for path in self.paths], dim=1)


class OwnNet(nn.Module):
    def __init__(self, channels: int = 3, classes: int = len(CLASSES)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.res = Residual(8)
        self.branch = Branches(8)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.branch(self.res(self.stem(x))))


def make() -> OwnNet:
    torch.manual_seed(0)
    return OwnNet()


def make_grey() -> OwnNet:
    torch.manual_seed(0)
    return OwnNet(channels=1)


def make_ten() -> OwnNet:
    return OwnNet(classes=10)


def not_a_module() -> list:
    return [nn.Conv2d(3, 8, 3)]


def no_conv() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))


def maps_not_scores() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())


def fixed_size() -> nn.Module:
    """Takes 32×32 images only: its linear layer is sized for them."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 32 * 32, 4))


def one_score() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))


def broken() -> nn.Module:
    raise RuntimeError("out of ideas\nsecond line")
