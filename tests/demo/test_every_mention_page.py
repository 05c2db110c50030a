"""The page's "Find every mention": the text with each found span labelled by its best entity, and a click on a
span showing that span's own ranking (the same candidates and scores /link_text gives) and its evidence."""
from demo.link_text import NIL_LABEL, highlighted

TEXT = "Grace Hopper wrote COBOL compilers; Alan Turing described the Turing machine."


def test_highlighted_pieces_label_each_span_and_map_it_back():
    mentions = [{"start": 0, "end": 5, "nil": False, "results": [{"name": "Grace <b>"}]},
                {"start": 10, "end": 14, "nil": True, "results": [{"name": "Near miss"}]},
                {"start": 14, "end": 16, "nil": False, "results": []}]
    pieces, owners = highlighted("abcdefghijklmnopq", mentions)
    assert pieces == [("abcde", "Grace <b>"), ("fghij", None), ("klmn", NIL_LABEL), ("op", NIL_LABEL), ("q", None)]
    assert owners == [0, None, 1, 2, None]
    assert highlighted("", []) == ([], [])


def test_every_mention_is_highlighted_and_a_click_shows_that_spans_ranking(app_server, browser_page):
    from gradio_client import Client
    from playwright.sync_api import expect
    url, _, _ = app_server
    expected = Client(url, verbose=False).predict(TEXT, None, 5, api_name="/link_text")["mentions"]
    turing = next(m for m in expected if m["text"] == "Alan Turing")
    page = browser_page
    page.goto(url)
    page.get_by_label("Sentence").fill(TEXT)
    page.locator("#every-mention").click()
    view = page.locator("#mentions")
    expect(view).to_be_visible(timeout=60_000)
    expect(page.locator("#mentions-note")).to_contain_text(f"{len(expected)} mentions found")
    for m in expected:
        expect(view).to_contain_text(m["text"])
    view.get_by_text("Alan Turing", exact=True).first.click()
    expect(page.get_by_label("Mention", exact=True)).to_have_value("Alan Turing", timeout=60_000)
    best = turing["results"][0]
    expect(page.locator("#verdict")).to_contain_text(best["name"], timeout=60_000)
    expect(page.locator("#verdict")).to_contain_text(f"{best['score']:.2f}")
    rows = page.locator("#ranked tbody tr")
    assert rows.count() == len(turing["results"])  # ranked among the span's own candidates
    expect(page.locator("#mention-relevance, #word-relevance").first).to_be_attached(timeout=60_000)


def test_a_forged_click_shows_nothing_and_a_span_is_answered_from_its_context(monkeypatch):
    import demo.link_text as link_text
    text = "x" * 300 + " Alan Turing"
    span = {"start": 301, "end": 312, "text": "Alan Turing", "context": [100, 312], "nil": False,
            "results": [{"name": "Alan Turing", "index": 19}]}
    monkeypatch.setattr(link_text, "api_link_text", lambda *a: {"mentions": [span], "skipped": 0})
    answered = []

    class App:
        sessions = type("S", (), {"overlay": staticmethod(lambda session: None)})()

        def answer(self, result, image, terms, overlay, sentence, mention):
            answered.append((result["results"], sentence, mention))
            return ("shown",)

    for index, words in [(1, "Grace Hopper"), (0, text[:301]), (7, "Alan Turing"), (-1, "Alan Turing"), ("1", "x")]:
        assert link_text.span_answer(App(), text, None, 5, index, words) is None
    assert answered == []
    assert link_text.span_answer(App(), text, None, 5, 1, "Alan Turing") == ("shown",)
    assert answered == [(span["results"], text[100:312], "Alan Turing")]
