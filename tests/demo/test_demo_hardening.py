"""Issue 18 (hardening II), the demo's side: images sent as data URLs are bounded as uploads are, a client
cannot name a server file as its image, Top k NaN is refused by name, the add note is bounded, answers
carry no temporary-file path, and a flood of page-less sessions holds the "Add an entity" places for two
minutes only."""
import base64
import functools
import io
import json
import re

import gradio as gr
import httpx
import pytest
from PIL import Image

from demo import pictures
from demo.inputs import ImageFile, ImageProblem, added_note, input_problem, uploaded_image
from demo.sessions import MAX_SESSIONS, SILENT_SECONDS, HeartbeatWatch, SessionEntities
from mimic.kb.overlay import OverlayFull
from tests.conftest import EXAMPLE_IMAGE
from tests.demo.test_demo_limits import GOOD, HUGE, RawSession

BOMB_SIDE = 12_000  # a 12000 x 12000 PNG: 144 megapixels in about 140 kB


@functools.lru_cache(maxsize=1)
def png_bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (BOMB_SIDE, BOMB_SIDE)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_url(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def join(raw: RawSession, api_name: str, values: dict):
    """Join the queue with one handler's inputs -> (HTTP status, the JSON answer); 200 means queued."""
    dependency = next(d for d in raw.config["dependencies"] if d["api_name"] == api_name)
    data = [values.get(i) for i in dependency["inputs"]]
    answer = raw.http.post(f"{raw.url}/gradio_api/queue/join", json={
        "data": data, "fn_index": dependency["id"], "trigger_id": None, "session_hash": raw.session,
        "event_data": None})
    return answer.status_code, answer.text


# -- item 2: data URLs ------------------------------------------------------------------------------

def test_a_data_url_bomb_is_refused_from_its_header_without_decoding(monkeypatch):
    """The 140 kB PNG of 144 megapixels: refused naming the pixel limit, and no pixel is decoded (PIL's
    loading and Gradio's own base64 decoder both fail the test if reached)."""
    bomb = png_bomb()
    assert len(bomb) < 200_000

    def never(*args, **kwargs):
        raise AssertionError("the image was decoded")
    monkeypatch.setattr(Image.Image, "load", never)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", never)
    monkeypatch.setattr("gradio.image_utils.decode_base64_to_image", never)
    component = ImageFile(type="filepath", image_mode=None)
    problem = component.preprocess(component.data_model(url=data_url(bomb)))
    assert isinstance(problem, ImageProblem)
    assert input_problem("image", problem) == (
        f"The image cannot be used: the image: {BOMB_SIDE} x {BOMB_SIDE} pixels is more than the 64 megapixels "
        "accepted. Try a JPEG, PNG or WebP photo, or remove it.")
    with pytest.raises(gr.Error, match="pixels is more than the 64 megapixels"):  # the handler refuses it too
        uploaded_image(problem)


def test_an_oversized_data_url_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(base64, "b64decode", lambda *a, **k: pytest.fail("decoded"))
    component = ImageFile(type="filepath", image_mode=None)
    huge = "data:image/png;base64," + "A" * (28 * 2**20 * 4 // 3)  # 28 MB once decoded
    assert component.preprocess(component.data_model(url=huge)) == "The image is 28.0 MB; the limit is 20 MB."
    assert "must be base64" in component.preprocess(component.data_model(url="data:image/png," + "x" * 100))
    assert input_problem("image", None) == input_problem("image", "/tmp/gradio/x.png") == ""


def test_a_data_url_picture_links_as_the_same_upload_does(app_server):
    """The bytes of a small data URL go to the model unchanged: the scores equal those of the upload."""
    from gradio_client import Client, handle_file
    url, _, _ = app_server
    client = Client(url, verbose=False)
    uploaded = client.predict(*GOOD, handle_file(EXAMPLE_IMAGE), 3, api_name="/link")["results"]
    with open(EXAMPLE_IMAGE, "rb") as f:
        image = {"url": data_url(f.read(), "image/jpeg")}
    inline = client.predict(*GOOD, image, 3, api_name="/link")["results"]
    blank = client.predict(*GOOD, None, 3, api_name="/link")["results"]
    assert [(r["index"], round(r["s_v"], 5)) for r in inline] == [(r["index"], round(r["s_v"], 5)) for r in uploaded]
    assert [round(r["s_v"], 5) for r in inline] != [round(r["s_v"], 5) for r in blank]
    # a client of the API reads why a picture is refused (a validation error, as for the other limits)
    with pytest.raises(Exception, match=f"{BOMB_SIDE} x {BOMB_SIDE} pixels is more than the 64 megapixels"):
        client.predict(*GOOD, {"url": data_url(png_bomb())}, 3, api_name="/link")


@pytest.mark.parametrize("api_name", ["link", "ui_link", "explain", "add_entity"])
def test_every_handler_refuses_oversized_data_urls_as_the_request_joins(app_server, api_name):
    url, _, _ = app_server
    raw = RawSession(url)
    image = raw.component(label="Entity image" if api_name == "add_entity" else "Image (optional)")
    texts = {raw.component(label="Sentence"): HUGE, raw.component(label="Mention"): GOOD[1],
             raw.component(label="Top k"): 3, raw.component(label="Name"): "Ada",
             raw.component(label="Entity"): "0"}
    # the 1,000,000-character sentence sent with a good data URL: refused at once, naming its limit
    with open(EXAMPLE_IMAGE, "rb") as f:
        small = {"url": data_url(f.read(), "image/jpeg")}
    if api_name != "add_entity":
        status, text = join(raw, api_name, {**texts, image: small})
        assert status == 422 and "limit is 100,000 characters" in text
    texts[raw.component(label="Sentence")] = GOOD[0]
    status, text = join(raw, api_name, {**texts, image: {"url": data_url(png_bomb())}})
    assert status == 422 and f"{BOMB_SIDE} x {BOMB_SIDE} pixels is more than the 64 megapixels" in text
    big = {"url": "data:image/png;base64," + "iVBORw0K" * (21 * 2**20 // 6)}  # 21 MB once decoded
    status, text = join(raw, api_name, {**texts, image: big})
    assert status == 422 and "The image is 21.0 MB; the limit is 20 MB" in text
    bigger = {"url": "data:image/png;base64," + "iVBORw0K" * (27 * 2**20 // 6)}  # the filed 27 MB: 36 MB of JSON
    status, text = join(raw, api_name, {**texts, image: bigger})
    assert status == 413 and "larger than 32 MB, the limit" in text


def test_a_client_cannot_name_a_server_file_as_its_image(app_server):
    """Without Gradio's file marker a path would reach the handler unchecked; it is refused unless Gradio
    stored it as an upload."""
    url, _, tmp = app_server
    raw = RawSession(url)
    values = {raw.component(label="Sentence"): GOOD[0], raw.component(label="Mention"): GOOD[1],
              raw.component(label="Top k"): 3}
    for path in (EXAMPLE_IMAGE, "/etc/hostname", str(tmp / "ckpt")):
        status, text = join(raw, "link", {**values, raw.component(label="Image (optional)"): {"path": path}})
        assert status == 422 and "it was not uploaded" in text, (path, text)
        assert path not in text


# -- item 12: Top k ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 2.5, 0, 21, True, "5"])
def test_top_k_outside_its_range_is_refused_by_name(value):
    assert input_problem("top_k", value) == "Top k must be a whole number from 1 to 20."
    assert input_problem("top_k", 20.0) == input_problem("top_k", 1) == ""


def test_top_k_nan_sent_to_the_api_is_refused_by_name(app_server):
    """JSON's NaN and Infinity (Python's json reads them) as Top k: the named limit, not a conversion error."""
    url, _, _ = app_server
    raw = RawSession(url)
    link = next(d["id"] for d in raw.config["dependencies"] if d["api_name"] == "link")
    for value in ("NaN", "Infinity", "-Infinity"):
        body = (f'{{"data": [{json.dumps(GOOD[0])}, {json.dumps(GOOD[1])}, null, {value}], "fn_index": {link}, '
                f'"session_hash": "{raw.session}", "trigger_id": null, "event_data": null}}')
        answer = raw.http.post(f"{url}gradio_api/queue/join", content=body,
                               headers={"content-type": "application/json"})
        assert answer.status_code == 422 and "Top k must be a whole number from 1 to 20." in answer.text, answer.text


# -- item 11: the note under "Add an entity" --------------------------------------------------------

def test_the_add_note_is_bounded():
    assert added_note({"message": "Added *x*"}) == "Added \\*x\\*"
    assert added_note(None) == added_note([1]) == added_note({}) == ""
    with pytest.raises(gr.Error, match="The message must be text"):
        added_note({"message": {"nested": "x" * 10_000_000}})
    with pytest.raises(gr.Error, match="The message is 10,000,000 characters long; the limit is 1,000 characters"):
        added_note({"message": "x" * 10_000_000})


def test_the_add_note_handler_refuses_10_mb(app_server):
    url, _, _ = app_server
    raw = RawSession(url)
    added = raw.component(label="Added")
    dependency = next(d for d in raw.dependencies_reading(added))
    success, message, _, _ = raw.call(dependency, {added: {"message": "x" * 10_000_000}})
    assert success is False and "limit is 1,000 characters" in str(message)
    success, output, _, _ = raw.call(dependency, {added: {"message": "Added “Ada”."}})
    assert success is True and output == ["Added “Ada”\\."]


# -- item 17: no temporary-file paths in answers ----------------------------------------------------

TMP_PATH = re.compile(r"/tmp/|gradio_api/file=|\"path\": \"/")


def test_hidden_handlers_answer_without_temporary_file_paths(app_server):
    url, _, tmp = app_server
    raw = RawSession(url)
    gallery = raw.component(elem_id="examples")  # a click fills the form with the example
    example = next(d for d in raw.config["dependencies"] if [gallery, "click"] in d["targets"])
    config = raw.http.get(f"{url}config").text  # the examples' cards: thumbnails as data URLs
    assert config.count('src=\\"data:image/jpeg;base64,') >= 5
    assert len(config) < 400_000, len(config)
    answers = [config]
    for index in range(3):
        success, output, _, _ = raw.call(example, {example["inputs"][0]: index})
        assert success is True
        answers.append(json.dumps(output))
    assert any('"url": "data:image/jpeg;base64,' in a for a in answers)

    with open(EXAMPLE_IMAGE, "rb") as f:
        image = {"url": data_url(f.read(), "image/jpeg")}
    values = {raw.component(label="Sentence"): GOOD[0], raw.component(label="Mention"): GOOD[1],
              raw.component(label="Image (optional)"): image, raw.component(label="Top k"): 3}
    ui_link = next(d for d in raw.config["dependencies"] if d["api_name"] == "ui_link")
    success, output, _, _ = raw.call(ui_link, values)
    assert success is True
    answers.append(json.dumps(output))
    candidate = raw.component(elem_id="candidate")
    explain = next(d for d in raw.dependencies_reading(candidate) if d["api_name"] == "ui_explain"
                   and d["targets"])
    success, output, _, _ = raw.call(explain, {**values, candidate: output[2]["value"],
                                               raw.component(elem_id="patch-unit"): "s",
                                               raw.component(elem_id="word-unit"): "s"})
    assert success is True
    answer = json.dumps(output)
    assert answer.count('"url": "data:image/webp;base64,') >= 2  # the two relevance maps at least
    answers.append(answer)
    for answer in answers:
        assert not TMP_PATH.search(answer) and str(tmp) not in answer, TMP_PATH.search(answer)


def test_pictures_are_sent_as_data_urls():
    picture = pictures.picture_data(Image.new("RGB", (8, 8), (255, 0, 0)), "png")
    assert picture.path is None and picture.url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(picture.url.split(",", 1)[1])))
    assert decoded.size == (8, 8) and decoded.getpixel((3, 3)) == (255, 0, 0)
    with open(EXAMPLE_IMAGE, "rb") as f:
        assert pictures.picture_data(EXAMPLE_IMAGE).url == data_url(f.read(), "image/jpeg")  # not re-encoded


# -- item 9: a flood of page-less sessions ----------------------------------------------------------

class OneEntity(list):
    """An overlay that records the names it is given (the model's encoding is tested elsewhere)."""

    def __init__(self, precision, per_session):
        super().__init__()

    def add(self, model, name, description, image=None, **extra):
        self.append(name)
        return {"name": name}


def test_a_flood_of_pageless_sessions_frees_the_places_within_two_minutes(monkeypatch):
    """201 sessions that join with fresh hashes and no page (no heartbeat) fill the places; two minutes
    later an ordinary visitor can add, while a visitor whose page beats keeps its entities."""
    monkeypatch.setattr("demo.sessions.Overlay", OneEntity)
    now = [0.0]
    sessions = SessionEntities(clock=lambda: now[0])
    sessions.add("visitor", None, "mixed", "Mine", "")
    for i in range(MAX_SESSIONS - 1):
        now[0] += 0.3  # 72 s for the flood, as filed
        sessions.add(f"flood{i}", None, "mixed", "x", "")
    with pytest.raises(OverlayFull, match="holds the added entities of 200 sessions"):
        sessions.add("newcomer", None, "mixed", "Hers", "")
    while now[0] < 72 + SILENT_SECONDS:
        now[0] += 15  # the visitor's page beats every 15 s; the flood's sessions have no page
        sessions.alive("visitor")
    assert now[0] - 72 <= SILENT_SECONDS + 15 <= 150  # "within a couple of minutes" of the flood
    assert sessions.add("newcomer", None, "mixed", "Hers", "")["name"] == "Hers"
    assert len(sessions) == 2 and sessions.overlay("visitor") == ["Mine"]
    now[0] += SILENT_SECONDS + 1  # the visitor closed the tab without its unload arriving
    assert sessions.overlay("visitor") is None


def test_heartbeats_reach_the_sessions():
    import asyncio
    seen = []

    class Sessions:
        def alive(self, session):
            seen.append(session)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: ALIVE\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def ignore(message):
        pass

    watch = HeartbeatWatch(app, Sessions())
    for path in ("/gradio_api/heartbeat/abc123", "/gradio_api/queue/join", "/gradio_api/heartbeat/../x"):
        asyncio.run(watch({"type": "http", "path": path}, None, ignore))
    assert seen == ["abc123"]


def test_the_middleware_sees_gradios_heartbeat_stream():
    """Through a real ASGI app: a streamed heartbeat marks its session alive, keeping its place."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from fastapi.testclient import TestClient

    from demo.sessions import heartbeat_middleware
    now = [0.0]
    sessions = SessionEntities(clock=lambda: now[0])
    sessions._sessions["abc"] = [object(), 0.0, 0.0]  # a place taken at 0 s
    app = FastAPI(middleware=heartbeat_middleware(sessions))

    @app.get("/gradio_api/heartbeat/{session}")
    def beat(session: str):
        return StreamingResponse(iter([b"data: ALIVE\n\n"]), media_type="text/event-stream")

    now[0] = 100.0
    assert TestClient(app).get("/gradio_api/heartbeat/abc").status_code == 200
    assert sessions._sessions["abc"][1:] == [0.0, 100.0]


# -- item 2, the body that carries a data URL -------------------------------------------------------

def test_a_body_past_the_limit_is_refused_while_it_arrives(app_server):
    """Gradio reads a JSON body whole: past 32 MB it is refused from its Content-Length (nothing read), and
    one sent in chunks without a length is cut off once it passes; the server then answers as before."""
    from demo.bodies import MAX_BODY_BYTES
    url, client, _ = app_server
    raw = RawSession(url)
    body = b'{"data": ["' + b"x" * (MAX_BODY_BYTES + 1) + b'"]}'
    answer = raw.http.post(f"{url}gradio_api/queue/join", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "larger than 32 MB, the limit" in answer.text

    def chunks():
        for _ in range(40):
            yield b"x" * 2**20  # 40 MB, no Content-Length
    try:
        answer = raw.http.post(f"{url}gradio_api/queue/join", content=chunks(),
                               headers={"content-type": "application/json"})
        assert answer.status_code >= 400
    except httpx.TransportError:
        pass  # the server may also close the connection while the body still arrives
    assert len(client.predict(*GOOD, None, 3, api_name="/link")["results"]) == 3


def test_an_examples_picture_reaches_the_model_from_the_page(app_server, browser_page):
    """Headless Chromium: the example's picture now comes to the page as a data URL; pressing Link sends it
    back that way and the model sees it (the mention's relevance map is drawn over it, not "no image")."""
    from playwright.sync_api import expect
    url, _, _ = app_server
    page = browser_page
    page.goto(url)
    page.get_by_text("Text alone points to the painter Edward Hopper").first.click()
    expect(page.get_by_label("Mention")).to_have_value("Hopper", timeout=30_000)
    src = page.locator("img[src^='data:image/jpeg;base64,']").first
    expect(src).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Link", exact=True).click()
    expect(page.locator("#verdict")).to_contain_text("→", timeout=60_000)
    expect(page.locator("#mention-relevance")).to_contain_text("Mention image: relevance for S", timeout=30_000)
    expect(page.locator("#mention-relevance img")).to_have_attribute("src", re.compile("^data:image/webp;base64,"))
