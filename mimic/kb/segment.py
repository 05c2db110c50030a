"""One segment of a KB store: the terms, records and retrieval index of a run of entities, written once.

A segment is a folder that never changes after its store version is published:
    segment.json           count, and each term's codec and per-entity shape
    terms/<file>.npy       the coded terms, first axis = row (see mimic/kb/compression.py)
    entities.jsonl         one JSON object a line: {"id", "qid", "name", "description", "image", "aliases",
                           "image_credit"}
    entities.offsets.npy   int64 [count + 1]: where each line starts (records are read on demand)
    ids.hash.npy, ids.row.npy
                           sorted 64-bit hashes of the ids and their rows: an id is found without
                           reading the records (what `kb update/remove` need on a large store)
    index.<i>.faiss        the retrieval index of these rows, in parts (mimic/kb/retrieval.py), when there is one

Everything is opened memory-mapped: opening costs the page table, not the data; a query reads the
pages of the rows it touches. Records are parsed when asked for, one line at a time.
"""
import errno
import hashlib
import json
import mmap
import os
import threading

import numpy as np

from ..fileio import atomic_file, explain, make_dirs, reserve, write_json
from . import compression
from .versions import StoreError

SEGMENT_FILE = "segment.json"
RECORDS, OFFSETS = "entities.jsonl", "entities.offsets.npy"
ID_HASH, ID_ROW = "ids.hash.npy", "ids.row.npy"
# "aliases": other names text uses (mention detection); "image_credit": the licence, artist and source of
# the picture (null when unknown); older stores have neither
RECORD_FIELDS = ("id", "qid", "name", "description", "image", "aliases", "image_credit")


def record_id(raw: dict) -> str:
    """An entity's stable id: its "id" (format 2 always writes one), else, in a format-1 record, its QID, else
    the index it was first encoded at."""
    ident = raw.get("id")
    return str(ident) if ident is not None else (raw.get("qid") or str(raw.get("index")))


def id_hash(ident: str) -> int:
    return int.from_bytes(hashlib.blake2b(str(ident).encode("utf-8"), digest_size=8).digest(), "little")


def _must_exist(path: str):
    """FileNotFoundError naming the file: the store loader tells a damaged store from one that a writer
    switched to a new version meanwhile."""
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "missing", path)


_NPY_LOCK = threading.Lock()


def load_npy(path: str, mmap_mode=None):
    """np.load, one thread at a time: numpy parses .npy headers with `ast`, which CPython 3.11 before
    3.11.8 cannot run in two threads at once (SystemError "AST constructor recursion depth mismatch"),
    and a server reloads its store in one thread while another loads."""
    with _NPY_LOCK:
        return np.load(path, mmap_mode=mmap_mode)


def _open_array(path: str, shape: tuple, dtype, mode="r"):
    try:
        array = load_npy(path, mmap_mode=mode)
    except FileNotFoundError:
        raise
    except (ValueError, EOFError, OSError) as e:
        raise StoreError(f"{path}: damaged or truncated ({e})")
    if tuple(array.shape) != tuple(shape) or array.dtype != np.dtype(dtype):
        raise StoreError(f"{path}: holds {list(array.shape)} {array.dtype}, expected {list(shape)} "
                         f"{np.dtype(dtype)}")
    return array if mode != "r" else np.asarray(array)  # a plain view of the map: indexing it costs less


class Records:
    """The records of one segment, as a read-only sequence of dicts (parsed on access)."""

    def __init__(self, path: str, offsets: np.ndarray):
        self.path = path
        self.offsets = offsets
        self.count = len(offsets) - 1
        size = os.path.getsize(path)
        if int(offsets[-1]) != size or (self.count and int(offsets[0]) != 0):
            raise StoreError(f"{path}: its offsets do not match the file (damaged or truncated)")
        self._map = mmap.mmap(os.open(path, os.O_RDONLY), 0, prot=mmap.PROT_READ) if size else b""
        self._check_lines()

    def _check_lines(self):
        """Every line must be one JSON object: checked from its first and last bytes, without parsing
        (a million records open in a fraction of a second; a damaged object is reported when read)."""
        if not self.count:
            return
        data = np.frombuffer(self._map, dtype=np.uint8)
        starts, ends = self.offsets[:-1], self.offsets[1:]
        if (ends <= starts + 2).any():
            bad = int(np.flatnonzero(ends <= starts + 2)[0])
            raise StoreError(f"{self.path}: line {bad + 1} is not an entity record (a JSON object)")
        good = (data[starts] == ord("{")) & (data[ends - 1] == ord("\n")) & (data[ends - 2] == ord("}"))
        if not good.all():
            bad = int(np.flatnonzero(~good)[0])
            raise StoreError(f"{self.path}: line {bad + 1} is not an entity record (a JSON object)")

    def __len__(self):
        return self.count

    def __getitem__(self, row: int) -> dict:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        try:
            record = json.loads(self._map[start:end])
        except (ValueError, UnicodeDecodeError) as e:
            raise StoreError(f"{self.path}: line {row + 1} is damaged ({e})")
        if not isinstance(record, dict):
            raise StoreError(f"{self.path}: line {row + 1} is not an entity record (a JSON object)")
        return record


def line_offsets(path: str) -> np.ndarray:
    """Offsets of the lines of a JSONL file (format-1 stores have no offsets file)."""
    with open(path, "rb") as f:
        data = np.frombuffer(f.read(), dtype=np.uint8)
    ends = np.flatnonzero(data == ord("\n")) + 1
    if len(data) and (not len(ends) or ends[-1] != len(data)):
        ends = np.append(ends, len(data))
    return np.concatenate([[0], ends]).astype(np.int64)


class Segment:
    """A published segment, opened read-only and memory-mapped."""

    def __init__(self, folder: str, count: int, terms: dict, index: dict = None, legacy: bool = False):
        self.folder, self.count, self.spec, self.index_spec = folder, count, terms, index
        self.arrays = {}
        term_dir = os.path.join(folder, "terms")
        for name, spec in terms.items():
            files = compression.files_of(name, spec["codec"])
            shapes = compression.stored_shapes(spec["codec"], spec["shape"])
            self.arrays[name] = []
            for file, (shape, dtype) in zip(files, shapes):
                path = os.path.join(term_dir, file)
                _must_exist(path)
                self.arrays[name].append(_open_array(path, (count, *shape), dtype))
        records = os.path.join(folder, RECORDS)
        _must_exist(records)
        offsets_path = os.path.join(folder, OFFSETS)
        offsets = (_open_array(offsets_path, (count + 1,), np.int64) if not legacy else line_offsets(records))
        if len(offsets) - 1 != count:
            raise StoreError(f"{records}: has {len(offsets) - 1} lines, the manifest says {count}")
        self.records = Records(records, offsets)
        self.legacy = legacy
        self._ids = None
        if not legacy and os.path.exists(os.path.join(folder, ID_HASH)):
            self._open_ids()  # now, with the rest: a later collection of this version cannot take it away

    def read(self, names, rows) -> dict:
        """Decoded float32 values of the terms `names` at `rows` (a slice or an int array)."""
        out = {}
        for name in names:
            spec = self.spec[name]
            out[name] = compression.decode(spec["codec"], [a[rows] for a in self.arrays[name]], spec["shape"][-1])
        return out

    def raw_rows(self, names, rows) -> dict:
        """The coded arrays of the terms `names` at `rows`, file by file (for copying into another segment)."""
        return {name: [np.asarray(a[rows]) for a in self.arrays[name]] for name in names}

    def _open_ids(self):
        self._ids = (_open_array(os.path.join(self.folder, ID_HASH), (self.count,), np.uint64),
                     _open_array(os.path.join(self.folder, ID_ROW), (self.count,), np.int64))

    def find(self, ident: str) -> list:
        """Rows whose id may be `ident` (hash matches; the caller checks the record)."""
        if self._ids is None:  # format 1 (or a segment without an id table): read the ids once
            hashes = np.array([id_hash(record_id(self.records[r])) for r in range(self.count)], np.uint64)
            order = np.argsort(hashes, kind="stable")
            self._ids = (hashes[order], order.astype(np.int64))
        hashes, rows = self._ids
        h = np.uint64(id_hash(ident))
        lo, hi = np.searchsorted(hashes, h, "left"), np.searchsorted(hashes, h, "right")
        return [int(r) for r in rows[lo:hi]]


def read_spec(folder: str) -> dict:
    """A segment folder's segment.json: {"count", "terms"}."""
    with open(os.path.join(folder, SEGMENT_FILE), encoding="utf-8") as f:
        return json.load(f)


class SegmentWriter:
    """Writes a segment folder: terms row range by row range (resumable), then records and ids."""

    def __init__(self, folder: str, count: int, terms: dict, create: bool):
        """terms: {name: {"codec", "shape"}}. create=False reopens a folder written in part."""
        self.folder, self.count, self.spec = folder, count, terms
        term_dir = os.path.join(folder, "terms")
        if create:
            make_dirs(term_dir)
            write_json(os.path.join(folder, SEGMENT_FILE), {"count": count, "terms": terms})
        self.arrays = {}
        for name, spec in terms.items():
            files = compression.files_of(name, spec["codec"])
            shapes = compression.stored_shapes(spec["codec"], spec["shape"])
            arrays = []
            for file, (shape, dtype) in zip(files, shapes):
                path = os.path.join(term_dir, file)
                try:
                    if create or not os.path.exists(path):
                        with _NPY_LOCK:
                            arrays.append(np.lib.format.open_memmap(path, mode="w+", dtype=dtype,
                                                                    shape=(count, *shape)))
                        reserve(path)
                    else:
                        arrays.append(_open_array(path, (count, *shape), dtype, mode="r+"))
                except StoreError:
                    raise
                except OSError as e:
                    raise explain(path, e) from e
            self.arrays[name] = arrays

    @classmethod
    def reopen(cls, folder: str) -> "SegmentWriter":
        spec = read_spec(folder)
        return cls(folder, spec["count"], spec["terms"], create=False)

    def put(self, start: int, values: dict):
        """Float values of rows [start, start + n) -> coded into the term files."""
        for name, spec in self.spec.items():
            self.put_coded(start, name, compression.encode(spec["codec"], values[name], name))

    def put_coded(self, start: int, name: str, coded: list):
        for array, part in zip(self.arrays[name], coded):
            array[start:start + len(part)] = part

    def flush(self):
        for arrays in self.arrays.values():
            for array in arrays:
                array.flush()

    def close(self):
        self.flush()
        self.arrays = {}


def write_records(folder: str, count: int, records):
    """Records (dicts with RECORD_FIELDS), in row order -> entities.jsonl, its offsets and the id table."""
    offsets, hashes, seen = [0], [], {}
    with atomic_file(os.path.join(folder, RECORDS), "wb") as f:
        for row, record in enumerate(records):
            ident = record["id"]
            if ident in seen:
                raise StoreError(f"two entities share the id {ident!r} (entities {seen[ident]} and {row})")
            seen[ident] = row
            line = (json.dumps({k: record.get(k) for k in RECORD_FIELDS}, ensure_ascii=False) + "\n").encode()
            f.write(line)
            offsets.append(offsets[-1] + len(line))
            hashes.append(id_hash(ident))
    if len(hashes) != count:
        raise StoreError(f"{len(hashes)} records for a segment of {count} entities")
    hashes = np.array(hashes, dtype=np.uint64)
    order = np.argsort(hashes, kind="stable")
    for name, array in ((OFFSETS, np.array(offsets, np.int64)), (ID_HASH, hashes[order]),
                        (ID_ROW, order.astype(np.int64))):
        with atomic_file(os.path.join(folder, name), "wb") as f:
            np.save(f, array)
