"""Patch heatmaps for the page: CMFU α and relevance grids over the image the model saw (drawn by
mimic/heatmap.py, which the `explain` command uses too)."""
from mimic.heatmap import blank, overlay, overlay_grid, patch_grid  # noqa: F401
