"""The pre-encoded KB store: resumable, shardable, fingerprinted, refused when it does not fit."""
import json
import os

import numpy as np
import pytest
import torch

import mimic.store as store_module
from mimic.fingerprint import file_fingerprint
from mimic.model import MIMIC, MIMICConfig
from mimic.store import KBStore, StoreError, encode_store, merge_shards


def _kb(dataset):
    return dataset.entities, dataset.kb_images, file_fingerprint(dataset.config.data.entity)


def encode(model, dataset, out, **options):
    entities, images, fingerprint = _kb(dataset)
    return encode_store(model, entities, images, out, fingerprint, progress=False, **options)


def _arrays(path):
    return {f: np.load(os.path.join(path, "terms", f)) for f in sorted(os.listdir(os.path.join(path, "terms")))}


def assert_same_store(a, b):
    x, y = _arrays(a), _arrays(b)
    assert list(x) == list(y)
    for name in x:
        assert x[name].dtype == y[name].dtype and np.array_equal(x[name], y[name]), name
    assert open(os.path.join(a, "entities.jsonl")).read() == open(os.path.join(b, "entities.jsonl")).read()


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory, synth_dataset, tiny_clip):
    model = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=1).eval()
    out = str(tmp_path_factory.mktemp("stores") / "full")
    encode(model, synth_dataset, out, chunk_size=10, batch_size=5)
    return out


def test_store_layout_and_contents(reference_store, synth_dataset, tiny_model):
    store = KBStore.load(reference_store)
    assert len(store) == 48 and store.manifest["precision"] == "mixed"
    assert store.terms["tglu"]["query"].dtype == torch.float16 and store.terms["tglu"]["t_g"].dtype == torch.float32
    assert store.terms["tglu"]["query"].shape == (48, 40, 96) and store.terms["cmfu"]["alpha"].shape == (48, 50)
    first = store.entities[0]
    assert set(first) == {"index", "id", "qid", "name", "description", "image"} and first["qid"] == "Q1000"
    assert first["id"] == "Q1000"
    store.check_model(__import__("mimic.fingerprint", fromlist=["x"]).model_fingerprints(tiny_model))


def test_interrupted_then_resumed_encoding_is_identical(tmp_path, synth_dataset, tiny_model, reference_store,
                                                         monkeypatch):
    calls = {"n": 0}
    real = store_module.encode_batch

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the middle of chunk 2
        return real(*args, **kwargs)

    out = str(tmp_path / "kb")
    monkeypatch.setattr(store_module, "encode_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        encode(tiny_model, synth_dataset, out, chunk_size=10, batch_size=5)
    assert not os.path.exists(out)  # nothing half-written where the store goes
    assert sorted(os.listdir(out + ".partial/chunks")) == ["000000.npz"]  # chunk 0 finished, chunk 1 did not
    with pytest.raises(StoreError, match="encoding has not finished"):
        KBStore.load(out)
    done = []
    monkeypatch.setattr(store_module, "encode_batch", lambda *a, **k: done.append(1) or real(*a, **k))
    encode(tiny_model, synth_dataset, out, chunk_size=10, batch_size=5)
    assert len(done) == 8  # 38 remaining entities in batches of 5 within chunks of 10: chunk 0 was not redone
    assert not os.path.exists(out + ".partial")
    assert_same_store(out, reference_store)


def test_a_partial_encoding_of_another_model_is_not_resumed(tmp_path, synth_dataset, tiny_model, tiny_clip):
    out = str(tmp_path / "kb")
    os.makedirs(out + ".partial")
    other = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=9)
    store_module.encode_chunks(other, *_kb(synth_dataset)[:2], out + ".partial",
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
        merge_shards(shards[1:], str(tmp_path / "merged"), *_kb(synth_dataset))
    merge_shards(shards, str(tmp_path / "merged"), *_kb(synth_dataset))
    assert_same_store(str(tmp_path / "merged"), reference_store)


def test_store_of_another_model_is_refused(reference_store, tiny_clip, tmp_path):
    from mimic.fingerprint import model_fingerprints
    from mimic.synthetic import make_tiny_clip
    store = KBStore.load(reference_store)
    other_weights = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=2)
    with pytest.raises(StoreError, match="encoded with another checkpoint"):
        store.check_model(model_fingerprints(other_weights))
    other_clip = MIMIC.from_encoder(MIMICConfig(encoder=make_tiny_clip(str(tmp_path / "c"), seed=5)), seed=1)
    with pytest.raises(StoreError, match="encoded with another encoder"):
        store.check_model(model_fingerprints(other_clip))


def test_damaged_stores_are_refused(reference_store, tmp_path):
    import shutil
    broken = str(tmp_path / "broken")
    shutil.copytree(reference_store, broken)
    query = os.path.join(broken, "terms", "tglu.query.npy")
    data = open(query, "rb").read()
    open(query, "wb").write(data[: len(data) // 2])
    with pytest.raises(StoreError, match="tglu.query.npy: damaged or truncated"):
        KBStore.load(broken)
    os.remove(query)
    with pytest.raises(StoreError, match="terms/tglu.query.npy is missing"):
        KBStore.load(broken)
    with open(os.path.join(broken, "manifest.json"), "w") as f:
        f.write("{ not json")
    with pytest.raises(StoreError, match="damaged manifest"):
        KBStore.load(broken)
    with pytest.raises(StoreError, match="no such KB store folder"):
        KBStore.load(str(tmp_path / "nothing"))
    manifest = json.load(open(os.path.join(reference_store, "manifest.json")))
    assert manifest["fingerprints"]["kb"] and manifest["kb_version"] == 1
