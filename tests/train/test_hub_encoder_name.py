"""push-to-hub never publishes a path of the publisher's machine as the backbone (issue 18, item 15):
config.json's "encoder" and the card name a local CLIP as "a local CLIP (<folder name>)" with its shape,
a Hugging Face cache snapshot by its Hub id, an open_clip name or a Hub id as they are; the staged
folder still loads and scores as the original."""
import json
import os
import shutil

import pytest
import torch
from huggingface_hub import ModelCard

from mimic.train.checkpoint import load_checkpoint, save_model
from mimic.train.hub import public_encoder, stage
from tests.train.test_checkpoint import scores
from tests.train.test_hub import REPO, fake_run


def _published(folder) -> tuple:
    """(config.json as a dict, the card's text, every published file's bytes joined)."""
    config = json.loads((folder / "config.json").read_text())
    card = ModelCard.load(str(folder / "README.md"))
    return config, card, b"".join((folder / name).read_bytes() for name in os.listdir(folder))


def test_a_relative_encoder_path_is_not_published(tiny_model, tiny_clip, tmp_path, monkeypatch):
    shutil.copytree(tiny_clip, tmp_path / "st" / "tiny_clip")
    monkeypatch.chdir(tmp_path)
    tiny_model.config.encoder = "st/tiny_clip"  # as `train --encoder st/tiny_clip` records it
    run = fake_run(tmp_path, tiny_model)
    folder = tmp_path / "staged"
    stage(str(run / "best"), str(folder), REPO)
    config, card, published = _published(folder)
    assert b"st/tiny_clip" not in published and str(tmp_path).encode() not in published
    assert config["mimic"]["encoder"] == "a local CLIP (tiny_clip)"
    assert config["clip"]["_name_or_path"] == ""
    assert card.data.base_model is None  # not taken for the Hub id "st/tiny_clip"
    assert ("| backbone | `a local CLIP (tiny_clip)`, transformers format; image tower a ViT of 2 layers of width 48, "
            "32-px patches of 224-px images; text tower 2 layers of width 32; its weights are in this checkpoint |"
            in card.text)
    monkeypatch.chdir(tmp_path / "st")  # the user's machine: no such folder; the checkpoint is self-contained
    loaded = load_checkpoint(str(folder))
    assert loaded.config.encoder == "a local CLIP (tiny_clip)"
    torch.testing.assert_close(scores(loaded).s, scores(tiny_model).s, rtol=1e-6, atol=1e-4)
    # published again from a download: the name stays as it is, not nested
    stage(str(folder), str(tmp_path / "again"), REPO)
    assert _published(tmp_path / "again")[0]["mimic"]["encoder"] == "a local CLIP (tiny_clip)"


def test_a_hugging_face_cache_snapshot_is_published_as_its_hub_id(tiny_model, tiny_clip, tmp_path):
    snapshot = tmp_path / "hf" / "models--openai--clip-vit-base-patch32" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_clip, snapshot)
    tiny_model.config.encoder = str(snapshot)
    save_model(tiny_model, str(tmp_path / "ckpt"))
    folder = tmp_path / "staged"
    stage(str(tmp_path / "ckpt"), str(folder), REPO)
    config, card, published = _published(folder)
    assert config["mimic"]["encoder"] == "openai/clip-vit-base-patch32"
    assert card.data.base_model == "openai/clip-vit-base-patch32"
    assert "| backbone | `openai/clip-vit-base-patch32` (transformers CLIP) |" in card.text
    assert str(tmp_path).encode() not in published and b"snapshots" not in published


@pytest.mark.parametrize("encoder,published", [
    ("openai/clip-vit-base-patch32", "openai/clip-vit-base-patch32"),  # a Hub id (no such folder here)
    ("open_clip:ViT-B-32/laion2b_s34b_b79k", "open_clip:ViT-B-32/laion2b_s34b_b79k"),
    ("/home/alice/models/clip/", "a local CLIP (clip)"),  # a folder that is not here any more
    ("../../models/my clip", "a local CLIP (my clip)"),
    ("clip", "a local CLIP (clip)"),
])
def test_public_encoder(encoder, published):
    assert public_encoder(encoder) == published


def test_a_hostile_folder_name_stays_plain_text_in_the_card(tiny_model, tiny_clip, tmp_path):
    hostile = tmp_path / "x | <img src=y> `z` ![](https:evil)"
    shutil.copytree(tiny_clip, hostile)
    tiny_model.config.encoder = str(hostile)
    save_model(tiny_model, str(tmp_path / "ckpt"))
    stage(str(tmp_path / "ckpt"), str(tmp_path / "staged"), REPO)
    config, card, _ = _published(tmp_path / "staged")
    assert config["mimic"]["encoder"] == f"a local CLIP ({hostile.name})"  # JSON holds it as it is
    (row,) = [line for line in card.text.splitlines() if line.startswith("| backbone |")]
    assert row.count("|") == 3 and "<img" not in row
    assert row.startswith("| backbone | `a local CLIP (x img src=y z ![](https:evil))`, transformers format;")
