"""kb fetch-images, offline: the Commons API and its thumbnails answered by a local server
(tests/data/fakewiki.py): normalised titles, missing files, 429, a thumbnail that is not an image, one off
the upload host, hostile Artist HTML and file names."""
import json
import os

import pytest

import mimic.data.commons as commons
from mimic.cli import main
from mimic.data.web import Web
from tests.data.fakewiki import FakeWiki, png

ENTITIES = [
    {"id": "Q12418", "qid": "Q12418", "name": "Mona Lisa", "description": "painting",
     "commons_file": "Mona_Lisa,_by_Leonardo_da_Vinci.jpg"},  # asked with underscores: Commons normalises it
    {"id": "Q45585", "qid": "Q45585", "name": "The Raft of the Medusa", "description": "painting",
     "commons_file": "Raft preferred.jpg"},
    {"id": "Q3", "qid": "Q3", "name": "Lost", "description": "", "commons_file": "Deleted long ago.jpg"},
    {"id": "Q4", "qid": "Q4", "name": "Traversal", "description": "", "commons_file": "../../../tmp/evil.png"},
    {"id": "Q6", "qid": "Q6", "name": "Text", "description": "", "commons_file": "Not a picture.jpg"},
    {"id": "Q7", "qid": "Q7", "name": "Elsewhere", "description": "", "commons_file": "Off host.jpg"},
    {"id": "Q8", "qid": "Q8", "name": "No picture", "description": "", "commons_file": None},
]
HOSTILE_ARTIST = ('<script>alert("x")</script><b>Théodore</b> &amp; <a href="javascript:evil()">Géricault</a>'
                  '<style>b{}</style><img src=x onerror=alert(1)>')


@pytest.fixture()
def wiki():
    fake = FakeWiki().start()
    fake.files = {
        "File:Mona Lisa, by Leonardo da Vinci.jpg": (fake.image_entry("File:Mona Lisa, by Leonardo da Vinci.jpg"),
                                                     png((10, 20, 30))),
        "File:Raft preferred.jpg": (fake.image_entry("File:Raft preferred.jpg", artist=HOSTILE_ARTIST,
                                                     licence="Public domain"), png((90, 90, 90))),
        "File:../../../tmp/evil.png": (fake.image_entry("File:../../../tmp/evil.png"), png((1, 2, 3))),
        "File:Not a picture.jpg": (fake.image_entry("File:Not a picture.jpg"), b"<html>404 page</html>"),
        "File:Off host.jpg": (fake.image_entry("File:Off host.jpg",
                                               thumb=fake.url.replace("127.0.0.1", "localhost") + "/thumb/x"), b""),
    }
    yield fake
    fake.stop()


def fetch(wiki, folder, entities, **options):
    hosts = {"127.0.0.1"}
    return commons.fetch_images(Web(sleep=lambda s: None), entities, str(folder), 336, f"{wiki.url}/commons/api.php",
                                hosts, **options)


def test_pictures_and_credits_are_fetched_and_checked(wiki, tmp_path):
    entities = [dict(e) for e in ENTITIES]
    folder = tmp_path / "images"
    counts = fetch(wiki, folder, entities)
    assert counts == {"fetched": 3, "with a picture": 3, "missing on Commons": 1, "failed: not an image": 1,
                      "failed: refused address": 1}
    by_id = {e["id"]: e for e in entities}
    mona = by_id["Q12418"]
    assert mona["image_credit"] == {"licence": "CC BY-SA 4.0", "licence_url": "https://creativecommons.org/licenses/by-sa/4.0",
                                    "artist": "Ann Painter",
                                    "source": "https://commons.wikimedia.org/wiki/File%3AMona%20Lisa%2C%20by%20"
                                              "Leonardo%20da%20Vinci.jpg"}
    assert os.path.isfile(folder / mona["image"]) and mona["image"].endswith(".png")
    assert by_id["Q45585"]["image_credit"]["artist"] == "Théodore & Géricault"  # no script, no tags
    assert by_id["Q45585"]["image_credit"]["licence"] == "Public domain"
    evil = by_id["Q4"]["image"]  # saved under a name of its own, inside the folder
    assert "/" not in evil and os.path.isfile(folder / evil) and not os.path.exists(tmp_path.parent / "tmp" / "evil.png")
    for qid in ("Q3", "Q6", "Q7", "Q8"):  # kept, without a picture
        assert "image" not in by_id[qid] and "image_credit" not in by_id[qid]
    api = [p for path, p, _, _ in wiki.log if path == "/commons/api.php"]
    assert len(api) == 1 and api[0]["iiprop"] == "url|extmetadata" and api[0]["iiurlwidth"] == "336"
    assert len(api[0]["titles"].split("|")) == 6 and "File:Mona_Lisa,_by_Leonardo_da_Vinci.jpg" not in api[0]["titles"]
    assert not [1 for path, *_ in wiki.log if path == "/thumb/x"]  # the off-host address was never asked


def test_a_second_run_fetches_only_what_is_missing(wiki, tmp_path):
    folder = tmp_path / "images"
    fetch(wiki, folder, [dict(e) for e in ENTITIES])
    first = len(wiki.log)
    fresh = [dict(e) for e in ENTITIES]  # as if the entity file had not been written (an interruption)
    counts = fetch(wiki, folder, fresh)
    asked = wiki.log[first:]
    titles = sum((p["titles"].split("|") for path, p, _, _ in asked if path == "/commons/api.php"), [])
    assert sorted(titles) == ["File:Not a picture.jpg", "File:Off host.jpg"]  # the failures, nothing else
    assert counts["with a picture"] == 3 and {e["id"] for e in fresh if e.get("image")} == {"Q12418", "Q45585", "Q4"}
    done = [dict(e) for e in fresh]
    before = len(wiki.log)
    fetch(wiki, folder, [e for e in done if e.get("image")])
    assert len(wiki.log) == before  # entities with their picture cost no request


def test_busy_commons_is_waited_for_and_thumbnails_are_bounded(wiki, tmp_path, monkeypatch):
    waits = []
    wiki.busy["/commons/api.php"] = 1
    monkeypatch.setattr(commons, "MAX_THUMBNAIL", 50)  # smaller than any PNG of the fake
    entities = [dict(ENTITIES[0])]
    counts = commons.fetch_images(Web(sleep=waits.append), entities, str(tmp_path / "i"), 336,
                                  f"{wiki.url}/commons/api.php", {"127.0.0.1"})
    assert waits == [7.0] and counts == {"failed: download": 1, "with a picture": 0}


def test_artist_html_becomes_bounded_plain_text():
    assert commons.plain_text(HOSTILE_ARTIST) == "Théodore & Géricault"
    assert commons.plain_text("<p>" + "a " * 10_000 + "</p>", 20) == "a " * 9 + "a…"
    assert commons.plain_text("<br>") is None and commons.plain_text(None) is None
    assert commons.credit_of({"extmetadata": {"LicenseUrl": {"value": "javascript:alert(1)"}},
                              "descriptionurl": "file:///etc/passwd"}) == {
        "licence": None, "licence_url": None, "artist": None, "source": None}
    assert commons.file_title("File:A_b.jpg") == "File:A b.jpg" and commons.file_title("a|b.jpg") is None


def test_cli_updates_the_entity_file_atomically(wiki, tmp_path, capsys):
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in ENTITIES[:3]))
    assert main(["kb", "fetch-images", "--entities", str(path), "--images", str(tmp_path / "img"), "--no-progress",
                 "--commons-api", f"{wiki.url}/commons/api.php"]) == 0
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [bool(e.get("image")) for e in lines] == [True, True, False]
    assert "2 of 3 entities with a picture" in capsys.readouterr().out
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_from_wikidata_to_credited_link_results(wiki, tiny_clip, tmp_path, capsys):
    """The documented pipeline, offline: from-wikidata, fetch-images, encode-kb, link --json."""
    from tests.data.fakewiki import ITEMS, dump_text
    (tmp_path / "dump.json").write_text(dump_text(ITEMS))
    entities, images, store = str(tmp_path / "e.jsonl"), str(tmp_path / "img"), str(tmp_path / "kb")
    assert main(["kb", "from-wikidata", "--dump", str(tmp_path / "dump.json"), "--require-image", "--out", entities,
                 "--no-progress"]) == 0
    assert main(["kb", "fetch-images", "--entities", entities, "--images", images, "--no-progress",
                 "--commons-api", f"{wiki.url}/commons/api.php"]) == 0
    assert main(["encode-kb", "--entities", entities, "--images", images, "--init", "zero-shot", "--encoder", tiny_clip,
                 "--out", store, "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["link", "--kb", store, "--sentence", "The Mona Lisa smiles.", "--mention", "Mona Lisa", "--json",
                 "--device", "cpu", "--top-k", "3"]) == 0
    rows = {r["id"]: r["image_credit"] for r in json.loads(capsys.readouterr().out)["results"]}
    assert rows["Q12418"]["artist"] == "Ann Painter" and rows["Q45585"]["artist"] == "Théodore & Géricault"
    assert set(rows) == {"Q12418", "Q45585", "Q4"}
