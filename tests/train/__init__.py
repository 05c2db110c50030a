"""Tests of mimic/train: training, evaluation, checkpoints, the Hub, the authors' pipeline reproduced."""
