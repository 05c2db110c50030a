"""Linking new mentions against a pre-encoded KB: the one API the CLI and the demo share."""
import threading

import numpy as np
import torch

from .explain.relevance import explain_pair
from .kb.fingerprint import model_fingerprints
from .kb.hub import resolve_store
from .kb.mentions import (
    MAX_CANDIDATES,
    MAX_SPANS,
    add_ner_spans,
    cached_store_index,
    context_window,
    find_spans,
    ner_spans,
    overlay_index,
)
from .kb.search import DEFAULT_CANDIDATES, Searcher
from .kb.store import LOAD_ATTEMPTS, KBStore, StoreChanged, StoreError
from .model.encoding import encode_batch
from .model.matcher import SCORE_FIELDS, Features, cat_terms, select
from .model.processing import entity_text, mention_text
from .nil import is_nil
from .query import (  # noqa: F401
    MAX_TOP_K,
    Query,
    QueryError,
    check_entity_index,
    check_query,
    check_top_k,
    clean_text,
)
from .train.loading import load_recorded

# Query, QueryError and check_query are the door's names too: callers build and check queries through it
_MENTION_INDEX_LOCK = threading.Lock()  # one build of a store's name index at a time (seconds at 1M names)
TEXT_BATCH = 64  # spans encoded per text-encoder pass
SCORE_BATCH = 16  # spans scored together against the union of their candidates (at most 16 x 64 pairs each)


def _store_row(store: KBStore, index: int, scores, b: int, j: int, rank: int = None) -> dict:
    """A result row for the store's entity `index`: its record's fields and the scores at [b, j]."""
    meta = store.entities[index]
    row = {"rank": rank, "index": index, "id": meta.get("id"), "qid": meta.get("qid"), "name": meta.get("name"),
           "score": scores.s[b, j].item(), "image_credit": meta.get("image_credit")}  # the picture's licence
    row.update({f: getattr(scores, f)[b, j].item() for f in SCORE_FIELDS})
    return row


class Linker:
    """Links mentions against a store. `refresh()` picks up a new version of the store (after a
    `kb add/update/remove`) without a restart; a request in flight keeps the version it started with."""

    def __init__(self, model, store: KBStore, candidates: int = DEFAULT_CANDIDATES, check: bool = True,
                 nil_rule: dict = None, fingerprints: dict = None):
        self.model = model.eval()
        # hashing the weights takes a second for ViT-B/32: a caller that has them already passes them
        self.fingerprints = (fingerprints or model_fingerprints(model)) if check else None
        self.candidates = candidates
        self.nil_rule = nil_rule if nil_rule is not None else model.config.metadata.get("nil")
        self._kb = self._searchable(store)

    @classmethod
    def open(cls, kb: str, checkpoint: str = None, encoder: str = None, init: str = None, device=None,
             candidates: int = DEFAULT_CANDIDATES) -> "Linker":
        """A store and the model that encoded it, as the store records it (`mimic link` does the same), or
        the checkpoint or initialisation given, in the store's image mode. `kb`: a store folder, or the Hub
        dataset "owner/name" of one (`kb push-to-hub`)."""
        store = KBStore.load(resolve_store(kb))
        return cls(load_recorded(store.manifest.get("source") or {}, checkpoint, encoder, init, device), store,
                   candidates)

    @property
    def store(self) -> KBStore:
        return self._kb[0]

    @property
    def searcher(self) -> Searcher:
        return self._kb[1]

    def _searchable(self, store: KBStore) -> tuple:
        """(store, its Searcher), checked against the model. Opening the retrieval index may find that a
        writer published a new version and collected this one's files meanwhile: then the newer version
        is opened instead."""
        for _ in range(LOAD_ATTEMPTS):
            if self.fingerprints is not None:
                store.check_model(self.fingerprints)
            try:
                return store, Searcher(self.model.matcher, store, self.candidates)
            except StoreChanged:
                store = KBStore.load(store.path)
        raise StoreError(f"{store.path}: the store changed {LOAD_ATTEMPTS} times while it was being opened; try again")

    def refresh(self) -> bool:
        """Reload the store if its folder holds a newer version; True when it did."""
        store = self.store
        if not store.changed():
            return False
        self._kb = self._searchable(KBStore.load(store.path))
        return True

    def mention_terms(self, queries: list) -> dict:
        texts = [mention_text(q.mention, q.sentence) for q in queries]
        return encode_batch(self.model, texts, [q.image for q in queries], "mention")

    @torch.no_grad()
    def link_terms(self, mention: dict, top_k: int = 10, exact: bool = False, extra=None) -> dict:
        """-> {"nil": bool, "results": [{"rank", "index", "id", "qid", "name", "score", "image_credit", "s_t", ...}]}
        `id` is the entity's stable id (what `kb update/remove` take); `index` its position in this version.
        `extra`: an `Overlay` of entities kept beside the store, ranked together with it."""
        store, searcher = self._kb
        k = check_top_k(top_k, len(store) + (len(extra) if extra else 0))
        index, scores = searcher.search(mention, max(k, 2), exact)  # the margin rule needs a runner-up
        rows = []
        for rank, i in enumerate(index.tolist(), 1):
            rows.append(_store_row(store, i, scores, 0, rank - 1, rank))
        if extra:  # the store's top k and every overlay entity, by score (a tie keeps the KB's first)
            rows = sorted(rows + extra.rows(self.model.matcher, mention), key=lambda r: -r["score"])[:max(k, 2)]
            for rank, row in enumerate(rows, 1):
                row["rank"] = rank
        return {"nil": is_nil([r["score"] for r in rows], self.nil_rule), "results": rows[:k]}

    def link(self, sentence, mention, image=None, top_k: int = 10, exact: bool = False, extra=None) -> dict:
        """One mention -> {"nil", "results": ranked entities with every unit score}."""
        sentence, mention = check_query(sentence, mention)
        return self.link_terms(self.mention_terms([Query(sentence, mention, image)]), top_k, exact, extra)

    def link_many(self, queries: list, top_k: int = 10, exact: bool = False, batch_size: int = 16):
        """Queries (already checked) -> one result per query, in order; mentions encoded in batches."""
        for start in range(0, len(queries), batch_size):
            batch = queries[start:start + batch_size]
            terms = self.mention_terms(batch)
            for i in range(len(batch)):
                yield self.link_terms(select(terms, slice(i, i + 1)), top_k, exact)

    def entity_record(self, key, extra=None, store: KBStore = None) -> tuple:
        """An entity by its KB index (an int, or a string of one) or by the id of an entity of the overlay
        `extra` -> (its KB index, or None for the overlay's, its record); QueryError when it is neither.
        `store`: the version to read (by default the current one)."""
        if extra is not None and extra.position(key) is not None:
            return None, extra.record(key)
        store = self.store if store is None else store
        index = check_entity_index(key, len(store))
        return index, store.entities[index]

    def explain(self, sentence, mention, image, entity_index, mention_terms: dict = None, extra=None,
                relevance: bool = True) -> dict:
        """The evidence behind one (mention, entity) pair. `entity_index` is a KB index, or the id of an
        entity of the overlay `extra`.

        Attention (what the units pooled): "attention", the TGLU token-to-token weights [L_E, L_M], with
        "mention_tokens" and "entity_tokens"; "mention_alpha" and "entity_alpha", the CMFU patch weights α
        of both images (CLS first, then the 7x7 patches). `mention_terms` (from `mention_terms`) spares
        encoding the mention again.

        Relevance (what moved the scores; mimic/explain/relevance.py, skipped with relevance=False):
        "mention_relevance" and "entity_relevance", each {"s", "s_t", "s_v", "s_c"} -> a patch grid (rows
        of floats, higher = more of that score), or None for a side without an image; "token_relevance",
        {"tokens", "s", "s_t"} over the mention's words; "scores", the pair's scores in that pass. The
        entity is re-encoded from its record (the image: its "image" path, relative paths in the store's
        folder, or the "picture" bytes an overlay record may keep), so the scores equal the linked ones
        unless that image differs from the one encoded."""
        store, searcher = self._kb
        sentence, mention = check_query(sentence, mention)
        index, meta = self.entity_record(entity_index, extra, store)
        if index is None:
            e, entity_image = extra.entity_terms(entity_index), meta.get("picture")
        else:
            e = searcher.entity_terms(torch.tensor([index]))
            entity_image = meta.get("image") or None  # KBStore.record makes a stored relative path absolute
        text = entity_text(meta.get("name", ""), meta.get("description", ""))
        with torch.no_grad():
            m = mention_terms if mention_terms is not None else self.mention_terms([Query(sentence, mention, image)])
            processor = self.model.processor
            out = {"attention": self.model.matcher.token_attention(m, e)[0, 0],
                   "mention_tokens": processor.tokens(mention_text(mention, sentence)),
                   "entity_tokens": processor.tokens(text),
                   "mention_alpha": m["cmfu"]["alpha"][0], "entity_alpha": e["cmfu"]["alpha"][0]}
        if relevance:
            out.update(explain_pair(self.model, mention_text(mention, sentence), image, text, entity_image))
        return out

    # -- every mention of a text ----------------------------------------------------------------------
    def mention_index(self, store: KBStore = None):
        """The name index of a store version (mimic/kb/mentions.py): at its first use read from the cache
        folder, or built and cached there; then kept in memory."""
        store = self.store if store is None else store
        with _MENTION_INDEX_LOCK:
            cached = getattr(self, "_mention_index", None)
            if cached is None or cached[0] is not store:
                cached = self._mention_index = (store, cached_store_index(store))
        return cached[1]

    @torch.no_grad()
    def text_terms(self, sentences: list, mentions: list, image=None) -> dict:
        """The mention terms of mentions that share one picture: the text encoder reads every
        "{mention} [SEP] {sentence}", the vision encoder reads the picture once."""
        if not mentions:
            raise ValueError("no mentions to encode")
        device = next(self.model.parameters()).device
        parts = []
        for start in range(0, len(mentions), TEXT_BATCH):
            texts = [mention_text(m, s) for m, s in zip(mentions[start:start + TEXT_BATCH],
                                                           sentences[start:start + TEXT_BATCH])]
            batch = {k: v.to(device) for k, v in self.model.processor(texts, [image]).items()}
            f = self.model.encode(batch)  # texts [n], the picture [1]
            n = len(texts)
            f = Features(f.t_g, f.t_l, f.v_g.expand(n, -1), f.v_l.expand(n, -1, -1))
            parts.append(self.model.matcher.mention_side(f))
        return cat_terms(parts) if len(parts) > 1 else parts[0]

    @torch.no_grad()
    def rank_candidates(self, mention: dict, entities, top_k: int = 5, extra=None, overlay_entities=(),
                        search: bool = False, exact: bool = False, kb: tuple = None, scored: tuple = None) -> dict:
        """One mention's terms scored against given candidates: store positions `entities` and overlay
        positions `overlay_entities` (of `extra`); search=True adds the search's own top k (link_terms).
        -> {"nil", "results"} as link gives, ranked among these candidates only. `kb`: the (store,
        searcher) pair of the version to read (by default the current one). `scored`: (Scores, row,
        columns) when the entities' scores are computed already (link_text scores spans together)."""
        store, searcher = self._kb if kb is None else kb
        k = check_top_k(top_k, len(store) + (len(extra) if extra else 0))
        rows = []
        if len(entities):
            entities = [int(i) for i in entities]
            if scored is None:
                scored = (self.model.matcher.score(mention, searcher.entity_terms(torch.tensor(entities))), 0,
                          range(len(entities)))
            scores, b, columns = scored
            rows += [_store_row(store, i, scores, b, j) for i, j in zip(entities, columns)]
        if extra is not None and len(overlay_entities):
            wanted = {extra.records[p]["id"] for p in overlay_entities}
            rows += [r for r in extra.rows(self.model.matcher, mention) if r["id"] in wanted]
        if search:
            seen = {r["id"] for r in rows}
            rows += [r for r in self.link_terms(mention, k, exact, extra)["results"] if r["id"] not in seen]
        rows.sort(key=lambda r: -r["score"])  # stable: a tie keeps full names first
        for rank, row in enumerate(rows, 1):
            row["rank"] = rank
        return {"nil": is_nil([r["score"] for r in rows], self.nil_rule), "results": rows[:k]}

    @torch.no_grad()
    def link_text(self, text, image=None, top_k: int = 5, extra=None, search: bool = False, exact: bool = False,
                  max_spans: int = MAX_SPANS, max_candidates: int = MAX_CANDIDATES, ner: bool = False) -> dict:
        """Every mention of `text` that the KB's names and aliases (and the overlay `extra`'s) find, linked.
        -> {"mentions": [{"start", "end", "text", "support", "context", "nil", "results"}] sorted by start,
        "skipped": spans past `max_spans`}. Offsets are in `text` as given. A span's candidates are the
        entities its name form belongs to (search=True adds the search's top k); MIMIC reads the span as
        the mention and its `context` (the whole text when short, else a window around it: [start, end]
        offsets) as the sentence, so each row equals link(text[context], span text)'s row for that entity.
        ner=True adds the named entities a spaCy pipeline finds where no KB name is (support "ner", ranked
        by the search's top k); without spaCy it changes nothing."""
        if text is not None and not isinstance(text, str):
            raise QueryError("The text must be a string.")
        if not clean_text(text):
            raise QueryError("Please type a text to find mentions in.")
        kb = self._kb
        store = kb[0]
        check_top_k(top_k, len(store) + (len(extra) if extra else 0))
        indexes = [self.mention_index(store)] + ([overlay_index(extra)] if extra else [])
        spans, skipped = find_spans(text, indexes, max_spans, max_candidates)
        if ner:
            spans, more = add_ner_spans(text, spans, ner_spans(text), max_spans, len(indexes))
            skipped += more
        contexts = [context_window(text, s["start"], s["end"]) for s in spans]
        terms = self.text_terms([clean_text(text[a:b]) for a, b in contexts], [clean_text(s["text"]) for s in spans],
                                image) if spans else None
        mentions = []
        for first in range(0, len(spans), SCORE_BATCH):
            # the spans of a batch against the union of their candidates: one read, one Matcher.score
            batch = spans[first:first + SCORE_BATCH]
            union = np.unique(np.concatenate([s["candidates"][0] for s in batch]))
            scores = self.model.matcher.score(select(terms, slice(first, first + len(batch))),
                                              kb[1].entity_terms(torch.from_numpy(union))) if len(union) else None
            for b, span in enumerate(batch):
                candidates, i = span["candidates"], first + b
                columns = np.searchsorted(union, candidates[0]).tolist()
                result = self.rank_candidates(select(terms, slice(i, i + 1)), candidates[0], top_k, extra,
                                              candidates[1] if len(candidates) > 1 else (),
                                              search or span["support"] == "ner", exact, kb,
                                              (scores, b, columns))
                mentions.append({"start": span["start"], "end": span["end"], "text": span["text"],
                                 "support": span["support"], "context": list(contexts[i]), **result})
        return {"mentions": mentions, "skipped": skipped}
