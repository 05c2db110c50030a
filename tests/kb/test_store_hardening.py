"""What an attacker or an unlucky operator did to stores, each reproduced: compaction more than once, a
reader opening while old versions are collected, files swapped for symlinks between check and copy, a
symlinked images/ folder, two encode-kb runs onto one --out, damaged or escaping manifest entries, and a
null name in `kb update`."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from PIL import Image

from mimic.data.readers import Entity
from mimic.kb import versions
from mimic.kb.edit import compact_store, edit_store, read_changes
from mimic.kb.encode import encode_store
from mimic.kb.fingerprint import file_fingerprint
from mimic.kb.store import KBStore, StoreError
from mimic.linker import Linker, Query
from tests.conftest import ROOT

SEGMENT_NAME = r"^s\d{6}-[0-9a-f]{8}$"


@pytest.fixture()
def store(tiny_model, synth_dataset, tmp_path):
    path = str(tmp_path / "kb")
    encode_store(tiny_model, synth_dataset.entities[:12], synth_dataset.kb_images, path,
                 file_fingerprint(synth_dataset.config.data.entity), progress=False)
    return path


def _picture(path, colour):
    Image.new("RGB", (24, 24), colour).save(path)
    return os.path.basename(path)


def _leftovers(path) -> list:
    """Work copies a writer left in the store's folders (.tmp-<segment>, .<file>.tmp)."""
    return [os.path.join(folder, entry) for folder in ("segments", "removed", "images", ".")
            if os.path.isdir(os.path.join(path, folder)) for entry in os.listdir(os.path.join(path, folder))
            if entry.startswith(".tmp-") or (entry.startswith(".") and entry.endswith(".tmp"))]


# -- 1. kb compact, again and again ------------------------------------------------------------------

def test_compaction_works_every_time_and_leaves_no_work_copy(store, tiny_model, tmp_path):
    edit_store(store, tiny_model, add=[Entity(0, "Kite", "a blue kite", [_picture(tmp_path / "k.png", (0, 0, 200))],
                                              "Qkite")], image_folder=str(tmp_path))
    before = Linker(tiny_model, KBStore.load(store)).link("the blue kite", "kite", None, 5)
    for round_ in range(3):
        manifest = compact_store(store, tiny_model, progress=False)
        (segment,) = manifest["segments"]
        assert segment["name"].startswith(f"s{manifest['kb_version']:06d}-"), segment["name"]
        assert sorted(os.listdir(os.path.join(store, "segments"))) == [segment["name"]]
        assert _leftovers(store) == []
    assert manifest["kb_version"] == 5
    after = Linker(tiny_model, KBStore.load(store)).link("the blue kite", "kite", None, 5)
    assert [r["id"] for r in after["results"]] == [r["id"] for r in before["results"]]
    assert [r["score"] for r in after["results"]] == pytest.approx([r["score"] for r in before["results"]], abs=1e-5)
    assert os.path.isfile(KBStore.load(store).entities[12]["image"])


def test_a_failed_rewrite_leaves_no_work_copy(store, tiny_model, monkeypatch):
    import mimic.kb.edit as edit
    monkeypatch.setattr(edit, "index_segment", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space")))
    with pytest.raises(OSError):
        compact_store(store, tiny_model, progress=False)
    assert _leftovers(store) == [] and len(KBStore.load(store)) == 12


# -- 4. a reader opening while old versions are collected ----------------------------------------------

def test_a_store_opened_before_a_compaction_links_after_it(store, tiny_model):
    opened = KBStore.load(store)  # e.g. `mimic link` opens the store, then spends seconds loading the model
    edit_store(store, remove=["Q1003"])
    compact_store(store, tiny_model, progress=False)  # the segments `opened` names are collected
    linker = Linker(tiny_model, opened)  # opens the retrieval index: a version whose files are gone
    assert len(linker.store) == 11 and linker.store.find("Q1003") is None  # it went on to the new version
    assert linker.link("the red falcon", "falcon", None, 3)["results"]
    assert opened.find("Q1004") is not None  # the id table was mapped when the store was opened


def test_refresh_gets_past_a_version_collected_while_it_opened(store, tiny_model, monkeypatch):
    linker = Linker(tiny_model, KBStore.load(store))
    edit_store(store, remove=["Q1001"])
    real_load = KBStore.load
    calls = []

    def load_then_compact(path):  # a compaction lands between opening the manifest and its index
        opened = real_load(path)
        if not calls:
            calls.append(path)
            compact_store(store, tiny_model, progress=False)
        return opened
    monkeypatch.setattr(KBStore, "load", staticmethod(load_then_compact))
    assert linker.refresh()
    assert len(linker.store) == 11 and linker.store.manifest["kb_version"] == 3


def test_a_missing_index_of_an_unchanged_store_is_named(store, tiny_model):
    (segment,) = KBStore.load(store).manifest["segments"]
    os.remove(os.path.join(store, "segments", segment["name"], "index.0.faiss"))
    with pytest.raises(StoreError, match=r"index.0.faiss is missing \(damaged store\)"):
        Linker(tiny_model, KBStore.load(store))


def test_readers_in_a_loop_never_fail_while_the_store_is_compacted(store, tiny_model):
    edit_store(store, remove=["Q1002"])
    failures, opened, stop = [], [0], threading.Event()

    def read():
        while not stop.is_set():
            try:
                Linker(tiny_model, KBStore.load(store)).searcher.search(probe, 3)
                opened[0] += 1
            except Exception as e:  # noqa: BLE001
                failures.append(repr(e))
    probe = Linker(tiny_model, KBStore.load(store)).mention_terms([Query("the red falcon", "falcon")])
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(6):
            compact_store(store, tiny_model, progress=False)
    finally:
        stop.set()
        reader.join()
    assert failures == [] and opened[0] > 0


# -- 5. a file swapped for a symlink between the check and the copy -----------------------------------

def test_kb_add_copies_the_file_it_checked_never_a_swapped_symlink(store, tiny_model, tmp_path, monkeypatch):
    photos, secret = tmp_path / "photos", tmp_path / "private" / "id_rsa"
    photos.mkdir()
    secret.parent.mkdir()
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + b"x" * 200)
    _picture(photos / "cat.png", (200, 100, 0))
    import mimic.kb.entity_images as entity_images
    real = entity_images.open_image

    def check_then_swap(source, *args, **kwargs):  # the attacker swaps the file right after it was judged
        image = real(source, *args, **kwargs)
        if os.path.exists(photos / "cat.png") and not os.path.islink(photos / "cat.png"):
            os.remove(photos / "cat.png")
            os.symlink(secret, photos / "cat.png")
        return image
    monkeypatch.setattr(entity_images, "open_image", check_then_swap)
    edit_store(store, tiny_model, add=[Entity(0, "Cat", "a cat", ["cat.png"], "Qcat")], image_folder=str(photos))
    stored = KBStore.load(store).entities[12]["image"]
    assert os.path.isfile(stored)
    with open(stored, "rb") as f:
        assert not f.read().startswith(b"-----BEGIN")  # the store holds the picture, not the key
    assert Image.open(stored).size == (24, 24)


def test_an_image_that_is_a_fifo_or_a_link_out_is_refused(store, tiny_model, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    os.mkfifo(photos / "pipe.png")  # reading it would wait forever
    with pytest.raises(StoreError, match="'pipe.png' is not a regular file"):
        edit_store(store, tiny_model, add=[Entity(0, "P", "", ["pipe.png"], "Qp")], image_folder=str(photos))
    (tmp_path / "outside.png").write_bytes((photos / "pipe.png").name.encode())
    os.symlink(tmp_path / "outside.png", photos / "link.png")
    with pytest.raises(StoreError, match="is outside the images folder"):
        edit_store(store, tiny_model, add=[Entity(0, "L", "", ["link.png"], "Ql")], image_folder=str(photos))


# -- 6. compaction and the images/ folder -----------------------------------------------------------

def test_compaction_never_deletes_through_a_symlinked_images_folder(store, tiny_model, tmp_path):
    edit_store(store, tiny_model, add=[Entity(0, "Kite", "a kite", [_picture(tmp_path / "k.png", (0, 0, 200))],
                                              "Qkite")], image_folder=str(tmp_path))
    users = tmp_path / "users-photos"
    shutil.move(os.path.join(store, "images"), users)  # someone moved the pictures and linked them back
    (users / "holiday.jpg").write_bytes(b"a user's own file")
    (users / "sub").mkdir()
    os.symlink(users, os.path.join(store, "images"))
    kept = sorted(os.listdir(users))
    compact_store(store, tiny_model, progress=False)
    assert sorted(os.listdir(users)) == kept  # nothing deleted through the link
    assert os.path.isfile(KBStore.load(store).entities[12]["image"])


def test_compaction_ignores_what_the_store_did_not_write(store, tiny_model, tmp_path):
    edit_store(store, tiny_model, add=[Entity(0, "Kite", "a kite", [_picture(tmp_path / "k.png", (0, 0, 200))],
                                              "Qkite")], image_folder=str(tmp_path))
    images = os.path.join(store, "images")
    os.mkdir(os.path.join(images, "sub"))
    with open(os.path.join(images, "notes.txt"), "w") as f:
        f.write("mine")
    edit_store(store, remove=["Qkite"])
    compact_store(store, tiny_model, progress=False)
    assert sorted(os.listdir(images)) == ["notes.txt", "sub"]  # the kite's copy went; the rest is not ours


# -- 7. two encode-kb onto one --out --------------------------------------------------------------

ENCODE = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from mimic.data.readers import Entity
    from mimic.kb.encode import encode_store, encode_terms
    from mimic.model.mimic import MIMIC, MIMICConfig

    model = MIMIC.from_encoder(MIMICConfig(encoder={clip!r}), seed=1).eval()
    entities = [Entity(i, f"thing {{i}}", "a thing", [], f"Q{{i}}") for i in range(24)]

    def slow_terms(start, end):  # the model's own terms, slowly, so that two runs overlap
        time.sleep({delay})
        return encode_terms(model, [f"thing {{i}} [SEP] a thing" for i in range(start, end)], [None] * (end - start), 8)
    encode_store(model, entities, ".", {out!r}, "kb", chunk_size=4, progress=False, wait={wait}, terms_of=slow_terms)
    print("finished")
""")


def _encode_process(tiny_clip, out, wait=600.0, delay=0.3):
    code = ENCODE.format(root=ROOT, clip=tiny_clip, out=out, wait=wait, delay=delay)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_encodings_onto_one_out_take_turns(tiny_clip, tmp_path):
    out = str(tmp_path / "kb")
    first, second = _encode_process(tiny_clip, out), _encode_process(tiny_clip, out)
    results = [p.communicate(timeout=300) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], results
    store = KBStore.load(out)
    assert len(store) == 24 and [e["id"] for e in store.entities] == [f"Q{i}" for i in range(24)]
    assert not os.path.exists(out + ".partial")


def test_an_encoding_that_cannot_wait_says_why(tiny_clip, tmp_path):
    out = str(tmp_path / "kb")
    first = _encode_process(tiny_clip, out, delay=2.0)  # 12 s of encoding: the second starts meanwhile
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(out + ".partial", "partial.json")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first run has started encoding
    second = _encode_process(tiny_clip, out, wait=0.2)
    _, err = second.communicate(timeout=300)
    assert second.returncode != 0 and "another command is changing this KB store (waited 0.2 s)" in err, err
    assert first.communicate(timeout=300)[0].strip() == "finished" and len(KBStore.load(out)) == 24


def test_restart_clears_a_work_folder_left_half_made(tiny_model, synth_dataset, tmp_path):
    out = str(tmp_path / "kb")
    work = out + ".partial"
    os.makedirs(os.path.join(work, "done"))  # a killed run had made its folders, not yet its plan
    with open(os.path.join(work, versions.WORK_MARKER), "w") as f:
        f.write("mimic-el\n")
    entities = synth_dataset.entities[:6]
    encode_store(tiny_model, entities, synth_dataset.kb_images, out, "kb", progress=False, restart=True)
    assert len(KBStore.load(out)) == 6 and not os.path.exists(work)


# -- 13. damaged and escaping manifest entries ---------------------------------------------------------

def test_a_truncated_index_is_named(store, tiny_model):
    (segment,) = KBStore.load(store).manifest["segments"]
    index = os.path.join(store, "segments", segment["name"], "index.0.faiss")
    with open(index, "r+b") as f:
        f.truncate(os.path.getsize(index) // 2)
    with pytest.raises(StoreError, match=r"index.0.faiss: damaged or truncated retrieval index"):
        Linker(tiny_model, KBStore.load(store))


@pytest.mark.parametrize("field,value", [
    ("segment", "../../other/segments/{name}"), ("segment", "/etc"), ("segment", ".."),
    ("index", "../index.0.faiss"), ("removed", "../../elsewhere.npy")])
def test_manifest_entries_that_leave_the_store_are_refused(store, tiny_model, tmp_path, field, value):
    other = str(tmp_path / "other")
    shutil.copytree(store, other)  # a second store: a crafted manifest must not serve it
    with open(os.path.join(store, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    if field == "segment":
        manifest["segments"][0]["name"] = value.format(name=manifest["segments"][0]["name"])
    elif field == "index":
        manifest["segments"][0]["index"]["parts"][0]["file"] = value
    else:
        manifest["removed"] = {"file": value, "count": 0}
    with open(os.path.join(store, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    with pytest.raises(StoreError, match="damaged manifest.*not a name this store gives"):
        Linker(tiny_model, KBStore.load(store))


# -- 16. kb update with "name": null ---------------------------------------------------------------

@pytest.mark.parametrize("name,message", [(None, "'name' cannot be null"), ("", "'name' cannot be empty"),
                                          ("   ", "'name' cannot be empty")])
def test_an_update_cannot_blank_a_name(tmp_path, name, message):
    path = tmp_path / "changes.json"
    path.write_text(json.dumps([{"id": "Q1", "name": name}]))
    with pytest.raises(StoreError, match=f"update #0 \\(id 'Q1'\\): {message}"):
        read_changes(str(path))
    path.write_text(json.dumps([{"id": "Q1", "description": None, "image": None}]))
    assert read_changes(str(path)) == [{"id": "Q1", "description": None, "image": None}]  # these may be cleared
