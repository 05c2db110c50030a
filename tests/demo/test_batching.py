"""Batched linking (demo/batching.py): requests that wait together share one encoder pass, and each gets the
answer it would get alone; a bad request is refused alone, and each session keeps its own added entities."""
import threading
import time
from types import SimpleNamespace

import gradio as gr
import pytest

from demo.handlers import DemoApp
from demo.kb import DemoKB
from demo.models import LoadedModel
from mimic.linker import Query, QueryError
from mimic.model.images import open_image
from tests.conftest import EXAMPLE_IMAGE

NAMES = ["Hopper", "Turing", "Newton", "Tesla", "Mercury", "Java", "Apple", "Python"]


@pytest.fixture()
def app(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_CACHE", str(tmp_path / "cache"))
    loaded = LoadedModel(tiny_model, "zero-shot", zero_shot=True)
    app = DemoApp(loaded, DemoKB(loaded), batch=True)
    app.kb.wait(120)
    assert app.kb.ready, app.kb.error
    return app


def all_at_once(app, calls):
    """Run the calls in threads while the model is held, so that they queue up and are batched; -> each call's
    answer or exception, and the number of encoder passes they took."""
    answers, passes = [None] * len(calls), app.batcher.passes

    def run(i):
        try:
            answers[i] = calls[i]()
        except Exception as e:
            answers[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    with app.model_lock:
        for thread in threads:
            thread.start()
        time.sleep(0.5)
    for thread in threads:
        thread.join(60)
    return answers, app.batcher.passes - passes


def same_ranking(got, expected):
    assert [r["index"] for r in got["results"]] == [r["index"] for r in expected["results"]]
    assert [r["id"] for r in got["results"]] == [r["id"] for r in expected["results"]]
    assert got["nil"] == expected["nil"]
    for a, b in zip(got["results"], expected["results"]):  # scores are ~100x cosines: 1e-5 is a float32 ulp there
        assert a["score"] == pytest.approx(b["score"], rel=1e-6, abs=1e-5)


def test_batched_answers_equal_one_by_one_and_a_bad_request_is_refused_alone(app, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    linker = app.kb.linker
    queries = [(f"We talked about {name} at the meeting number {i}.", name, EXAMPLE_IMAGE if i % 2 else None, 3 + i)
               for i, name in enumerate(NAMES)]
    calls = [lambda q=q: app.api_link(*q, request=SimpleNamespace(session_hash="s")) for q in queries]
    calls.append(lambda: app.api_link("A broken picture of Hopper.", "Hopper", str(broken), 5,
                                      request=SimpleNamespace(session_hash="s")))
    answers, passes = all_at_once(app, calls)
    assert isinstance(answers[-1], gr.Error) and "image" in answers[-1].message.lower()
    for (sentence, mention, image, top_k), got in zip(queries, answers):
        assert not isinstance(got, Exception), got
        assert got["sentence"] == sentence and got["mention"] == mention and len(got["results"]) == top_k
        same_ranking(got, linker.link(sentence, mention, open_image(image) if image else None, top_k))
    assert passes < len(queries)


def test_an_error_inside_a_batch_reaches_its_own_caller_only(app):
    linker = app.kb.linker
    good = [Query(f"{name} was in the news.", name, None) for name in NAMES[:4]]
    calls = [lambda q=q: app.batcher.link(linker, q, 5)[0] for q in good]
    calls.insert(2, lambda: app.batcher.link(linker, Query("Hopper again.", "Hopper", None), 0))  # Top k 0
    answers, passes = all_at_once(app, calls)
    assert isinstance(answers[2], QueryError)
    for q, got in zip(good, answers[:2] + answers[3:]):
        same_ranking(got, linker.link(q.sentence, q.mention, None, 5))
    assert passes < len(calls)
    same_ranking(app.batcher.link(linker, good[0], 5)[0], linker.link(good[0].sentence, good[0].mention, None, 5))


def test_a_query_s_terms_are_its_own_copy_not_a_view_of_the_batch(app):
    from mimic.model.matcher import map_terms
    linker = app.kb.linker
    calls = [lambda name=name: app.batcher.link(linker, Query(f"{name} here.", name, None), 5)[1] for name in NAMES]
    answers, passes = all_at_once(app, calls)
    assert passes < len(calls)
    # kept in the session's state for explain: holding the whole batch would multiply its memory
    map_terms(lambda t: t.shape[0] == 1 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
              or pytest.fail("a view of the batch"), answers[0])


def test_each_session_keeps_its_own_entities_in_a_batch(app):
    fish = ("Zyzzyva Quokkafish", "a rare fish of the deep sea")
    app.add_entity(*fish, request=SimpleNamespace(session_hash="mine"))
    query = ("Zyzzyva Quokkafish a rare fish of the deep sea", "Zyzzyva Quokkafish", None, 20)
    sessions = ["mine", "other"] * 3
    calls = [lambda s=s: app.api_link(*query, request=SimpleNamespace(session_hash=s)) for s in sessions]
    answers, passes = all_at_once(app, calls)
    assert passes < len(calls)
    for session, got in zip(sessions, answers):
        added = [r for r in got["results"] if r.get("session")]
        assert [r["name"] for r in added] == ([fish[0]] if session == "mine" else [])
        same_ranking(got, app.kb.linker.link(*query[:3], 20, extra=app.sessions.overlay(session)))


@pytest.mark.parametrize("flag, group, limit", [("1", "link", 16), ("0", "model", None)])
def test_mimic_batch_0_links_one_by_one_in_the_model_group(tiny_model, monkeypatch, flag, group, limit):
    from demo.layout import build_app
    from tests.demo.test_demo_page import IdleKB
    monkeypatch.setenv("MIMIC_BATCH", flag)
    loaded = LoadedModel(tiny_model, "zero-shot", zero_shot=True)
    app = DemoApp(loaded, IdleKB(loaded))
    assert (app.batcher is not None) == (flag == "1")
    fns = {fn.api_name: fn for fn in build_app(app).fns.values()}
    assert fns["link"].concurrency_id == group and fns["explain"].concurrency_id == "model"
    if limit:
        assert fns["link"].concurrency_limit == limit
