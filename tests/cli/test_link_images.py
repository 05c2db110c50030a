"""`link --image` of a missing or unreadable file is an error; in a queries file, a missing image is
counted in the log and marked on its output line."""
import json
import subprocess
import sys

import pytest

from tests.conftest import EXAMPLE_IMAGE


def run(*args):
    return subprocess.run([sys.executable, "-m", "mimic", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def store(synth_config_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("kb") / "kb"
    done = run("encode-kb", "--config", synth_config_path, "--init", "zero-shot", "--out", str(out), "--no-progress",
               "--device", "cpu")
    assert done.returncode == 0, done.stderr
    return str(out)


def test_a_missing_or_unreadable_image_is_an_error(store, tmp_path):
    query = ("--sentence", "the red falcon in lima", "--mention", "falcon", "--device", "cpu")
    missing = run("link", "--kb", store, *query, "--image", str(tmp_path / "missing.jpg"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip() == f"error: {tmp_path / 'missing.jpg'}: image file not found"
    (tmp_path / "notes.jpg").write_text("not a picture")
    damaged = run("link", "--kb", store, *query, "--image", str(tmp_path / "notes.jpg"))
    assert damaged.returncode == 2 and "error: notes.jpg: not an image PIL can read" in damaged.stderr
    found = run("link", "--kb", store, *query, "--image", EXAMPLE_IMAGE, "--json")
    assert found.returncode == 0 and len(json.loads(found.stdout)["results"]) == 10


def test_a_missing_image_in_a_queries_file_is_counted_and_marked(store, tmp_path):
    (tmp_path / "q.jsonl").write_text(
        json.dumps({"id": "here", "sentence": "the red falcon in lima", "mention": "falcon", "image": EXAMPLE_IMAGE})
        + "\n" + json.dumps({"id": "gone", "sentence": "the red falcon in lima", "mention": "falcon",
                             "image": "photos/gone.jpg"})
        + "\n" + json.dumps({"id": "none", "sentence": "the red falcon in lima", "mention": "falcon"}) + "\n")
    out = run("link", "--kb", store, "--queries", str(tmp_path / "q.jsonl"), "--out", str(tmp_path / "o.jsonl"),
              "--exact", "--no-progress", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "1 of 2 query images are missing (first: line 2: photos/gone.jpg)" in out.stderr
    assert "3 results written to" in out.stdout and "(1 with a missing image)" in out.stdout
    lines = {line["id"]: line for line in map(json.loads, open(tmp_path / "o.jsonl"))}
    assert lines["gone"]["image_missing"] is True
    assert "image_missing" not in lines["here"] and "image_missing" not in lines["none"]
    # linked as a text-only query: the same ranking as the line without an image
    assert [r["index"] for r in lines["gone"]["results"]] == [r["index"] for r in lines["none"]["results"]]
