"""A living KB (add / update / remove at the cost of the change, live reload, stable ids, images only from
--images, compaction) and NIL answers. Crashes, concurrent writers and readers: test_store_safety.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import mimic.kb.segment as segment_module
from mimic.data.readers import Entity
from mimic.kb.edit import compact_store, edit_store, read_changes
from mimic.kb.encode import encode_store
from mimic.kb.fingerprint import file_fingerprint
from mimic.kb.store import KBStore, StoreError
from mimic.linker import Linker, Query
from mimic.nil import best_threshold, calibrate, is_nil


def _entities(dataset, part):
    return [Entity(index=e.index, name=e.name, attr=e.attr, images=list(e.images), qid=e.qid) for e in part]


def build(model, dataset, entities, out, **options):
    encode_store(model, entities, dataset.kb_images, str(out), file_fingerprint(dataset.config.data.entity),
                 batch_size=8, progress=False, **options)
    return str(out)


def top(linker, dataset, mentions, k=10):
    terms = linker.mention_terms([Query(m.sentence, m.mention, dataset.mention_image(m)) for m in mentions])
    from mimic.model.matcher import select
    return [linker.link_terms(select(terms, slice(i, i + 1)), k, exact=True)["results"] for i in range(len(mentions))]


def terms_of(store, ids) -> dict:
    return store.read_terms([store.find(i) for i in ids])


def assert_terms_close(x: dict, y: dict):
    """Coded terms of the same entities encoded in other batches: float rounding may move a value across
    a code boundary (one 4-bit step, or one unit of the 24-bit codes), on a handful of values at most."""
    assert sorted(x) == sorted(y)
    for name in x:
        off = np.abs(x[name] - y[name]) > 1e-4 * (1 + np.abs(y[name]))
        assert off.mean() < 2e-3, (name, off.sum())


def test_adding_to_a_store_equals_building_it_whole(tiny_model, synth_dataset, tmp_path):
    everything = _entities(synth_dataset, synth_dataset.entities)
    whole = build(tiny_model, synth_dataset, everything, tmp_path / "whole")
    grown = build(tiny_model, synth_dataset, everything[:30], tmp_path / "grown")
    manifest = edit_store(grown, tiny_model, add=everything[30:], image_folder=synth_dataset.kb_images, batch_size=8)
    assert manifest["count"] == 48 and manifest["kb_version"] == 2 and len(manifest["segments"]) == 2
    a, b = KBStore.load(whole), KBStore.load(grown)
    ids = [e["id"] for e in a.entities]
    assert ids == [e["id"] for e in b.entities]
    assert_terms_close(terms_of(a, ids), terms_of(b, ids))
    mentions = synth_dataset.split("test")
    for p, q in zip(top(Linker(tiny_model, a), synth_dataset, mentions), top(Linker(tiny_model, b), synth_dataset,
                                                                            mentions)):
        assert [r["id"] for r in p] == [r["id"] for r in q]
        assert [r["score"] for r in p] == pytest.approx([r["score"] for r in q], abs=1e-4)


def test_an_edit_costs_the_change_not_the_store(tiny_model, synth_dataset, tmp_path, monkeypatch):
    path = build(tiny_model, synth_dataset, _entities(synth_dataset, synth_dataset.entities[:40]), tmp_path / "kb")
    base = KBStore.load(path).segments[0].folder
    files = {f: os.stat(os.path.join(r, f)) for r, _, fs in os.walk(base) for f in fs}
    read = []
    real = segment_module.Segment.read
    monkeypatch.setattr(segment_module.Segment, "read", lambda self, names, rows: read.append(
        (self.folder, len(range(*rows.indices(self.count))) if isinstance(rows, slice) else len(rows)))
        or real(self, names, rows))
    edit_store(path, tiny_model, add=_entities(synth_dataset, synth_dataset.entities[40:43]),
               image_folder=synth_dataset.kb_images, remove=["Q1002"])
    assert sum(n for folder, n in read if folder == base) == 0  # no row of the existing segment was read
    after = {f: os.stat(os.path.join(r, f)) for r, _, fs in os.walk(base) for f in fs}
    assert {f: (s.st_ino, s.st_mtime_ns) for f, s in after.items()} == {
        f: (s.st_ino, s.st_mtime_ns) for f, s in files.items()}  # nor rewritten


def test_removed_entities_are_never_returned_and_updates_take_effect(tiny_model, synth_dataset, tmp_path):
    path = build(tiny_model, synth_dataset, _entities(synth_dataset, synth_dataset.entities), tmp_path / "kb")
    linker = Linker(tiny_model, KBStore.load(path))
    gone = ["Q1000", "Q1008", "Q1016", "Q1024", "Q1040"]
    edit_store(path, remove=gone)
    assert linker.refresh() and len(linker.store) == 43 and not linker.refresh()
    for rows in top(linker, synth_dataset, synth_dataset.split("test"), k=43):
        assert not {r["id"] for r in rows} & set(gone) and len(rows) == 43
    for k in (5, 43):  # the default path skips removed rows too, and still finds k entities
        result = linker.link("the red falcon in lima", "falcon", None, k)["results"]
        assert len(result) == k and not {r["id"] for r in result} & set(gone)
    edit_store(path, tiny_model, update=[{"id": "Q1001", "name": "Zanzibar Lighthouse",
                                          "description": "a lighthouse on zanzibar", "image": None}],
               image_folder=synth_dataset.kb_images)
    linker.refresh()
    result = linker.link("the zanzibar lighthouse at night", "zanzibar lighthouse", None, 3)
    record = linker.store.entities[linker.store.find("Q1001")]
    assert record["name"] == "Zanzibar Lighthouse" and record["image"] is None and record["index"] == 42
    assert linker.store.manifest["kb_version"] == 3 and linker.store.manifest["history"][0]["removed"] == gone
    assert result["results"][0]["id"] == "Q1001"


def test_update_changes_only_the_fields_given(tiny_model, synth_dataset, tmp_path):
    path = build(tiny_model, synth_dataset, _entities(synth_dataset, synth_dataset.entities[:10]), tmp_path / "kb")
    store = KBStore.load(path)
    before = store.entities[store.find("Q1003")]
    assert before["image"]
    (tmp_path / "changes.json").write_text(json.dumps([{"id": "Q1003", "description": "now described anew"},
                                                        {"id": "Q1004", "image": None}]))
    edit_store(path, tiny_model, update=read_changes(str(tmp_path / "changes.json")),
               image_folder=synth_dataset.kb_images)
    store = KBStore.load(path)
    after = store.entities[store.find("Q1003")]
    assert after["image"] == before["image"] and after["name"] == before["name"]  # kept
    assert after["description"] == "now described anew"
    assert store.entities[store.find("Q1004")]["image"] is None  # "image": null removes it
    # the kept image was encoded again: the same terms as encoding the entity with that image from scratch
    fresh = build(tiny_model, synth_dataset, [Entity(0, before["name"], "now described anew",
                                                     [os.path.basename(before["image"])], "Q1003")], tmp_path / "one")
    assert_terms_close(terms_of(store, ["Q1003"]), terms_of(KBStore.load(fresh), ["Q1003"]))
    for bad, message in [([{"id": "Q1003"}], "gives none of name, description, image"),
                         ([{"name": "x"}], "has no \"id\""), ([{"id": "Q1003", "image": 3}], "must be text or null"),
                         ({"id": "Q1"}, "expected a JSON list")]:
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(StoreError, match=message):
            read_changes(str(tmp_path / "bad.json"))


def test_images_come_only_from_the_images_folder(tiny_model, synth_dataset, tmp_path):
    path = build(tiny_model, synth_dataset, _entities(synth_dataset, synth_dataset.entities[:5]), tmp_path / "kb")
    photos, outside = tmp_path / "photos", tmp_path / "secret"
    photos.mkdir()
    outside.mkdir()
    (outside / "id_rsa").write_text("-----BEGIN PRIVATE KEY-----")
    Image.new("RGB", (20, 20), (200, 0, 0)).save(outside / "red.png")
    (photos / "notes.png").write_text("not a picture")
    os.symlink(outside / "red.png", photos / "link.png")
    cases = [("../secret/id_rsa", "its image '../secret/id_rsa' is outside the images folder"),
             (str(outside / "red.png"), "is outside the images folder"),
             ("link.png", "its image 'link.png' is outside the images folder"),
             ("notes.png", "entity 'Qbad': its image cannot be used: notes.png: not an image"),
             ("missing.png", "image file 'missing.png' not found")]
    for image, message in cases:
        with pytest.raises(StoreError, match=message):
            edit_store(path, tiny_model, add=[Entity(0, "Bad", "", [image], "Qbad")], image_folder=str(photos))
        with pytest.raises(StoreError, match=message.replace("'Qbad'", "'Q1001'")):
            edit_store(path, tiny_model, update=[{"id": "Q1001", "image": image}], image_folder=str(photos))
    store = KBStore.load(path)
    assert len(store) == 5 and store.manifest["kb_version"] == 1 and not os.path.exists(os.path.join(path, "images"))
    with pytest.raises(StoreError, match="its image '../secret/id_rsa' is outside"):  # encode-kb checks them too
        build(tiny_model, synth_dataset, [Entity(0, "Bad", "", ["../secret/id_rsa"], "Qbad")], tmp_path / "kb2")


def test_added_images_are_copied_into_the_store(tiny_model, synth_dataset, tmp_path):
    path = build(tiny_model, synth_dataset, _entities(synth_dataset, synth_dataset.entities[:5]), tmp_path / "kb")
    Image.new("RGB", (40, 30), (10, 200, 10)).save(tmp_path / "upload.png")
    edit_store(path, tiny_model, add=[Entity(0, "Green Thing", "a green thing", ["upload.png"], "Qg")],
               image_folder=str(tmp_path))
    os.remove(tmp_path / "upload.png")  # the upload goes away; the store keeps its copy
    record = KBStore.load(path).entities[-1]
    assert record["image"].startswith(os.path.abspath(path)) and os.path.isfile(record["image"])
    moved = str(tmp_path / "moved")
    os.rename(path, moved)  # the copy is named relative to the store, so the store can move
    assert os.path.isfile(KBStore.load(moved).entities[-1]["image"])


def test_ids_stay_what_link_shows_after_removals(tiny_model, synth_dataset, tmp_path):
    plain = [{"name": e.name, "description": e.attr} for e in synth_dataset.entities[:12]]  # no QIDs
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    from mimic.data.readers import read_entity_file
    path = build(tiny_model, synth_dataset, read_entity_file(str(tmp_path / "plain.json")), tmp_path / "kb")
    edit_store(path, remove=["0", "1", "2"])
    linker = Linker(tiny_model, KBStore.load(path))
    row = linker.link("the falcon flew over lima", "falcon", None, 3)["results"][0]
    assert row["index"] != int(row["id"])  # positions moved; the id did not
    assert linker.store.entities[row["index"]]["id"] == row["id"]
    edit_store(path, remove=[row["id"]])  # the id link shows is the one remove takes
    linker.refresh()
    assert linker.store.find(row["id"]) is None and len(linker.store) == 8
    assert [e["id"] for e in linker.store.entities] == [str(i) for i in range(3, 12) if str(i) != row["id"]]


def test_edits_name_the_problem(tiny_model, synth_dataset, tmp_path):
    path = build(tiny_model, synth_dataset, _entities(synth_dataset, synth_dataset.entities[:10]), tmp_path / "kb")
    with pytest.raises(StoreError, match="cannot add 'Q1003': the KB already has an entity with that id"):
        edit_store(path, tiny_model, add=[Entity(0, "x", "y", qid="Q1003")])
    with pytest.raises(StoreError, match="no entity with the id 'Q9'"):
        edit_store(path, remove=["Q9"])
    with pytest.raises(StoreError, match="has no id"):
        edit_store(path, tiny_model, add=[Entity(0, "x", "y")])
    with pytest.raises(StoreError, match="the id 'Q1001' appears twice"):
        edit_store(path, tiny_model, update=[{"id": "Q1001", "name": "a"}], remove=["Q1001"])
    with pytest.raises(StoreError, match="would leave the KB empty"):
        edit_store(path, remove=[f"Q{1000 + i}" for i in range(10)])
    from mimic.model.mimic import MIMIC, MIMICConfig
    other = MIMIC.from_encoder(MIMICConfig(encoder=tiny_model.config.encoder), seed=77)
    with pytest.raises(StoreError, match="encoded with another checkpoint"):
        edit_store(path, other, add=[Entity(0, "x", "y", qid="Qnew")])


def test_a_failed_edit_leaves_the_old_version_and_the_next_edit_cleans_up(tiny_model, synth_dataset, tmp_path,
                                                                           monkeypatch):
    import mimic.kb.versions as versions
    path = build(tiny_model, synth_dataset, _entities(synth_dataset, synth_dataset.entities[:20]), tmp_path / "kb")
    before = terms_of(KBStore.load(path), ["Q1000", "Q1019"])
    real = versions.write_json

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(versions, "write_json", full_disk)  # fails at the switch, after every file is written
    with pytest.raises(OSError):
        edit_store(path, tiny_model, add=_entities(synth_dataset, synth_dataset.entities[20:25]),
                   image_folder=synth_dataset.kb_images)
    store = KBStore.load(path)
    assert len(store) == 20 and store.manifest["kb_version"] == 1
    for name, values in terms_of(store, ["Q1000", "Q1019"]).items():
        assert np.array_equal(values, before[name])
    monkeypatch.setattr(versions, "write_json", real)
    edit_store(path, remove=["Q1005"])
    named = {s["name"] for s in KBStore.load(path).manifest["segments"]}
    assert set(os.listdir(os.path.join(path, "segments"))) == named  # the failed edit's segment is gone


def test_compaction_keeps_ids_order_and_rankings(tiny_model, synth_dataset, tmp_path):
    path = build(tiny_model, synth_dataset, _entities(synth_dataset, synth_dataset.entities[:30]), tmp_path / "kb")
    Image.new("RGB", (20, 20), (0, 0, 250)).save(tmp_path / "blue.png")
    Image.new("RGB", (20, 20), (250, 250, 0)).save(tmp_path / "yellow.png")
    edit_store(path, tiny_model, add=[Entity(0, "Blue", "a blue thing", ["blue.png"], "Qb"),
                                      Entity(0, "Yellow", "a yellow thing", ["yellow.png"], "Qy")],
               image_folder=str(tmp_path))
    edit_store(path, tiny_model, update=[{"id": "Q1004", "description": "changed"}], remove=["Q1007", "Qy"],
               image_folder=synth_dataset.kb_images)
    store = KBStore.load(path)
    ids, mentions = [e["id"] for e in store.entities], synth_dataset.split("test")[:15]
    before = top(Linker(tiny_model, store), synth_dataset, mentions)
    terms = store.read_terms(np.arange(len(store)))
    manifest = compact_store(path, tiny_model, progress=False)
    compacted = KBStore.load(path)
    for name, values in compacted.read_terms(np.arange(len(compacted))).items():
        assert np.array_equal(values, terms[name]), name  # the coded values are copied, not coded again
    assert len(manifest["segments"]) == 1 and manifest["removed"] is None and manifest["kb_version"] == 4
    assert [e["id"] for e in compacted.entities] == ids
    kept_image = compacted.entities[compacted.find("Qb")]["image"]
    assert os.listdir(os.path.join(path, "images")) == [os.path.basename(kept_image)]  # Qy's copy is gone
    for p, q in zip(before, top(Linker(tiny_model, compacted), synth_dataset, mentions)):
        assert [r["id"] for r in p] == [r["id"] for r in q]
        assert [r["score"] for r in p] == pytest.approx([r["score"] for r in q], abs=1e-4)


def test_kb_commands(tiny_model, synth_config_path, tmp_path):
    from mimic.train.checkpoint import save_model
    save_model(tiny_model, str(tmp_path / "ckpt"))
    run = lambda *a: subprocess.run([sys.executable, "-m", "mimic", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=300)
    out = run("encode-kb", "--config", synth_config_path, "--checkpoint", str(tmp_path / "ckpt"), "--out",
              str(tmp_path / "kb"), "--no-progress", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    (tmp_path / "new.json").write_text(json.dumps([{"id": "Qx", "name": "Xylophone", "description": "an instrument"}]))
    out = run("kb", "add", "--kb", str(tmp_path / "kb"), "--entities", str(tmp_path / "new.json"))
    assert out.returncode == 0, out.stderr
    assert "version 2, 49 entities" in out.stdout
    (tmp_path / "change.json").write_text(json.dumps([{"id": "Qx", "description": "a percussion instrument"}]))
    out = run("kb", "update", "--kb", str(tmp_path / "kb"), "--entities", str(tmp_path / "change.json"))
    assert out.returncode == 0 and "version 3, 49 entities" in out.stdout, out.stderr
    out = run("link", "--kb", str(tmp_path / "kb"), "--sentence", "a percussion instrument: the xylophone",
              "--mention", "xylophone", "--top-k", "2")
    assert out.returncode == 0 and "id" in out.stdout.splitlines()[0] and "Qx" in out.stdout, out.stderr
    out = run("kb", "remove", "--kb", str(tmp_path / "kb"), "--ids", "Qx", "Q1000")
    assert out.returncode == 0 and "version 4, 47 entities" in out.stdout
    out = run("kb", "remove", "--kb", str(tmp_path / "kb"), "--ids", "Qx")
    assert out.returncode == 2 and "no entity with the id 'Qx'" in out.stderr
    out = run("kb", "compact", "--kb", str(tmp_path / "kb"), "--no-progress")
    assert out.returncode == 0 and "version 5, 47 entities" in out.stdout, out.stderr
    out = run("kb", "upgrade", "--kb", str(tmp_path / "kb"), "--no-progress")
    assert out.returncode == 2 and "already in format 2" in out.stderr


# -- NIL ---------------------------------------------------------------------------------------------

def test_best_threshold_maximises_accuracy():
    accuracy, threshold = best_threshold(np.array([5.0, 6.0, 7.0]), np.array([True, True, False]), np.array([1.0, 2.0]))
    assert threshold == 5.0 and accuracy == pytest.approx(4 / 5)  # the wrong top-1 (7.0) cannot be saved
    assert is_nil([4.0, 3.0], {"feature": "score", "threshold": 5.0}) is True
    assert is_nil([6.0, 5.9], {"feature": "margin", "threshold": 0.5}) is True
    assert is_nil([6.0, 3.0], {"feature": "margin", "threshold": 0.5}) is False
    assert is_nil([6.0], None) is False


def test_calibrate_separates_linked_from_removed_mentions():
    rng = np.random.default_rng(0)
    tops, gold = [], []
    for i in range(200):  # the gold scores ~10, the best wrong entity ~4
        tops.append([(i, 10 + rng.normal()), (1000 + i, 4 + rng.normal()), (2000 + i, 3 + rng.normal())])
        gold.append(i)
    report = calibrate(tops, gold, share=0.5, seed=1)
    assert report["removed"] == 100 and report["accuracy"] > 0.97 and report["accuracy_without_nil"] == 0.5
    assert 4 < report["threshold"] < 10 or report["feature"] == "margin"


@pytest.fixture(scope="module")
def trained_checkpoint(synth_config_path, tiny_clip, tmp_path_factory):
    from mimic.data.readers import load_config
    from mimic.model.mimic import MIMIC, MIMICConfig
    from mimic.train.trainer import train
    out = tmp_path_factory.mktemp("nil")
    result = train(MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=0),
                   load_config(synth_config_path, [f"output_dir={out}"]), progress=False)
    return result["best_model"], result["best_checkpoint"]


def test_calibrate_nil_command_on_the_synthetic_dataset(trained_checkpoint, synth_config_path, tmp_path, synth_dataset):
    folder, lightning = trained_checkpoint
    out = subprocess.run([sys.executable, "-m", "mimic", "calibrate-nil", "--config", synth_config_path, "--checkpoint",
                          folder, "--out", str(tmp_path / "nil.json"), "--no-progress", "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.load(open(tmp_path / "nil.json"))
    # measured: 48 dev mentions, 24 with their gold removed -> about 90 % (without NIL: under 50 %)
    assert report["count"] == 48 and report["removed"] == 24
    assert report["accuracy"] >= 0.8 and report["accuracy"] > report["accuracy_without_nil"] + 0.3
    from mimic.train.checkpoint import load_checkpoint
    model = load_checkpoint(folder)
    assert model.config.metadata["nil"]["threshold"] == report["threshold"]
    store = str(tmp_path / "kb")
    encode_store(model, synth_dataset.entities[:24], synth_dataset.kb_images, store, "kb", progress=False)
    linker = Linker(model, KBStore.load(store))
    # mentions of entities in the KB mostly link to them; mentions of entities left out are mostly NIL
    def results(mentions):
        return [linker.link(m.sentence, m.mention, synth_dataset.mention_image(m)) for m in mentions]
    test = synth_dataset.split("test")
    inside = [m for m in test if synth_dataset.gold(m) < 24]
    linked = [not r["nil"] and r["results"][0]["index"] == synth_dataset.gold(m) for m, r in zip(inside, results(inside))]
    outside = [m for m in test if synth_dataset.gold(m) >= 24]
    assert np.mean(linked) >= 0.6 and np.mean([r["nil"] for r in results(outside)]) >= 0.5
