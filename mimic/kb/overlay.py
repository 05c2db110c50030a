"""Entities kept beside a KB store, in memory only: linked together with it, never written to it.

The demo lets a visitor add entities for the length of a browser session. They must rank together
with the KB and be scored exactly as if they were in it, yet never reach the store, the cache or
another visitor. An `Overlay` holds such entities: their records and their entity-side terms,
encoded by the served model and rounded to the store's precision (so that an entity scores the same
here as it would in the store). `Linker.link_terms(..., extra=overlay)` scores them with the same
`Matcher.score` as the KB's candidates and merges both lists by score.

Overlay entities have no KB index: their rows carry `"index": None`, `"session": True` and an id of
the form "session:N", which no KB row has.
"""
import torch

from ..model.encoding import encode_batch
from ..model.matcher import SCORE_FIELDS, cat_terms, flatten_terms, map_terms, select, unflatten_terms
from ..model.processing import entity_text
from ..query import QueryError, clean_text
from .compression import DEFAULT_PRECISION, DERIVED, as_stored, complete, to_tensor

ID_PREFIX = "session:"
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 5000


class OverlayFull(QueryError):
    """The overlay holds as many entities as it may."""


def clean_entity_text(name, description) -> tuple:
    """-> (name, description) with control and bidirectional-override characters removed (a name
    such as "abc\\u202edcb" would otherwise display reversed), or QueryError when too long or empty."""
    name, description = clean_text(name), clean_text(description)
    if not name:
        raise QueryError("Please give the new entity a name.")
    if len(name) > MAX_NAME_CHARS:
        raise QueryError(f"The name is {len(name):,} characters long; the limit is {MAX_NAME_CHARS:,}.")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise QueryError(f"The description is {len(description):,} characters long; the limit is "
                         f"{MAX_DESCRIPTION_CHARS:,}.")
    return name, description


@torch.no_grad()
def _as_stored(model, terms: dict, precision: str) -> dict:
    """Round the terms as a store of `precision` keeps them (coded and decoded, `mimic/kb/compression.py`),
    back in float32, with what the store leaves out recomputed from the rounded values as search does."""
    flat = {name: to_tensor(as_stored(name, t.numpy(), precision))
            for name, t in flatten_terms(terms).items() if name not in DERIVED}
    complete(model.matcher, flat)
    return unflatten_terms(flat)


class Overlay:
    """Up to `limit` entities of one session: `records` (position = overlay position) and `terms`."""

    def __init__(self, precision: str = DEFAULT_PRECISION, limit: int = None):
        self.precision = precision
        self.limit = limit
        self.records = []
        self.terms = None
        self._added = 0  # ids are never reused, even after a removal

    def __len__(self):
        return len(self.records)

    def add(self, model, name: str, description: str = "", image=None, **extra) -> dict:
        """Encode one entity with `model` (image: path, bytes, PIL image or None) and keep it.
        `extra` fields (e.g. a thumbnail) are stored in its record. Returns the record."""
        if self.limit is not None and len(self) >= self.limit:
            raise OverlayFull(f"This session already has {self.limit} added entities, the limit; they are "
                              "forgotten when the session ends.")
        name, description = clean_entity_text(name, description)
        terms = encode_batch(model, [entity_text(name, description)], [image], "entity")
        terms = _as_stored(model, terms, self.precision)
        self._added += 1
        record = {"id": f"{ID_PREFIX}{self._added}", "qid": None, "name": name, "description": description,
                  "has_image": image is not None, "session": True, **extra}
        self.records.append(record)
        self.terms = terms if self.terms is None else cat_terms([self.terms, terms])
        return record

    def position(self, entity_id) -> int:
        """The overlay position of `entity_id`, or None when it is not one of ours."""
        for i, record in enumerate(self.records):
            if record["id"] == entity_id:
                return i
        return None

    def record(self, entity_id) -> dict:
        return self.records[self.position(entity_id)]

    def entity_terms(self, entity_id) -> dict:
        """The terms of one entity, batch axis kept: [1, ...]."""
        i = self.position(entity_id)
        return map_terms(lambda t: t.clone(), select(self.terms, slice(i, i + 1)))

    @torch.no_grad()
    def rows(self, matcher, mention: dict) -> list:
        """One mention (batch size 1) -> an unranked row per entity, scored by `Matcher.score`."""
        if not self.records:
            return []
        scores = matcher.score(mention, self.terms)
        rows = []
        for j, record in enumerate(self.records):
            row = {"rank": None, "index": None, "id": record["id"], "qid": None, "name": record["name"],
                   "score": scores.s[0, j].item(), "image_credit": None, "session": True}
            row.update({f: getattr(scores, f)[0, j].item() for f in SCORE_FIELDS})
            rows.append(row)
        return rows
