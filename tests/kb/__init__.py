"""Tests of mimic/kb: the store, its safety, edits, search, the session overlay."""
