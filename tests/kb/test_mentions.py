"""Every mention of a text (mimic/kb/mentions.py, Linker.link_text): detection with exact offsets in the
original text, link_text rows equal to link's, session entities found, the span cap, hostile texts."""
import time

import pytest

from mimic.data.readers import Entity
from mimic.kb.encode import encode_store
from mimic.kb.mentions import MAX_SPANS, MentionIndex, context_window, find_spans, name_forms, normalise
from mimic.kb.overlay import Overlay
from mimic.kb.store import KBStore
from mimic.linker import Linker, QueryError
from mimic.model.mimic import MIMIC, MIMICConfig

NAMES = [("Edward Hopper", ["Ed Hopper"]), ("Grace Hopper", []), ("Mercury (planet)", []), ("Freddie Mercury", []),
         ("Nighthawks", []), ("Café de Flore", []), ("Apple Inc.", []), ("New York City", ["NYC", "New York"]),
         ("O’Brien", []), ("iPhone", []), ("aspirin", []), ("Jean-Paul Sartre", [])]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_CACHE", str(tmp_path / "cache"))  # the name index's cache: never the home folder


def _index():
    return MentionIndex.build((i, name, aliases) for i, (name, aliases) in enumerate(NAMES))


def _spans(text, max_spans=MAX_SPANS):
    spans, skipped = find_spans(text, [_index()], max_spans)
    return [(s["start"], s["end"], s["text"], s["support"], s["candidates"][0].tolist()) for s in spans], skipped


def test_short_forms_of_people_places_and_organisations():
    forms = dict(name_forms("Mercury (planet)"))
    assert forms == {"Mercury (planet)": 2, "Mercury": 1}
    assert dict(name_forms("Edward Hopper")) == {"Edward Hopper": 2, "Hopper": 1}
    assert dict(name_forms("Apple Inc.")) == {"Apple Inc.": 2, "Apple": 1}
    assert dict(name_forms("Martin Luther King Jr.")) == {"Martin Luther King Jr.": 2, "King": 1}
    assert dict(name_forms("Paris, Texas")) == {"Paris, Texas": 2, "Paris": 1}
    assert dict(name_forms("aspirin")) == {"aspirin": 2}  # one word: no short form


def test_offsets_are_in_the_original_text_through_accents_quotes_and_hyphens():
    text = "“Nighthawks” by Edward Hopper’s hand hung in Cafe\u0301 de Flore; Jean–Paul Sartre saw it."
    spans, skipped = _spans(text)
    assert skipped == 0
    assert spans == [(1, 11, "Nighthawks", "name", [4]),
                     (16, 29, "Edward Hopper", "name", [0]),  # the possessive ’s is left out
                     (45, 59, "Cafe\u0301 de Flore", "name", [5]),  # the combining accent belongs to the span
                     (61, 77, "Jean–Paul Sartre", "name", [11])]
    norm, starts, ends = normalise("Ça’s")
    assert norm == "ca's" and starts == [0, 1, 2, 3] and ends == [1, 2, 3, 4]


def test_longest_best_supported_span_wins_and_short_forms_are_weaker():
    spans, _ = _spans("Hopper met Grace Hopper in New York City; NYC loved Mercury and Apple.")
    assert spans == [(0, 6, "Hopper", "short form", [0, 1]),
                     (11, 23, "Grace Hopper", "name", [1]),
                     (27, 40, "New York City", "name", [7]),  # not "New York" inside it
                     (42, 45, "NYC", "name", [7]),
                     (52, 59, "Mercury", "short form", [2, 3]),
                     (64, 69, "Apple", "short form", [6])]


def test_lowercase_common_words_are_not_names_unless_the_kb_writes_them_so():
    spans, _ = _spans("an apple, a hopper, the iphone, some aspirin, an IPHONE")
    assert [(s[2], s[4]) for s in spans] == [("aspirin", [10]), ("IPHONE", [9])]


def test_word_boundaries_hold():
    spans, _ = _spans("Hoppers and grasshopper and EdwardHopper and Mercurys and O'Brien")
    assert [s[2] for s in spans] == ["O'Brien"]  # the straight quote matches the KB's curly one


def test_context_is_the_whole_short_text_or_a_window_around_the_span():
    assert context_window("Hopper painted.", 0, 6) == (0, 15)
    text = "word " * 200 + "Hopper " + "word " * 200
    start = text.index("Hopper")
    lo, hi = context_window(text, start, start + 6)
    assert lo < start < start + 6 < hi and hi - lo <= 240 and text[lo] != " " and text[lo - 1] == " "


def test_detection_is_capped_and_fast_on_hostile_texts():
    text = "Edward Hopper " * 10_000
    started = time.perf_counter()
    spans, skipped = find_spans(text, [_index()], MAX_SPANS)
    assert time.perf_counter() - started < 5
    assert len(spans) == MAX_SPANS and skipped == 10_000 - MAX_SPANS
    assert spans[-1]["start"] == 14 * (MAX_SPANS - 1)
    assert find_spans("", [_index()]) == ([], 0) and find_spans("\u0301\u200b", [_index()]) == ([], 0)
    junk = MentionIndex.build([(0, "...", ["--", "x"]), (1, "R2", [])])  # punctuation, one letter: no forms
    assert len(junk) == 1 and [s["text"] for s in find_spans("Wait... R2 -- x!", [junk])[0]] == ["R2"]


# -- the linker ----------------------------------------------------------------------------------

def _names_store(model, out: str) -> KBStore:
    """A store of NAMES, their aliases kept in its records (Entity.aliases, as an entity file gives them)."""
    entities = [Entity(i, name, f"entity {i}", qid=f"Q{i + 1}", aliases=aliases) for i, (name, aliases) in enumerate(NAMES)]
    encode_store(model, entities, ".", out, "kb", batch_size=8, progress=False)
    return KBStore.load(out)


@pytest.fixture(scope="module")
def text_linker(tiny_clip, tmp_path_factory):
    model = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=2).eval()
    return Linker(model, _names_store(model, str(tmp_path_factory.mktemp("names") / "store")))


def test_link_text_rows_equal_link_for_each_span(text_linker):
    text = "Edward Hopper painted Nighthawks; NYC and Mercury admired it."
    result = text_linker.link_text(text, top_k=5)
    assert [(m["start"], m["end"], m["text"]) for m in result["mentions"]] == [
        (0, 13, "Edward Hopper"), (22, 32, "Nighthawks"), (34, 37, "NYC"), (42, 49, "Mercury")]
    assert result["skipped"] == 0
    assert [r["name"] for r in result["mentions"][2]["results"]] == ["New York City"]  # found by its alias
    assert {r["name"] for r in result["mentions"][3]["results"]} == {"Mercury (planet)", "Freddie Mercury"}
    for mention in result["mentions"]:
        assert mention["context"] == [0, len(text)]
        every = text_linker.link(text, mention["text"], top_k=len(NAMES), exact=True)
        score_of = {r["id"]: r for r in every["results"]}
        assert [r["rank"] for r in mention["results"]] == list(range(1, len(mention["results"]) + 1))
        for row in mention["results"]:
            for key in ("score", "s_t", "s_t_g2g", "s_t_g2l", "s_v", "s_v_e2m", "s_v_m2e", "s_c"):
                # within 1e-5, or one part in a million of the random tiny model's large scores (batch order)
                assert row[key] == pytest.approx(score_of[row["id"]][key], rel=1e-6, abs=1e-5), key
    # search=True adds the search's own top k: then the rows are link's own
    searched = text_linker.link_text(text, top_k=3, search=True)["mentions"][0]["results"]
    linked = text_linker.link(text, "Edward Hopper", top_k=3, exact=True)["results"]
    assert [r["id"] for r in searched] == [r["id"] for r in linked]


def test_link_text_with_a_picture_reads_it_once_and_scores_as_link(text_linker):
    from PIL import Image
    picture = Image.new("RGB", (64, 48), (200, 40, 40))
    text = "Grace Hopper and Freddie Mercury"
    result = text_linker.link_text(text, picture, top_k=2)
    for mention in result["mentions"]:
        single = text_linker.link(text, mention["text"], picture, top_k=len(NAMES), exact=True)["results"]
        expected = {r["id"]: r["score"] for r in single}
        assert [r["score"] for r in mention["results"]] == pytest.approx(
            [expected[r["id"]] for r in mention["results"]], rel=1e-6, abs=1e-5)


def test_session_entities_join_the_detection(text_linker):
    overlay = Overlay(text_linker.store.manifest["precision"], limit=5)
    overlay.add(text_linker.model, "Ada Lovelace", "wrote the first program")
    result = text_linker.link_text("Ada Lovelace met Grace Hopper.", extra=overlay)
    first = result["mentions"][0]
    assert (first["start"], first["end"]) == (0, 12)
    assert first["results"][0]["id"] == "session:1" and first["results"][0]["session"] is True
    alone = text_linker.link_text("Ada Lovelace met Grace Hopper.")
    assert [m["text"] for m in alone["mentions"]] == ["Grace Hopper"]


def test_link_text_caps_spans_and_refuses_bad_input(text_linker):
    result = text_linker.link_text("Nighthawks, " * 300, max_spans=20)
    assert len(result["mentions"]) == 20 and result["skipped"] == 280
    assert text_linker.link_text("nothing to see here")["mentions"] == []
    with pytest.raises(QueryError, match="Please type a text"):
        text_linker.link_text("  \n ")
    with pytest.raises(QueryError, match="must be a string"):
        text_linker.link_text(["Hopper"])
    with pytest.raises(QueryError, match="Top k must be"):
        text_linker.link_text("Edward Hopper", top_k=0)


def test_ner_spans_are_optional_and_ranked_by_the_search(text_linker, monkeypatch):
    from mimic.kb import mentions
    text = "Edward Hopper met Zorblat Quux."
    plain = text_linker.link_text(text)
    monkeypatch.setitem(mentions._ner, mentions.NER_PIPELINE, None)  # spaCy absent: nothing changes
    assert text_linker.link_text(text, ner=True) == plain
    import mimic.linker as linker_module
    monkeypatch.setattr(linker_module, "ner_spans", lambda t: [(0, 6), (18, 30), (40, 50)])  # a fake NER
    result = text_linker.link_text(text, top_k=3, ner=True)
    assert [(m["start"], m["end"], m["support"]) for m in result["mentions"]] == [(0, 13, "name"), (18, 30, "ner")]
    searched = text_linker.link(text, "Zorblat Quux", top_k=3)["results"]
    assert [r["id"] for r in result["mentions"][1]["results"]] == [r["id"] for r in searched]


def test_an_edited_store_is_found_at_the_next_text(text_linker, tmp_path):
    from mimic.kb.edit import edit_store
    linker = Linker(text_linker.model, _names_store(text_linker.model, str(tmp_path / "store")))
    text = "Zyx Quorble met Grace Hopper."
    assert [m["text"] for m in linker.link_text(text)["mentions"]] == ["Grace Hopper"]
    edit_store(str(tmp_path / "store"), linker.model, add=[Entity(0, "Zyx Quorble", "new", qid="Q99")], remove=["Q2"])
    assert linker.refresh()
    found = linker.link_text(text)["mentions"]
    assert [(m["text"], m["support"]) for m in found] == [("Zyx Quorble", "name"), ("Hopper", "short form")]
    assert [r["id"] for r in found[0]["results"]] == ["Q99"]
    assert [r["name"] for r in found[1]["results"]] == ["Edward Hopper"]  # Grace Hopper is gone


def test_the_name_index_is_cached_per_store_version(text_linker, tmp_path, monkeypatch):
    import os

    from mimic.kb import mentions
    from mimic.kb.edit import edit_store
    store = _names_store(text_linker.model, str(tmp_path / "store"))
    first = Linker(text_linker.model, store).link_text("Grace Hopper")
    cached = os.listdir(tmp_path / "cache" / "mentions")
    assert len(cached) == 1 and cached[0].endswith(".pkl")
    built = []
    monkeypatch.setattr(mentions, "store_index", lambda s: built.append(s) or MentionIndex.build([]))
    assert Linker(text_linker.model, KBStore.load(str(tmp_path / "store"))).link_text("Grace Hopper") == first
    assert built == []  # read from the cache, not built
    edit_store(str(tmp_path / "store"), text_linker.model, add=[Entity(0, "Zyx Quorble", "", qid="Q99")])
    monkeypatch.undo()
    monkeypatch.setenv("MIMIC_CACHE", str(tmp_path / "cache"))
    later = Linker(text_linker.model, KBStore.load(str(tmp_path / "store"))).link_text("Zyx Quorble")
    assert [m["text"] for m in later["mentions"]] == ["Zyx Quorble"]
    assert len(os.listdir(tmp_path / "cache" / "mentions")) == 1  # the old version's file replaced
    (tmp_path / "blocked").write_text("")  # a cache folder that cannot be made: built, never an error
    monkeypatch.setenv("MIMIC_CACHE", str(tmp_path / "blocked"))
    assert Linker(text_linker.model, KBStore.load(str(tmp_path / "store"))).link_text("Zyx Quorble") == later


def test_in_a_long_text_each_mention_reads_the_words_around_it(text_linker):
    text = "Edward Hopper painted. " + "Then nothing happened for a while. " * 12 + "Freddie Mercury sang."
    result = text_linker.link_text(text, top_k=3)
    first, last = result["mentions"]
    assert first["context"][0] == 0 and first["context"][1] < len(text) - 100
    assert last["context"][1] == len(text) and last["context"][0] > 100
    for mention in (first, last):
        start, end = mention["context"]
        assert start <= mention["start"] and mention["end"] <= end and end - start <= 240
        single = text_linker.link(text[start:end], mention["text"], top_k=len(NAMES), exact=True)["results"]
        score_of = {r["id"]: r["score"] for r in single}
        assert [r["score"] for r in mention["results"]] == pytest.approx(
            [score_of[r["id"]] for r in mention["results"]], rel=1e-6, abs=1e-5)
