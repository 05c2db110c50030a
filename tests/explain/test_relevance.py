"""Relevance maps: the rule against a plain loop, the fast two-backward pass against one backward per
score, the eager pass against the linking path, stored scores reproduced, and faithfulness measured."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mimic.explain.deletion import PairScorer, area, blanked, deletion, removal_orders
from mimic.explain.relevance import (
    GRID_TARGETS,
    UnsupportedBackbone,
    explain_pair,
    relevance_pass,
    token_relevance,
    token_spans,
    tracer_for,
)
from mimic.linker import QueryError
from mimic.model.mimic import MIMIC, MIMICConfig
from mimic.model.processing import entity_text, mention_text
from mimic.model.zeroshot import zero_shot_init
from tests.conftest import EXAMPLE_IMAGE
from tests.kb.test_search import float32_linker  # noqa: F401  (a fixture: a store in float32)


def chefer_loop(attentions, grads, states, state_grads):
    """Chefer et al.'s rule with MIMIC's readout, one element at a time, for one input of one tower."""
    t = attentions[0].shape[-1]
    r = [[1.0 if i == j else 0.0 for j in range(t)] for i in range(t)]
    for a, g in zip(attentions, grads):
        heads = a.shape[0]
        bar = [[sum(max(float(g[h, i, j] * a[h, i, j]), 0.0) for h in range(heads)) / heads for j in range(t)]
               for i in range(t)]
        r = [[r[i][j] + sum(bar[i][k] * r[k][j] for k in range(t)) for j in range(t)] for i in range(t)]
    w = [float(state_grads[i].norm() * states[i].norm()) for i in range(t)]
    w = [x / sum(w) for x in w]
    return [sum(w[i] * r[i][j] for i in range(t)) for j in range(t)]


def test_rule_equals_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    n, heads, t, d, layers = 2, 3, 5, 4, 3
    attentions = [torch.softmax(torch.randn(n, heads, t, t, generator=g, dtype=torch.float64), -1) for _ in range(layers)]
    grads = [torch.randn(n, heads, t, t, generator=g, dtype=torch.float64) for _ in range(layers)]
    states, state_grads = torch.randn(n, t, d, generator=g, dtype=torch.float64), torch.randn(n, t, d, generator=g,
                                                                                             dtype=torch.float64)
    fast = token_relevance(attentions, grads, states, state_grads)
    for b in range(n):
        slow = chefer_loop([a[b] for a in attentions], [x[b] for x in grads], states[b], state_grads[b])
        torch.testing.assert_close(fast[b], torch.tensor(slow, dtype=torch.float64))


def _pair(dataset, index=0):
    mention = dataset.split("test")[index]
    entity = dataset.entities[dataset.gold(mention)]
    image = os.path.join(dataset.kb_images, entity.images[0]) if entity.images else None
    return (mention_text(mention.mention, mention.sentence), dataset.mention_image(mention),
            entity_text(entity.name, entity.attr), image)


def _reference(model, texts, images, target):
    """The relevance of one target from its own backward pass (what the two-pass shortcut must equal)."""
    tracer = tracer_for(model)
    batch = model.processor(texts, images)
    with torch.enable_grad(), tracer.recording() as traces:
        features = model.encode(batch)
        m = model.matcher
        scores = m.score(m.mention_side(features[0:1]), m.entity_side(features[1:2]))
        tensors = [x for tower in ("vision", "text") for x in (*traces[tower].attentions, traces[tower].states[-1])]
        grads = torch.autograd.grad(getattr(scores, target).sum(), tensors, allow_unused=True)
    grads = [torch.zeros_like(x) if gr is None else gr for x, gr in zip(tensors, grads)]
    out, start = {}, 0
    for tower in ("vision", "text"):
        count = len(traces[tower].attentions)
        out[tower] = token_relevance([a.detach() for a in traces[tower].attentions], grads[start:start + count],
                                     tensors[start + count].detach(), grads[start + count])
        start += count + 1
    return out


def _assert_two_passes_equal_one_per_score(model, texts, images):
    _, relevance, _ = relevance_pass(model, texts, images)
    for target in GRID_TARGETS:
        reference = _reference(model, texts, images, target)
        for tower in ("vision", "text"):
            torch.testing.assert_close(relevance[target][tower], reference[tower], rtol=1e-4, atol=1e-6)
    return relevance


@pytest.mark.parametrize("units", [("tglu", "vdlu", "cmfu"), ("tglu", "cmfu")])
def test_two_backward_passes_equal_one_per_score(tiny_clip, synth_dataset, units):
    """S's gradient is the mean of the kept units' (ablations included), S_T reads no image and S_V no text."""
    model = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip, units=units), seed=1).eval()
    text, image, etext, eimage = _pair(synth_dataset)
    images = [Image.open(image).convert("RGB"), Image.open(eimage).convert("RGB")]
    relevance = _assert_two_passes_equal_one_per_score(model, [text, etext], images)
    assert relevance["s_t"]["vision"].abs().max() == 0 and relevance["s_v"]["text"].abs().max() == 0
    assert relevance["s"]["vision"][:, 1:].sum() > 0 and relevance["s"]["text"].sum() > 0


def test_eager_pass_gives_the_linking_scores_and_restores_sdpa(tiny_model, synth_dataset):
    text, image, etext, eimage = _pair(synth_dataset)
    clip = tiny_model.encoder.clip
    before = clip.config._attn_implementation
    out = explain_pair(tiny_model, text, image, etext, eimage)
    assert clip.config._attn_implementation == clip.vision_model.config._attn_implementation == before == "sdpa"
    with torch.no_grad():
        m = tiny_model.matcher
        features = tiny_model.encode(tiny_model.processor([text, etext], [image, eimage]))  # sdpa, as when linking
        scores = m.score(m.mention_side(features[0:1]), m.entity_side(features[1:2]))
    for key in GRID_TARGETS:
        assert out["scores"][key] == pytest.approx(float(getattr(scores, key)), rel=1e-5, abs=1e-4)
    tracer = tracer_for(tiny_model)
    with torch.enable_grad(), tracer.recording() as traces:
        tiny_model.encode(tiny_model.processor([text], [image]))
    assert len(traces["vision"].attentions) == len(traces["text"].attentions) == 2  # the tiny CLIP's layers
    torch.testing.assert_close(traces["vision"].attentions[0].sum(-1), torch.ones(1, 2, 50))
    assert traces["text"].attentions[0].shape == (1, 2, 40, 40) and traces["vision"].states[0].shape == (1, 50, 48)


def test_explanation_shapes_nulls_and_words(tiny_model, synth_dataset):
    text, image, etext, eimage = _pair(synth_dataset)
    out = explain_pair(tiny_model, text, image, etext, eimage)
    assert set(out) == {"scores", "mention_relevance", "entity_relevance", "token_relevance", "word_relevance"}
    for side in ("mention_relevance", "entity_relevance"):
        assert set(out[side]) == set(GRID_TARGETS)
        for grid in out[side].values():
            assert len(grid) == 7 and all(len(row) == 7 for row in grid) and min(map(min, grid)) >= 0
        assert max(map(max, out[side]["s_t"])) == 0  # S_T reads no image
        assert max(map(max, out[side]["s"])) > 0
    words = out["token_relevance"]
    assert set(words) == {"tokens", "s", "s_t"}
    sentence = synth_dataset.split("test")[0].sentence
    assert words["tokens"][:4] == [synth_dataset.split("test")[0].mention, "[", "sep", "]"]
    assert "".join(words["tokens"][4:]) == sentence.replace(" ", "")
    assert len(words["s"]) == len(words["s_t"]) == len(words["tokens"]) and min(words["s"]) >= 0
    by_word = out["word_relevance"]  # the same over words: [SEP] left out, pieces and punctuation joined
    mention = synth_dataset.split("test")[0].mention
    assert [w["word"] for w in by_word] == [mention] + sentence.split(" ")
    assert by_word[0]["s"] == pytest.approx(words["s"][0]) and by_word[-1]["word"].endswith(".")
    assert sum(w["s"] for w in by_word) == pytest.approx(sum(words["s"]) - sum(words["s"][1:4]))
    no_images = explain_pair(tiny_model, text, None, etext, None)
    assert no_images["mention_relevance"] is None and no_images["entity_relevance"] is None
    broken = explain_pair(tiny_model, text, b"not an image", etext, "/nonexistent.jpg")
    assert broken["mention_relevance"] is None and broken["entity_relevance"] is None
    assert broken["scores"]["s"] == pytest.approx(no_images["scores"]["s"], abs=1e-4)  # zeros, as when linking


def test_zero_shot_readout_is_chefers_cls_row(tiny_clip, synth_dataset):
    """Under zero-shot MIMIC reads only v_G and t_G: the maps are the CLS row (EOT row for text) of R."""
    model = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=1).eval()
    zero_shot_init(model)
    text, image, etext, eimage = _pair(synth_dataset)
    images = [Image.open(image).convert("RGB"), Image.open(eimage).convert("RGB")]
    tracer = tracer_for(model)
    batch = model.processor([text, etext], images)
    with torch.enable_grad(), tracer.recording() as traces:
        features = model.encode(batch)
        m = model.matcher
        s = m.score(m.mention_side(features[0:1]), m.entity_side(features[1:2])).s.sum()
        vision = [*traces["vision"].attentions, traces["vision"].states[-1]]
        grads = torch.autograd.grad(s, vision)
    assert grads[-1][:, 1:].abs().max() == 0  # no gradient reaches the patch rows
    _, relevance, _ = relevance_pass(model, [text, etext], images)
    r = torch.eye(50).expand(2, 50, 50)
    for a, g in zip(traces["vision"].attentions, grads[:-1]):
        r = r + (g * a.detach()).clamp(min=0).mean(1) @ r
    torch.testing.assert_close(relevance["s"]["vision"], r[:, 0], rtol=1e-4, atol=1e-6)


def _register_open_clip(tmp_path, name, config):
    import open_clip
    (tmp_path / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(tmp_path / f"{name}.json"))
    return MIMIC.from_encoder(MIMICConfig(encoder=f"open_clip:{name}"), seed=2).eval()


OPEN_CLIP_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}


def test_open_clip_towers_are_explained_like_transformers_ones(tmp_path, synth_dataset):
    """open_clip's attention layers run without weights; for the pass they get an explicit forward, which
    must give the linking scores, reach the gradients (two passes = one per score) and be removed after."""
    model = _register_open_clip(tmp_path, "mimic-tiny-explain", {
        "embed_dim": 64, "text_cfg": OPEN_CLIP_TEXT,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 48, "head_width": 24, "patch_size": 32}})
    text, image, etext, eimage = _pair(synth_dataset)
    out = explain_pair(model, text, image, etext, eimage)
    with torch.no_grad():
        m = model.matcher
        features = model.encode(model.processor([text, etext], [image, eimage]))  # open_clip's own attention
        scores = m.score(m.mention_side(features[0:1]), m.entity_side(features[1:2]))
    for key in GRID_TARGETS:
        assert out["scores"][key] == pytest.approx(float(getattr(scores, key)), rel=1e-5, abs=1e-4)
    assert not any("forward" in vars(layer) for layer in model.encoder.clip.modules())  # class forwards again
    assert len(out["mention_relevance"]["s"]) == 7 and max(map(max, out["mention_relevance"]["s_v"])) > 0
    assert len(out["token_relevance"]["tokens"]) == len(out["token_relevance"]["s"]) > 0
    images = [Image.open(image).convert("RGB"), Image.open(eimage).convert("RGB")]
    relevance = _assert_two_passes_equal_one_per_score(model, [text, etext], images)
    assert relevance["s"]["text"].shape == (2, 77)  # open_clip's text tower runs over its whole context
    with torch.enable_grad(), tracer_for(model).recording() as traces:
        f = model.encode(model.processor([text, etext], images))
        s = model.matcher.score(model.matcher.mention_side(f[0:1]), model.matcher.entity_side(f[1:2])).s.sum()
        grads = torch.autograd.grad(s, traces["vision"].attentions + traces["text"].attentions)
    assert len(grads) == 4 and all(g.abs().max() > 0 for g in grads)  # the recorded probabilities are on the path
    with tracer_for(model).masked_tokens(torch.zeros(1, 40)), torch.no_grad():
        masked = model.encode(model.processor([text], [None]))
    assert not torch.allclose(masked.t_g, features.t_g[0:1])


def test_timm_image_towers_are_refused_plainly(tmp_path, synth_dataset):
    model = _register_open_clip(tmp_path, "mimic-tiny-explain-timm", {
        "embed_dim": 192, "custom_text": True, "text_cfg": OPEN_CLIP_TEXT,
        "vision_cfg": {"image_size": 224, "timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                       "timm_pool": "map", "timm_proj": "none"}})
    with pytest.raises(UnsupportedBackbone, match=r"transformers' CLIP and open_clip's own ViT towers; this model's "
                                                  r"image tower is a timm model \(open_clip:mimic-tiny-explain-timm\)"):
        explain_pair(model, *_pair(synth_dataset))


def test_token_spans_find_each_word_in_the_text():
    text = "Hopper [SEP] A portrait of HOPPER, naïve café 東京!"
    tokens = ["hopper", "[", "sep", "]", "a", "portrait", "of", "hopper", ",", "na", "ï", "ve", "café", "東",
              "\ufffd", "\ufffd", "!"]
    spans = token_spans(text, tokens)
    assert [text[s:e] for s, e in spans[:9]] == ["Hopper", "[", "SEP", "]", "A", "portrait", "of", "HOPPER", ","]
    assert [text[s:e] for s, e in spans[9:14]] == ["na", "ï", "ve", "café", "東"]
    assert spans[14] is None and spans[15] is None and text[slice(*spans[16])] == "!"
    assert token_spans("abc", ["zzz", "abc"]) == [None, (0, 3)]


# -- through the linker: stored scores reproduced -----------------------------------------------------

def test_linker_explain_reproduces_the_stored_scores(float32_linker, synth_dataset):
    mention = synth_dataset.split("test")[1]
    image = synth_dataset.mention_image(mention)
    result = float32_linker.link(mention.sentence, mention.mention, image, top_k=3)
    for row in result["results"]:
        out = float32_linker.explain(mention.sentence, mention.mention, image, row["index"])
        assert out["scores"]["s"] == pytest.approx(row["score"], abs=1e-4)
        for key in ("s_t", "s_v", "s_c"):
            assert out["scores"][key] == pytest.approx(row[key], abs=1e-4)
        assert out["mention_alpha"].shape == (50,) and len(out["mention_relevance"]["s"]) == 7
        has_image = bool(float32_linker.store.entities[row["index"]]["image"])
        assert (out["entity_relevance"] is not None) == has_image
    light = float32_linker.explain(mention.sentence, mention.mention, image, 0, relevance=False)
    assert "token_relevance" not in light and light["attention"].shape == (40, 40)


@pytest.mark.parametrize("index,message", [(-1, "There is no entity -1 in"), (48, r"There is no entity 48 in the KB "
                                                                                    r"\(it has 48: indices 0 to 47\)"),
                                           ("x", "There is no entity x in"), (2.5, "There is no entity 2.5 in"),
                                           (None, "There is no entity None in"),
                                           (10 ** 100, "There is no entity 1000000000000000000000000000000000000... in")])
def test_linker_explain_refuses_bad_entity_indices(float32_linker, index, message):
    with pytest.raises(QueryError, match=message):
        float32_linker.explain("the falcon flew", "falcon", None, index)


# -- faithfulness: deletion curves ---------------------------------------------------------------------

def test_deletion_pieces():
    assert area([1.0, 0.0]) == 0.5 and area([2.0, 2.0, 2.0]) == 2.0
    by_relevance, randoms = removal_orders([0.1, 0.5, 0.5, 0.0], randoms=2, seed=0)
    assert by_relevance == [1, 2, 0, 3] and all(sorted(r) == [0, 1, 2, 3] for r in randoms)
    pixels = torch.ones(3, 224, 224)
    out = blanked(pixels, [0, 8], 32)  # the top-left patch and the one diagonally below it
    assert out[:, :32, :32].abs().sum() == 0 and out[:, 32:64, 32:64].abs().sum() == 0
    assert out[:, :32, 32:64].min() == 1 and out.sum() == 3 * (224 * 224 - 2 * 32 * 32)


def test_blanking_every_patch_is_the_missing_image(tiny_model, synth_dataset):
    text, image, etext, eimage = _pair(synth_dataset)
    scorer = PairScorer(tiny_model, text, image, etext, eimage)
    curve = scorer.patch_curve("mention", list(range(49)))
    assert len(curve) == 50 and curve[0] == pytest.approx(explain_pair(tiny_model, text, image, etext,
                                                                       eimage)["scores"]["s"], abs=1e-4)
    assert curve[-1] == pytest.approx(PairScorer(tiny_model, text, None, etext, eimage).scores(
        "mention", PairScorer(tiny_model, text, None, etext, eimage).side_batch("mention", 1))[0], abs=1e-4)
    words = scorer.word_curve(list(range(3)))
    assert len(words) == 4 and words[0] == pytest.approx(curve[0], abs=1e-4) and words[1] != words[0]


def faithfulness(model, dataset, count=12, randoms=4):
    """Mean area under the deletion curves of S, by relevance and at random: mention image, words."""
    totals = {"image": [0.0, 0.0], "words": [0.0, 0.0]}
    for i in range(count):
        text, image, etext, eimage = _pair(dataset, i)
        out = explain_pair(model, text, image, etext, eimage)
        scorer = PairScorer(model, text, image, etext, eimage)
        grid = [v for row in out["mention_relevance"]["s"] for v in row]
        for part, result in (("image", deletion(lambda o: scorer.patch_curve("mention", o), grid, randoms)),
                             ("words", deletion(scorer.word_curve, out["token_relevance"]["s"], randoms))):
            totals[part][0] += result["auc_relevance"] / count
            totals[part][1] += result["auc_random"] / count
    return totals


@pytest.mark.parametrize("init", ["random", "zero-shot"])
def test_s_falls_faster_when_deleting_by_relevance_than_at_random(tiny_clip, synth_dataset, init):
    model = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=1).eval()
    if init == "zero-shot":
        zero_shot_init(model)
    totals = faithfulness(model, synth_dataset)
    for part, (by_relevance, at_random) in totals.items():
        assert by_relevance < at_random, (init, part, totals)


# -- the explain command ---------------------------------------------------------------------------------

def test_explain_command_writes_overlays_and_refuses_to_overwrite(synth_config_path, tmp_path, capsys, monkeypatch):
    from mimic.cli import main
    from mimic.linker import Linker
    kb, out = str(tmp_path / "kb"), str(tmp_path / "why")
    assert main(["encode-kb", "--config", synth_config_path, "--init", "zero-shot", "--out", kb, "--no-progress",
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    query = ["explain", "--kb", kb, "--sentence", "the red falcon in lima", "--mention", "falcon", "--device", "cpu"]
    assert main([*query, "--image", EXAMPLE_IMAGE, "--qid", "Q1000", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("The Falcon (Q1000): S ")
    assert "falcon" in printed and "written to" in printed
    names = sorted(os.listdir(out))
    assert names == ["entity-s.png", "entity-s_c.png", "entity-s_v.png", "explanation.json", "mention-s.png",
                     "mention-s_c.png", "mention-s_v.png"]  # zero-shot: no alpha (uniform), S_T: no image maps
    width, height = Image.open(EXAMPLE_IMAGE).size
    drawn = Image.open(os.path.join(out, "mention-s.png")).convert("RGB")
    assert drawn.width == max(width, 320) and drawn.height > height + 40  # the picture, its colour bar, a caption
    bar = np.asarray(drawn)[height + 8:height + 18].reshape(-1, 3)
    assert (bar == [0, 0, 4]).all(1).any() and (bar == [252, 255, 164]).all(1).any()  # least and most of the scale
    record = json.load(open(os.path.join(out, "explanation.json")))
    assert record["entity"]["qid"] == "Q1000" and len(record["mention_relevance"]["s_v"]) == 7
    assert record["token_relevance"]["tokens"][:4] == ["falcon", "[", "sep", "]"]
    assert "\nsep " not in printed and "\n[ " not in printed and "\nlima " in printed  # the table shows words
    before = os.path.getmtime(os.path.join(out, "mention-s.png"))
    with pytest.raises(SystemExit, match="already holds .*mention-s.png.*--overwrite"):
        main([*query, "--image", EXAMPLE_IMAGE, "--qid", "Q1000", "--out", out])
    assert os.path.getmtime(os.path.join(out, "mention-s.png")) == before
    encoded, mention_terms = [], Linker.mention_terms
    monkeypatch.setattr(Linker, "mention_terms", lambda self, queries: encoded.append(len(queries))
                        or mention_terms(self, queries))
    assert main([*query, "--out", str(tmp_path / "top")]) == 0  # no image, best-ranked entity
    assert encoded == [1]  # the mention is encoded once, to choose the entity and to explain it
    assert "the mention has no image" in capsys.readouterr().out
    assert not any(n.startswith("mention-") for n in os.listdir(tmp_path / "top"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    assert main([*query, "--image", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert main([*query, "--entity", "480", "--out", str(tmp_path / "x")]) == 2
    assert main([*query, "--qid", "Q1", "--out", str(tmp_path / "x")]) == 2
    errors = capsys.readouterr().err
    assert "bad.jpg: not an image PIL can read" in errors and "There is no entity 480 in the KB (it has 48:" in errors
    assert "no entity with QID 'Q1'" in errors and not os.path.exists(tmp_path / "x")


# -- a model that learned where the evidence is ----------------------------------------------------------

@pytest.fixture(scope="module")
def region_model(tiny_clip, tmp_path_factory):
    """A tiny model trained on synthetic data whose mention images hold the entity's pattern in a known
    corner block of 3 x 3 patches (grey distractors elsewhere)."""
    from mimic.data.readers import Dataset, load_config
    from mimic.data.synthetic import make_dataset
    from mimic.train.checkpoint import load_checkpoint
    from mimic.train.trainer import train
    folder = tmp_path_factory.mktemp("region")
    config_path = make_dataset(str(folder / "data"), encoder=tiny_clip, pattern_region=True)
    result = train(MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=0),
                   load_config(config_path, [f"output_dir={folder / 'runs'}"]), progress=False)
    regions = json.load(open(folder / "data" / "mention_regions.json"))
    return load_checkpoint(result["best_model"]).eval(), Dataset(load_config(config_path)), regions, result


def test_relevance_of_a_trained_model_concentrates_on_the_pattern(region_model):
    model, dataset, regions, result = region_model
    assert result["test_metrics"]["hits@1"] > 0.6  # it learned the task (chance: 1/48)
    inside, pointing = [], []
    for i, mention in enumerate(dataset.split("test")):
        grid = torch.tensor(explain_pair(model, *_pair(dataset, i))["mention_relevance"]["s"])
        left, top, right, bottom = (v // 32 for v in regions[mention.id])
        inside.append(float(grid[top:bottom, left:right].sum() / grid.sum()))
        best = int(grid.flatten().argmax())
        pointing.append(top <= best // 7 < bottom and left <= best % 7 < right)
    # measured: 50 % of the relevance inside the block that is 18 % of the picture; the most relevant
    # patch inside it for 71 % of the mentions
    assert np.mean(inside) > 2 * 9 / 49 and np.mean(pointing) > 0.5
    totals = faithfulness(model, dataset)
    assert totals["image"][0] < totals["image"][1] and totals["words"][0] < totals["words"][1], totals
