"""`mimic link` without a mention: every mention of the sentence, as a table (one block per mention), as
JSON, and in a queries file beside lines that do give a mention. On the v0.1 fixture store, whose
removed entity (the element Mercury) must not be found."""
import json
import os

import pytest

from mimic.cli import main
from tests.cli.test_first_hour import STORE, _cli_without_torch
from tests.conftest import ROOT

TEXT = "Mercury is the closest planet to the Sun."


@pytest.fixture(autouse=True)
def _in_repository(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)  # the fixture store records its checkpoint relative to the repository
    monkeypatch.setenv("MIMIC_CACHE", str(tmp_path / "cache"))  # the name index's cache


def test_link_without_mention_prints_one_block_per_mention(capsys):
    assert main(["link", "--kb", STORE, "--sentence", TEXT, "--top-k", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    blocks = out.strip().split("\n\n")
    assert len(blocks) == 2
    assert blocks[0].startswith("[0:7] Mercury  (name)\nrank     score")
    assert "Q308" in blocks[0] and "Q925" not in out  # the removed Mercury is not a candidate
    assert blocks[1].startswith("[37:40] Sun  (name)\n") and "Q525" in blocks[1]


def test_link_without_mention_as_json_equals_the_library(capsys):
    from mimic import Linker
    assert main(["link", "--kb", STORE, "--sentence", TEXT, "--json", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = Linker.open(STORE).link_text(TEXT, top_k=10)
    assert [(m["start"], m["end"], m["text"]) for m in printed["mentions"]] == [(0, 7, "Mercury"), (37, 40, "Sun")]
    assert printed["skipped"] == 0
    for got, want in zip(printed["mentions"], expected["mentions"]):
        assert [r["id"] for r in got["results"]] == [r["id"] for r in want["results"]]
        assert [r["score"] for r in got["results"]] == pytest.approx([r["score"] for r in want["results"]], abs=1e-5)


def test_a_queries_line_without_mention_returns_mentions(tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(json.dumps(q) for q in [
        {"id": "a", "sentence": TEXT},
        {"id": "b", "sentence": TEXT, "mention": "Sun"},
        {"id": "c", "sentence": "  the “Sun” rose", "mention": None},
        {"id": "d", "sentence": "nothing known here"}]) + "\n")
    out = tmp_path / "o.jsonl"
    assert main(["link", "--kb", STORE, "--queries", str(queries), "--out", str(out), "--no-progress",
                 "--top-k", "8", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    assert [m["text"] for m in rows[0]["mentions"]] == ["Mercury", "Sun"]
    assert "mentions" not in rows[1] and len(rows[1]["results"]) == 7  # the whole KB, ranked
    # a span's candidates are the entities of its name: the Sun alone, scored as link scores it
    sun = rows[0]["mentions"][1]["results"]
    assert [r["id"] for r in sun] == ["Q525"]
    assert sun[0]["score"] == pytest.approx(next(r["score"] for r in rows[1]["results"] if r["id"] == "Q525"),
                                            abs=1e-5)
    assert [(m["start"], m["end"]) for m in rows[2]["mentions"]] == [(7, 10)]  # in the sentence as given
    assert rows[3]["mentions"] == [] and rows[3]["skipped"] == 0


def test_an_empty_sentence_is_refused_before_the_model_loads(tmp_path):
    status, err, torch_loaded = _cli_without_torch("link", "--kb", STORE, "--sentence", "   ")
    assert status == 2 and err.startswith("error: Please type a sentence to find mentions in."), err
    assert not torch_loaded
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": 7, "sentence": ["not", "text"]}) + "\n")
    status, err, torch_loaded = _cli_without_torch("link", "--kb", STORE, "--queries", str(queries), "--out",
                                                   str(tmp_path / "o.jsonl"))
    assert status == 2 and "line 1 (id 7): The sentence must be a string." in err and not torch_loaded
    assert not os.path.exists(tmp_path / "o.jsonl")
