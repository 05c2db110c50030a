"""Session entities (mimic/kb/overlay.py): scored like store entities, merged with the KB, never written."""
import os

import pytest
import torch

from mimic.kb.encode import encode_store
from mimic.kb.fingerprint import file_fingerprint
from mimic.kb.overlay import Overlay, OverlayFull, clean_entity_text
from mimic.kb.store import KBStore
from mimic.linker import Linker, Query, QueryError
from mimic.model.matcher import select


def _store(model, dataset, entities, out):
    encode_store(model, entities, dataset.kb_images, str(out), file_fingerprint(dataset.config.data.entity),
                 batch_size=8, progress=False)
    return KBStore.load(str(out))


def _folder_state(path):
    return sorted((os.path.relpath(os.path.join(d, f), path), os.stat(os.path.join(d, f)).st_mtime_ns)
                  for d, _, files in os.walk(path) for f in files)


@pytest.fixture()
def kb_pair(tiny_model, synth_dataset, tmp_path):
    """The whole synthetic KB in a store, and the same KB without its last entity plus that entity in an overlay."""
    entities = synth_dataset.entities
    whole = Linker(tiny_model, _store(tiny_model, synth_dataset, entities, tmp_path / "whole"))
    partial = Linker(tiny_model, _store(tiny_model, synth_dataset, entities[:-1], tmp_path / "partial"))
    last = entities[-1]
    overlay = Overlay(partial.store.manifest["precision"], limit=20)
    overlay.add(tiny_model, last.name, last.attr, os.path.join(synth_dataset.kb_images, last.images[0]))
    return whole, partial, overlay, len(entities) - 1


def test_an_overlay_entity_scores_and_ranks_as_it_would_in_the_store(kb_pair, synth_dataset):
    whole, partial, overlay, last_index = kb_pair
    before = _folder_state(partial.store.path)
    mentions = synth_dataset.split("test")
    terms = whole.mention_terms([Query(m.sentence, m.mention, synth_dataset.mention_image(m)) for m in mentions])
    seen_first = 0
    for i in range(len(mentions)):
        mention = select(terms, slice(i, i + 1))
        reference = whole.link_terms(mention, 48, exact=True)
        merged = partial.link_terms(mention, 48, exact=True, extra=overlay)
        # the same entities in the same order: the overlay entity where the store puts its twin
        assert [r["index"] if r["index"] != last_index else "session:1" for r in reference["results"]] == \
               [r["index"] if r["index"] is not None else r["id"] for r in merged["results"]]
        for a, b in zip(reference["results"], merged["results"]):
            for key in ("score", "s_t", "s_t_g2g", "s_t_g2l", "s_v", "s_v_e2m", "s_v_m2e", "s_c"):
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-4), key
        row = next(r for r in merged["results"] if r.get("session"))
        assert row["index"] is None and row["id"] == "session:1" and row["qid"] is None
        assert [r["rank"] for r in merged["results"]] == list(range(1, 49))
        seen_first += merged["results"][0].get("session", False)
        # the default (faiss) path merges the same way: its top 5 agrees with the exact one here
        fast = partial.link_terms(mention, 5, extra=overlay)["results"]
        assert [r["score"] for r in fast] == pytest.approx([r["score"] for r in merged["results"][:5]], abs=1e-4)
    assert seen_first >= 1  # at least one test mention of the overlay entity's gold ranks it first
    assert _folder_state(partial.store.path) == before  # nothing written to the store


def test_the_overlay_entity_can_be_explained_like_its_twin(kb_pair):
    whole, partial, overlay, last_index = kb_pair
    a = whole.explain("a falcon over lima", "falcon", None, last_index)
    b = partial.explain("a falcon over lima", "falcon", None, "session:1", extra=overlay)
    assert a["entity_tokens"] == b["entity_tokens"]
    torch.testing.assert_close(a["attention"], b["attention"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a["entity_alpha"].float(), b["entity_alpha"].float(), atol=2e-3, rtol=1e-3)
    with pytest.raises(QueryError, match="There is no entity session:9"):
        partial.explain("a falcon over lima", "falcon", None, "session:9", extra=overlay)
    with pytest.raises(QueryError, match="There is no entity session:1"):  # not without the session's overlay
        partial.explain("a falcon over lima", "falcon", None, "session:1")


def test_an_overlay_is_bounded_and_keeps_clean_text(tiny_model):
    overlay = Overlay(limit=2)
    first = overlay.add(tiny_model, "Ada\u202e ecalevoL\u0007", "Wrote\u2066 the first\u200f algorithm.\nLine two")
    assert first["name"] == "Ada  ecalevoL" and first["description"] == "Wrote  the first  algorithm. Line two"
    assert first["id"] == "session:1" and overlay.add(tiny_model, "B", "")["id"] == "session:2"
    with pytest.raises(OverlayFull, match="already has 2 added entities, the limit"):
        overlay.add(tiny_model, "C", "")
    assert len(overlay) == 2 and overlay.terms["cmfu"]["f"].shape[0] == 2
    with pytest.raises(QueryError, match="Please give the new entity a name"):
        clean_entity_text(" \u202e ", "x")
    with pytest.raises(QueryError, match="The name is 201 characters long; the limit is 200"):
        clean_entity_text("n" * 201, "")
    with pytest.raises(QueryError, match="The description is 5,001 characters long; the limit is 5,000"):
        clean_entity_text("n", "d" * 5001)
