"""Tests of mimic/cli: the command line."""
