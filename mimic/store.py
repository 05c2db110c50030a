"""The pre-encoded KB: every entity encoded once, with all its entity-side unit terms precomputed.

A store is a folder:
    manifest.json      format, count, precision, fingerprints (checkpoint, encoder, KB), kb_version, terms
    entities.jsonl     one line per entity: {"index", "id", "qid", "name", "description", "image"}
    terms/<name>.npy   one array per entity-side term, first axis = entity index:
                       tglu.t_g [N, 512], tglu.query [N, 40, 96], tglu.cls [N, 96],
                       vdlu.e2m.q / vdlu.e2m.q_norm / vdlu.m2e.k / vdlu.m2e.p [N, 96],
                       cmfu.f [N, 96], cmfu.alpha [N, 50]

Precision "mixed" (default) keeps the token-level terms (tglu.query, cmfu.alpha: 78 % of the bytes)
in float16 and everything else in float32; "float32" keeps all in float32 (then linking reproduces
the evaluator's scores to 1e-4). The error of "mixed" is measured by the benchmark and documented in
the README.

Encoding goes chunk by chunk into `<out>.partial/chunks/`; each chunk is written atomically, so an
interrupted run resumes where it stopped, without gaps or duplicates. `--shard i/n` encodes every
n-th chunk into its own folder; `merge_shards` assembles the shards. The finished store appears in
one rename: a reader never sees half of one.
"""
import datetime
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import entity_image_path
from .encoding import encode_batch
from .fileio import atomic_file, atomic_folder, make_dirs, write_json
from .images import log_unusable
from .matcher import flatten_terms, unflatten_terms
from .processing import entity_text

log = logging.getLogger(__name__)
FORMAT, WORK_FORMAT, VERSION = "mimic-el-kb", "mimic-el-kb-partial", 1
HALF_TERMS = ("tglu.query", "cmfu.alpha")
PRECISIONS = ("mixed", "float32")


class StoreError(ValueError):
    """A KB store that cannot be used (missing, damaged, or made with another model or KB)."""


def term_dtype(name: str, precision: str):
    return np.float16 if precision == "mixed" and name in HALF_TERMS else np.float32


@dataclass
class KBStore:
    path: str
    manifest: dict
    entities: list  # metadata dicts, position = entity index
    terms: dict  # nested dict of tensors (see the module docstring)
    fingerprints: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)  # the same terms as flat numpy arrays, by file name
    stamp: tuple = ()  # identifies this version of the folder (see `changed`)

    def __len__(self):
        return len(self.entities)

    def check_model(self, fingerprints: dict):
        """Refuse a store made with another checkpoint or encoder than the model about to use it."""
        stored = self.manifest["fingerprints"]
        for key, what in (("encoder", "encoder (CLIP weights, tokenizer or image settings)"),
                          ("checkpoint", "checkpoint (MIMIC weights or units)")):
            if stored.get(key) != fingerprints.get(key):
                raise StoreError(f"{self.path}: this KB store was encoded with another {what} than the model "
                                 f"being loaded ({stored.get(key)} vs {fingerprints.get(key)}); re-encode it "
                                 f"with 'python -m mimic encode-kb' and this model")

    @classmethod
    def load(cls, path: str, mmap: bool = False) -> "KBStore":
        manifest_path = os.path.join(path, "manifest.json")
        if os.path.isdir(path.rstrip("/") + ".partial") and not os.path.exists(manifest_path):
            raise StoreError(f"{path}: encoding has not finished (resume it with the same encode-kb command)")
        if not os.path.isdir(path):
            raise StoreError(f"{path}: no such KB store folder")
        try:
            with open(manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
        except FileNotFoundError:
            raise StoreError(f"{path}: not a KB store (no manifest.json)")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreError(f"{manifest_path}: damaged manifest ({e})")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise StoreError(f"{path}: not a mimic-el KB store")
        count = manifest["count"]
        flat = {}
        for name, spec in manifest["terms"].items():
            file = os.path.join(path, "terms", f"{name}.npy")
            try:
                array = np.load(file, mmap_mode="r" if mmap else None)
            except FileNotFoundError:
                raise StoreError(f"{path}: term file terms/{name}.npy is missing")
            except (ValueError, EOFError, OSError) as e:
                raise StoreError(f"{file}: damaged or truncated ({e})")
            if list(array.shape) != spec["shape"] or str(array.dtype) != spec["dtype"] or len(array) != count:
                raise StoreError(f"{file}: shape {list(array.shape)} {array.dtype} does not match the manifest "
                                 f"({spec['shape']} {spec['dtype']})")
            flat[name] = array
        entities = read_entities(os.path.join(path, "entities.jsonl"))
        if len(entities) != count:
            raise StoreError(f"{path}: entities.jsonl has {len(entities)} lines, the manifest says {count}")
        with warnings.catch_warnings():  # read-only memory maps: the terms are never written
            warnings.simplefilter("ignore", UserWarning)
            terms = unflatten_terms({name: torch.from_numpy(a) for name, a in flat.items()})
        return cls(path, manifest, entities, terms, manifest["fingerprints"], flat, _stamp(path))

    def changed(self) -> bool:
        """Has the folder been replaced by another version since this one was loaded?"""
        return _stamp(self.path) != self.stamp


def _stamp(path: str) -> tuple:
    try:
        info = os.stat(os.path.join(path, "manifest.json"))
        return info.st_ino, info.st_mtime_ns, info.st_size
    except OSError:
        return ()


def read_entities(path: str) -> list:
    entities = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                try:
                    entities.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise StoreError(f"{path}: line {number} is damaged ({e.msg})")
    except FileNotFoundError:
        raise StoreError(f"{path}: missing")
    return entities


def entity_id(entity) -> str:
    """The id that `kb update` and `kb remove` use: the QID when there is one, else the KB index."""
    return entity.qid if entity.qid else str(entity.index)


def entity_record(entity, image_folder: str) -> dict:
    image = entity_image_path(entity, image_folder)
    return {"index": entity.index, "id": entity_id(entity), "qid": entity.qid, "name": entity.name,
            "description": entity.attr, "image": os.path.abspath(image) if image else None}


# ---------------------------------------------------------------------------------------------------
# Encoding, chunk by chunk, resumable and shardable.

def _chunk_ranges(count: int, chunk_size: int) -> list:
    return [(start, min(start + chunk_size, count)) for start in range(0, count, chunk_size)]


def _chunk_file(work: str, chunk: int) -> str:
    return os.path.join(work, "chunks", f"{chunk:06d}.npz")


def _read_chunk(file: str) -> dict:
    with np.load(file) as z:
        return {k: z[k] for k in z.files}


def _open_work(work: str, plan: dict, restart: bool):
    """Create the partial folder, or check that an existing one belongs to the same job."""
    spec_path = os.path.join(work, "partial.json")
    if os.path.exists(spec_path) and restart:
        shutil.rmtree(work)
    if os.path.exists(spec_path):
        with open(spec_path, encoding="utf-8") as f:
            existing = json.load(f)
        for key in ("count", "chunk_size", "precision", "fingerprints", "shard"):
            if existing.get(key) != plan[key]:
                raise StoreError(f"{work}: an unfinished encoding of another job is here (its {key} differs: "
                                 f"{existing.get(key)} vs {plan[key]}); pass --restart to discard it")
        for leftover in os.listdir(os.path.join(work, "chunks")):  # a chunk being written when the run was killed
            if leftover.startswith("."):
                os.remove(os.path.join(work, "chunks", leftover))
        return
    make_dirs(os.path.join(work, "chunks"))
    write_json(spec_path, plan)


def encode_chunks(model, entities: list, image_folder: str, work: str, fingerprints: dict, *, batch_size=64,
                  chunk_size=1024, shard=(0, 1), precision="mixed", restart=False, device=None,
                  progress=True, source: dict = None, on_progress=None) -> list:
    """Encode this shard's chunks into `work`/chunks (skipping finished ones); returns the chunk ids.
    on_progress(done, total) is called after every batch (for a UI)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    index, total = shard
    plan = {"format": WORK_FORMAT, "version": VERSION, "count": len(entities), "chunk_size": chunk_size,
            "precision": precision, "fingerprints": fingerprints, "shard": [index, total],
            "units": list(model.config.units), "source": source or {}}
    _open_work(work, plan, restart)
    ranges = _chunk_ranges(len(entities), chunk_size)
    mine = [c for c in range(len(ranges)) if c % total == index]
    todo = [c for c in mine if not os.path.exists(_chunk_file(work, c))]
    done_entities = sum(ranges[c][1] - ranges[c][0] for c in mine if c not in todo)
    bar = tqdm(total=sum(ranges[c][1] - ranges[c][0] for c in mine), initial=done_entities, unit="entity",
               desc="encode KB", disable=not progress, smoothing=0.1)
    model.eval()
    for chunk in todo:
        start, end = ranges[chunk]
        parts = []
        for s in range(start, end, batch_size):
            batch = entities[s:min(s + batch_size, end)]
            terms = encode_batch(model, [entity_text(e.name, e.attr) for e in batch],
                                 [entity_image_path(e, image_folder) for e in batch], "entity", device)
            parts.append(flatten_terms(terms))
            bar.update(len(batch))
            if on_progress:
                on_progress(bar.n, bar.total)
        arrays = {name: np.concatenate([p[name].numpy() for p in parts]).astype(term_dtype(name, precision))
                  for name in parts[0]}
        with atomic_file(_chunk_file(work, chunk), "wb") as f:
            np.savez(f, **arrays)
    bar.close()
    log_unusable(model.processor.images, sum(bool(e.images) for e in entities), "entity images")
    return mine


def assemble(works: list, out: str, entities: list, image_folder: str, kb_fingerprint: str, kb_version: int = 1):
    """Chunks from one or more partial folders -> a finished store at `out` (atomic)."""
    plans = []
    for work in works:
        try:
            with open(os.path.join(work, "partial.json"), encoding="utf-8") as f:
                plans.append(json.load(f))
        except FileNotFoundError:
            raise StoreError(f"{work}: not an encode-kb partial or shard folder")
    first = plans[0]
    for work, plan in zip(works[1:], plans[1:]):
        for key in ("count", "chunk_size", "precision", "fingerprints", "units"):
            if plan[key] != first[key]:
                raise StoreError(f"{work}: made with a different {key} than {works[0]}; shards must come from the "
                                 f"same model, KB and settings")
    count, chunk_size, precision = first["count"], first["chunk_size"], first["precision"]
    if first["fingerprints"].get("kb") != kb_fingerprint:
        raise StoreError(f"{works[0]}: was encoded from another KB file than the one given")
    if count != len(entities):
        raise StoreError(f"the partial encoding has {count} entities but the KB has {len(entities)}")
    ranges = _chunk_ranges(count, chunk_size)
    sources = {}
    for work in works:
        for chunk in range(len(ranges)):
            if chunk not in sources and os.path.exists(_chunk_file(work, chunk)):
                sources[chunk] = _chunk_file(work, chunk)
    missing = [c for c in range(len(ranges)) if c not in sources]
    if missing:
        start, end = ranges[missing[0]]
        raise StoreError(f"{len(missing)} of {len(ranges)} chunks are not encoded yet (the first: entities "
                         f"{start}-{end - 1}); finish every shard before merging")
    sample = _read_chunk(sources[0])
    with atomic_folder(out) as tmp:
        os.makedirs(os.path.join(tmp, "terms"))
        arrays = {name: np.lib.format.open_memmap(os.path.join(tmp, "terms", f"{name}.npy"), mode="w+",
                                                  dtype=a.dtype, shape=(count, *a.shape[1:]))
                  for name, a in sample.items()}
        for chunk, (start, end) in enumerate(ranges):
            data = _read_chunk(sources[chunk])
            for name, array in arrays.items():
                if len(data[name]) != end - start:
                    raise StoreError(f"{sources[chunk]}: holds {len(data[name])} entities, expected {end - start}")
                array[start:end] = data[name]
        for array in arrays.values():
            array.flush()
        terms = {name: {"dtype": str(a.dtype), "shape": list(a.shape)} for name, a in arrays.items()}
        del arrays
        with atomic_file(os.path.join(tmp, "entities.jsonl"), encoding="utf-8") as f:
            for e in entities:
                f.write(json.dumps(entity_record(e, image_folder), ensure_ascii=False) + "\n")
        write_json(os.path.join(tmp, "manifest.json"), {
            "format": FORMAT, "version": VERSION, "count": count, "precision": precision,
            "fingerprints": first["fingerprints"], "kb_version": kb_version,
            "units": first["units"], "terms": terms, "source": first.get("source") or {},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})


def encode_store(model, entities: list, image_folder: str, out: str, kb_fingerprint: str, *, batch_size=64,
                 chunk_size=1024, shard=None, precision="mixed", restart=False, device=None, progress=True,
                 source: dict = None, on_progress=None) -> str:
    """Encode a KB into a store at `out` (resumable). With shard=(i, n), write shard i's chunks to `out`
    and stop; `merge_shards` makes the store."""
    from .fingerprint import model_fingerprints
    if not entities:
        raise StoreError("the KB has no entities")
    fingerprints = {**model_fingerprints(model), "kb": kb_fingerprint}
    if not restart and shard is None and _up_to_date(out, fingerprints, len(entities), precision):
        log.info("%s is up to date (same model, KB and precision): nothing to encode", out)
        return out
    if shard is not None and shard[1] > 1:
        encode_chunks(model, entities, image_folder, out, fingerprints, batch_size=batch_size,
                      chunk_size=chunk_size, shard=shard, precision=precision, restart=restart, device=device,
                      progress=progress, source=source, on_progress=on_progress)
        return out
    work = out.rstrip("/") + ".partial"
    encode_chunks(model, entities, image_folder, work, fingerprints, batch_size=batch_size, chunk_size=chunk_size,
                  precision=precision, restart=restart, device=device, progress=progress, source=source,
                  on_progress=on_progress)
    assemble([work], out, entities, image_folder, kb_fingerprint)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _up_to_date(out: str, fingerprints: dict, count: int, precision: str) -> bool:
    try:
        with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return (manifest.get("fingerprints") == fingerprints and manifest.get("count") == count
            and manifest.get("precision") == precision and manifest.get("kb_version", 1) == 1)


def merge_shards(shards: list, out: str, entities: list, image_folder: str, kb_fingerprint: str) -> str:
    assemble(shards, out, entities, image_folder, kb_fingerprint)
    return out
