"""Training losses (paper eq. 20-22).

A batch of B mentions with their gold entities gives B x B score matrices whose diagonal holds the
gold pairs. Each is turned into a cross-entropy over the in-batch entities:

    L = L(S) + L(S_T) + L(S_V) + L(S_C)

L(S) is the overall in-batch contrastive loss; the other three are the unit-consistent losses. The
ablations of Table 2 drop a unit-consistent loss (`unit_losses`) or a unit with its loss (`units`).
"""
import torch
import torch.nn.functional as F

from .matcher import UNITS, Scores


def in_batch_cross_entropy(scores: torch.Tensor) -> torch.Tensor:
    """scores [B, B], gold pairs on the diagonal -> mean cross-entropy over the rows."""
    return F.cross_entropy(scores, torch.arange(len(scores), device=scores.device))


def mimic_loss(scores: Scores, units=UNITS, unit_losses=UNITS) -> tuple:
    """-> (total loss, {"overall": ..., "tglu": ..., ...}) for the kept units and unit losses."""
    parts = {"overall": in_batch_cross_entropy(scores.s)}
    for unit in UNITS:
        if unit in units and unit in unit_losses:
            parts[unit] = in_batch_cross_entropy(scores.unit(unit))
    return sum(parts.values()), parts
