"""/link_text, the API of Linker.link_text on the served demo: every mention found and linked, a session's
entities found too, every limit of /link held, the span cap, no path and no traceback in an answer."""
import pytest

from mimic.kb.mentions import MAX_SPANS
from tests.conftest import EXAMPLE_IMAGE, ROOT

TEXT = "Grace Hopper met Freddie Mercury in Washington, near NASA."


def test_link_text_api_finds_and_links_every_mention(app_server):
    from gradio_client import Client, handle_file
    url, _, _ = app_server
    client = Client(url, verbose=False)
    result = client.predict(TEXT, handle_file(EXAMPLE_IMAGE), 3, api_name="/link_text")
    found = [(m["start"], m["end"], m["text"]) for m in result["mentions"]]
    assert found == [(0, 12, "Grace Hopper"), (17, 32, "Freddie Mercury"), (36, 46, "Washington"), (53, 57, "NASA")]
    assert result["skipped"] == 0
    first = result["mentions"][0]
    assert [r["name"] for r in first["results"]] == ["Grace Hopper"]  # the entities of its name only
    assert {"rank", "index", "id", "qid", "name", "score", "s_t", "s_v", "s_c"} <= set(first["results"][0])
    assert {r["name"] for r in result["mentions"][2]["results"]} >= {"Washington", "George Washington"}
    assert all(len(m["results"]) <= 3 for m in result["mentions"])
    # the same span through /link scores its entity the same
    single = client.predict(TEXT, "Grace Hopper", handle_file(EXAMPLE_IMAGE), 20, api_name="/link")
    expected = next(r["score"] for r in single["results"] if r["id"] == first["results"][0]["id"])
    assert first["results"][0]["score"] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    for path in (ROOT, EXAMPLE_IMAGE):
        assert path not in str(result)


def test_link_text_api_finds_the_sessions_entities(app_server):
    from gradio_client import Client
    url, _, _ = app_server
    client = Client(url, verbose=False)
    client.predict("Zyx Quorble", "an invented inventor", None, api_name="/add_entity")
    mine = client.predict("Zyx Quorble met Grace Hopper.", None, 2, api_name="/link_text")
    assert mine["mentions"][0]["text"] == "Zyx Quorble" and mine["mentions"][0]["results"][0]["session"] is True
    other = Client(url, verbose=False).predict("Zyx Quorble met Grace Hopper.", None, 2, api_name="/link_text")
    assert [m["text"] for m in other["mentions"]] == ["Grace Hopper"]  # another session never sees it


@pytest.mark.parametrize("text,top_k,message", [
    ("Grace Hopper " * 8000, 3, "The sentence is 104,000 characters long; the limit is 100,000 characters."),
    ("   ", 3, "Please type a text to find mentions in."),
    ("Grace Hopper", 0, "Top k must be a whole number from 1 to 20."),
    ("Grace Hopper", 1.5, "Top k must be a whole number from 1 to 20."),
])
def test_link_text_api_refuses_hostile_input_naming_the_limit(app_server, text, top_k, message):
    from gradio_client import Client
    url, _, _ = app_server
    with pytest.raises(Exception, match=message.replace(".", r"\.")):
        Client(url, verbose=False).predict(text, None, top_k, api_name="/link_text")


def test_a_text_of_thousands_of_names_is_capped(app_server):
    from gradio_client import Client
    url, _, _ = app_server
    result = Client(url, verbose=False).predict("NASA " * 10_000, None, 1, api_name="/link_text")
    assert len(result["mentions"]) == MAX_SPANS and result["skipped"] == 10_000 - MAX_SPANS
    assert result["mentions"][-1]["start"] == 5 * (MAX_SPANS - 1)
