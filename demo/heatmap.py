"""CMFU patch attention α drawn over the image the model saw.

The model sees an image resized (squashed, not cropped) to 224 x 224 and cut into 7 x 7 patches of
32 px; α has one weight for the CLS token and one per patch. The patch weights, as a 7 x 7 grid, are
stretched back over the original picture, so each cell covers the part of the photo its patch came
from.
"""
import math

import numpy as np
from PIL import Image
from plotly.colors import sample_colorscale

_LUT = np.array([[int(v) for v in c[4:-1].split(",")] for c in sample_colorscale("Inferno", np.linspace(0, 1, 256))],
                dtype=np.uint8)


def patch_grid(alpha) -> np.ndarray:
    """α over [CLS, patch_1 ... patch_{g*g}] -> the g x g patch weights (CLS dropped)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    side = math.isqrt(len(alpha) - 1)
    if side * side != len(alpha) - 1:
        raise ValueError(f"expected CLS + a square grid of patches, got {len(alpha)} weights")
    return alpha[1:].reshape(side, side)


def overlay(image: Image.Image, alpha, opacity: float = 0.55, max_side: int = 512) -> Image.Image:
    """The image with the patch weights as a colour map on top (bright = more attention)."""
    image = image.convert("RGB")
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    grid = patch_grid(alpha)
    span = grid.max() - grid.min()
    levels = ((grid - grid.min()) / span * 255).astype(np.uint8) if span > 0 else np.full(grid.shape, 128, np.uint8)
    colours = Image.fromarray(_LUT[levels]).resize(image.size, Image.Resampling.NEAREST)
    return Image.blend(image, colours, opacity)


def blank(size: int = 224) -> Image.Image:
    """A neutral tile for 'no image' (the model then sees all-zero pixels)."""
    return Image.new("RGB", (size, size), (235, 235, 235))
