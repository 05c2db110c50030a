"""The demo: `python app.py` served for real, then driven through gradio_client and headless Chromium."""
import html
import io
import os

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from demo import heatmap, plots
from demo.answer import best_card
from demo.handlers import SESSION_MARK, DemoApp
from demo.inputs import describe_mention, occurrences
from demo.kb import DemoKB
from demo.layout import DELETE_CACHE, build_app
from demo.models import LoadedModel, weights_fingerprint
from demo.safe_text import markdown_literal, without_paths
from demo.sessions import SessionEntities
from mimic.kb.overlay import OverlayFull
from mimic.linker import QueryError
from tests.conftest import EXAMPLE_IMAGE, ROOT

ARTIFACTS = os.path.join(ROOT, "test-artifacts")


# -- pieces -----------------------------------------------------------------------------------------

def test_mention_occurrences_are_found_and_highlighted():
    assert occurrences("Hopper met hopper at HOPPER's", "hopper") == [(0, 6), (11, 17), (21, 27)]
    highlighted, chooser = describe_mention("Hopper met hopper.", "hopper", 1)
    assert highlighted == [("Hopper met ", None), ("hopper", "mention"), (".", None)]
    assert chooser["visible"] is True and len(chooser["choices"]) == 2
    highlighted, chooser = describe_mention("Paris in spring", "Rome")
    assert highlighted[-1][1] == "problem" and chooser["visible"] is False


def _coloured_below(picture: Image.Image, top: int) -> int:
    """How many pixels under `top` have a colour (the caption and notice are grey on white; the bar is not)."""
    pixels = np.asarray(picture.crop((0, top, picture.width, picture.height)), dtype=np.int16)
    return int(((pixels.max(axis=2) - pixels.min(axis=2)) > 30).sum())


def test_maps_carry_their_colour_bar_and_a_flat_map_tints_nothing():
    alpha = [0.0] * 50
    alpha[1 + 6] = 1.0  # top-right patch of the 7 x 7 grid
    image = Image.new("RGB", (700, 350), (128, 128, 128))
    out = heatmap.scaled_map(image, heatmap.patch_grid(alpha), "where CMFU pooled")
    assert out.width == 512 and out.height > 256 + 30  # the picture (512 x 256), then its bar and caption
    top_right, bottom_left = out.getpixel((500, 10)), out.getpixel((10, 250))
    assert sum(top_right) > sum(bottom_left) + 100
    bar_row = 256 + 12
    assert sum(out.getpixel((400, bar_row))) > sum(out.getpixel((150, bar_row))) + 200  # inferno: dark = less
    assert _coloured_below(out, 256) > 2000
    flat = heatmap.scaled_map(image, [[0.0] * 7] * 7, "what moved S")  # an all-zero relevance map
    assert {flat.getpixel((x, y)) for x in (10, 250, 500) for y in (10, 128, 250)} == {(128, 128, 128)}  # no tint
    assert _coloured_below(flat, 256) == 0  # no colour bar either: the notice says there is no evidence
    with pytest.raises(ValueError, match="square grid"):
        heatmap.patch_grid([0.1] * 11)  # CLS + 10 patches: not a square


def test_score_chart_and_token_plot():
    rows = [{"rank": 1, "name": "Grace Hopper", "score": 3.0, "s_t": 4.0, "s_t_g2g": 6.0, "s_t_g2l": 2.0, "s_v": 2.0,
             "s_v_e2m": 1.0, "s_v_m2e": 3.0, "s_c": 3.0}]
    fig = plots.score_chart(rows)
    assert [t.name for t in fig.data] == ["S (overall)", "S_T (text)", "S_V (vision)", "S_C (cross-modal)"]
    assert list(fig.data[1].customdata[0]) == [3.0, 1.0] and list(fig.data[0].x) == [3.0]  # halves: they add to S_T
    fig = plots.token_attention(torch.eye(3), ["a", "b", "c"], ["x", "<|endoftext|>", "<|endoftext|>"], "E")
    assert list(fig.layout.xaxis.ticktext) == ["x", "&lt;|endoftext|&gt;", "·"]  # plotly shows "<|endoftext|>"


def test_kb_text_is_shown_literally_in_markdown_and_plotly():
    evil = "[x](https://evil.example) ![](https://evil.example/p.png) <img src=x> *a* _b_ # c https://evil.example"
    escaped = markdown_literal(evil)
    assert "<" not in escaped and "](" not in escaped and "https://" not in escaped
    assert escaped.startswith("\\[x\\]\\(https\\:\\/\\/evil\\.example\\)") and "&lt;img src\\=x&gt;" in escaped
    assert markdown_literal("a\nb") == "a b"
    rows = [{"rank": 1, "name": evil, "qid": "Q1", "score": 1.0, "s_t": 1.0, "s_t_g2g": 1.0, "s_t_g2l": 1.0, "s_v": 1.0,
             "s_v_e2m": 1.0, "s_v_m2e": 1.0, "s_c": 1.0}]
    record = {"name": evil, "description": evil}
    card = best_card({"nil": False, "results": rows}, [record], True, SESSION_MARK)
    assert html.escape(evil) in card and "<img src=x>" not in card and "evil.example/p.png)" in card
    assert "(added in this session)" in best_card({"nil": False, "results": [{**rows[0], "session": True}]}, [record],
                                                 True, SESSION_MARK)
    assert plots.score_chart(rows).data[0].y[0] == "1. " + html.escape(evil[:27]) + "…"
    fig = plots.token_attention(torch.eye(2), ["<b>", "x"], ["<a href=y>", "z"], "<i>E</i>")
    assert "&lt;i&gt;E&lt;/i&gt;" in fig.layout.title.text
    assert fig.data[0].customdata[0][0] == ["&lt;b&gt;", "&lt;a href=y&gt;"]


def test_server_paths_are_removed_from_messages(tmp_path):
    checkpoint = str(tmp_path / "runs" / "best")
    message = (f"{checkpoint}/config.json: not valid JSON; [Errno 2] No such file or directory: "
               f"'/srv/app/cache/kb-1/manifest.json' (see https://huggingface.co/docs)")
    assert without_paths(message, {checkpoint: "the checkpoint"}) == (
        "the checkpoint/config.json: not valid JSON; [Errno 2] No such file or directory: 'manifest.json' "
        "(see https://huggingface.co/docs)")


def test_the_model_is_described_by_kind_backbone_and_fingerprint(tiny_model):
    loaded = LoadedModel(tiny_model, "trained checkpoint")
    assert loaded.description == "MIMIC, trained checkpoint; CLIP ViT (2 layers of width 48, 32-px patches)"
    loaded.fingerprints = {"encoder": "a" * 32, "checkpoint": "b" * 32}
    assert loaded.description.endswith("; weights fingerprint " + weights_fingerprint(loaded.fingerprints))
    tiny_model.config.encoder = "openai/clip-vit-base-patch32"  # a Hub id is public; a local folder is not named
    assert "(openai/clip-vit-base-patch32)" in LoadedModel(tiny_model, "zero-shot", zero_shot=True).description


def test_a_kb_that_cannot_be_prepared_is_explained_without_paths(tiny_model, tmp_path, monkeypatch):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("MIMIC_CACHE", str(tmp_path / "not-a-folder"))
    kb = DemoKB(LoadedModel(tiny_model, "trained checkpoint"))
    kb._prepare()
    assert kb.error.startswith("The knowledge base could not be prepared: ") and "the cache" in kb.error
    assert str(tmp_path) not in kb.error and ROOT not in kb.error


def test_the_occurrence_chooser_is_bounded_and_limits_are_named():
    highlighted, chooser = describe_mention("a " * 50_000, "a")
    assert len(chooser["choices"]) == 50 and highlighted[1] == ("a", "mention")
    with pytest.raises(gr.Error, match="The sentence is 100,001 characters long; the limit is 100,000 characters"):
        describe_mention("a" * 100_001, "a")
    with pytest.raises(gr.Error, match="The mention is 1,001 characters long; the limit is 1,000 characters"):
        describe_mention("a", "a" * 1001)
    with pytest.raises(gr.Error, match="The sentence must be text"):
        describe_mention(["a"], "a")


def test_session_entities_are_bounded_forgotten_and_keep_only_a_small_picture(tiny_model):
    now = [0.0]
    sessions = SessionEntities(per_session=2, max_sessions=2, idle_seconds=60, clock=lambda: now[0])
    photo = Image.new("RGB", (3000, 2000), (200, 30, 30))
    record = sessions.add("a", tiny_model, "mixed", "Red", "a red square", photo)
    picture = Image.open(io.BytesIO(record["picture"]))
    assert picture.format == "JPEG" and picture.size == (384, 256)
    assert record["thumbnail"].startswith('<img src="data:image/jpeg;base64,')
    sessions.add("b", tiny_model, "mixed", "B", "")
    with pytest.raises(OverlayFull, match="holds the added entities of 2 sessions, its limit"):
        sessions.add("c", tiny_model, "mixed", "C", "")
    with pytest.raises(OverlayFull, match="needs a session"):
        sessions.add(None, tiny_model, "mixed", "C", "")
    sessions.end("b")
    assert sessions.overlay("b") is None and len(sessions.overlay("a")) == 1
    with pytest.raises(QueryError, match="Please give the new entity a name"):
        sessions.add("d", tiny_model, "mixed", " ", "")
    assert len(sessions) == 1  # a failed first add holds no session
    now[0] = 59.0
    assert sessions.overlay("a") is not None  # in use: its idle time starts again
    now[0] = 110.0
    assert sessions.overlay("a") is not None
    now[0] = 171.0
    assert sessions.overlay("a") is None and len(sessions) == 0 and sessions.entity_count() == 0


def test_the_page_is_wired_for_public_use(tiny_model):
    """Gradio cleans its temporary files, a closed tab ends its session, and every handler that reads a
    text has a validator that refuses it before it is queued."""
    class IdleKB(DemoKB):
        def start(self):
            return self  # the page is only built here, never served
    loaded = LoadedModel(tiny_model, "trained checkpoint")
    page = build_app(DemoApp(loaded, IdleKB(loaded)))
    assert page.delete_cache == DELETE_CACHE and DELETE_CACHE[1] <= 3600
    assert [fn.fn.__name__ for fn in page.fns.values() if any(t[1] == "unload" for t in fn.targets)] == ["end_session"]
    texts = {block._id for block in page.blocks.values() if isinstance(block, gr.Textbox)}
    readers = [fn for fn in page.fns.values() if {block._id for block in fn.inputs} & texts]
    # an example's link, /link_text, and "Find every mention" with its span click
    assert len(readers) == 11 and all(fn.validator is not None for fn in readers)


# -- the served app ---------------------------------------------------------------------------------

def test_link_api_returns_ranked_entities_with_every_unit_score(app_server):
    from gradio_client import handle_file
    _, client, _ = app_server
    result = client.predict("A portrait of Hopper was unveiled at the gallery.", "Hopper",
                            handle_file(EXAMPLE_IMAGE), 5, api_name="/link")
    rows = result["results"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert set(rows[0]) == {"rank", "index", "id", "qid", "name", "score", "s_t", "s_t_g2g", "s_t_g2l", "s_v",
                            "s_v_e2m", "s_v_m2e", "s_c", "image_credit"}
    for r in rows:
        assert r["score"] == pytest.approx((r["s_t"] + r["s_v"] + r["s_c"]) / 3, abs=1e-4)
        assert r["s_t"] == pytest.approx((r["s_t_g2g"] + r["s_t_g2l"]) / 2, abs=1e-4)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert result["zero_shot"] is False


@pytest.mark.parametrize("sentence,mention,message", [
    ("", "Hopper", "Please type a sentence"),
    ("Hopper painted Nighthawks.", "", "Please type the mention"),
    ("Hopper painted Nighthawks.", "Turing", "does not occur in the sentence"),
])
def test_link_api_explains_bad_input(app_server, sentence, mention, message):
    from gradio_client import Client
    url, _, _ = app_server
    with pytest.raises(Exception, match=message):
        Client(url, verbose=False).predict(sentence, mention, None, 3, api_name="/link")


def test_the_page_links_and_draws_every_panel(app_server, browser_page):
    """Headless Chromium: type, upload, press Link; the ranked list, the chart, the relevance maps and the
    attention heatmaps appear, and another unit's relevance is drawn on request."""
    from playwright.sync_api import expect
    url, _, _ = app_server
    os.makedirs(ARTIFACTS, exist_ok=True)
    page = browser_page
    page.goto(url)
    page.get_by_label("Sentence").fill("A portrait of Hopper was unveiled at the gallery opening.")
    page.get_by_label("Mention").fill("Hopper")
    page.locator("input[type=file]").first.set_input_files(EXAMPLE_IMAGE)
    page.get_by_role("button", name="Link", exact=True).click()
    expect(page.locator("#verdict")).to_contain_text("→", timeout=60_000)
    top_name = page.locator("#verdict").inner_text().split("→")[1].split("(")[0].strip()
    expect(page.locator("#ranked")).to_contain_text(top_name)
    assert page.locator("#ranked tbody tr").count() == 5  # Top k
    expect(page.locator("#ranked img").first).to_be_visible()  # thumbnails
    expect(page.locator("#scores .js-plotly-plot")).to_be_visible(timeout=30_000)
    expect(page.locator("#mention-heatmap img")).to_be_visible(timeout=30_000)
    expect(page.locator("#entity-heatmap img")).to_be_visible(timeout=30_000)
    expect(page.locator("#token-attention .js-plotly-plot")).to_be_visible(timeout=30_000)
    # the explanation panel: relevance over both pictures and the words, another unit on request
    for panel in ("#mention-relevance", "#entity-relevance"):
        expect(page.locator(f"{panel} img")).to_be_visible(timeout=30_000)
    expect(page.locator("#mention-relevance")).to_contain_text("Mention image: relevance for S")
    expect(page.locator("#word-relevance")).to_contain_text("portrait")
    before = page.locator("#mention-relevance img").get_attribute("src")
    page.locator("#patch-unit").get_by_text("S_C (cross-modal)").click()
    expect(page.locator("#mention-relevance")).to_contain_text("relevance for S_C", timeout=30_000)
    expect(page.locator("#mention-relevance img")).not_to_have_attribute("src", before, timeout=30_000)
    page.locator("#word-unit").get_by_text("S_T (text)").click()
    expect(page.locator("#word-relevance")).to_contain_text("relevance for S_T", timeout=30_000)
    page.screenshot(path=os.path.join(ARTIFACTS, "demo.png"), full_page=True)


def test_without_pretrained_weights_the_page_says_so_plainly(tmp_path):
    """Offline, no checkpoint: the app starts on a stand-in CLIP (random weights, real sizes) and says so."""
    import urllib.request

    from tests.conftest import start_app
    process, url, client = start_app(tmp_path, extra_env={"MIMIC_CHECKPOINT": "", "MIMIC_ENCODER": ""})
    try:
        page_config = urllib.request.urlopen(url + "config", timeout=30).read().decode()
        assert "Stand-in encoder" in page_config and "results are NOT meaningful" in page_config
        assert "Zero-shot: CLIP similarities; load or train a checkpoint" in page_config
        result = client.predict("Hopper painted Nighthawks.", "Hopper", None, 3, api_name="/link")
        assert result["zero_shot"] is True and len(result["results"]) == 3
    finally:
        process.terminate()
        process.wait(20)
