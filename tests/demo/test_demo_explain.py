"""The explanation panel and /explain: relevance for KB and session entities, bounded inputs, zero-shot.
(The browser test of the panel is tests/demo/test_demo.py's page test.)"""
import json

import pytest

from demo.heatmap import word_highlights
from tests.conftest import EXAMPLE_IMAGE, ROOT

SENTENCE, MENTION = "A portrait of Hopper was unveiled at the gallery.", "Hopper"


def test_word_highlights_colour_words_and_hide_the_separator():
    text = "Hopper [SEP] A portrait of Hopper's."
    pieces = word_highlights(text, ["hopper", "[", "sep", "]", "a", "portrait", "of", "hopper", "'s", "."],
                             [2.0, 0.0, 3.0, 0.0, 0.5, 1.0, 0.0, 3.0, 0.5, 0.5])
    assert "".join(p for p, _ in pieces) == "Hopper · A portrait of Hopper's."  # [SEP] shown as a dot
    assert pieces[0] == ("Hopper", 0.5) and ("portrait", 0.25) in pieces
    assert ("Hopper's.", 1.0) in pieces  # one word: its pieces joined, their relevance summed (3 + 0.5 + 0.5)
    assert all(value is None for piece, value in pieces if not piece.strip() or piece == " · ")
    long = "word " * 10_000
    pieces = word_highlights(long, ["word"] * 3, [1.0, 1.0, 1.0])
    assert len(pieces) == 6 and pieces[-1][0].endswith("…") and len(pieces[-1][0]) == 201


def test_explain_api_for_kb_and_session_entities(app_server):
    from gradio_client import Client, handle_file
    url, _, tmp = app_server
    client = Client(url, verbose=False)
    linked = client.predict(SENTENCE, MENTION, handle_file(EXAMPLE_IMAGE), 3, api_name="/link")["results"]
    top = linked[0]
    why = client.predict(SENTENCE, MENTION, handle_file(EXAMPLE_IMAGE), str(top["index"]), api_name="/explain")
    assert why["entity"] == {"index": top["index"], "id": why["entity"]["id"], "qid": top["qid"], "name": top["name"],
                             "session": False}
    for key in ("s", "s_t", "s_v", "s_c"):  # the stored terms are float16 in part: rounding, nothing more
        assert why["scores"][key] == pytest.approx(top["score" if key == "s" else key], abs=0.05)
        grid = why["mention_relevance"][key]
        assert len(grid) == 7 and all(len(row) == 7 for row in grid)
    assert set(why["token_relevance"]) == {"tokens", "s", "s_t"} and why["token_relevance"]["tokens"][0] == "hopper"
    assert len(why["attention"]) == 40 and len(why["mention_alpha"]) == 50 and why["zero_shot"] is False
    text_only = client.predict(SENTENCE, MENTION, None, top["index"], api_name="/explain")  # a number works too
    assert text_only["mention_relevance"] is None
    added = client.predict("Edward Hopper", "American painter of Nighthawks.", handle_file(EXAMPLE_IMAGE),
                           api_name="/add_entity")["added"]
    session = client.predict(SENTENCE, MENTION, handle_file(EXAMPLE_IMAGE), added["id"], api_name="/explain")
    assert session["entity"]["session"] is True and session["entity"]["index"] is None
    assert len(session["entity_relevance"]["s"]) == 7
    with pytest.raises(Exception, match=f"There is no entity {added['id']}"):  # not from another session
        Client(url, verbose=False).predict(SENTENCE, MENTION, None, added["id"], api_name="/explain")
    answer = json.dumps(why) + json.dumps(session)
    for path in (str(tmp), ROOT):
        assert path not in answer


@pytest.mark.parametrize("sentence,entity,image,message", [
    ("Hopper " * 142_857 + "H", "0", None, "the limit is 100,000 characters"),
    (SENTENCE, "x" * 1000, None, "The entity is 1,000 characters long; the limit is 40 characters"),
    (SENTENCE, "999", None, "There is no entity 999 in the KB"),
    (SENTENCE, "-1", None, "There is no entity -1 in the KB"),
    (SENTENCE, "Q42; DROP", None, "There is no entity Q42; DROP in the KB"),
    (SENTENCE, "", None, "Please give the entity"),
    (SENTENCE, "0", __file__, "The image cannot be used"),
])
def test_explain_api_refuses_hostile_input_plainly(app_server, sentence, entity, image, message):
    from gradio_client import Client, handle_file
    url, _, _ = app_server
    with pytest.raises(Exception, match=message):
        Client(url, verbose=False).predict(sentence, MENTION, handle_file(image) if image else None, entity,
                                           api_name="/explain")


def test_under_zero_shot_the_panel_shows_relevance_and_says_why_attention_is_not_drawn(tiny_clip, tmp_path,
                                                                                       monkeypatch):
    from demo.handlers import DemoApp
    from demo.kb import DemoKB
    from demo.models import LoadedModel
    from demo.sessions import compact_picture
    from mimic.model.images import open_image
    from mimic.model.mimic import MIMIC, MIMICConfig
    from mimic.model.zeroshot import zero_shot_init
    monkeypatch.setenv("MIMIC_CACHE", str(tmp_path / "cache"))
    model = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=1).eval()
    zero_shot_init(model)
    loaded = LoadedModel(model, "zero-shot", zero_shot=True)
    kb = DemoKB(loaded)
    kb._prepare()  # in this thread: encode the demo KB
    app = DemoApp(loaded, kb)
    state = app.ui_link(SENTENCE, MENTION, EXAMPLE_IMAGE, 3)[3]
    assert state["picture"] == compact_picture(open_image(EXAMPLE_IMAGE))
    mention_map, entity_map, words, alpha_m, alpha_e, tokens, note, explanation = app.ui_explain(
        state, state["rows"][0]["index"], "s_v", "s_t")
    assert mention_map["visible"] and mention_map["label"] == "Mention image: relevance for S_V"
    assert words["visible"] and "relevance for S_T" in words["label"] and words["value"][0][0] == "Hopper"
    values = [v for _, v in words["value"] if v is not None]
    assert max(values) == 1.0 and min(values) >= 0 and "".join(p for p, _ in words["value"]).endswith(SENTENCE)
    assert not alpha_m["visible"] and not alpha_e["visible"] and not tokens["visible"]
    assert "zero-shot initialisation" in note["value"] and "relevance maps hold under any initialisation" in note["value"]
    redrawn = app.patch_relevance(explanation, "s_c")
    assert redrawn[0]["label"] == "Mention image: relevance for S_C"
    assert app.patch_relevance(explanation, "bogus")[0]["label"] == "Mention image: relevance for S"
    assert app.word_relevance(None, "s") == {"__type__": "update", "visible": False}


def test_on_a_backbone_without_relevance_maps_the_panel_explains_once_and_says_so(tiny_clip, tmp_path,
                                                                                  monkeypatch):
    import gradio as gr

    from demo.handlers import DemoApp
    from demo.kb import DemoKB
    from demo.models import LoadedModel
    from mimic.explain.relevance import UnsupportedBackbone
    from mimic.linker import Linker
    from mimic.model.mimic import MIMIC, MIMICConfig

    def refuse(model):
        raise UnsupportedBackbone("this model's image tower is a timm model (test)")
    monkeypatch.setattr("demo.handlers.tracer_for", refuse)  # what the app decides at start
    monkeypatch.setattr("mimic.explain.relevance.tracer_for", refuse)  # what /explain runs into
    monkeypatch.setenv("MIMIC_CACHE", str(tmp_path / "cache"))
    loaded = LoadedModel(MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=1).eval(), "stand-in")
    kb = DemoKB(loaded)
    kb._prepare()  # in this thread: encode the demo KB
    app = DemoApp(loaded, kb)
    explained, original = [], Linker.explain
    monkeypatch.setattr(Linker, "explain", lambda self, *args, **kwargs: explained.append(kwargs.get("relevance"))
                        or original(self, *args, **kwargs))
    state = app.ui_link(SENTENCE, MENTION, EXAMPLE_IMAGE, 3)[3]
    mention_map, entity_map, words, alpha_m, alpha_e, tokens, note, _ = app.ui_explain(state, state["rows"][0]["index"])
    assert explained == [False]  # once, without relevance
    assert not mention_map["visible"] and not entity_map["visible"] and not words["visible"]
    assert alpha_m["visible"] and tokens["visible"]  # the attention is still drawn
    assert note["value"].startswith("Relevance maps are not available here: this model's image tower is a timm "
                                    "model (test).")
    with pytest.raises(gr.Error) as refused:
        app.api_explain(SENTENCE, MENTION, None, "0")
    assert refused.value.message == "this model's image tower is a timm model (test)"
