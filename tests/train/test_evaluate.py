"""Evaluation: ranks equal an independent authors'-style computation; tie rule; metrics; CLI outputs."""
import json
import os
import subprocess
import sys
from urllib.parse import unquote

import pytest
import torch

from mimic.train.evaluate import evaluate, metrics, ranks_of_gold
from tests.reference import argsort_ranks, authors_style_scores, stable_rank


def test_rank_counts_higher_scores_and_ties_with_lower_index():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.5, 0.9]])
    for gold, expected in [(0, 3), (2, 4), (4, 5), (1, 1), (5, 2), (3, 6)]:
        assert ranks_of_gold(scores, torch.tensor([gold])).item() == expected
        assert stable_rank(scores[0].tolist(), gold) == expected


def test_metrics_from_ranks():
    m = metrics([1, 2, 4, 10, 30])
    assert m == {"hits@1": 0.2, "hits@3": 0.4, "hits@5": 0.6, "hits@10": 0.8, "hits@20": 0.8,
                 "mrr": pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 10 + 1 / 30) / 5), "mr": 9.4, "count": 5}


def _authors_inputs(config):
    """Texts and image paths built straight from the JSON files, as the authors' data module does."""
    data = config.data
    qid2id = json.load(open(data.qid2id))
    kb = sorted(json.load(open(data.entity)), key=lambda e: e["id"])
    ent_texts = [unquote(e["entity_name"]) + " [SEP] " + e["attr"] for e in kb]
    ent_images = [os.path.join(data.kb_img_folder, e["image_list"][0]) if e["image_list"] else None for e in kb]
    test = [m for m in json.load(open(data.test_file)) if m["answer"] != "nil"]
    men_texts = [unquote(m["mentions"]) + " [SEP] " + m["sentence"] for m in test]
    men_images = [os.path.join(data.mention_img_folder, m["imgPath"].split("/")[-1].split(".")[0] + ".jpg")
                  if m["imgPath"] else None for m in test]
    return test, [qid2id[m["answer"]] for m in test], ent_texts, ent_images, men_texts, men_images


def test_evaluate_ranks_equal_the_authors_style_computation(tiny_model, synth_dataset):
    rows, result = evaluate(tiny_model, synth_dataset, "test", batch_size=7, progress=False)
    test, gold, ent_texts, ent_images, men_texts, men_images = _authors_inputs(synth_dataset.config)
    with torch.no_grad():
        e = tiny_model.encode(tiny_model.processor(ent_texts, ent_images))
        m = tiny_model.encode(tiny_model.processor(men_texts, men_images))
        scores = authors_style_scores(tiny_model.matcher, (e.t_g, e.t_l, e.v_g, e.v_l), (m.t_g, m.t_l, m.v_g, m.v_l))
    expected = argsort_ranks(scores)[torch.arange(len(gold)), torch.tensor(gold)].tolist()
    assert [r["rank"] for r in rows] == expected
    assert [r["id"] for r in rows] == [m["id"] for m in test]  # file order
    assert [r["gold"] for r in rows] == gold and [r["answer"] for r in rows] == [m["answer"] for m in test]
    assert result["count"] == len(test) and result["mr"] == pytest.approx(sum(expected) / len(expected))
    assert len(set(expected)) > 3  # an untrained model: ranks spread, so the comparison has teeth


def test_nil_mentions_are_skipped(tiny_model, synth_dataset, tmp_path):
    from mimic.data.readers import read_mentions
    path = tmp_path / "with_nil.json"
    rows = json.load(open(synth_dataset.config.data.test_file))
    rows.insert(1, {"id": "nil-1", "sentence": "who knows", "mentions": "x", "imgPath": "", "answer": "nil"})
    path.write_text(json.dumps(rows))
    mentions = read_mentions(str(path), synth_dataset.qid2id)
    assert "nil-1" not in [m.id for m in mentions] and len(mentions) == len(rows) - 1


def test_evaluate_cli_writes_ranks_and_metrics(tiny_model, synth_config_path, tmp_path):
    from mimic.train.checkpoint import save_model
    save_model(tiny_model, str(tmp_path / "ckpt"))
    cmd = [sys.executable, "-m", "mimic", "evaluate", "--config", synth_config_path, "--checkpoint",
           str(tmp_path / "ckpt"), "--split", "test", "--ranks-out", str(tmp_path / "r.jsonl"),
           "--metrics-out", str(tmp_path / "m.json"), "--no-progress", "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in open(tmp_path / "r.jsonl")]
    assert set(lines[0]) == {"id", "answer", "gold", "rank"} and isinstance(lines[0]["rank"], int)
    m = json.load(open(tmp_path / "m.json"))
    assert set(m) == {"hits@1", "hits@3", "hits@5", "hits@10", "hits@20", "mrr", "mr", "count"}
    assert m["count"] == len(lines) and m["mr"] == pytest.approx(sum(r["rank"] for r in lines) / len(lines))
    assert "hits@1" in out.stdout
