"""Shared fixtures. Tests never touch the network or a GPU."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Pretend to be offline so no test can reach for weights on the internet.
os.environ["FREEZER_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import textwrap
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def factory_file(tmp_path: Path) -> Path:
    """A user's own model file with two factories (with and without num_classes)."""
    path = tmp_path / "my_model.py"
    path.write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn


            class Net(nn.Module):
                def __init__(self, num_classes=10):
                    super().__init__()
                    self.features = nn.Sequential(
                        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                    )
                    self.blocks = nn.Sequential(*[nn.Linear(8, 8) for _ in range(12)])
                    self.classifier = nn.Linear(8, num_classes)

                def forward(self, x):
                    return self.classifier(self.blocks(self.features(x)))


            def build(num_classes=10):
                return Net(num_classes)


            def build_fixed():
                return Net(7)


            def not_a_model():
                return 42
            """
        )
    )
    return path
