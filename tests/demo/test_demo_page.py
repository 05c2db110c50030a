"""The page as a visitor meets it, in headless Chromium at a laptop's 1280 x 800 and a phone's 390 x 844:
the examples in the first screen, one click to an answer in view, nothing wider than the screen, no red
Error while the knowledge base is prepared; and what the server log says of an ordinary refusal."""
import logging
import os
import re
import shutil

import gradio as gr
import pytest

from demo.answer import best_card, credit_html, ranked_list
from demo.handlers import SESSION_MARK, DemoApp, preparing
from demo.kb import DemoKB
from demo.models import LoadedModel
from tests.conftest import free_port

SIZES = {"laptop": (1280, 800), "phone": (390, 844)}
ROW = {"rank": 1, "index": 0, "qid": "Q1", "name": "Coffee", "score": 75.2, "s_t": 80.0, "s_t_g2g": 160.0,
       "s_t_g2l": 0.0, "s_v": 60.0, "s_v_e2m": 60.0, "s_v_m2e": 60.0, "s_c": 85.6}


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield browser
        browser.close()


class IdleKB(DemoKB):
    """A knowledge base still being encoded: it never becomes ready."""
    def start(self):
        self.status = "First start: encoding the knowledge base, 16 of 51 entities..."
        return self


# -- the answer's pieces ----------------------------------------------------------------------------

def test_the_best_match_card_says_the_margin_what_s_means_and_credits_the_picture():
    runner_up = {**ROW, "rank": 2, "name": "Java", "score": 72.9}
    credit = {"licence": "CC BY-SA 4.0", "licence_url": "https://creativecommons.org/licenses/by-sa/4.0/",
              "artist": "<b>Jane</b>", "source": "javascript:alert(1)"}
    card = best_card({"nil": False, "results": [{**ROW, "image_credit": credit}, runner_up]},
                     [{"name": "Coffee", "description": "A drink."}] * 2, False, SESSION_MARK)
    assert "Best match →" in card and "S = <b>75.20</b>" in card and "<b>+2.30</b> over the runner-up, Java" in card
    assert "not a probability" in card and "No image was given, so S_V" in card
    assert '<a href="https://creativecommons.org/licenses/by-sa/4.0/"' in card and "CC BY-SA 4.0</a>" in card
    assert "&lt;b&gt;Jane&lt;/b&gt;" in card and "javascript:" not in card  # escaped, and no such link
    nil = best_card({"nil": True, "results": [ROW]}, [{"name": "Coffee"}], True, SESSION_MARK)
    assert "No matching entity in the KB" in nil and "Best match" not in nil
    assert credit_html(None) == "" and credit_html({"artist": "A", "source": "http://x.org/a b"}) == \
        '<div class="credit">A</div>'  # not a clean address: no link
    rows = [{**ROW, "rank": r, "score": 75.2 - r} for r in range(1, 6)]
    table = ranked_list(rows, [{"description": "d"}] * 5, ["<i>pic</i>"] * 5, SESSION_MARK)
    assert table.count("<tr") == 6 and "-4.00" in table  # the header and every row; the gap to the best
    assert [f'data-row="{i}"' in table for i in range(5)] == [True] * 5  # a click tells which row


def test_the_chart_shows_differences_and_leaves_out_s_v_without_a_picture():
    from demo import plots
    rows = [ROW, {**ROW, "rank": 2, "name": "Java", "score": 72.9, "s_v": 0.002}]
    fig = plots.score_chart(rows, has_image=True, entity_images=[True, False])
    low, high = fig.layout.xaxis.range
    assert 50 < low < 60 and 85.6 < high < 95  # around the values (S_V 60 the least), not from 0
    s_v = next(t for t in fig.data if t.name == "S_V (vision)")
    assert list(s_v.x) == [60.0, None]  # an entity without a picture has no S_V bar
    assert list(next(t for t in fig.data if t.name == "S_T (text)").customdata[0]) == [80.0, 0.0]  # halves of G2G, G2L
    without = plots.score_chart(rows, has_image=False)
    assert [t.name for t in without.data][2] == "S_V: no image (left out)" and without.data[2].visible == "legendonly"
    assert without.layout.xaxis.range[0] > 60


def test_link_waits_for_the_knowledge_base_and_says_how_far_it_is(tiny_model, caplog):
    loaded = LoadedModel(tiny_model, "zero-shot", zero_shot=True)
    app = DemoApp(loaded, IdleKB(loaded))
    assert preparing(app.kb.status) == "Preparing the knowledge base (16 of 51)…"
    status, button, timer = app.page_state()
    assert button["interactive"] is False and button["value"] == "Preparing the knowledge base (16 of 51)…"
    assert timer.active and "16 of 51" in status and "<details>" in status
    with caplog.at_level(logging.INFO, logger="demo.handlers"):
        assert app.ui_link("Hopper painted.", "Hopper", None, 5) == (gr.skip(),) * 6  # a notice, no error
    assert [r.getMessage() for r in caplog.records] == ["refused a link: the knowledge base is being prepared"]


def test_an_ordinary_refusal_is_one_log_line_and_a_failure_keeps_its_traceback(tiny_model, caplog):
    loaded = LoadedModel(tiny_model, "zero-shot", zero_shot=True)
    app = DemoApp(loaded, IdleKB(loaded))
    with caplog.at_level(logging.INFO, logger="demo.handlers"), pytest.raises(gr.Error) as refused:
        app.api_link("a" * 100_001, "a", None, 5)
    assert refused.value.print_exception is False  # Gradio prints no traceback for it
    [record] = caplog.records
    assert record.getMessage() == "refused /link: The sentence is 100,001 characters long; the limit is 100,000 " \
                                  "characters." and record.exc_info is None
    caplog.clear()
    app.kb.linker, app.kb.status = object(), "Ready."  # ready, but linking breaks: a real failure

    with caplog.at_level(logging.INFO, logger="demo.handlers"), pytest.raises(gr.Error) as failed:
        app.api_link("Hopper painted.", "Hopper", None, 5)
    assert failed.value.print_exception is False and "server log" in failed.value.message
    [record] = caplog.records
    assert record.getMessage() == "/link failed" and record.exc_info is not None  # its traceback, once


# -- the served page ----------------------------------------------------------------------------------

def test_the_served_log_has_a_ready_line_and_one_line_per_refusal(app_server):
    from gradio_client import Client
    url, _, tmp = app_server
    with pytest.raises(Exception, match="does not occur"):
        Client(url, verbose=False).predict("Hopper painted.", "Zyzzyva", None, 3, api_name="/link")
    log = "".join(open(tmp / name).read() for name in os.listdir(tmp) if name.startswith("app-"))
    assert re.search(r"INFO app: ready: 51 entities in \d+\.\d s", log)
    assert log.count('"Zyzzyva"') == 1  # one line, no traceback
    assert not [line for line in log.split("\n") if "%|" in line and " INFO " in line]  # no bar runs into a record


def test_the_api_page_shows_real_examples_and_the_image_as_optional(app_server):
    _, client, _ = app_server
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    link = {p["parameter_name"]: p for p in endpoints["/link"]["parameters"]}
    assert link["sentence"]["example_input"] == "Hopper painted Nighthawks in 1942."
    assert link["mention"]["example_input"] == "Hopper" and link["top_k"]["example_input"] == 5
    assert link["image_path"]["parameter_has_default"] and link["image_path"]["example_input"] is None
    assert endpoints["/explain"]["parameters"][2]["parameter_has_default"]


@pytest.mark.parametrize("size", SIZES)
def test_examples_in_view_one_click_answers_in_view_and_nothing_wider_than_the_screen(app_server, chromium, size):
    from playwright.sync_api import expect
    url, _, _ = app_server
    width, height = SIZES[size]
    page = chromium.new_page(viewport={"width": width, "height": height})
    try:
        page.goto(url)
        first = page.locator("#examples .ex").first
        expect(first).to_be_visible(timeout=30_000)
        box = first.bounding_box()
        assert box["y"] + box["height"] <= height  # the first example is in the first screen
        link = page.locator("#link").bounding_box()
        assert link["y"] + link["height"] <= 2 * height  # Link within two screens
        assert page.evaluate("document.scrollingElement.scrollWidth <= innerWidth")
        first.click()
        card = page.locator("#verdict .best")
        expect(card).to_be_visible(timeout=60_000)
        # the explanation's map is drawn (attached: the browser loads it lazily, when it nears the screen)
        expect(page.locator("#mention-relevance img")).to_have_attribute("src", re.compile("."), timeout=60_000)
        page.wait_for_function("Math.abs(document.getElementById('answer').getBoundingClientRect().top) < 200",
                               timeout=10_000)  # scrolled to the answer
        assert page.locator("#ranked tbody tr").count() == 5
        assert page.evaluate("document.scrollingElement.scrollWidth <= innerWidth")
        assert page.locator(".toast-body.error").count() == 0
        if size == "laptop":  # a click on a ranked row explains that entity
            third = page.locator("#ranked tbody tr").nth(2)
            name = third.locator("td.entity b").inner_text().split(" (")[0]
            third.click()
            expect(page.locator("#candidate input")).to_have_value(f"3. {name}", timeout=30_000)
            expect(page.locator("#entity-relevance")).to_contain_text(f"{name}: ", timeout=60_000)
    finally:
        page.close()


def test_no_red_error_while_the_knowledge_base_is_prepared(tiny_model, chromium):
    from playwright.sync_api import expect
    loaded = LoadedModel(tiny_model, "zero-shot", zero_shot=True)
    demo = __import__("demo.layout", fromlist=["build_app"]).build_app(DemoApp(loaded, IdleKB(loaded)))
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    page = chromium.new_page(viewport={"width": 390, "height": 844})
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        button = page.locator("#link")
        expect(button).to_have_text("Preparing the knowledge base (16 of 51)…", timeout=30_000)
        expect(button).to_be_disabled()
        page.locator("#examples .ex").first.click()  # an example, and Enter in the text box: a notice only
        page.get_by_label("Mention", exact=True).press("Enter")
        expect(page.locator(".toast-body").first).to_contain_text("Preparing the knowledge base", timeout=30_000)
        assert page.locator(".toast-body.error").count() == 0 and page.get_by_text("Error", exact=True).count() == 0
        assert not page.locator("#answer").is_visible()
    finally:
        page.close()
        demo.close()
