"""Tests of demo/: the page and its APIs, served for real."""
