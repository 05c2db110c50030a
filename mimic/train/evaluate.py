"""Evaluation: every test mention against every KB entity; ranks and H@k / MRR / MR.

    rank(gold) = 1 + #{e : S(e) > S(gold)} + #{e : S(e) == S(gold) and e < gold}

(the position of the gold entity when all entities are sorted by S descending, ties by index).
The entity side is encoded once and its unit projections are computed once for the whole run.
"""
import logging

import torch
from tqdm.auto import tqdm

from ..data.readers import Dataset
from ..model.encoding import encode_all
from ..model.matcher import Matcher, select
from ..model.processing import entity_text, mention_text

log = logging.getLogger(__name__)
HITS = (1, 3, 5, 10, 20)
PAIRS_PER_CHUNK = 40_000  # mention x entity pairs scored at once (TGLU attention: 6.4 kB a pair)


def ranks_of_gold(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """scores [B, N], gold [B] -> rank of each gold entity (1 = best; ties broken by lower index)."""
    gold_score = scores.gather(1, gold[:, None])
    index = torch.arange(scores.shape[1], device=scores.device)[None, :]
    higher = (scores > gold_score).sum(1)
    tied_before = ((scores == gold_score) & (index < gold[:, None])).sum(1)
    return 1 + higher + tied_before


def metrics(ranks: list) -> dict:
    ranks = torch.tensor(ranks, dtype=torch.float64)
    if len(ranks) == 0:
        return {**{f"hits@{k}": 0.0 for k in HITS}, "mrr": 0.0, "mr": 0.0, "count": 0}
    out = {f"hits@{k}": float((ranks <= k).double().mean()) for k in HITS}
    out.update(mrr=float((1.0 / ranks).mean()), mr=float(ranks.mean()), count=len(ranks))
    return out


@torch.no_grad()
def score_against_all(matcher: Matcher, mention_terms: dict, entity_terms: dict, chunk: int = None) -> torch.Tensor:
    """S [B, N] of B mentions against all N entities, in entity chunks to bound memory."""
    n = len(entity_terms["cmfu"]["f"])
    b = len(mention_terms["cmfu"]["f"])
    chunk = chunk or max(1, PAIRS_PER_CHUNK // max(b, 1))
    parts = []
    for start in range(0, n, chunk):
        part = select(entity_terms, slice(start, start + chunk))
        parts.append(matcher.score(mention_terms, part).s)
    return torch.cat(parts, dim=1)


def encode_kb(model, dataset: Dataset, batch_size: int = 64, progress: bool = True) -> dict:
    texts = [entity_text(e.name, e.attr) for e in dataset.entities]
    images = [dataset.entity_image(e) for e in dataset.entities]
    return encode_all(model, texts, images, "entity", batch_size, desc="encode KB", progress=progress)


@torch.no_grad()
def evaluate(model, dataset: Dataset, split: str = "test", batch_size: int = 20, entity_terms: dict = None,
             progress: bool = True, entity_batch_size: int = 64, chunk_size: int = None):
    """-> (rows [{"id", "answer", "gold", "rank"}] in file order, metrics). chunk_size: entities scored at
    once (the config's data.eval_chunk_size; default: about 40,000 mention-entity pairs a chunk)."""
    model.eval()
    mentions = dataset.split(split)
    if entity_terms is None:
        entity_terms = encode_kb(model, dataset, entity_batch_size, progress)
    rows = []
    bar = tqdm(total=len(mentions), desc=f"evaluate {split}", unit="mention", disable=not progress)
    for start in range(0, len(mentions), batch_size):
        batch = mentions[start:start + batch_size]
        texts = [mention_text(m.mention, m.sentence) for m in batch]
        images = [dataset.mention_image(m) for m in batch]
        mention_terms = encode_all(model, texts, images, "mention", len(batch), progress=False)
        scores = score_against_all(model.matcher, mention_terms, entity_terms, chunk_size)
        gold = torch.tensor([dataset.gold(m) for m in batch])
        for m, g, r in zip(batch, gold.tolist(), ranks_of_gold(scores, gold).tolist()):
            rows.append({"id": m.id, "answer": m.answer, "gold": g, "rank": r})
        bar.update(len(batch))
    bar.close()
    return rows, metrics([r["rank"] for r in rows])
