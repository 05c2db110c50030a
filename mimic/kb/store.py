"""The pre-encoded KB: every entity encoded once, its entity-side unit terms precomputed, opened memory-mapped.

A store is a folder of immutable segments and a manifest naming the current version (mimic/kb/versions.py:
the atomic switch, the writer lock). A segment (mimic/kb/segment.py) holds coded terms (mimic/kb/compression.py:
5.3 kB per entity at the default precision "compact"), entity records read on demand, and its retrieval
index (mimic/kb/retrieval.py), built once and saved. `KBStore.load` maps the current version's files and
parses nothing per entity: a million entities open in 0.2 s, and a query reads the pages of the
rows it touches. Entities have a position (`index`, 0..len-1, what `store.entities[i]` and the linker
use) and a stable `id` (the QID, or the index the entity had when it was first encoded), which edits
take and `link` shows.

Encoding runs chunk by chunk straight into the segment's files in `<out>.partial/` (no chunk is held
twice, nor the KB in memory), marking each finished chunk, so an interrupted run resumes where it
stopped, without gaps or duplicates, and gives the same store. `--shard i/n` encodes every n-th chunk
into a shard folder; `merge_shards` copies the shards' chunks, one at a time, into one segment. The
records and the retrieval index are written last; the store then appears (or its new version replaces
the old one) in one atomic step. The whole job holds the store's writer lock (its folder is made, empty and
marked, when the job starts), so a second encode-kb or `kb` command on the same store waits for it.

Format 1 stores (terms/*.npy at the top of the folder, before segments existed) are still read, with
their retrieval index built at load as it used to be; `python -m mimic kb upgrade` converts them.
"""
import datetime
import errno
import json
import logging
import operator
import os
import secrets
import shutil
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from ..data.readers import entity_image_path
from ..fileio import atomic_file, make_dirs, write_json
from ..model.encoding import encode_batch
from ..model.images import log_unusable
from ..model.matcher import flatten_terms
from ..model.processing import entity_text
from . import compression, retrieval, versions
from .compression import DEFAULT_PRECISION, DERIVED, PRECISIONS
from .entity_images import check_all_inside
from .segment import SEGMENT_FILE, Segment, SegmentWriter, load_npy, read_spec, record_id, write_records
from .versions import DEFAULT_WAIT, FORMAT, VERSION, WORK_FORMAT, StoreChanged, StoreError  # noqa: F401

log = logging.getLogger(__name__)
LOAD_ATTEMPTS = 5
SCAN_CHUNK = 16384


def _stamp(path: str) -> tuple:
    try:
        info = os.stat(os.path.join(path, versions.MANIFEST))
        return info.st_ino, info.st_mtime_ns, info.st_size
    except OSError:
        return ()


class KBStore:
    """One version of a store, opened read-only. `entities` is a sequence of records (dicts with
    "index", "id", "qid", "name", "description", "image"), parsed when accessed."""

    def __init__(self, path: str, manifest: dict, segments: list, removed: np.ndarray, stamp: tuple):
        self.path, self.manifest, self.segments, self.stamp = path, manifest, segments, stamp
        self.fingerprints = manifest["fingerprints"]
        self.removed = removed
        self.starts = np.cumsum([0] + [s.count for s in segments]).astype(np.int64)
        total = int(self.starts[-1])
        if total - len(removed) != manifest["count"] or (len(removed) and (removed[0] < 0 or removed[-1] >= total)):
            raise StoreError(f"{path}: the manifest says {manifest['count']} entities, its segments and removal "
                             f"list hold {total - len(removed)} (damaged store)")
        # live position -> physical row; only materialised when an edit removed rows (8 bytes per entity)
        self._physical = np.delete(np.arange(total, dtype=np.int64), removed) if len(removed) else None
        self.entities = EntityRecords(self)

    # -- opening ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str) -> "KBStore":
        """Open the store's current version, memory-mapped. A writer may switch versions meanwhile: then
        the new version is opened."""
        path = os.fspath(path)
        for _ in range(LOAD_ATTEMPTS):
            stamp = _stamp(path)
            manifest = versions.read_manifest(path)
            try:
                return cls._open(path, manifest, stamp)
            except FileNotFoundError as e:
                if _stamp(path) == stamp:  # no new version appeared: a file of this one is gone
                    raise _missing(path, e)
        raise StoreError(f"{path}: the store changed {LOAD_ATTEMPTS} times while it was being opened; try again")

    @classmethod
    def _open(cls, path: str, manifest: dict, stamp: tuple) -> "KBStore":
        try:
            if manifest.get("version", 1) == 1:
                terms = {}
                for name, spec in manifest["terms"].items():
                    if spec["dtype"] not in ("float16", "float32") or spec["shape"][0] != manifest["count"]:
                        raise StoreError(f"{path}: term {name} is {spec['dtype']} {spec['shape']}, not a format-1 "
                                         f"term of {manifest['count']} entities (damaged manifest)")
                    terms[name] = {"codec": spec["dtype"], "shape": spec["shape"][1:]}
                segments = [Segment(path, manifest["count"], terms, legacy=True)]
                removed = np.zeros(0, np.int64)
            else:
                segments = [Segment(os.path.join(path, versions.SEGMENTS, _segment_name(path, s)), s["count"],
                                    manifest["terms"], s.get("index")) for s in manifest["segments"]]
                removed = np.zeros(0, np.int64)
                if manifest.get("removed"):
                    file = os.path.join(path, versions.plain_name(path, "removal list", manifest["removed"]["file"],
                                                                  versions.REMOVED))
                    if not os.path.exists(file):
                        raise FileNotFoundError(errno.ENOENT, "missing", file)
                    removed = load_npy(file).astype(np.int64)
        except (KeyError, TypeError, IndexError, ValueError) as e:
            if isinstance(e, StoreError):
                raise
            raise StoreError(f"{os.path.join(path, versions.MANIFEST)}: damaged manifest ({type(e).__name__}: {e})")
        return cls(path, manifest, segments, removed, stamp)

    def __len__(self):
        return self.manifest["count"]

    @property
    def format_version(self) -> int:
        return self.manifest.get("version", 1)

    def check_model(self, fingerprints: dict):
        """Refuse a store made with another checkpoint or encoder than the model about to use it."""
        stored = self.fingerprints
        for key, what in (("encoder", "encoder (CLIP weights, tokenizer or image settings)"),
                          ("checkpoint", "checkpoint (MIMIC weights or units)")):
            if stored.get(key) != fingerprints.get(key):
                raise StoreError(f"{self.path}: this KB store was encoded with another {what} than the model "
                                 f"being loaded ({stored.get(key)} vs {fingerprints.get(key)}); re-encode it "
                                 f"with 'python -m mimic encode-kb' and this model")

    def changed(self) -> bool:
        """Has another version been published since this one was opened?"""
        return _stamp(self.path) != self.stamp

    # -- positions ----------------------------------------------------------------------------------
    def physical(self, index) -> np.ndarray:
        """Live positions -> rows counted across the segments (removed rows included)."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"entity index out of range (the KB has {len(self)} entities)")
        return index if self._physical is None else self._physical[index]

    def live(self, rows) -> np.ndarray:
        """Rows (not removed) -> live positions."""
        rows = np.asarray(rows, dtype=np.int64)
        return rows if self._physical is None else rows - np.searchsorted(self.removed, rows)

    def _segment_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, rows, side="right") - 1

    # -- terms --------------------------------------------------------------------------------------
    def term_names(self) -> list:
        return [n for n in self.manifest["terms"] if n not in DERIVED]

    def read_terms(self, index, names=None) -> dict:
        """Float32 values of the terms `names` (flat names; default all stored) of the entities at `index`."""
        names = list(names or self.term_names())
        rows = self.physical(index)
        segment = self._segment_of(rows)
        out = {}
        for s in np.unique(segment):
            where = np.flatnonzero(segment == s)
            local = rows[where] - self.starts[s]
            order = np.argsort(local, kind="stable")  # the map is read in order
            for name, values in self.segments[s].read(names, local[order]).items():
                if name not in out:
                    out[name] = np.empty((len(rows), *values.shape[1:]), np.float32)
                out[name][where[order]] = values
        if not len(rows):
            out = {n: np.zeros((0, *self.segments[0].spec[n]["shape"]), np.float32) for n in names}
        return out

    def scan(self, names, chunk: int = SCAN_CHUNK, coded: bool = False):
        """(first live position, float values of `names`) for every live entity, chunk by chunk, in order;
        coded=True: each term's coded arrays instead (`Segment.raw_rows`), to copy them unchanged."""
        position = 0
        for s, segment in enumerate(self.segments):
            first_row = int(self.starts[s])
            for start in range(0, segment.count, chunk):
                end = min(segment.count, start + chunk)
                rows = slice(start, end)
                values = segment.raw_rows(names, rows) if coded else segment.read(names, rows)
                lo, hi = np.searchsorted(self.removed, [first_row + start, first_row + end])
                if hi > lo:
                    alive = np.ones(end - start, bool)
                    alive[self.removed[lo:hi] - first_row - start] = False
                    values = {n: [a[alive] for a in v] if coded else v[alive] for n, v in values.items()}
                count = end - start - int(hi - lo)
                if count:
                    yield position, values
                position += count

    def retriever(self, matcher, threads: int = None) -> retrieval.Retriever:
        """The saved retrieval index of every segment (format 1: built now, in memory, as it used to be)."""
        if "retrieval" in self.manifest:
            space = retrieval.Space.from_manifest(matcher, self.manifest["retrieval"])
        else:
            space = retrieval.Space.measure(matcher, (v for _, v in self.scan(("vdlu.e2m.q", "vdlu.m2e.k"))))
        parts = []
        for s, segment in enumerate(self.segments):
            if segment.index_spec:
                try:
                    spec, indexes = segment.index_spec, retrieval.load(segment.folder, segment.index_spec)
                except FileNotFoundError as e:  # opened lazily: a writer may have collected this version since
                    if self.changed():
                        raise StoreChanged(f"{self.path}: a new version was published while this one was opened")
                    raise _missing(self.path, e)
            else:
                spec, indexes = retrieval.build_in_memory(segment.count, lambda rows: space.entity_vectors(
                    segment.read(retrieval.VECTOR_TERMS, rows)))
            parts += [(index, int(self.starts[s]) + part["rows"][0]) for index, part in zip(indexes, spec["parts"])]
        return retrieval.Retriever(space, parts, self.removed, threads)

    # -- records ------------------------------------------------------------------------------------
    def raw_record(self, index: int) -> dict:
        """The record as stored (an image copied into the store has a path relative to it)."""
        row = int(self.physical([index])[0])
        s = int(self._segment_of(np.array([row]))[0])
        return self.segments[s].records[row - int(self.starts[s])]

    def record(self, index: int) -> dict:
        raw = self.raw_record(index)
        image = raw.get("image")
        if isinstance(image, str) and image and not os.path.isabs(image):
            image = os.path.join(os.path.abspath(self.path), image)  # copied into the store: relative to it
        return {"index": int(index), "id": record_id(raw),
                "qid": raw.get("qid"), "name": raw.get("name"), "description": raw.get("description"), "image": image}

    def find(self, ident: str):
        """The live position of the entity with this id, or None."""
        ident = str(ident)
        for s in reversed(range(len(self.segments))):
            segment = self.segments[s]
            for local in segment.find(ident):
                row = int(self.starts[s]) + local
                i = np.searchsorted(self.removed, row)
                if i < len(self.removed) and self.removed[i] == row:
                    continue
                if record_id(segment.records[local]) == ident:
                    return int(self.live([row])[0])
        return None


def _missing(path: str, error: FileNotFoundError) -> StoreError:
    missing = os.path.relpath(error.filename, path) if error.filename else str(error)
    return StoreError(f"{path}: {missing} is missing (damaged store); re-encode it with encode-kb")


def _segment_name(path: str, segment: dict) -> str:
    """A manifest's segment entry: its folder name (a plain one) and its index parts' files, checked."""
    for part in (segment.get("index") or {}).get("parts", []):
        versions.plain_name(path, "index file", part["file"])
    return versions.plain_name(path, "segment", segment["name"])


class EntityRecords(Sequence):
    """`store.entities`: len, [i] (negative too), slices and iteration, each record parsed on access."""

    def __init__(self, store: KBStore):
        self._store = store

    def __len__(self):
        return len(self._store)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"entity {i} out of range (the KB has {len(self)} entities)")
        return self._store.record(i)

    def __iter__(self):
        return (self._store.record(i) for i in range(len(self)))


# ---------------------------------------------------------------------------------------------------
# Writing segments (shared by encoding, merging and the `kb` commands).

def entity_id(entity) -> str:
    """The id edits and `link` use: the QID when there is one, else the index it is first encoded at."""
    return entity.qid if entity.qid else str(entity.index)


def entity_record(entity, image_folder: str) -> dict:
    image = entity_image_path(entity, image_folder)
    return {"id": entity_id(entity), "qid": entity.qid, "name": entity.name, "description": entity.attr,
            "image": os.path.realpath(image) if image else None}


def term_spec(values: dict, precision: str) -> dict:
    """{name: {"codec", "shape"}} for float values [n, ...] of each stored term (given without `DERIVED`)."""
    return {name: {"codec": compression.codec_of(name, precision), "shape": list(v.shape[1:])}
            for name, v in values.items()}


def segment_name(kb_version: int) -> str:
    return f"s{kb_version:06d}-{secrets.token_hex(4)}"


def index_segment(segment: Segment, space: retrieval.Space, flat_limit: int, progress: bool = False) -> dict:
    """Build and save the retrieval index of a written segment; returns its spec for the manifest."""
    plan = retrieval.plan(segment.count, flat_limit)
    bar = tqdm(total=segment.count, unit="entity", desc=f"index ({plan['kind']})", disable=not progress, leave=False)
    retrieval.build(plan, lambda rows: space.entity_vectors(segment.read(retrieval.VECTOR_TERMS, rows)),
                    segment.folder, progress=bar.update)
    bar.close()
    return plan


def measure_space(matcher, segment: Segment) -> retrieval.Space:
    return retrieval.Space.measure(matcher, (segment.read(("vdlu.e2m.q", "vdlu.m2e.k"), slice(s, s + SCAN_CHUNK))
                                             for s in range(0, segment.count, SCAN_CHUNK)))


def link_tree(source: str, target: str):
    """Hard-link a segment's files into the store (copy across filesystems): the source stays whole,
    so a run killed before the switch can be finished again without encoding anything."""
    for root, _, files in os.walk(source):
        dest = os.path.join(target, os.path.relpath(root, source))
        make_dirs(dest)
        for file in files:
            try:
                os.link(os.path.join(root, file), os.path.join(dest, file))
            except FileExistsError:
                os.remove(os.path.join(dest, file))
                os.link(os.path.join(root, file), os.path.join(dest, file))
            except OSError:
                shutil.copy2(os.path.join(root, file), os.path.join(dest, file))


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------
# Encoding, chunk by chunk, resumable and shardable.

def _chunk_ranges(count: int, chunk_size: int) -> list:
    return [(start, min(start + chunk_size, count)) for start in range(0, count, chunk_size)]


def _chunk_file(work: str, chunk: int) -> str:
    return os.path.join(work, "chunks", f"{chunk:06d}.npz")


def _done_file(work: str, chunk: int) -> str:
    return os.path.join(work, "done", f"{chunk:06d}")


def _chunk_done(work: str, layout: str, chunk: int) -> bool:
    return os.path.exists(_done_file(work, chunk) if layout == "segment" else _chunk_file(work, chunk))


def _read_plan(work: str) -> dict:
    try:
        with open(os.path.join(work, "partial.json"), encoding="utf-8") as f:
            plan = json.load(f)
    except (OSError, ValueError):
        raise StoreError(f"{work}: not an encode-kb partial or shard folder")
    if not isinstance(plan, dict) or plan.get("format") != WORK_FORMAT:
        raise StoreError(f"{work}: not an encode-kb partial or shard folder")
    if plan.get("version") != VERSION:
        raise StoreError(f"{work}: an unfinished encoding made by another version of mimic-el (its format is "
                         f"{plan.get('version')}); encode it again with --restart")
    return plan


def _open_work(work: str, plan: dict, restart: bool):
    """Check that the work folder (locked, see `versions.working`) belongs to the same job, or start it:
    with `restart`, or when a killed run left it before writing its plan, what it holds is discarded."""
    spec_path = os.path.join(work, "partial.json")
    if restart or not os.path.exists(spec_path):
        for entry in os.listdir(work):
            if entry not in (versions.LOCK, versions.WORK_MARKER):
                versions.remove(os.path.join(work, entry))
    if os.path.exists(spec_path):
        existing = _read_plan(work)
        for key in ("count", "chunk_size", "precision", "fingerprints", "shard", "layout"):
            if existing.get(key) != plan[key]:
                raise StoreError(f"{work}: an unfinished encoding of another job is here (its {key} differs: "
                                 f"{existing.get(key)} vs {plan[key]}); pass --restart to discard it")
        return
    make_dirs(os.path.join(work, "done" if plan["layout"] == "segment" else "chunks"))
    write_json(spec_path, plan)


def encode_terms(model, texts: list, images: list, batch_size: int, device=None, autocast=None, step=None) -> dict:
    """Entities' texts and images -> their stored terms ({flat name: float32 [n, ...]}, no `DERIVED`),
    encoded batch by batch; step(n) after each batch."""
    parts = []
    for start in range(0, len(texts), batch_size):
        batch = slice(start, start + batch_size)
        terms = encode_batch(model, texts[batch], images[batch], "entity", device, autocast=autocast)
        parts.append({k: v.numpy() for k, v in flatten_terms(terms).items() if k not in DERIVED})
        if step:
            step(len(texts[batch]))
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _model_terms(model, entities: list, image_folder: str, batch_size: int, device, autocast, progress_step):
    """terms_of(start, end) that runs the model's encoder, batch by batch."""
    def terms_of(start, end):
        return encode_terms(model, [entity_text(e.name, e.attr) for e in entities[start:end]],
                            [entity_image_path(e, image_folder) for e in entities[start:end]], batch_size, device,
                            autocast, progress_step)
    return terms_of


def encode_chunks(model, entities: list, image_folder: str, work: str, fingerprints: dict, *, wait=DEFAULT_WAIT,
                  **options) -> list:
    """Encode this shard's chunks into `work` (skipping finished ones), holding the work folder's lock:
    a second encoding of the same folder waits for the first (up to `wait` s). Returns the chunk ids."""
    with versions.working(work, wait):
        return _encode_chunks(model, entities, image_folder, work, fingerprints, **options)


def _encode_chunks(model, entities: list, image_folder: str, work: str, fingerprints: dict, *, batch_size=64,
                   chunk_size=1024, shard=(0, 1), precision=DEFAULT_PRECISION, restart=False, device=None,
                   progress=True, source: dict = None, on_progress=None, autocast=None, terms_of=None) -> list:
    """encode_chunks' work. on_progress(done, total) is called after every batch (for a UI).
    terms_of(start, end) -> flat float terms replaces the encoder (benchmarks write synthetic terms
    through the same path)."""
    if precision not in PRECISIONS:
        raise StoreError(f"unknown precision {precision!r}: one of {', '.join(PRECISIONS)}")
    index, total = shard
    plan = {"format": WORK_FORMAT, "version": VERSION, "layout": "segment" if total == 1 else "chunks",
            "count": len(entities), "chunk_size": chunk_size, "precision": precision, "fingerprints": fingerprints,
            "shard": [index, total], "units": list(model.config.units), "source": source or {}}
    _open_work(work, plan, restart)
    ranges = _chunk_ranges(len(entities), chunk_size)
    mine = [c for c in range(len(ranges)) if c % total == index]
    todo = [c for c in mine if not _chunk_done(work, plan["layout"], c)]
    done_entities = sum(ranges[c][1] - ranges[c][0] for c in mine if c not in todo)
    bar = tqdm(total=sum(ranges[c][1] - ranges[c][0] for c in mine), initial=done_entities, unit="entity",
               desc="encode KB", disable=not progress, smoothing=0.1)

    def step(n):
        bar.update(n)
        if on_progress:
            on_progress(bar.n, bar.total)
    if terms_of is None:
        model.eval()
        terms_of = _model_terms(model, entities, image_folder, batch_size, device, autocast, step)
    else:
        given = terms_of

        def terms_of(start, end):
            values = given(start, end)
            step(end - start)
            return values
    writer = None
    for chunk in todo:
        start, end = ranges[chunk]
        values = {k: v for k, v in terms_of(start, end).items() if k not in DERIVED}
        if plan["layout"] == "segment":
            if writer is None:
                folder = os.path.join(work, "segment")
                writer = (SegmentWriter.reopen(folder) if os.path.exists(os.path.join(folder, SEGMENT_FILE))
                          else SegmentWriter(folder, len(entities), term_spec(values, precision), create=True))
            writer.put(start, values)
            writer.flush()  # the rows are on disk before the chunk is marked done
            with atomic_file(_done_file(work, chunk)):
                pass
        else:
            spec = term_spec(values, precision)
            if not os.path.exists(os.path.join(work, "terms.json")):
                write_json(os.path.join(work, "terms.json"), spec)
            coded = {}
            for name, v in values.items():
                for i, array in enumerate(compression.encode(spec[name]["codec"], v, name)):
                    coded[f"{name}#{i}"] = array
            with atomic_file(_chunk_file(work, chunk), "wb") as f:
                np.savez(f, **coded)
    if writer is not None:
        writer.close()
    bar.close()
    if model is not None and hasattr(model, "processor"):
        log_unusable(model.processor.images, sum(bool(e.images) for e in entities), "entity images")
    return mine


def finish(works: list, out: str, entities: list, image_folder: str, kb_fingerprint: str, model, *,
           flat_limit: int = retrieval.FLAT_LIMIT, progress: bool = True) -> dict:
    """Finished chunks of one work folder (or of shards) -> the store's new version at `out`: records,
    retrieval index, then the atomic switch. Returns the new manifest. Call holding `versions.writing(out)`."""
    plans = [_read_plan(w) for w in works]
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
    direct = len(works) == 1 and first["layout"] == "segment"
    sources = {}
    for work, plan in zip(works, plans):
        for chunk in range(len(ranges)):
            if chunk not in sources and _chunk_done(work, plan["layout"], chunk):
                sources[chunk] = work
    missing = [c for c in range(len(ranges)) if c not in sources]
    if missing:
        start, end = ranges[missing[0]]
        raise StoreError(f"{len(missing)} of {len(ranges)} chunks are not encoded yet (the first: entities "
                         f"{start}-{end - 1}); finish every shard before merging")
    name = segment_name(1)
    if direct:
        folder = os.path.join(works[0], "segment")
        spec = read_spec(folder)["terms"]
    else:
        folder = os.path.join(out, versions.SEGMENTS, f".tmp-{name}")
        spec = _merge_chunks(works, sources, ranges, folder, count, progress)
    write_records(folder, count, (entity_record(e, image_folder) for e in entities))
    segment = Segment(folder, count, spec)
    space = measure_space(model.matcher, segment)
    index = index_segment(segment, space, flat_limit, progress)
    target = os.path.join(out, versions.SEGMENTS, name)
    if direct:
        link_tree(folder, target)
    else:
        os.rename(folder, target)
    manifest = {"format": FORMAT, "version": VERSION, "count": count, "precision": precision, "terms": spec,
                "derived": list(DERIVED), "fingerprints": first["fingerprints"], "kb_version": 1,
                "units": first["units"], "source": first.get("source") or {}, "created": now(), "history": [],
                "retrieval": {**space.to_manifest(), "flat_limit": flat_limit},
                "segments": [{"name": name, "count": count, "index": index}], "removed": None}
    versions.publish(out, manifest)
    return manifest


def _merge_chunks(works: list, sources: dict, ranges: list, folder: str, count: int, progress: bool) -> dict:
    """Copy the shards' chunks, one at a time, into a new segment; returns its term spec."""
    specs = []
    for work in works:
        try:
            with open(os.path.join(work, "terms.json"), encoding="utf-8") as f:
                specs.append(json.load(f))
        except FileNotFoundError:
            continue
    spec = specs[0]
    if any(s != spec for s in specs):
        raise StoreError("the shards were written with different term layouts; encode them again")
    writer = SegmentWriter(folder, count, spec, create=True)
    for chunk, (start, end) in enumerate(tqdm(ranges, desc="merge", unit="chunk", disable=not progress)):
        file = _chunk_file(sources[chunk], chunk)
        with load_npy(file) as z:
            for name, term in spec.items():
                coded = [z[f"{name}#{i}"] for i in range(len(compression.files_of(name, term["codec"])))]
                if len(coded[0]) != end - start:
                    raise StoreError(f"{file}: holds {len(coded[0])} entities, expected {end - start}")
                writer.put_coded(start, name, coded)
    writer.close()
    return spec


def encode_store(model, entities: list, image_folder: str, out: str, kb_fingerprint: str, *, batch_size=64,
                 chunk_size=1024, shard=None, precision=DEFAULT_PRECISION, restart=False, device=None, progress=True,
                 source: dict = None, on_progress=None, autocast=None, flat_limit=retrieval.FLAT_LIMIT,
                 wait=DEFAULT_WAIT, terms_of=None) -> str:
    """Encode a KB into a store at `out` (resumable). With shard=(i, n), write shard i's chunks to `out`
    and stop; `merge_shards` makes the store. `out` must be a store, an empty folder or absent."""
    from .fingerprint import model_fingerprints
    if not entities:
        raise StoreError("the KB has no entities")
    check_all_inside(entities, image_folder)
    fingerprints = {**model_fingerprints(model), "kb": kb_fingerprint}
    options = dict(batch_size=batch_size, chunk_size=chunk_size, precision=precision, restart=restart,
                   device=device, progress=progress, source=source, on_progress=on_progress, autocast=autocast,
                   terms_of=terms_of, wait=wait)
    if shard is not None and shard[1] > 1:
        encode_chunks(model, entities, image_folder, out, fingerprints, shard=shard, **options)
        return out
    versions.check_target(out)
    work = out.rstrip("/") + ".partial"
    versions.check_work_target(work)
    with versions.writing(out, wait):  # the whole job, encoding included: one writer at a time
        if not restart and _up_to_date(out, fingerprints, len(entities), precision):
            log.info("%s is up to date (same model, KB and precision): nothing to encode", out)
            return out
        encode_chunks(model, entities, image_folder, work, fingerprints, **options)
        finish([work], out, entities, image_folder, kb_fingerprint, model, flat_limit=flat_limit,
               progress=progress)
        shutil.rmtree(work, ignore_errors=True)
    return out


def _up_to_date(out: str, fingerprints: dict, count: int, precision: str) -> bool:
    try:
        with open(os.path.join(out, versions.MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return (isinstance(manifest, dict) and manifest.get("version") == VERSION
            and manifest.get("fingerprints") == fingerprints and manifest.get("count") == count
            and manifest.get("precision") == precision and manifest.get("kb_version", 1) == 1)


def merge_shards(shards: list, out: str, entities: list, image_folder: str, kb_fingerprint: str, model, *,
                 flat_limit=retrieval.FLAT_LIMIT, wait=DEFAULT_WAIT, progress=True) -> str:
    """Finished shard folders -> a store at `out` (the model builds the retrieval index)."""
    versions.check_target(out)
    with versions.writing(out, wait):
        finish(shards, out, entities, image_folder, kb_fingerprint, model, flat_limit=flat_limit, progress=progress)
    return out
