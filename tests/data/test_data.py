"""Readers of the authors' layout: order, unquoting, image names, configs, and errors that name the entry."""
import json

import pytest

from mimic.data.readers import DataError, Dataset, load_config, mention_image_name, read_kb, read_mentions, read_qid2id


def write(path, data):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_kb_is_sorted_by_id_and_names_unquoted(tmp_path):
    path = write(tmp_path / "kb.json", [
        {"id": 1, "type": "entity", "entity_name": "Caf%C3%A9%20de%20Flore", "attr": "a café", "image_list": []},
        {"id": 0, "type": "entity", "entity_name": "Barack%20Obama", "attr": "president", "image_list": ["a.jpg", "b.jpg"]}])
    kb = read_kb(path, {"Q76": 0, "Q1": 1})
    assert [(e.index, e.name, e.qid) for e in kb] == [(0, "Barack Obama", "Q76"), (1, "Café de Flore", "Q1")]
    assert kb[0].images == ["a.jpg", "b.jpg"]


def test_mentions_keep_file_order_unquote_words_and_skip_nil(tmp_path):
    path = write(tmp_path / "test.json", [
        {"id": "b", "sentence": "Obama%20spoke", "mentions": "Barack%20Obama", "imgPath": "x.png", "answer": "Q76"},
        {"id": "a", "sentence": "?", "mentions": "x", "imgPath": "", "answer": "nil"},
        {"id": "c", "sentence": "Paris", "mentions": "Paris", "imgPath": "", "answer": "Q90"}])
    mentions = read_mentions(path, {"Q76": 0, "Q90": 1})
    assert [m.id for m in mentions] == ["b", "c"]
    assert mentions[0].mention == "Barack Obama" and mentions[0].sentence == "Obama%20spoke"  # sentence as stored
    assert mentions[1].image is None


def test_mention_image_name_follows_the_authors_rule():
    assert mention_image_name("some/dir/abc.png") == "abc.jpg"
    assert mention_image_name("photo.v2.jpeg") == "photo.jpg"  # cut at the first dot, as their code does


@pytest.mark.parametrize("content,message", [
    ("[{", "invalid JSON at line 1"),
    ('{"a": 1}', "expected a JSON list of entities"),
    ('[{"id": 0, "attr": "x"}]', "entity #0 (id 0) has no 'entity_name' field"),
    ('[{"id": "0", "entity_name": "x"}]', "entity #0 (id '0'): 'id' must be int, got str"),
    ('[{"id": 0, "entity_name": "a"}, {"id": 0, "entity_name": "b"}]', "entities #0 and #1 share the id 0"),
    ('[{"id": 0, "entity_name": "a", "image_list": "a.jpg"}]', "'image_list' must be a list of file names"),
])
def test_malformed_kb_is_reported_with_file_and_entry(tmp_path, content, message):
    path = write(tmp_path / "kb_entity.json", content)
    with pytest.raises(DataError, match="kb_entity.json: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        read_kb(path)


def test_unknown_answer_and_bad_qid2id_are_reported(tmp_path):
    path = write(tmp_path / "dev.json", [{"id": 7, "sentence": "s", "mentions": "m", "imgPath": "", "answer": "Q9"}])
    with pytest.raises(DataError, match=r"dev.json: mention #0 \(id 7\): answer 'Q9' is not in qid2id"):
        read_mentions(path, {"Q1": 0})
    with pytest.raises(DataError, match="maps to 'x', expected an integer"):
        read_qid2id(write(tmp_path / "q.json", {"Q1": "x"}))
    with pytest.raises(DataError, match="qid2id file not found"):
        read_qid2id(str(tmp_path / "absent.json"))


def test_authors_config_is_accepted_and_paths_resolved(synth_config_path):
    config = load_config(synth_config_path, ["data.batch_size=8"])
    assert config.data.batch_size == 8 and config.model.TGLU_hidden_dim == 96 and config.seed == 43
    assert config.data.entity.startswith("/") and config.data.entity.endswith("kb_entity.json")
    assert config.optim.eps == 1e-4 and config.early_stopping_patience == 3  # our defaults fill the rest
    dataset = Dataset(config)
    assert len(dataset.entities) == 48 and dataset.gold(dataset.split("test")[0]) in range(48)


def test_repository_configs_load(tmp_path):
    for name in ("wikimel", "richpediamel", "wikidiverse"):
        config = load_config(f"configs/{name}.yaml")
        assert config.data.text_max_length == 40 and config.lr == 1e-5 and config.trainer.max_epochs == 20
    assert load_config("configs/wikimel.yaml").data.num_entity == 109976
