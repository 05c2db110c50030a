"""The pre-encoded KB: every entity encoded once, its entity-side unit terms precomputed, opened memory-mapped.

A store is a folder of immutable segments and a manifest naming the current version (mimic/kb/versions.py:
the atomic switch, the writer lock). A segment (mimic/kb/segment.py) holds coded terms (mimic/kb/compression.py:
5.3 kB per entity at the default precision "compact"), entity records read on demand, and its retrieval
index (mimic/kb/retrieval.py), built once and saved. `KBStore.load` maps the current version's files and
parses nothing per entity: a million entities open in 0.2 s, and a query reads the pages of the
rows it touches. Entities have a position (`index`, 0..len-1, what `store.entities[i]` and the linker
use) and a stable `id` (the QID, or the index the entity had when it was first encoded), which edits
take and `link` shows.

A store is written by mimic/kb/encode.py (encode-kb) and changed by mimic/kb/edit.py (the `kb` commands);
the helpers they share to write a segment are at the end of this file.

Format 1 stores (terms/*.npy at the top of the folder, before segments existed) are still read, with
their retrieval index built at load as it used to be; `python -m mimic kb upgrade` converts them.
"""
import datetime
import errno
import logging
import operator
import os
import secrets
import shutil
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from ..data.readers import entity_image_path
from ..fileio import make_dirs
from . import compression, retrieval, versions
from .compression import DERIVED
from .segment import Segment, load_npy, record_id
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
                "qid": raw.get("qid"), "name": raw.get("name"), "description": raw.get("description"), "image": image,
                "image_credit": raw.get("image_credit"), "aliases": raw.get("aliases")}

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
            "image": os.path.realpath(image) if image else None, "image_credit": entity.credit if image else None,
            "aliases": entity.aliases}


def term_spec(values: dict, precision: str) -> dict:
    """{name: {"codec", "shape"}} for float values [n, ...] of each stored term (given without `DERIVED`)."""
    return {name: {"codec": compression.codec_of(name, precision), "shape": list(v.shape[1:])}
            for name, v in values.items()}


def segment_name(kb_version: int) -> str:
    return f"s{kb_version:06d}-{secrets.token_hex(4)}"


def index_segment(segment: Segment, space: retrieval.Space, flat_limit: int, progress: bool = False) -> dict:
    """Build and save the retrieval index of a written segment; returns its spec for the manifest."""
    plan = retrieval.plan(segment.count, flat_limit)
    bar = tqdm(total=segment.count, unit="entity", desc=f"index ({plan['kind']})", disable=not progress)
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
