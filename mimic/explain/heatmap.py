"""Patch grids (CMFU α, relevance maps) drawn over the picture the model saw.

The model sees an image resized (squashed, not cropped) to 224 x 224 and cut into 7 x 7 patches of
32 px. A grid of one value per patch is stretched back over the original picture, so each cell
covers the part of the photo its patch came from, in the "inferno" colours: dark purple = least,
through red and orange, to bright yellow = most, from the grid's minimum to its maximum. A grid with one
value everywhere (no patch stands out: e.g. an all-zero relevance map) tints nothing. `with_scale` adds
the colour bar and a caption under the picture (what `mimic explain` writes).
"""
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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
    if is_flat(grid):
        return image  # nothing to show: an even tint would look like evidence
    levels = ((grid - grid.min()) / (grid.max() - grid.min()) * 255).astype(np.uint8)
    colours = Image.fromarray(_LUT[levels]).resize(image.size, Image.Resampling.NEAREST)
    return Image.blend(image, colours, opacity)


def is_flat(grid) -> bool:
    """No patch differs from another (an all-zero relevance map, a uniform α): the grid says nothing."""
    grid = np.asarray(grid, dtype=np.float64)
    return not grid.size or float(grid.max() - grid.min()) <= 1e-12 * max(1.0, float(np.abs(grid).max()))


def colour_bar(width: int, height: int = 12) -> Image.Image:
    """The colour scale, least (left) to most (right)."""
    levels = np.linspace(0, 255, width).round().astype(np.uint8)
    return Image.fromarray(np.repeat(_LUT[levels][None], height, axis=0))


def with_scale(overlaid: Image.Image, grid, caption: str) -> Image.Image:
    """`overlaid` (from overlay_grid) above its colour bar, labelled "less" and "more" with the grid's
    range, and a caption; a flat grid gets "no evidence from this picture" instead of the bar."""
    font = ImageFont.load_default(size=13)
    width = max(overlaid.width, 320)
    flat = is_flat(grid)
    notice = _wrapped("no evidence from this picture: every patch scores the same", font, width - 16) if flat else []
    lines = _wrapped(caption, font, width - 16)
    bar_height = 0 if flat else 22
    canvas = Image.new("RGB", (width, overlaid.height + 12 + bar_height + 18 * (len(notice) + len(lines))),
                       (255, 255, 255))
    canvas.paste(overlaid, ((width - overlaid.width) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    top = overlaid.height + 6
    if not flat:
        grid = np.asarray(grid, dtype=np.float64)
        low, high = f"less ({grid.min():.3g})", f"more ({grid.max():.3g})"
        left = 8 + int(draw.textlength(low, font=font)) + 6
        right = width - 8 - int(draw.textlength(high, font=font)) - 6
        draw.text((8, top - 1), low, fill=(40, 40, 40), font=font)
        canvas.paste(colour_bar(max(right - left, 10)), (left, top + 1))
        draw.text((right + 6, top - 1), high, fill=(40, 40, 40), font=font)
    for number, (line, colour) in enumerate([(n, (110, 110, 110)) for n in notice] + [(c, (40, 40, 40)) for c in lines]):
        draw.text((8, top + bar_height + 18 * number), line, fill=colour, font=font)
    return canvas


def _wrapped(text: str, font, width: int) -> list:
    """`text` in lines of at most `width` pixels (a word longer than that gets a line of its own)."""
    lines = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def overlay(image: Image.Image, alpha, opacity: float = 0.55, max_side: int = 512) -> Image.Image:
    """The image with α over [CLS, patches] drawn on top (CLS left out)."""
    return overlay_grid(image, patch_grid(alpha), opacity, max_side)


def blank(size: int = 224) -> Image.Image:
    """A neutral tile for 'no image' (the model then sees all-zero pixels)."""
    return Image.new("RGB", (size, size), (235, 235, 235))
