"""Tests of mimic/model: the units, the encoders and backbones, images, zero-shot."""
