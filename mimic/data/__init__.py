"""Datasets: readers of the authors' layout, `data check`, run configs, synthetic data."""
