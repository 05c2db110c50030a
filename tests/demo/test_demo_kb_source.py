"""The page serves any KB (MIMIC_KB): a store folder, an entity file encoded at first start, a Hub dataset;
its status names the KB and its size, never a server path."""
import os

import huggingface_hub
import pytest

import demo.kb as demo_kb
from demo.kb import DemoKB
from demo.models import LoadedModel
from mimic.data.readers import read_entity_file
from mimic.kb.encode import encode_store
from mimic.kb.hub import stage_kb
from tests.kb.test_credits import CREDIT, entity_file
from tests.kb.test_kb_hub import REPO, into_hf_cache


def prepared(model, **options) -> DemoKB:
    kb = DemoKB(LoadedModel(model, "trained checkpoint"), **options)
    kb._prepare()
    return kb


def credits_of(kb):
    rows = kb.linker.link("A red painting hangs here.", "red painting", top_k=3)["results"]
    return {r["id"]: r["image_credit"] for r in rows}


def test_a_store_folder_is_served_as_it_is(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_CACHE", str(tmp_path / "cache"))
    store = str(tmp_path / "kb" / "louvre")
    encode_store(tiny_model, read_entity_file(entity_file(tmp_path)), str(tmp_path), store, "kb", progress=False)
    monkeypatch.setenv("MIMIC_KB", store)
    kb = prepared(tiny_model)
    assert kb.error is None and kb.status == "Ready: louvre, 3 entities."
    assert credits_of(kb)["Q1"] == CREDIT
    assert not os.path.exists(tmp_path / "cache")  # nothing encoded


def test_an_entity_file_is_encoded_once_into_the_cache(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_CACHE", str(tmp_path / "cache"))
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    path = entity_file(pictures)
    os.rename(path, tmp_path / "paintings.jsonl")  # its pictures elsewhere: MIMIC_KB_IMAGES says where
    kb = prepared(tiny_model, source=str(tmp_path / "paintings.jsonl"), images=str(pictures))
    assert kb.status == "Ready: paintings.jsonl, 3 entities." and credits_of(kb)["Q2"]["artist"] == "Bob"
    assert len(os.listdir(tmp_path / "cache")) == 1

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again")
    monkeypatch.setattr(demo_kb, "encode_store", no_encoding)
    again = prepared(tiny_model, source=str(tmp_path / "paintings.jsonl"), images=str(pictures))
    assert again.status == "Ready: paintings.jsonl, 3 entities."


def test_a_hub_dataset_is_served_by_name(tiny_model, tmp_path, monkeypatch):
    store = str(tmp_path / "kb")
    encode_store(tiny_model, read_entity_file(entity_file(tmp_path)), str(tmp_path), store, "kb", progress=False)
    cache = tmp_path / "hf-cache"
    into_hf_cache(stage_kb(store, str(tmp_path / "staged"), REPO), cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    kb = prepared(tiny_model, source=REPO)
    assert kb.status == f"Ready: {REPO}, 3 entities." and credits_of(kb)["Q1"] == CREDIT


@pytest.mark.parametrize("source", ["/srv/secret/place/kb.jsonl", "alice/not-on-the-hub", "relative/missing.json"])
def test_a_kb_that_cannot_be_served_is_explained_without_paths(tiny_model, tmp_path, monkeypatch, source):
    monkeypatch.setenv("MIMIC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)
    kb = prepared(tiny_model, source=source, images="/srv/secret/pictures")
    assert kb.linker is None and kb.error.startswith("The knowledge base could not be prepared: ")
    assert "/srv" not in kb.error and str(tmp_path) not in kb.error and "secret" not in kb.error, kb.error
