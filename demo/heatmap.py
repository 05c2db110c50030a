"""Patch heatmaps for the page: CMFU α and relevance grids over the image the model saw (drawn by
mimic/overlay.py, which the `explain` command uses too)."""
from mimic.overlay import blank, overlay, overlay_grid, patch_grid  # noqa: F401
