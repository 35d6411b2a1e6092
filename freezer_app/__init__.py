"""Freezer: point-and-click layer freezing and local fine-tuning of PyTorch image models."""

__version__ = "0.1.0"
