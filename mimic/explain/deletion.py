"""Deletion curves: is a relevance map faithful to the score it explains?

Remove the parts of an input in order of relevance, most relevant first, and record the score after
each step; do the same in random orders. A faithful map makes the score fall faster than chance: the
area under its curve is smaller than the area under the random curves (Petsiuk et al.'s deletion
metric, "RISE", BMVC 2018).

- Image patches are blanked to the CLIP mean colour (0 after CLIP's normalisation), patch-aligned on
  the 224 x 224 picture the model sees: blanking them all gives the all-zero input of a missing image.
- Words are masked by zeroing their token embedding; the position embedding stays, so the other
  tokens keep their places and the end token, which t_G reads, does not move.

The x axis is the share of parts removed (0 to 1), so the area under a curve is the mean score over it.
"""
import contextlib
import random

import torch

from .relevance import tracer_for, word_positions

VARIANT_BATCH = 25  # inputs encoded at once


def area(curve: list) -> float:
    """Area under a curve over x = 0 ... 1 (trapezoids)."""
    if len(curve) < 2:
        return float(curve[0]) if curve else 0.0
    return sum((a + b) / 2 for a, b in zip(curve[:-1], curve[1:])) / (len(curve) - 1)


def removal_orders(relevance: list, randoms: int, seed: int) -> tuple:
    """(the order by relevance, most relevant first, ties by position; `randoms` random orders)."""
    by_relevance = sorted(range(len(relevance)), key=lambda i: (-relevance[i], i))
    rng = random.Random(seed)
    return by_relevance, [rng.sample(range(len(relevance)), len(relevance)) for _ in range(randoms)]


def blanked(pixels: torch.Tensor, patches: list, patch_size: int) -> torch.Tensor:
    """A copy of pixels [3, H, W] with the given patches (row-major on the grid) set to the mean colour."""
    out = pixels.clone()
    side = pixels.shape[-1] // patch_size
    for p in patches:
        r, c = divmod(p, side)
        out[:, r * patch_size:(r + 1) * patch_size, c * patch_size:(c + 1) * patch_size] = 0
    return out


class PairScorer:
    """Scores of one (mention, entity) pair when one side's input varies (the other side encoded once)."""

    def __init__(self, model, mention_text: str, mention_image, entity_text: str, entity_image, target: str = "s"):
        self.model, self.target = model, target
        self.tracer = tracer_for(model)
        device = next(model.parameters()).device
        self.batch = {k: v.to(device) for k, v in model.processor([mention_text, entity_text],
                                                                  [mention_image, entity_image]).items()}
        with torch.no_grad():
            features = model.encode(self.batch)
        self.sides = {"mention": model.matcher.mention_side(features[0:1]),
                      "entity": model.matcher.entity_side(features[1:2])}

    def side_batch(self, side: str, count: int) -> dict:
        row = 0 if side == "mention" else 1
        return {k: v[row:row + 1].expand(count, *v.shape[1:]).clone() for k, v in self.batch.items()}

    @torch.no_grad()
    def scores(self, side: str, batch: dict, keep_tokens: torch.Tensor = None) -> list:
        """The target score for each input of `side` in `batch` (the other side fixed)."""
        model, out = self.model, []
        for start in range(0, len(batch["input_ids"]), VARIANT_BATCH):
            part = {k: v[start:start + VARIANT_BATCH] for k, v in batch.items()}
            masked = (contextlib.nullcontext() if keep_tokens is None
                      else self.tracer.masked_tokens(keep_tokens[start:start + VARIANT_BATCH]))
            with masked:
                features = model.encode(part)
            if side == "mention":
                s = model.matcher.score(model.matcher.mention_side(features), self.sides["entity"])
                out += getattr(s, self.target)[:, 0].tolist()
            else:
                s = model.matcher.score(self.sides["mention"], model.matcher.entity_side(features))
                out += getattr(s, self.target)[0].tolist()
        return out

    def patch_curve(self, side: str, order: list) -> list:
        """The target score after blanking 0, 1, ..., all patches of `side`'s image in `order`."""
        batch = self.side_batch(side, len(order) + 1)
        pixels = batch["pixel_values"][0]
        patch_size = self.tracer.patch_size
        batch["pixel_values"] = torch.stack([blanked(pixels, order[:k], patch_size) for k in range(len(order) + 1)])
        return self.scores(side, batch)

    def word_curve(self, order: list) -> list:
        """The target score after masking 0, 1, ..., all of the mention's words in `order` (word indices)."""
        words = word_positions(self.batch["attention_mask"][0])
        batch = self.side_batch("mention", len(order) + 1)
        keep = torch.ones_like(batch["input_ids"])
        for k, w in enumerate(order, 1):  # row k masks order[:k]
            keep[k:, words.start + w] = 0
        return self.scores("mention", batch, keep)


def deletion(curve_of, relevance: list, randoms: int = 5, seed: int = 0) -> dict:
    """Deletion by relevance and in `randoms` random orders -> {"relevance": curve, "random": mean curve,
    "auc_relevance", "auc_random"}."""
    by_relevance, random_orders = removal_orders(relevance, randoms, seed)
    curve = curve_of(by_relevance)
    random_curves = [curve_of(order) for order in random_orders]
    mean_random = [sum(values) / len(values) for values in zip(*random_curves)]
    return {"relevance": curve, "random": mean_random, "auc_relevance": area(curve), "auc_random": area(mean_random)}
