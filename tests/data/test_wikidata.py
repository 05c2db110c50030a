"""kb from-wikidata, offline: dump lines in the public layout (plain, gz, bz2; one worker or two), the
Wikidata API and the query service answered by a local server (tests/data/fakewiki.py)."""
import bz2
import collections
import gzip
import json

import pytest

from mimic.cli import main
from mimic.data import wikidata
from mimic.data.readers import DataError, read_entity_file
from mimic.data.web import Web, WebError, retry_after
from tests.data.fakewiki import ITEMS, LEXEME, PROPERTY, REDIRECT, FakeWiki, dump_text, item

ALL = ITEMS + [PROPERTY, LEXEME, REDIRECT]
EXPECTED = {"Q12418": ("Mona Lisa", "Mona_Lisa,_by_Leonardo_da_Vinci.jpg"),
            "Q45585": ("The Raft of the Medusa", "Raft preferred.jpg"),
            "Q1": ("Universe", None), "Q3": ("Deprecated only", None), "Q4": ("Nameless painting", "../../etc/passwd")}


@pytest.fixture()
def wiki():
    fake = FakeWiki().start()
    yield fake
    fake.stop()


def write_dump(tmp_path, entities, suffix=".json"):
    path = tmp_path / f"dump{suffix}"
    data = dump_text(entities).encode()
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else bz2.compress(data)
                     if suffix.endswith(".bz2") else data)
    return str(path)


def test_records_take_labels_aliases_and_the_best_ranked_picture():
    filters = wikidata.Filters()
    records = {}
    for entity in ALL:
        record, reason = wikidata.entity_record(entity, filters)
        records[entity["id"]] = record or reason
    assert records["Q12418"] == {"id": "Q12418", "qid": "Q12418", "name": "Mona Lisa",
                                 "description": "painting by Leonardo da Vinci", "aliases": ["La Gioconda"],
                                 "commons_file": "Mona_Lisa,_by_Leonardo_da_Vinci.jpg"}
    assert records["Q45585"]["commons_file"] == "Raft preferred.jpg"  # preferred over normal, never deprecated
    assert records["Q3"]["commons_file"] is None  # a deprecated picture is no picture
    assert records["Q1"]["name"] == "Universe" and records["Q1"]["description"] == ""  # the "mul" label
    assert records["Q2"] == "no label"
    assert (records["P18"], records["L7"], records["Q5"]) == ("not an item", "not an item", "redirect")
    french = wikidata.entity_record(item("Q9", "Joconde", lang="fr"), wikidata.Filters(lang="fr"))[0]
    assert french["name"] == "Joconde"
    assert wikidata.entity_record(item("Q9", "Joconde", lang="fr"), filters) == (None, "no label")


@pytest.mark.parametrize("suffix,workers", [(".json", 1), (".json.gz", 1), (".json.bz2", 2)])
def test_a_dump_is_streamed_in_any_compression(tmp_path, suffix, workers):
    path = write_dump(tmp_path, ALL, suffix)
    counts = collections.Counter()
    records = list(wikidata.read_dump(path, wikidata.Filters(), counts, workers=workers, batch=2))
    assert {r["id"]: (r["name"], r["commons_file"]) for r in records} == EXPECTED
    assert [r["id"] for r in records] == ["Q12418", "Q45585", "Q1", "Q3", "Q4"]  # dump order
    assert counts == {"no label": 1, "not an item": 2, "redirect": 1}


def test_filters_and_limit(tmp_path):
    path = write_dump(tmp_path, ALL)
    run = lambda filters, limit=None: [r["id"] for r in wikidata.read_dump(  # noqa: E731
        path, filters, collections.Counter(), limit=limit)]
    assert run(wikidata.Filters(require_image=True)) == ["Q12418", "Q45585", "Q4"]
    assert run(wikidata.Filters(min_sitelinks=40)) == ["Q12418", "Q45585"]
    assert run(wikidata.Filters(qids=frozenset({"Q45585", "Q1", "Q404"}))) == ["Q45585", "Q1"]
    assert run(wikidata.Filters(), limit=2) == ["Q12418", "Q45585"]


def test_a_huge_line_is_skipped_without_holding_it(tmp_path):
    huge = item("Q77", "Huge", "x" * 300_000)
    path = write_dump(tmp_path, [ITEMS[0], huge, ITEMS[1]], ".json.gz")
    counts = collections.Counter()
    records = list(wikidata.read_dump(path, wikidata.Filters(), counts, max_line=100_000))
    assert [r["id"] for r in records] == ["Q12418", "Q45585"] and counts["line too long"] == 1


def test_a_damaged_dump_is_refused_with_its_name(tmp_path):
    path = tmp_path / "dump.json.gz"
    path.write_bytes(gzip.compress(dump_text(ITEMS).encode())[:-30])
    with pytest.raises(DataError, match="dump.json.gz: the dump cannot be read"):
        list(wikidata.read_dump(str(path), wikidata.Filters(), collections.Counter()))


def test_cli_writes_an_entity_file_the_store_takes(tmp_path, capsys):
    dump, out = write_dump(tmp_path, ALL, ".json.bz2"), tmp_path / "e.jsonl"
    assert main(["kb", "from-wikidata", "--dump", dump, "--require-image", "--out", str(out), "--no-progress"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["Q12418", "Q45585", "Q4"]
    assert "3 entities, 3 with a Commons picture" in capsys.readouterr().out
    entities = read_entity_file(str(out))
    assert [(e.qid, e.name, e.attr, e.images) for e in entities][0] == (
        "Q12418", "Mona Lisa", "painting by Leonardo da Vinci", [])
    with pytest.raises(SystemExit, match="exists"):  # never overwritten
        main(["kb", "from-wikidata", "--dump", dump, "--out", str(out)])


def test_qids_through_wbgetentities_fifty_a_request(wiki):
    qids = ["Q12418", "Q5", "Q999"] + [f"Q{1000 + i}" for i in range(97)] + ["Q45585"]  # 101 ids: 3 requests
    counts = collections.Counter()
    records = list(wikidata.fetch_entities(Web(), qids, wikidata.Filters(), counts, f"{wiki.url}/w/api.php"))
    assert [r["id"] for r in records] == ["Q12418", "Q45585"]
    assert counts == {"missing": 98, "redirect": 1}
    asked = [p["ids"].split("|") for path, p, _, _ in wiki.log if path == "/w/api.php"]
    assert [len(ids) for ids in asked] == [50, 50, 1] and sum(asked, []) == qids
    assert all(p["languages"] == "en|mul" for path, p, _, _ in wiki.log)


def test_sparql_first_column_then_the_api(wiki, tmp_path, capsys):
    query = tmp_path / "louvre.rq"
    query.write_text("SELECT ?item ?itemLabel WHERE { ?item wdt:P195 wd:Q19675 }")
    out = tmp_path / "louvre.jsonl"
    assert main(["kb", "from-wikidata", "--sparql", str(query), "--out", str(out), "--no-progress",
                 "--sparql-endpoint", f"{wiki.url}/sparql", "--wikidata-api", f"{wiki.url}/w/api.php",
                 "--contact", "ops@example.org"]) == 0
    assert [json.loads(line)["name"] for line in out.read_text().splitlines()] == ["Mona Lisa",
                                                                                    "The Raft of the Medusa"]
    sparql = [entry for entry in wiki.log if entry[0] == "/sparql"]
    assert len(sparql) == 1 and "wd:Q19675" in sparql[0][2]["query"][0]
    assert all("ops@example.org" in entry[3] and entry[3].startswith("mimic-el/") for entry in wiki.log)


def test_a_busy_server_is_retried_after_its_retry_after(wiki):
    waits = []
    web = Web(sleep=waits.append, backoff=0.5, retries=3)
    wiki.busy["/w/api.php"] = 2
    records = list(wikidata.fetch_entities(web, ["Q12418"], wikidata.Filters(), collections.Counter(),
                                           f"{wiki.url}/w/api.php"))
    assert [r["id"] for r in records] == ["Q12418"] and waits == [7.0, 7.0]
    wiki.busy["/w/api.php"] = 5
    with pytest.raises(WebError, match="HTTP 429"):
        list(wikidata.fetch_entities(web, ["Q12418"], wikidata.Filters(), collections.Counter(),
                                     f"{wiki.url}/w/api.php"))
    assert waits[2:] == [7.0, 7.0, 7.0]
    assert retry_after("Wed, 21 Oct 2026 07:28:00 GMT", now=1792567670.0) == 10.0
    assert retry_after("soon") is None


def test_qid_files_are_checked(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("Q42\n# a comment\nhttp://www.wikidata.org/entity/Q1\n\nQ42\n")
    assert wikidata.read_qids(str(path)) == ["Q42", "Q1"]
    path.write_text("Q42\n../etc\n")
    with pytest.raises(DataError, match="line 2 is not a QID"):
        wikidata.read_qids(str(path))
    with pytest.raises(DataError, match="--lang"):
        wikidata.check_lang("en; rm -rf")


def test_a_bz2_dump_can_go_through_an_external_decompressor(tmp_path, monkeypatch):
    monkeypatch.setattr(wikidata, "PARALLEL_BZ2", ("bzip2",))  # lbzip2's interface; bzip2 is everywhere
    path = write_dump(tmp_path, ALL, ".json.bz2")
    raw, stream = wikidata.open_dump(path)
    assert isinstance(stream, wikidata._Piped)
    stream.close()
    raw.close()
    counts = collections.Counter()
    records = list(wikidata.read_dump(path, wikidata.Filters(), counts, workers=2, batch=2))
    assert {r["id"]: (r["name"], r["commons_file"]) for r in records} == EXPECTED
    assert counts == {"no label": 1, "not an item": 2, "redirect": 1}
    assert [r["id"] for r in wikidata.read_dump(path, wikidata.Filters(), counts, limit=1, batch=1)] == ["Q12418"]
    damaged = tmp_path / "damaged.json.bz2"
    damaged.write_bytes(open(path, "rb").read()[:-40])
    with pytest.raises(DataError, match="damaged.json.bz2: the dump cannot be read"):
        list(wikidata.read_dump(str(damaged), wikidata.Filters(), collections.Counter()))
