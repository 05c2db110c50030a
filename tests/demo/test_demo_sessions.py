"""Entities added through the demo belong to the session that added them: one gradio_client Client is
one session, one browser tab another. Never written to the store or the cache, gone when the session
ends, at most 20 a session. And what anyone types is shown as text."""
import os
import time

import pytest

from tests.conftest import EXAMPLE_IMAGE, start_app

FISH = ("Zyzzyva Quokkafish", "a rare fish of the deep sea")
FISH_QUERY = ("Zyzzyva Quokkafish a rare fish of the deep sea", "Zyzzyva Quokkafish")
EVIL = ("[click](https://evil.example/phish) ![](https://evil.example/pixel.png) "
        "<img src=https://evil.example/x.png> https://evil.example/bare x@evil.example **bold**\u202eesrever")


def session_rows(result):
    return [r for r in result["results"] if r.get("session")]


def test_an_added_entity_is_linkable_in_its_own_session_only(app_server):
    from gradio_client import Client, handle_file
    url, _, _ = app_server
    mine, other = Client(url, verbose=False), Client(url, verbose=False)
    before = other.predict(*FISH_QUERY, None, 20, api_name="/link")
    added = mine.predict(*FISH, handle_file(EXAMPLE_IMAGE), api_name="/add_entity")
    assert added["added"] == {"id": "session:1", "name": FISH[0], "description": FISH[1], "has_image": True}
    assert added["count"] == 1 and added["limit"] == 20 and "this session" in added["message"]

    found = mine.predict(*FISH_QUERY, None, 20, api_name="/link")
    row = session_rows(found)
    assert len(row) == 1 and row[0]["name"] == FISH[0] and row[0]["id"] == "session:1" and row[0]["index"] is None
    kb_rows = [r for r in found["results"] if not r.get("session")]
    # the KB's own entities keep their scores and order around the new one
    assert [(r["index"], round(r["score"], 4)) for r in kb_rows] == \
           [(r["index"], round(r["score"], 4)) for r in before["results"][:len(kb_rows)]]
    assert [r["rank"] for r in found["results"]] == list(range(1, 21))

    assert not session_rows(other.predict(*FISH_QUERY, None, 20, api_name="/link"))  # another session: not there
    assert other.predict("Other fish", "", None, api_name="/add_entity")["count"] == 1  # its own, counted apart


def test_a_session_may_add_20_entities_and_is_told_when_it_has(app_server):
    from gradio_client import Client
    url, _, _ = app_server
    client = Client(url, verbose=False)
    for i in range(1, 21):
        assert client.predict(f"Entity {i}", "", None, api_name="/add_entity")["count"] == i
    with pytest.raises(Exception, match="already has 20 added entities, the limit"):
        client.predict("Entity 21", "", None, api_name="/add_entity")
    assert len(session_rows(client.predict("Entity 3 is here.", "Entity 3", None, 20, api_name="/link"))) >= 1


def test_a_closed_session_forgets_its_entities(app_server):
    """Closing the client (the browser tab) ends the session: its entities are gone at once, even for a
    client that comes back with the same session hash."""
    from gradio_client import Client
    url, _, _ = app_server
    first = Client(url, verbose=False)
    assert first.predict(*FISH, None, api_name="/add_entity")["count"] == 1
    session = first.session_hash
    first.close()
    returning = Client(url, verbose=False)
    returning.session_hash = session
    deadline = time.time() + 30
    while session_rows(returning.predict(*FISH_QUERY, None, 20, api_name="/link")):
        assert time.time() < deadline, "the closed session's entity is still linkable"
        time.sleep(0.5)
    assert returning.predict(*FISH, None, api_name="/add_entity")["count"] == 1


def test_added_entities_never_reach_the_store_and_a_restart_forgets_them(tmp_path, tiny_clip):
    from gradio_client import handle_file

    from mimic.kb.store import KBStore
    from mimic.model.mimic import MIMIC, MIMICConfig
    from mimic.train.checkpoint import save_model
    save_model(MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=3), str(tmp_path / "ckpt"))
    process, url, client = start_app(tmp_path, str(tmp_path / "ckpt"))
    try:
        [store] = [os.path.join(tmp_path / "cache", d) for d in os.listdir(tmp_path / "cache")]
        files_before = sorted(os.listdir(store))
        for i in range(3):
            client.predict(f"{FISH[0]} {i}", FISH[1], handle_file(EXAMPLE_IMAGE), api_name="/add_entity")
        assert session_rows(client.predict(*FISH_QUERY, None, 20, api_name="/link"))
    finally:
        process.terminate()
        process.wait(20)
    assert sorted(os.listdir(store)) == files_before and len(KBStore.load(store)) == 51
    for folder, _, files in os.walk(tmp_path / "cache"):
        for name in files:
            assert FISH[0].encode() not in open(os.path.join(folder, name), "rb").read(), name
    process, url, client = start_app(tmp_path, str(tmp_path / "ckpt"))
    try:
        assert not session_rows(client.predict(*FISH_QUERY, None, 20, api_name="/link"))
    finally:
        process.terminate()
        process.wait(20)


def test_text_from_an_added_entity_reaches_the_api_cleaned(app_server):
    from gradio_client import Client
    url, _, _ = app_server
    client = Client(url, verbose=False)
    added = client.predict(EVIL, "line one\nline\u0000two \u2066hidden\u2069", None, api_name="/add_entity")["added"]
    assert "\u202e" not in added["name"] and added["name"].endswith("**bold** esrever")
    assert added["description"] == "line one line two  hidden"
    with pytest.raises(Exception, match="The name is 201 characters long; the limit is 200"):
        client.predict("n" * 201, "", None, api_name="/add_entity")


def test_the_page_shows_kb_and_visitor_text_as_text_and_inspects_session_entities(app_server, browser_page):
    """Headless Chromium: add an entity named with Markdown, HTML and URLs, link a query it ranks first
    for: no link or image to the attacker's site appears, no request goes there, the text shows as typed;
    "Inspect candidate" draws its attention like a KB entity's."""
    from playwright.sync_api import expect
    url, _, _ = app_server
    shown_name = EVIL.replace("\u202e", " ")
    page = browser_page
    attacker = []
    page.on("request", lambda request: attacker.append(request.url) if "evil.example" in request.url else None)
    page.route("**/*evil.example*/**", lambda route: route.abort())
    page.goto(url)
    page.get_by_text("Add an entity (for this session only)").click()
    page.get_by_label("Name").fill(EVIL)
    page.get_by_label("Description", exact=True).fill("a phishing entity")
    page.get_by_role("button", name="Add entity").click()
    expect(page.get_by_text("for this session (1 of 20)")).to_be_visible(timeout=60_000)
    page.get_by_label("Sentence").fill(shown_name + " a phishing entity")
    page.get_by_label("Mention").fill(shown_name)
    page.get_by_role("button", name="Link", exact=True).click()
    expect(page.locator("#verdict")).to_contain_text("→", timeout=60_000)
    verdict = page.locator("#verdict").inner_text()
    assert "[click](https://evil.example/phish)" in verdict and "<img src=https://evil.example/x.png>" in verdict
    assert "(added in this session)" in verdict
    expect(page.locator("#scores .js-plotly-plot")).to_be_visible(timeout=30_000)
    expect(page.locator("#token-attention .js-plotly-plot")).to_be_visible(timeout=30_000)  # inspected
    expect(page.locator("#entity-heatmap img")).to_be_visible(timeout=30_000)
    assert "no image" in page.locator("#entity-heatmap").inner_text()
    assert "<img src=https://evil.example/x.png>" in page.locator("#ranked").inner_text()
    assert "evil.exampl" in page.locator("#scores").inner_text()  # as text (the chart cuts a long name)
    live = page.evaluate("""() => [...document.querySelectorAll('a, img, image, iframe, link, source')]
        .map(e => ['href', 'xlink:href', 'src', 'srcset'].map(a => e.getAttribute(a) || '').join(' '))
        .filter(v => v.includes('evil.example'))""")
    assert live == [] and attacker == []
