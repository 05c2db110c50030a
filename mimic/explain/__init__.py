"""Evidence: relevance maps, the deletion test, heatmap overlays."""
