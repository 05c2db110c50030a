"""Linking new mentions against a pre-encoded KB: the one API the CLI and the demo share."""
import unicodedata
from dataclasses import dataclass

import torch

from .encoding import encode_batch
from .fingerprint import model_fingerprints
from .matcher import select
from .loading import load_model
from .processing import entity_text, mention_text
from .search import Searcher
from .store import KBStore

SCORE_FIELDS = ("s_t", "s_t_g2g", "s_t_g2l", "s_v", "s_v_e2m", "s_v_m2e", "s_c")
MAX_TOP_K = 100


class QueryError(ValueError):
    """Input a person typed that cannot be linked, with what to do about it."""


@dataclass
class Query:
    sentence: str
    mention: str
    image: object = None  # path, bytes, PIL image or None
    id: object = None


def _clean(text) -> str:
    """NFC, control characters to spaces (tabs and newlines included), surrounding space removed."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = unicodedata.normalize("NFC", text)
    return "".join(" " if unicodedata.category(c) in ("Cc", "Cf") and c not in "\u200d" else c for c in text).strip()


def check_query(sentence, mention) -> tuple:
    """-> (sentence, mention) cleaned, or QueryError saying what is wrong."""
    sentence, mention = _clean(sentence), _clean(mention)
    if not sentence:
        raise QueryError("Please type a sentence that contains the mention.")
    if not mention:
        raise QueryError("Please type the mention: the words of the sentence that name the entity.")
    if len(mention) > len(sentence):
        raise QueryError("The mention is longer than the sentence; it must be a part of the sentence.")
    if mention.casefold() not in sentence.casefold():
        shown = mention if len(mention) <= 60 else mention[:57] + "..."
        raise QueryError(f"The mention \"{shown}\" does not occur in the sentence; copy it from the sentence.")
    return sentence, mention


def check_top_k(top_k, count: int) -> int:
    try:
        k = int(top_k)
    except (TypeError, ValueError):
        raise QueryError(f"Top k must be a whole number, got {top_k!r}.")
    if k < 1:
        raise QueryError("Top k must be at least 1.")
    return min(k, count, MAX_TOP_K)


class Linker:
    def __init__(self, model, store: KBStore, candidates: int = 1024, check: bool = True):
        if check:
            store.check_model(model_fingerprints(model))
        self.model = model.eval()
        self.store = store
        self.searcher = Searcher(model.matcher, store.terms, candidates)

    @classmethod
    def open(cls, kb: str, checkpoint: str = None, encoder: str = None, init: str = None, device=None,
             candidates: int = 1024) -> "Linker":
        store = KBStore.load(kb)
        return cls(load_model(checkpoint, encoder, init, device), store, candidates)

    def mention_terms(self, queries: list) -> dict:
        texts = [mention_text(q.mention, q.sentence) for q in queries]
        return encode_batch(self.model, texts, [q.image for q in queries], "mention")

    def _rows(self, index: torch.Tensor, scores) -> list:
        rows = []
        for rank, (i, s) in enumerate(zip(index.tolist(), scores.s[0].tolist()), 1):
            meta = self.store.entities[i]
            row = {"rank": rank, "index": i, "qid": meta.get("qid"), "name": meta.get("name"), "score": s}
            row.update({f: getattr(scores, f)[0, rank - 1].item() for f in SCORE_FIELDS})
            rows.append(row)
        return rows

    @torch.no_grad()
    def link_terms(self, mention: dict, top_k: int = 10, exact: bool = False) -> list:
        index, scores = self.searcher.search(mention, check_top_k(top_k, len(self.store)), exact)
        return self._rows(index, scores)

    def link(self, sentence, mention, image=None, top_k: int = 10, exact: bool = False) -> list:
        """One mention -> ranked entities with every unit score."""
        sentence, mention = check_query(sentence, mention)
        return self.link_terms(self.mention_terms([Query(sentence, mention, image)]), top_k, exact)

    def link_many(self, queries: list, top_k: int = 10, exact: bool = False, batch_size: int = 16):
        """Queries (already checked) -> one result list per query, in order; mentions encoded in batches."""
        for start in range(0, len(queries), batch_size):
            batch = queries[start:start + batch_size]
            terms = self.mention_terms(batch)
            for i in range(len(batch)):
                yield self.link_terms(select(terms, slice(i, i + 1)), top_k, exact)

    @torch.no_grad()
    def explain(self, sentence, mention, image, entity_index: int) -> dict:
        """The attention behind one (mention, entity) pair: TGLU token-to-token weights [L_E, L_M] with
        the tokens, and the CMFU patch weights α of both images (CLS first, then 7x7 patches)."""
        sentence, mention = check_query(sentence, mention)
        m = self.mention_terms([Query(sentence, mention, image)])
        e = self.searcher.entity_terms(torch.tensor([entity_index]))
        meta = self.store.entities[entity_index]
        processor = self.model.processor
        return {"attention": self.model.matcher.token_attention(m, e)[0, 0],
                "mention_tokens": processor.tokens(mention_text(mention, sentence)),
                "entity_tokens": processor.tokens(entity_text(meta.get("name", ""), meta.get("description", ""))),
                "mention_alpha": m["cmfu"]["alpha"][0], "entity_alpha": e["cmfu"]["alpha"][0]}
