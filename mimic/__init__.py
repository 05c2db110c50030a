"""mimic-el: MIMIC multimodal entity linking (Luo et al., KDD 2023)."""
__version__ = "0.1.0"
