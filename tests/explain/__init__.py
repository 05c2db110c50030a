"""Tests of mimic/explain: relevance maps and their faithfulness."""
