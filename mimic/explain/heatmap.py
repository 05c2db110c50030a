"""Patch grids (CMFU α, relevance maps) drawn over the picture the model saw.

The model sees an image resized (squashed, not cropped) to 224 x 224 and cut into 7 x 7 patches of
32 px. A grid of one value per patch is stretched back over the original picture, so each cell
covers the part of the photo its patch came from; bright = more.
"""
import math

import numpy as np
from PIL import Image

# The "inferno" colour scale (dark = little, bright yellow = much), as 10 stops linearly interpolated
# into a 256-entry table.
_INFERNO = ["000004", "1b0c41", "4a0c6b", "781c6d", "a52c60", "cf4446", "ed6925", "fb9b06", "f7d13d", "fcffa4"]
_STOPS = np.array([[int(h[i:i + 2], 16) for i in (0, 2, 4)] for h in _INFERNO], dtype=np.float64)
_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_STOPS)), _STOPS[:, c]) for c in range(3)],
                axis=1).round().astype(np.uint8)


def patch_grid(alpha) -> np.ndarray:
    """Weights over [CLS, patch_1 ... patch_{g*g}] -> the g x g patch weights (CLS dropped)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    side = math.isqrt(len(alpha) - 1)
    if side * side != len(alpha) - 1:
        raise ValueError(f"expected CLS + a square grid of patches, got {len(alpha)} weights")
    return alpha[1:].reshape(side, side)


def overlay_grid(image: Image.Image, grid, opacity: float = 0.55, max_side: int = 512) -> Image.Image:
    """The image with a patch grid (rows of values) as a colour map on top, scaled from its min to its max."""
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 2 or grid.shape[0] != grid.shape[1] or not np.isfinite(grid).all():
        raise ValueError(f"expected a square grid of finite values, got shape {grid.shape}")
    image = image.convert("RGB")
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    span = grid.max() - grid.min()
    levels = ((grid - grid.min()) / span * 255).astype(np.uint8) if span > 0 else np.full(grid.shape, 128, np.uint8)
    colours = Image.fromarray(_LUT[levels]).resize(image.size, Image.Resampling.NEAREST)
    return Image.blend(image, colours, opacity)


def overlay(image: Image.Image, alpha, opacity: float = 0.55, max_side: int = 512) -> Image.Image:
    """The image with α over [CLS, patches] drawn on top (CLS left out)."""
    return overlay_grid(image, patch_grid(alpha), opacity, max_side)


def blank(size: int = 224) -> Image.Image:
    """A neutral tile for 'no image' (the model then sees all-zero pixels)."""
    return Image.new("RGB", (size, size), (235, 235, 235))
