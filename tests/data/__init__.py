"""Tests of mimic/data: readers of the authors' layout."""
