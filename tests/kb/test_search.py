"""Linking over a store: the exact path is the exhaustive top-k with the evaluator's scores; the default
path returns true scores of a candidate subset; the G2L bound that makes exact search fast holds."""
import json
import subprocess
import sys

import pytest
import torch

from mimic.kb.encode import encode_store
from mimic.kb.fingerprint import file_fingerprint
from mimic.kb.search import Searcher
from mimic.kb.store import KBStore
from mimic.linker import Linker, Query, QueryError, check_query
from mimic.model.matcher import Matcher, cat_terms, select
from mimic.train.evaluate import encode_kb, score_against_all
from tests.conftest import random_features, randomize_

DIMS = dict(text_embed_dim=12, text_token_dim=10, dv=8, tglu_dim=6, vdlu_dim=7, cmfu_dim=5)


def brute_force_top(scores, k):
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_g2l_upper_bound_holds(seed):
    matcher = randomize_(Matcher(**DIMS), seed=seed, scale=1.0)  # LayerNorm weights of both signs
    entities = matcher.entity_side(random_features(500, seed + 10, dtype=torch.float32))
    for b in range(4):
        mention = matcher.mention_side(random_features(4, seed + 20, dtype=torch.float32)[b:b + 1])
        _, g2l = matcher.tglu.score(mention["tglu"], entities["tglu"])
        bound = Searcher(matcher, entities, candidates=16).g2l_upper_bound(mention)
        assert (bound >= g2l[0] - 1e-5).all()
        assert bound.shape == (500,)


@pytest.mark.parametrize("units", [("tglu", "vdlu", "cmfu"), ("vdlu", "cmfu"), ("tglu", "cmfu")])
def test_exact_search_is_the_exhaustive_top_k(units):
    torch.manual_seed(0)
    matcher = Matcher(**DIMS, units=units)
    with torch.no_grad():  # a plausible spread of scores: trained-like LayerNorm scales
        for m in matcher.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 2.0)
    features = random_features(3000, 1, dtype=torch.float32)
    entities = matcher.entity_side(features)
    entities = cat_terms([entities, select(entities, slice(0, 50))])  # 50 duplicates: exact ties, broken by index
    searcher = Searcher(matcher, entities, candidates=64)
    mentions = matcher.mention_side(random_features(6, 2, dtype=torch.float32))
    with torch.no_grad():
        all_scores = matcher.score(mentions, entities).s
    for b in range(6):
        mention = select(mentions, slice(b, b + 1))
        for k in (1, 10, 25):
            index, scores = searcher.search(mention, k, exact=True)
            assert index.tolist() == brute_force_top(all_scores[b].tolist(), k)
            torch.testing.assert_close(scores.s[0], all_scores[b, index], atol=1e-5, rtol=1e-5)
        assert searcher.last_exact_evaluated < 3050  # the bound spared some of the 3,050 attentions


@pytest.fixture(scope="module")
def float32_linker(tmp_path_factory, synth_dataset, tiny_clip):
    from mimic.model.mimic import MIMIC, MIMICConfig
    model = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=1).eval()
    out = str(tmp_path_factory.mktemp("kb") / "f32")
    encode_store(model, synth_dataset.entities, synth_dataset.kb_images, out,
                 file_fingerprint(synth_dataset.config.data.entity), precision="float32", progress=False)
    return Linker(model, KBStore.load(out), candidates=8)


def _mention_terms(linker, dataset, mentions):
    return linker.mention_terms([Query(m.sentence, m.mention, dataset.mention_image(m)) for m in mentions])


def test_exact_link_scores_equal_the_evaluators(float32_linker, synth_dataset):
    linker = float32_linker
    mentions = synth_dataset.split("test")
    reference = score_against_all(linker.model.matcher, _mention_terms(linker, synth_dataset, mentions),
                                  encode_kb(linker.model, synth_dataset, progress=False))
    for i, m in enumerate(mentions):
        terms = _mention_terms(linker, synth_dataset, [m])
        rows = linker.link_terms(terms, top_k=10, exact=True)["results"]
        assert [r["index"] for r in rows] == brute_force_top(reference[i].tolist(), 10)
        for r in rows:
            assert abs(r["score"] - reference[i, r["index"]].item()) <= 1e-4


def test_default_path_returns_true_scores_of_its_candidates(float32_linker, synth_dataset):
    linker = float32_linker
    for m in synth_dataset.split("test")[:10]:
        terms = _mention_terms(linker, synth_dataset, [m])
        exact = {r["index"]: r for r in linker.link_terms(terms, top_k=48, exact=True)["results"]}
        fast = linker.link_terms(terms, top_k=5)["results"]  # 8 candidates of 48 entities
        candidates = linker.searcher.candidates_for(terms, 8)
        assert {r["index"] for r in fast} <= set(candidates.tolist())
        assert [r["score"] for r in fast] == sorted((r["score"] for r in fast), reverse=True)
        for r in fast:
            for key in ("score", "s_t", "s_v", "s_c", "s_t_g2l"):
                assert r[key] == pytest.approx(exact[r["index"]][key], abs=1e-4)
        linker.searcher.candidates = 48  # candidates covering the KB: the default path is the exact one
        assert [r["index"] for r in linker.link_terms(terms, 5)["results"]] == [r["index"] for r in
                                                                                  list(exact.values())[:5]]
        linker.searcher.candidates = 8


def test_mixed_precision_store_error_is_small(float32_linker, synth_dataset, tiny_model, tmp_path):
    out = str(tmp_path / "mixed")
    encode_store(float32_linker.model, synth_dataset.entities, synth_dataset.kb_images, out,
                 file_fingerprint(synth_dataset.config.data.entity), progress=False)
    mixed = Linker(float32_linker.model, KBStore.load(out))
    terms = _mention_terms(mixed, synth_dataset, synth_dataset.split("test")[:8])
    everything = torch.arange(48)
    a = float32_linker.searcher.score(terms, everything).s
    b = mixed.searcher.score(terms, everything).s
    assert (a - b).abs().max() < 2e-3 * a.abs().max()


def test_query_checks_say_what_is_wrong():
    assert check_query("  Obama\tspoke\x00 ", "obama") == ("Obama spoke", "obama")
    for sentence, mention, message in [("", "x", "Please type a sentence"), ("   ", "x", "Please type a sentence"),
                                       ("Obama spoke", "", "Please type the mention"),
                                       ("Obama", "Obama spoke", "longer than the sentence"),
                                       ("Obama spoke", "Paris", "does not occur in the sentence")]:
        with pytest.raises(QueryError, match=message):
            check_query(sentence, mention)


def test_explain_returns_token_and_patch_attention(float32_linker):
    out = float32_linker.explain("the falcon flew over lima", "falcon", None, entity_index=3)
    assert out["attention"].shape == (40, 40) and len(out["entity_tokens"]) == len(out["mention_tokens"]) == 40
    torch.testing.assert_close(out["attention"].sum(-1), torch.ones(40))
    assert out["mention_tokens"][:3] == ["<|startoftext|>", "falcon", "["]
    assert out["mention_alpha"].shape == out["entity_alpha"].shape == (50,)


def test_encode_kb_and_link_commands(synth_config_path, tiny_clip, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "mimic", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=300)
    out = run("encode-kb", "--config", synth_config_path, "--init", "zero-shot", "--out", str(tmp_path / "kb"),
              "--no-progress", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    single = run("link", "--kb", str(tmp_path / "kb"), "--sentence", "the red falcon in lima", "--mention", "falcon",
                 "--top-k", "3", "--json", "--device", "cpu")
    assert single.returncode == 0, single.stderr
    rows = json.loads(single.stdout)["results"]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"rank", "index", "id", "qid", "name", "score", "s_t", "s_t_g2g", "s_t_g2l", "s_v",
                            "s_v_e2m", "s_v_m2e", "s_c", "image_credit"}
    (tmp_path / "q.jsonl").write_text('{"id": "a", "sentence": "the red falcon in lima", "mention": "falcon", "image": null}\n'
                                      '{"id": "b", "sentence": "a river in oslo", "mention": "river"}\n')
    many = run("link", "--kb", str(tmp_path / "kb"), "--queries", str(tmp_path / "q.jsonl"), "--out",
               str(tmp_path / "o.jsonl"), "--exact", "--no-progress", "--device", "cpu")
    assert many.returncode == 0, many.stderr
    lines = [json.loads(line) for line in open(tmp_path / "o.jsonl")]
    assert [line["id"] for line in lines] == ["a", "b"] and len(lines[0]["results"]) == 10
    assert lines[0]["results"][0]["index"] == rows[0]["index"]
    (tmp_path / "bad.jsonl").write_text('{"id": 1, "sentence": "abc", "mention": "zzz"}\n')
    bad = run("link", "--kb", str(tmp_path / "kb"), "--queries", str(tmp_path / "bad.jsonl"), "--out",
              str(tmp_path / "x.jsonl"))
    assert bad.returncode == 2 and "bad.jsonl: line 1 (id 1): The mention \"zzz\" does not occur" in bad.stderr
