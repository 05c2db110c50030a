"""A picture's credit travels: from the entity file (.jsonl, as kb fetch-images writes it) into the store's
records, through kb add/update/compact, into link results; stores written before credits give null. Aliases
travel the same way, into mention detection."""
import json
import os

import pytest

from mimic.data.readers import DataError, read_entity_file
from mimic.kb.edit import compact_store, edit_store, read_changes
from mimic.kb.encode import encode_store
from mimic.kb.store import KBStore
from mimic.linker import Linker
from mimic.train.checkpoint import load_checkpoint
from tests.data.fakewiki import png
from tests.product.test_compat import CHECKPOINT, STORE

CREDIT = {"licence": "CC BY-SA 4.0", "licence_url": "https://creativecommons.org/licenses/by-sa/4.0",
          "artist": "Ann Painter", "source": "https://commons.wikimedia.org/wiki/File:A.jpg"}


def entity_file(folder):
    (folder / "a.png").write_bytes(png((200, 10, 10)))
    (folder / "b.png").write_bytes(png((10, 10, 200)))
    rows = [{"id": "Q1", "qid": "Q1", "name": "Red painting", "description": "a red picture", "aliases": ["Rouge"],
             "commons_file": "A.jpg", "image": "a.png", "image_credit": CREDIT},
            {"id": "Q2", "qid": "Q2", "name": "Blue painting", "description": "a blue picture", "image": "b.png",
             "image_credit": {**CREDIT, "artist": "Bob", "extra": "dropped"}},
            {"id": "Q3", "qid": "Q3", "name": "Plain text", "description": "no picture", "image_credit": CREDIT}]
    path = folder / "e.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_credits_go_from_the_entity_file_to_link_results(tiny_model, tmp_path):
    entities = read_entity_file(entity_file(tmp_path))
    store_path = str(tmp_path / "store")
    encode_store(tiny_model, entities, str(tmp_path), store_path, "kb", progress=False)
    store = KBStore.load(store_path)
    credits = {store.entities[i]["id"]: store.entities[i]["image_credit"] for i in range(len(store))}
    assert credits == {"Q1": CREDIT, "Q2": {**CREDIT, "artist": "Bob"}, "Q3": None}  # no picture, no credit
    rows = Linker(tiny_model, store).link("A red painting hangs here.", "red painting", top_k=3)["results"]
    assert {r["id"]: r["image_credit"] for r in rows} == credits

    (tmp_path / "c.png").write_bytes(png((10, 200, 10)))
    (tmp_path / "add.jsonl").write_text(json.dumps({"id": "Q4", "name": "Green", "description": "", "image": "c.png",
                                                    "image_credit": {**CREDIT, "artist": "Cy"}}) + "\n")
    edit_store(store_path, tiny_model, add=read_entity_file(str(tmp_path / "add.jsonl")), image_folder=str(tmp_path))
    (tmp_path / "up.json").write_text(json.dumps([{"id": "Q1", "image": "b.png"},  # a new picture: its credit goes
                                                  {"id": "Q2", "name": "Navy painting"}]))  # picture kept: credit too
    edit_store(store_path, tiny_model, update=read_changes(str(tmp_path / "up.json")), image_folder=str(tmp_path))
    compact_store(store_path, tiny_model, progress=False)
    store = KBStore.load(store_path)
    after = {store.entities[i]["id"]: store.entities[i]["image_credit"] for i in range(len(store))}
    assert after == {"Q1": None, "Q2": {**CREDIT, "artist": "Bob"}, "Q3": None, "Q4": {**CREDIT, "artist": "Cy"}}


def test_stores_without_credits_give_null():
    linker = Linker(load_checkpoint(CHECKPOINT), KBStore.load(STORE))
    rows = linker.link("Hopper painted Nighthawks.", "Hopper", top_k=3)["results"]
    assert len(rows) == 3 and all("image_credit" in r and r["image_credit"] is None for r in rows)
    assert os.path.isdir(STORE)


def test_credits_in_an_entity_file_are_checked_and_bounded(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"id": "Q1", "name": "A", "image": "a.png",
                                "image_credit": {"artist": "x" * 100_000, "licence": ""}}) + "\n")
    (credit,) = [e.credit for e in read_entity_file(str(path))]
    assert credit == {"licence": None, "licence_url": None, "artist": "x" * 2000, "source": None}
    path.write_text(json.dumps({"id": "Q1", "name": "A", "image_credit": {"artist": ["<script>"]}}) + "\n")
    with pytest.raises(DataError, match="'image_credit' must be an object of texts or null"):
        read_entity_file(str(path))
    path.write_text('{"id": "Q1", "name": "A"}\n{not json\n')
    with pytest.raises(DataError, match="e.jsonl: line 2 is not valid JSON"):
        read_entity_file(str(path))


def test_aliases_go_from_the_entity_file_through_edits_to_mention_detection(tiny_model, tmp_path):
    """An entity file's "aliases" (as kb from-wikidata writes them) are kept in the records through kb add,
    update and compact, so that link_text finds an entity by one of its other names."""
    store_path = str(tmp_path / "store")
    encode_store(tiny_model, read_entity_file(entity_file(tmp_path)), str(tmp_path), store_path, "kb", progress=False)
    (tmp_path / "add.jsonl").write_text(json.dumps({"id": "Q4", "name": "Green painting", "description": "",
                                                    "aliases": ["Verdant", " ", "Verdant", "x" * 500]}) + "\n")
    edit_store(store_path, tiny_model, add=read_entity_file(str(tmp_path / "add.jsonl")), image_folder=str(tmp_path))
    (tmp_path / "up.json").write_text(json.dumps([{"id": "Q1", "description": "a red canvas"}]))
    edit_store(store_path, tiny_model, update=read_changes(str(tmp_path / "up.json")), image_folder=str(tmp_path))
    compact_store(store_path, tiny_model, progress=False)
    store = KBStore.load(store_path)
    aliases = {store.entities[i]["id"]: store.entities[i]["aliases"] for i in range(len(store))}
    assert aliases == {"Q1": ["Rouge"], "Q2": None, "Q3": None, "Q4": ["Verdant", "x" * 200]}  # blanks, repeats gone
    found = Linker(tiny_model, store).link_text("Rouge hangs beside Verdant.", top_k=2)["mentions"]
    assert [(m["text"], m["results"][0]["id"]) for m in found] == [("Rouge", "Q1"), ("Verdant", "Q4")]
    assert found[0]["results"][0]["image_credit"] == CREDIT  # a span's rows are link's rows, credit included
    assert found[1]["results"][0]["image_credit"] is None


def test_aliases_in_an_entity_file_are_checked_and_bounded(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"id": "Q1", "name": "A", "aliases": [f"name {i}" for i in range(5000)]}) + "\n")
    (entity,) = read_entity_file(str(path))
    assert len(entity.aliases) == 100 and entity.aliases[-1] == "name 99"
    for bad in ("Rouge", [1, 2], {"en": "Rouge"}):
        path.write_text(json.dumps({"id": "Q1", "name": "A", "aliases": bad}) + "\n")
        with pytest.raises(DataError, match="'aliases' must be a list of names or null"):
            read_entity_file(str(path))
