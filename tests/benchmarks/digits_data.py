"""A digits image folder like scikit-learn's digits set: 10 classes, 1,797 8×8 grayscale PNGs,
split 1,437 train / 360 validation (train/ and val/), rendered from a font with random shifts,
sizes, rotations and noise. The benchmarks' stand-in for a user's small image folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def write_digits(root: str | Path, train: int = 1437, val: int = 360, seed: int = 0) -> Path:
    root = Path(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root
    rng = np.random.default_rng(seed)
    try:
        font = ImageFont.load_default(size=22)
    except TypeError:  # Pillow without FreeType's default font
        font = ImageFont.load_default()
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            digit = i % 10
            canvas = Image.new("L", (32, 32), 0)
            draw = ImageDraw.Draw(canvas)
            dx, dy = rng.integers(-3, 4, 2)
            draw.text((16 + dx, 16 + dy), str(digit), fill=255, font=font, anchor="mm")
            canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
            small = np.asarray(canvas.resize((8, 8), Image.BOX), dtype=np.float64)
            small = np.clip(small + rng.normal(0, 12, small.shape), 0, 255)
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(small.astype(np.uint8), "L").save(folder / f"{i:05d}.png")
    return root
