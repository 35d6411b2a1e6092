"""Pure PyTorch core of Freezer. Nothing in this package may import Qt."""
