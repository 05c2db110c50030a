"""The pre-encoded KB store: format 2 (segments, coded terms, saved index, records read on demand),
resumable and shardable encoding, fingerprints, damaged stores refused with a message, folders that are
not stores never overwritten, format-1 stores read and upgraded."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import mimic.kb.encode as encode_module
import mimic.kb.segment as segment_module
import mimic.kb.store as store_module
from mimic.data.readers import Entity
from mimic.kb import compression, retrieval
from mimic.kb.encode import encode_store, merge_shards
from mimic.kb.fingerprint import file_fingerprint, model_fingerprints
from mimic.kb.search import Searcher
from mimic.kb.store import KBStore, StoreError
from mimic.linker import Linker
from mimic.model.matcher import Features, flatten_terms, select
from mimic.model.mimic import MIMIC, MIMICConfig


def _kb(dataset):
    return dataset.entities, dataset.kb_images, file_fingerprint(dataset.config.data.entity)


def encode(model, dataset, out, **options):
    entities, images, fingerprint = _kb(dataset)
    return encode_store(model, entities, images, out, fingerprint, progress=False, **options)


def all_terms(path) -> dict:
    store = KBStore.load(path)
    return store.read_terms(np.arange(len(store)))


def assert_same_store(a, b):
    x, y = all_terms(a), all_terms(b)
    assert sorted(x) == sorted(y)
    for name in x:
        assert np.array_equal(x[name], y[name]), name
    assert list(KBStore.load(a).entities) == list(KBStore.load(b).entities)


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory, synth_dataset, tiny_clip):
    model = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=1).eval()
    out = str(tmp_path_factory.mktemp("stores") / "full")
    encode(model, synth_dataset, out, chunk_size=10, batch_size=5)
    return out


def test_store_layout_and_contents(reference_store, synth_dataset, tiny_model):
    store = KBStore.load(reference_store)
    manifest = store.manifest
    assert len(store) == 48 and manifest["version"] == 2 and manifest["precision"] == "compact"
    assert manifest["terms"]["tglu.query"] == {"codec": "centred4", "shape": [40, 96]}
    assert manifest["terms"]["tglu.t_g"]["codec"] == "float24" and "vdlu.e2m.q_norm" not in manifest["terms"]
    [segment] = manifest["segments"]
    assert segment["count"] == 48 and segment["index"]["kind"] == "sq8"
    assert sorted(os.listdir(os.path.join(reference_store, "segments", segment["name"]))) == [
        "entities.jsonl", "entities.offsets.npy", "ids.hash.npy", "ids.row.npy", "index.0.faiss", "segment.json",
        "terms"]
    first = store.entities[0]
    assert first == {"index": 0, "id": "Q1000", "qid": "Q1000", "name": "The Falcon",
                     "description": synth_dataset.entities[0].attr,
                     "image": os.path.realpath(os.path.join(synth_dataset.kb_images, "Q1000.jpg")),
                     "image_credit": None, "aliases": None}  # the synthetic KB: no credits, no aliases
    assert store.entities[-1]["index"] == 47 and [e["id"] for e in store.entities[46:]] == ["Q1046", "Q1047"]
    searcher = Searcher(tiny_model.matcher, store)
    terms = searcher.entity_terms(torch.tensor([3, 0]))
    assert terms["tglu"]["query"].shape == (2, 40, 96) and terms["tglu"]["query"].dtype == torch.float32
    with torch.no_grad():
        q_norm = tiny_model.matcher.vdlu.dual_ent2men.layer_norm(terms["vdlu"]["e2m"]["q"])
    torch.testing.assert_close(terms["vdlu"]["e2m"]["q_norm"], q_norm)  # recomputed, not stored
    store.check_model(model_fingerprints(tiny_model))


def test_entity_records_are_read_on_demand(reference_store, monkeypatch):
    calls = []
    real = segment_module.json.loads
    def counting(text, *args, **kwargs):  # records are parsed from the map's bytes; the manifest is text
        if isinstance(text, bytes):
            calls.append(1)
        return real(text, *args, **kwargs)
    monkeypatch.setattr(segment_module.json, "loads", counting)
    store = KBStore.load(reference_store)
    assert calls == []  # opening parses no record
    assert store.entities[5]["id"] == "Q1005" and len(calls) == 1
    assert store.find("Q1044") == 44 and store.find("Q9999") is None
    assert len(calls) <= 3  # found through the id table, not by reading the records


def test_compact_precision_changes_scores_little(tmp_path, synth_dataset, tiny_model, reference_store):
    exact = str(tmp_path / "f32")
    encode(tiny_model, synth_dataset, exact, precision="float32")
    linkers = [Linker(tiny_model, KBStore.load(p)) for p in (exact, reference_store)]
    mentions = synth_dataset.split("test")[:12]
    from mimic.linker import Query
    terms = linkers[0].mention_terms([Query(m.sentence, m.mention, synth_dataset.mention_image(m)) for m in mentions])
    everything = torch.arange(48)
    a, b = (linker.searcher.score(terms, everything).s for linker in linkers)
    assert (a - b).abs().max() < 2e-3 * a.abs().max()
    for i in range(len(mentions)):  # the same top-5 for every mention here
        one = select(terms, slice(i, i + 1))
        assert [r["id"] for r in linkers[0].link_terms(one, 5)["results"]] == [
            r["id"] for r in linkers[1].link_terms(one, 5)["results"]]
    sizes = {name: compression.bytes_per_entity(spec["codec"], spec["shape"])
             for name, spec in KBStore.load(reference_store).manifest["terms"].items()}
    assert sizes["tglu.query"] == 40 * 48 + 40 * 4 + 96 * 2 and sizes["tglu.t_g"] == 3 * 64


@pytest.mark.parametrize("codec,bound", [("float32", 0), ("float24", 2 ** -16), ("float16", 2 ** -11),
                                         ("affine8", 0.5 / 255), ("affine4", 0.5 / 15), ("centred4", 0.5 / 15)])
def test_codecs_round_trip_within_their_bound(codec, bound):
    rng = np.random.default_rng(0)  # rows that share a part, as the tokens of one text do
    x = (rng.standard_normal((50, 1, 33)) * 3 + rng.standard_normal((50, 7, 33))).astype(np.float32)
    x[3, 2] = 1.5  # a constant row: its step is 0
    coded = compression.encode(codec, x)
    assert [a.shape[1:] for a in coded] == [s for s, _ in compression.stored_shapes(codec, (7, 33))]
    decoded = compression.decode(codec, coded, 33)
    if codec.startswith("affine"):  # half a step of each row's range (the range kept in float16)
        span = x.max(-1, keepdims=True) - x.min(-1, keepdims=True)
        assert (np.abs(decoded - x) <= bound * span * 1.01 + 1e-3).all()
        assert np.array_equal(decoded[3, 2], np.full(33, 1.5, np.float32))
    elif codec == "centred4":  # the same, of each row minus the entity's mean row (kept in float16)
        centre = x.mean(-2, keepdims=True)
        residual = x - centre
        span = residual.max(-1, keepdims=True) - residual.min(-1, keepdims=True)
        assert (np.abs(decoded - x) <= bound * span * 1.01 + 2 ** -11 * np.abs(centre) + 1e-3).all()
        assert np.abs(decoded - x).std() < 0.6 * np.abs(compression.decode("affine4", compression.encode(
            "affine4", x), 33) - x).std()  # the rows share a part here: centring halves the error
    else:
        assert (np.abs(decoded - x) <= bound * np.abs(x) + 1e-30).all()
    if codec != "centred4":  # the others code their own output unchanged; centred4 is copied, never recoded
        recoded = compression.encode(codec, decoded)
        assert all(np.array_equal(a, b) for a, b in zip(coded, recoded))
    with pytest.raises(compression.CodecError, match="not finite"):
        compression.encode(codec, np.array([[[1.0, np.nan]]], np.float32))


def test_interrupted_then_resumed_encoding_is_identical(tmp_path, synth_dataset, tiny_model, reference_store,
                                                         monkeypatch):
    calls = {"n": 0}
    real = encode_module.encode_batch

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the middle of chunk 2
        return real(*args, **kwargs)

    out = str(tmp_path / "kb")
    monkeypatch.setattr(encode_module, "encode_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        encode(tiny_model, synth_dataset, out, chunk_size=10, batch_size=5)
    # nothing half-written where the store goes: the folder, marked and locked from the start, holds no version
    assert sorted(os.listdir(out)) == [".lock", ".mimic-el-kb", "segments"] and not os.listdir(out + "/segments")
    assert sorted(os.listdir(out + ".partial/done")) == ["000000"]  # chunk 0 finished, chunk 1 did not
    with pytest.raises(StoreError, match="encoding has not finished"):
        KBStore.load(out)
    done = []
    monkeypatch.setattr(encode_module, "encode_batch", lambda *a, **k: done.append(1) or real(*a, **k))
    encode(tiny_model, synth_dataset, out, chunk_size=10, batch_size=5)
    assert len(done) == 8  # 38 remaining entities in batches of 5 within chunks of 10: chunk 0 was not redone
    assert not os.path.exists(out + ".partial")
    assert_same_store(out, reference_store)


def test_a_partial_encoding_of_another_model_is_not_resumed(tmp_path, synth_dataset, tiny_model, tiny_clip):
    out = str(tmp_path / "kb")
    other = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=9)
    encode_module.encode_chunks(other, *_kb(synth_dataset)[:2], out + ".partial",
                               {"encoder": "x", "checkpoint": "y", "kb": "z"}, chunk_size=10, progress=False)
    with pytest.raises(StoreError, match="an unfinished encoding of another job is here"):
        encode(tiny_model, synth_dataset, out, chunk_size=10)
    encode(tiny_model, synth_dataset, out, chunk_size=10, restart=True)
    assert len(KBStore.load(out)) == 48


def test_shards_merge_into_the_same_store(tmp_path, synth_dataset, tiny_model, reference_store):
    shards = [str(tmp_path / f"shard{i}") for i in range(3)]
    for i, shard in enumerate(shards):
        encode(tiny_model, synth_dataset, shard, chunk_size=10, batch_size=5, shard=(i, 3))
    with pytest.raises(StoreError, match=r"2 of 5 chunks are not encoded yet \(the first: entities 0-9\)"):
        merge_shards(shards[1:], str(tmp_path / "merged"), *_kb(synth_dataset), tiny_model, progress=False)
    merge_shards(shards, str(tmp_path / "merged"), *_kb(synth_dataset), tiny_model, progress=False)
    assert_same_store(str(tmp_path / "merged"), reference_store)


def test_store_of_another_model_is_refused(reference_store, tiny_clip, tmp_path):
    from mimic.data.synthetic import make_tiny_clip
    store = KBStore.load(reference_store)
    other_weights = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=2)
    with pytest.raises(StoreError, match="encoded with another checkpoint"):
        store.check_model(model_fingerprints(other_weights))
    other_clip = MIMIC.from_encoder(MIMICConfig(encoder=make_tiny_clip(str(tmp_path / "c"), seed=5)), seed=1)
    with pytest.raises(StoreError, match="encoded with another encoder"):
        store.check_model(model_fingerprints(other_clip))


def _copy(reference_store, tmp_path):
    broken = str(tmp_path / "broken")
    shutil.copytree(reference_store, broken)
    manifest = json.load(open(os.path.join(broken, "manifest.json")))
    return broken, manifest, os.path.join(broken, "segments", manifest["segments"][0]["name"])


def test_damaged_stores_are_refused(reference_store, tmp_path):
    broken, manifest, segment = _copy(reference_store, tmp_path)
    query = os.path.join(segment, "terms", "tglu.query.npy")
    data = open(query, "rb").read()
    open(query, "wb").write(data[: len(data) // 2])
    with pytest.raises(StoreError, match="tglu.query.npy: damaged or truncated"):
        KBStore.load(broken)
    os.remove(query)
    with pytest.raises(StoreError, match=r"segments/s\d+-\w+/terms/tglu.query.npy is missing \(damaged store\)"):
        KBStore.load(broken)
    for key in ("count", "terms", "segments"):
        with open(os.path.join(broken, "manifest.json"), "w") as f:
            json.dump({k: v for k, v in manifest.items() if k != key}, f)
        with pytest.raises(StoreError, match=f"damaged manifest \\(it has no '{key}'\\)"):
            KBStore.load(broken)
    with open(os.path.join(broken, "manifest.json"), "w") as f:
        f.write("{ not json")
    with pytest.raises(StoreError, match="damaged manifest"):
        KBStore.load(broken)
    with pytest.raises(StoreError, match="no such KB store folder"):
        KBStore.load(str(tmp_path / "nothing"))


@pytest.mark.parametrize("line", ['[1, 2]', '"a text"', '42', 'null', '{"id": "Q1"} x', '{"id": '])
def test_a_record_that_is_not_an_object_is_refused_at_load(reference_store, tmp_path, line):
    broken, manifest, segment = _copy(reference_store, tmp_path)
    records = open(os.path.join(segment, "entities.jsonl"), "rb").read().split(b"\n")[:-1]
    records[7] = line.encode()
    data = b"".join(r + b"\n" for r in records)
    open(os.path.join(segment, "entities.jsonl"), "wb").write(data)
    offsets = np.concatenate([[0], np.cumsum([len(r) + 1 for r in records])]).astype(np.int64)
    np.save(os.path.join(segment, "entities.offsets.npy"), offsets)
    with pytest.raises(StoreError, match="entities.jsonl: line 8 is not an entity record"):
        KBStore.load(broken)


def test_the_demo_re_encodes_a_store_whose_manifest_lost_its_count(reference_store, tmp_path, synth_dataset,
                                                                    tiny_model):
    broken, manifest, _ = _copy(reference_store, tmp_path)
    with open(os.path.join(broken, "manifest.json"), "w") as f:
        json.dump({k: v for k, v in manifest.items() if k != "count"}, f)
    with pytest.raises(StoreError):
        KBStore.load(broken)
    encode(tiny_model, synth_dataset, broken, restart=True)  # what demo/kb.py does on a StoreError
    assert len(KBStore.load(broken)) == 48


def test_encode_kb_never_replaces_a_folder_that_is_not_a_store(tmp_path, synth_dataset, tiny_model):
    data = tmp_path / "data"
    data.mkdir()
    (data / "precious.txt").write_text("hours of work")
    with pytest.raises(StoreError, match=f"{data} is not a mimic-el KB store \\(it holds precious.txt\\); it was "
                                         "left untouched"):
        encode(tiny_model, synth_dataset, str(data))
    assert (data / "precious.txt").read_text() == "hours of work" and os.listdir(data) == ["precious.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="exists and is not a folder"):
        encode(tiny_model, synth_dataset, str(tmp_path / "file"))
    (tmp_path / "kb.partial").mkdir()
    (tmp_path / "kb.partial" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="is not an unfinished mimic-el encoding"):
        encode(tiny_model, synth_dataset, str(tmp_path / "kb"), restart=True)
    assert (tmp_path / "kb.partial" / "notes.txt").read_text() == "mine"
    shard = tmp_path / "shard"
    shard.mkdir()
    (shard / "a.txt").write_text("mine")
    with pytest.raises(StoreError, match="is not an unfinished mimic-el encoding"):
        encode(tiny_model, synth_dataset, str(shard), shard=(0, 2))
    (tmp_path / "empty").mkdir()
    encode(tiny_model, synth_dataset, str(tmp_path / "empty"))  # an empty folder is fine
    assert len(KBStore.load(str(tmp_path / "empty"))) == 48


def test_save_model_never_replaces_a_folder_that_is_not_a_checkpoint(tmp_path, tiny_model):
    from mimic.fileio import OutputError
    from mimic.train.checkpoint import load_checkpoint, save_model
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("chapter 1")
    with pytest.raises(OutputError, match="is not a folder this command writes; it was left untouched"):
        save_model(tiny_model, str(folder))
    assert os.listdir(folder) == ["thesis.tex"]
    save_model(tiny_model, str(tmp_path / "ckpt"))
    save_model(tiny_model, str(tmp_path / "ckpt"))  # a checkpoint is replaced
    # killed between the two renames of a replacement: the previous checkpoint, set aside with the marker
    # (tests/train/test_checkpoint_leftovers.py), is put back, not deleted
    from mimic.fileio import MARKER
    (tmp_path / "ckpt" / MARKER).write_text("")
    os.rename(tmp_path / "ckpt", tmp_path / ".ckpt.abc.old")
    save_model(tiny_model, str(tmp_path / "ckpt"))
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "notes"]
    assert load_checkpoint(str(tmp_path / "ckpt")) is not None


def test_a_reader_racing_a_new_version_opens_the_new_one(reference_store, tmp_path, monkeypatch):
    copy, manifest, segment = _copy(reference_store, tmp_path)
    real = store_module.Segment
    moved = str(tmp_path / "moved")

    def racing(folder, *args, **kwargs):
        if os.path.exists(segment):  # a writer publishes a new version and removes the old segment
            os.rename(segment, moved)
            renamed = dict(manifest, segments=[dict(manifest["segments"][0], name="s000002-beef")])
            os.rename(moved, os.path.join(copy, "segments", "s000002-beef"))
            with open(os.path.join(copy, ".m"), "w") as f:
                json.dump(renamed, f)
            os.replace(os.path.join(copy, ".m"), os.path.join(copy, "manifest.json"))
        return real(folder, *args, **kwargs)
    monkeypatch.setattr(store_module, "Segment", racing)
    store = KBStore.load(copy)
    assert len(store) == 48 and store.manifest["segments"][0]["name"] == "s000002-beef"


# -- retrieval beyond the exhaustive codes: a KB of random entities at the tiny model's dimensions -----

def random_terms(model, seed=0):
    """terms_of(start, end): random encoder outputs through the matcher (no CLIP), fixed per entity block."""
    m = model.matcher
    dims = (m.text_cls_layernorm.normalized_shape[0], m.text_tokens_layernorm.normalized_shape[0],
            m.image_cls_layernorm.normalized_shape[0])

    def features(start, end):
        g = torch.Generator().manual_seed(seed * 1_000_003 + start)
        n = end - start
        t_g = torch.randn(n, dims[0], generator=g)
        return Features(t_g / t_g.norm(dim=1, keepdim=True),
                        torch.randn(n, 1, dims[1], generator=g) + 0.7 * torch.randn(n, 40, dims[1], generator=g),
                        torch.randn(n, dims[2], generator=g),
                        torch.randn(n, 1, dims[2], generator=g) + 0.7 * torch.randn(n, 50, dims[2], generator=g))

    def terms_of(start, end):
        with torch.no_grad():
            return {k: v.numpy() for k, v in flatten_terms(m.entity_side(features(start, end))).items()}
    return terms_of, features


def random_store(model, out, count, flat_limit, chunk_size=250, **options):
    entities = [Entity(index=i, name=f"entity {i}", attr="", qid=None if i % 3 else f"Q{i}") for i in range(count)]
    terms_of, features = random_terms(model)
    encode_store(model, entities, "", str(out), "random", chunk_size=chunk_size, progress=False, terms_of=terms_of,
                 flat_limit=flat_limit, **options)
    return str(out), features


def mentions_of(model, features, targets):
    """Mentions that are noisy copies of the target entities, as benchmarks/linking.py makes them."""
    g = torch.Generator().manual_seed(1)
    parts = []
    for i in targets:
        base = features(i, i + 1)
        noisy = [t + 0.5 * torch.randn(t.shape, generator=g) for t in (base.t_l, base.v_g, base.v_l)]
        t_g = base.t_g + 0.03 * torch.randn(base.t_g.shape, generator=g)
        parts.append(Features(t_g / t_g.norm(dim=1, keepdim=True), *noisy))
    with torch.no_grad():
        return model.matcher.mention_side(Features.cat(parts))


def test_a_large_segment_gets_fast_scan_codes_and_finds_the_exhaustive_top_10(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setattr(retrieval, "PART_ROWS", 700)  # several parts, scanned on several threads
    path, features = random_store(tiny_model, tmp_path / "kb", 2000, flat_limit=500)
    store = KBStore.load(path)
    [segment] = store.manifest["segments"]
    assert segment["index"]["kind"] == "pq4fs" and len(segment["index"]["parts"]) == 3
    searcher = Searcher(tiny_model.matcher, store, candidates=64)
    mentions = mentions_of(tiny_model, features, range(5, 2000, 97))
    with torch.no_grad():
        scores = torch.cat([searcher.score(mentions, torch.arange(i, i + 500)).s for i in range(0, 2000, 500)], dim=1)
    for b in range(scores.shape[0]):
        top = sorted(range(2000), key=lambda i: (-float(scores[b, i]), i))[:10]
        mention = select(mentions, slice(b, b + 1))
        assert searcher.search(mention, 10)[0].tolist() == top  # 64 candidates of 2,000 suffice
        assert searcher.search(mention, 10, exact=True)[0].tolist() == top
        assert set(top) <= set(searcher.candidates_for(mention, 64).tolist())


def test_ids_without_a_qid_are_the_first_index(tmp_path, tiny_model):
    path, _ = random_store(tiny_model, tmp_path / "kb", 30, flat_limit=100, chunk_size=7)
    store = KBStore.load(path)
    assert [e["id"] for e in store.entities[:4]] == ["Q0", "1", "2", "Q3"]
    assert store.find("2") == 2 and store.find("Q3") == 3


# -- format 1 ----------------------------------------------------------------------------------------

def write_format1(source: str, out: str):
    """A store as format 1 wrote it: terms/*.npy (token terms in float16), entities.jsonl, manifest."""
    store = KBStore.load(source)
    values = store.read_terms(np.arange(len(store)))
    os.makedirs(os.path.join(out, "terms"))
    terms = {}
    for name, array in values.items():
        array = array.astype(np.float16 if name in ("tglu.query", "cmfu.alpha") else np.float32)
        np.save(os.path.join(out, "terms", f"{name}.npy"), array)
        terms[name] = {"dtype": str(array.dtype), "shape": list(array.shape)}
    with open(os.path.join(out, "entities.jsonl"), "w") as f:
        for e in store.entities:
            f.write(json.dumps(e) + "\n")
    manifest = {k: v for k, v in store.manifest.items() if k not in ("segments", "removed", "retrieval", "derived")}
    manifest.update(version=1, precision="mixed", terms=terms)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def test_format_1_stores_are_read_and_upgraded(reference_store, tmp_path, tiny_model, synth_dataset):
    from mimic.kb.edit import edit_store, upgrade_store
    old = str(tmp_path / "v1")
    write_format1(reference_store, old)
    linkers = [Linker(tiny_model, KBStore.load(p)) for p in (reference_store, old)]
    assert KBStore.load(old).format_version == 1 and KBStore.load(old).entities[4]["id"] == "Q1004"
    m = synth_dataset.split("test")[3]
    before = [linker.link(m.sentence, m.mention, synth_dataset.mention_image(m), 5) for linker in linkers]
    assert [r["id"] for r in before[0]["results"]] == [r["id"] for r in before[1]["results"]]
    with pytest.raises(StoreError, match="this store is in format 1; convert it once with 'python -m mimic kb upgrade"):
        edit_store(old, remove=["Q1004"])
    upgrade_store(old, tiny_model, progress=False)
    upgraded = KBStore.load(old)
    assert upgraded.format_version == 2 and upgraded.manifest["kb_version"] == 2
    assert sorted(os.listdir(old)) == [".lock", ".mimic-el-kb", "manifest.json", "segments"]
    after = Linker(tiny_model, upgraded).link(m.sentence, m.mention, synth_dataset.mention_image(m), 5)
    assert [r["id"] for r in after["results"]] == [r["id"] for r in before[0]["results"]]
    assert [r["score"] for r in after["results"]] == pytest.approx([r["score"] for r in before[0]["results"]],
                                                                   abs=1e-3)


def test_compacting_a_format_1_store_asks_for_kb_upgrade(reference_store, tmp_path, tiny_model):
    """Early format-1 manifests have no "precision": compact must still say what to do, not raise KeyError."""
    from mimic.kb.edit import compact_store
    old = str(tmp_path / "v1")
    write_format1(reference_store, old)
    with open(os.path.join(old, "manifest.json")) as f:
        manifest = json.load(f)
    del manifest["precision"]
    with open(os.path.join(old, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    with pytest.raises(StoreError, match=f"{old}: format 1; run 'kb upgrade' instead"):
        compact_store(old, tiny_model, progress=False)
    assert KBStore.load(old).manifest == manifest  # untouched


def test_autocast_encoding_stays_close_to_float32(tmp_path, synth_dataset, tiny_model):
    """encode-kb --autocast bf16 (what a GPU runs, in fp16 there): the terms are stored in float32 form,
    near the float32 encoder's; without autocast the store is the exact one."""
    exact, fast, again = (str(tmp_path / n) for n in ("exact", "bf16", "none"))
    encode(tiny_model, synth_dataset, exact, precision="float32")
    encode(tiny_model, synth_dataset, fast, precision="float32", autocast="bf16")
    encode(tiny_model, synth_dataset, again, precision="float32", autocast=None)
    assert_same_store(exact, again)
    x, y = all_terms(exact), all_terms(fast)
    for name in ("tglu.t_g", "tglu.query", "cmfu.f"):
        assert y[name].dtype == np.float32 and not np.array_equal(x[name], y[name]), name  # it did round
        assert np.abs(x[name] - y[name]).max() < 0.05 * np.abs(x[name]).max(), name  # bf16: 8 mantissa bits
