"""KB stores on the Hub, offline: the staged dataset folder (pictures inside, no local path, the card), the
one upload, and loading it back by name from a Hugging Face cache laid out as a download leaves it."""
import json
import os
import shutil

import huggingface_hub
import pytest
from huggingface_hub import DatasetCard

from mimic.cli import main
from mimic.data.hubrepo import HubError
from mimic.data.readers import read_entity_file
from mimic.kb.edit import edit_store
from mimic.kb.encode import encode_store
from mimic.kb.hub import push_kb, resolve_store, stage_kb
from mimic.kb.store import KBStore, StoreError
from mimic.linker import Linker
from tests.data.fakewiki import png
from tests.kb.test_credits import CREDIT, entity_file
from tests.train.test_hub import COMMIT, uploads  # noqa: F401 (a fixture)

REPO = "alice/louvre-kb"


def into_hf_cache(folder, cache, repo=REPO):
    """Lay `folder` out as huggingface_hub's cache holds a downloaded dataset repo."""
    root = cache / f"datasets--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / COMMIT)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    return root / "snapshots" / COMMIT


@pytest.fixture()
def store(tiny_model, tmp_path):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    path = str(tmp_path / "kb" / "louvre")
    encode_store(tiny_model, read_entity_file(entity_file(pictures)), str(pictures), path, "kb", progress=False,
                 source={"checkpoint": str(tmp_path / "runs" / "best"), "encoder": str(tmp_path / "clip")})
    (pictures / "d.png").write_bytes(png((0, 120, 0)))
    (pictures / "add.jsonl").write_text(json.dumps({"id": "Q9", "name": "Added", "description": "", "image": "d.png",
                                                    "image_credit": {**CREDIT, "licence": "CC0"}}) + "\n")
    edit_store(path, tiny_model, add=read_entity_file(str(pictures / "add.jsonl")), image_folder=str(pictures),
               remove=["Q3"])
    return path


def test_a_store_is_published_self_contained_and_opens_by_name(tiny_model, store, tmp_path, uploads,  # noqa: F811
                                                               monkeypatch):
    assert push_kb(store, REPO, private=True) == f"https://huggingface.co/{REPO}"
    assert uploads["create"] == [{"repo_id": REPO, "repo_type": "dataset", "private": True, "exist_ok": True}]
    (upload,) = uploads["upload"]
    assert upload["repo_type"] == "dataset" and not os.path.exists(upload["folder_path"])
    uploaded = upload["copy"]
    for folder, _, files in os.walk(uploaded):  # no path of the publisher's machine is published
        for name in files:
            assert str(tmp_path).encode() not in open(os.path.join(folder, name), "rb").read(), name
    assert len(os.listdir(uploaded / "images")) == 3  # the pictures travel with it

    shutil.rmtree(tmp_path / "pictures")  # the publisher's pictures are not needed any more
    cache = tmp_path / "hf-cache"
    snapshot = into_hf_cache(uploaded, cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve_store(REPO) == str(snapshot)
    mine = Linker(tiny_model, KBStore.load(str(snapshot)))
    original = Linker(tiny_model, KBStore.load(store))
    query = ("A red painting hangs in the Louvre.", "red painting")
    got, want = mine.link(*query, top_k=3), original.link(*query, top_k=3)
    assert [(r["id"], r["image_credit"]) for r in got["results"]] == [(r["id"], r["image_credit"])
                                                                      for r in want["results"]]
    assert [r["score"] for r in got["results"]] == pytest.approx([r["score"] for r in want["results"]], abs=1e-6)
    records = {r["id"]: r for r in mine.store.entities}
    assert set(records) == {"Q1", "Q2", "Q9"} and all(os.path.isfile(r["image"]) for r in records.values())

    local = tmp_path / "alice" / "louvre-kb"  # a local folder of that name wins
    shutil.copytree(store, local)
    monkeypatch.chdir(tmp_path)
    assert resolve_store(REPO) == REPO


def test_the_dataset_card_says_what_users_need(store, tmp_path):
    folder = stage_kb(store, str(tmp_path / "staged"), REPO)
    card = DatasetCard.load(os.path.join(folder, "README.md"))
    assert card.data.license == "other" and "mimic-el" in card.data.tags and card.data.size_categories == ["n<1K"]
    text = card.text
    assert "| entities | 3 |" in text and "| with a Wikidata QID | 3 |" in text
    assert "| pictures from Wikimedia Commons | 3 |" in text
    assert "| CC BY-SA 4.0 | 2 |" in text and "| CC0 | 1 |" in text
    assert "| model | `best` |" in text  # the checkpoint's name, not its path
    assert f'Linker.open("{REPO}")' in text and f"--kb {REPO}" in text and f"MIMIC_KB={REPO}" in text
    with pytest.raises(HubError, match="not an empty folder"):
        stage_kb(store, folder, REPO)


@pytest.mark.parametrize("repo_id", ["alice", "../evil", "a/b/c", "al ice/kb"])
def test_bad_names_are_refused(store, tmp_path, uploads, repo_id):  # noqa: F811
    with pytest.raises(HubError, match="owner/name|not a valid Hub repo name"):
        push_kb(store, repo_id)
    assert uploads["upload"] == [] and not os.path.exists(tmp_path / "staged")


def test_a_name_not_on_the_hub_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(StoreError, match="alice/nothing: no such store folder here, and the Hub dataset"):
        resolve_store("alice/nothing")
    assert main(["link", "--kb", "alice/nothing", "--sentence", "a b", "--mention", "a"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: alice/nothing: no such store folder here") and "Traceback" not in err


def test_cli_stages_without_uploading(store, tmp_path, uploads, capsys):  # noqa: F811
    assert main(["kb", "push-to-hub", store, REPO, "--stage", str(tmp_path / "review")]) == 0
    assert os.path.isfile(tmp_path / "review" / "README.md") and uploads["upload"] == []
    assert KBStore.load(str(tmp_path / "review")).manifest["count"] == 3


def test_removed_entities_are_not_published(store, tmp_path):
    folder = stage_kb(store, str(tmp_path / "staged"), REPO)
    published = b"".join(open(os.path.join(d, n), "rb").read() for d, _, files in os.walk(folder) for n in files
                         if n == "entities.jsonl")
    assert b"Plain text" not in published and b"Red painting" in published  # Q3 was removed, Q1 was not
