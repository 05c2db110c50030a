"""The paper's model: CLIP backbones and their processing, the three units, the matcher, losses, zero-shot init."""
