"""Candidate retrieval for the default path: one vector per entity, a faiss index chosen by the KB's size.

S splits by what it costs (w_u = 1 / number of kept units, 0 for a dropped unit):

    S = w_T/2 * G2G + w_C * S_C      a dot product of precomputed vectors
      + w_V/2 * (E2M + M2E)          cheap for all entities: two 96x96 GEMMs per entity batch
      + w_T/2 * G2L                  costly: a 40x40 attention per entity

The retrieval vector holds the exact dot-product part (G2G, S_C) and mean-field proxies of the rest,
each the term with the entity-mention interaction inside its non-linearity replaced by an average,
which leaves a dot product:
    G2L ≈ u_E . LayerNorm(mean_j V_M,j)            (uniform attention over the mention tokens)
    E2M ≈ layer_norm(q_E) . h(q̄_E, mention)        (q̄_E: the KB's mean entity query)
    M2E ≈ h(q̄_M, entity) . layer_norm(q_M)         (q̄_M: the KB's mean key, standing in for a mention query)
On the benchmark's 200,000 random entities the true top-10 of every query lies within the first 40
of the exact proxy's ranking; mimic/kb/search.py then finds the exact top-k among the candidates.

Index kinds (a segment's kind and parameters are in the store's manifest), each split into parts of
at most PART_ROWS rows that are scanned on several threads:
  sq8    exhaustive 8-bit scalar codes (896 B per entity at the real dimensions): for segments of up
         to FLAT_LIMIT entities, as before format 2.
  pq4fs  exhaustive product-quantised codes, one 4-bit sub-quantiser per dimension (448 B), scanned
         with faiss's SIMD fast-scan: 5x less memory traffic than sq8 and about as faithful (measured
         at 200,000 entities: the true top-10 within the first 64 candidates, against 42 for sq8),
         for larger segments.
Why not IVF or HNSW: an inverted file only pays when the vectors cluster. The benchmark's random
entities do not, and there an IVF (1,024 lists, 8-bit or PQ codes) found the best entity but missed
part of the top-10 on every one of 200 queries even at 128 probes; a KB whose top-10 must equal the
exhaustive one needs every entity looked at, and compact codes make that cheap.
"""
import concurrent.futures
import errno
import math
import os

import faiss
import numpy as np
import torch

from ..fileio import OutputError
from .compression import to_tensor
from .versions import StoreError

FLAT_LIMIT = 200_000  # segments up to this size keep exhaustive 8-bit codes
PART_ROWS = 262_144  # rows per index part: one thread scans one part
SQ_TRAIN_ROWS = 16_384  # rows that set the 8-bit codes' ranges
PQ_TRAIN_ROWS = 20_000  # rows that train the 4-bit sub-quantisers
ADD_CHUNK = 16_384
VECTOR_TERMS = ("tglu.t_g", "cmfu.f", "tglu.cls", "vdlu.e2m.q", "vdlu.m2e.k", "vdlu.m2e.p")
KINDS = ("sq8", "pq4fs")


def unit_weights(matcher) -> dict:
    return {u: (1.0 / len(matcher.units) if u in matcher.units else 0.0) for u in ("tglu", "vdlu", "cmfu")}


class Space:
    """Makes retrieval vectors of entities and of mentions: the matcher plus two KB averages."""

    def __init__(self, matcher, mean_entity_query, mean_key):
        self.matcher = matcher
        self.w = unit_weights(matcher)
        self.mean_entity_query = torch.as_tensor(np.asarray(mean_entity_query, np.float32)).reshape(1, -1)
        self.mean_key = torch.as_tensor(np.asarray(mean_key, np.float32)).reshape(1, -1)

    @classmethod
    def measure(cls, matcher, chunks) -> "Space":
        """The KB averages from `chunks`: an iterable of {"vdlu.e2m.q", "vdlu.m2e.k"} arrays."""
        total_q = total_k = None
        count = 0
        for part in chunks:
            q, k = (np.asarray(part[n], np.float64).sum(0) for n in ("vdlu.e2m.q", "vdlu.m2e.k"))
            total_q, total_k = (q, k) if total_q is None else (total_q + q, total_k + k)
            count += len(part["vdlu.e2m.q"])
        return cls(matcher, total_q / count, total_k / count)

    def to_manifest(self) -> dict:
        return {"mean_entity_query": self.mean_entity_query[0].tolist(), "mean_key": self.mean_key[0].tolist()}

    @classmethod
    def from_manifest(cls, matcher, data: dict) -> "Space":
        return cls(matcher, data["mean_entity_query"], data["mean_key"])

    @torch.no_grad()
    def entity_vectors(self, flat: dict) -> np.ndarray:
        """Float terms of n entities (VECTOR_TERMS, flat names) -> vectors [n, D] float32."""
        t = {name: to_tensor(flat[name]) if isinstance(flat[name], np.ndarray) else flat[name].float()
             for name in VECTOR_TERMS}
        w, vdlu = self.w, self.matcher.vdlu
        q_norm = vdlu.dual_ent2men.layer_norm(t["vdlu.e2m.q"])
        proxy_m2e = vdlu.dual_men2ent.fused({"q": self.mean_key}, {"k": t["vdlu.m2e.k"], "p": t["vdlu.m2e.p"]})[0]
        return torch.cat([w["tglu"] / 2 * t["tglu.t_g"], w["cmfu"] * t["cmfu.f"], w["tglu"] / 2 * t["tglu.cls"],
                          w["vdlu"] / 2 * q_norm, w["vdlu"] / 2 * proxy_m2e], dim=1).numpy()

    @torch.no_grad()
    def query_vector(self, mention: dict) -> np.ndarray:
        """One mention's sides (batch 1) -> [1, D] float32."""
        e2m = self.matcher.vdlu.dual_ent2men
        context = self.matcher.tglu.layer_norm(mention["tglu"]["value"].mean(dim=1))
        proxy_e2m = e2m.fused({"q": self.mean_entity_query}, mention["vdlu"]["e2m"])[0]
        vector = torch.cat([mention["tglu"]["t_g"], mention["cmfu"]["f"], context, proxy_e2m,
                            mention["vdlu"]["m2e"]["q_norm"]], dim=1)
        return vector.float().numpy()


def plan(count: int, flat_limit: int = FLAT_LIMIT) -> dict:
    """The index a segment of `count` entities gets: its kind and how its rows split into parts."""
    kind = "sq8" if count <= flat_limit else "pq4fs"
    parts = max(1, math.ceil(count / PART_ROWS))
    if count >= 65_536:
        parts = max(parts, 2)  # two threads at least, as the in-memory index had
    edges = np.linspace(0, count, parts + 1).astype(int).tolist()
    return {"kind": kind, "parts": [{"file": f"index.{i}.faiss", "rows": [edges[i], edges[i + 1]]}
                                    for i in range(parts)]}


def _sample_rows(first: int, last: int, size: int) -> np.ndarray:
    """Rows spread evenly over [first, last): the codes' training sample."""
    return np.unique(np.linspace(first, last - 1, min(size, last - first)).astype(np.int64))


def _empty_index(kind: str, train: np.ndarray):
    dim = train.shape[1]
    if kind == "sq8":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    elif kind == "pq4fs":
        index = faiss.IndexPQFastScan(dim, dim, 4, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.min_points_per_centroid = 1  # small KBs: 16 centroids per dimension need no more
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    return index


def build(spec: dict, vectors, folder: str = None, progress=None) -> list:
    """Build the parts of `spec` (from `plan`). vectors(rows) -> [len(rows), D] float32 for an int array
    or a slice of rows. Writes each part to `folder` when given; returns the faiss indexes."""
    parts = []
    trained = None
    for part in spec["parts"]:
        first, last = part["rows"]
        if spec["kind"] == "sq8" or trained is None:  # 8-bit ranges per part; the PQ trained once
            total_first, total_last = (first, last) if spec["kind"] == "sq8" else (
                spec["parts"][0]["rows"][0], spec["parts"][-1]["rows"][1])
            size = SQ_TRAIN_ROWS if spec["kind"] == "sq8" else PQ_TRAIN_ROWS
            trained = _empty_index(spec["kind"], vectors(_sample_rows(total_first, total_last, size)))
            spec["dim"] = trained.d
        index = faiss.clone_index(trained)
        for start in range(first, last, ADD_CHUNK):
            index.add(np.ascontiguousarray(vectors(slice(start, min(last, start + ADD_CHUNK)))))
            if progress:
                progress(min(last, start + ADD_CHUNK) - start)
        if folder is not None:  # a new file, renamed into place: never rewrite one a store may share
            tmp = os.path.join(folder, f".{part['file']}.tmp")
            try:
                faiss.write_index(index, tmp)
            except RuntimeError as e:  # faiss reports a failed write (a full disk...) as a RuntimeError
                raise OutputError(errno.EIO, f"cannot write {tmp}: {str(e).splitlines()[-1]}") from e
            os.replace(tmp, os.path.join(folder, part["file"]))
        parts.append(index)
    return parts


def build_in_memory(count: int, vectors) -> tuple:
    """An index of `count` rows built now and kept in memory (a format-1 store, terms held in memory):
    8-bit codes whatever the size, as the in-memory index always had. -> (its spec, the faiss indexes)."""
    spec = plan(count, flat_limit=count)
    return spec, build(spec, vectors)


def load(folder: str, spec: dict) -> list:
    """The parts of a saved index, memory-mapped where faiss can."""
    indexes = []
    for part in spec["parts"]:
        path = os.path.join(folder, part["file"])
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, "missing", path)
        try:
            indexes.append(faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY))
        except RuntimeError as e:  # faiss says "read error" for a short or damaged file
            reason = str(e).strip().splitlines()[-1].split("Error: ")[-1]
            store = os.path.dirname(os.path.dirname(folder))
            raise StoreError(f"{path}: damaged or truncated retrieval index ({reason}); rebuild it with "
                             f"'python -m mimic kb compact --kb {store}'") from None
    return indexes


class Retriever:
    """Searches the index parts of every segment and returns the best live rows.

    parts: (faiss index, first physical row of the part); removed: sorted physical rows to skip (an
    edit removed them): each part is asked for as many more results as it has removed rows, so the
    candidates are the best n live entities, whatever was removed."""

    def __init__(self, space: Space, parts: list, removed: np.ndarray, threads: int = None):
        self.space = space
        self.parts = parts
        self.removed = removed
        self.threads = max(1, min(threads or torch.get_num_threads(), len(parts)))

    def _search_part(self, part, vector: np.ndarray, n: int):
        index, first = part
        last = first + index.ntotal
        lo, hi = np.searchsorted(self.removed, [first, last])
        k = min(n + int(hi - lo), index.ntotal)
        if k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores, ids = index.search(vector, k)
        keep = ids[0] >= 0
        rows = ids[0][keep] + first
        scores = scores[0][keep]
        if hi > lo:
            alive = ~np.isin(rows, self.removed[lo:hi], assume_unique=True)
            rows, scores = rows[alive], scores[alive]
        return scores, rows

    def search(self, mention: dict, n: int) -> np.ndarray:
        """The n best live physical rows by retrieval score, best first (ties by row)."""
        vector = self.space.query_vector(mention)
        if self.threads > 1:  # faiss releases the GIL while it scans
            found = list(_pool(self.threads).map(lambda p: self._search_part(p, vector, n), self.parts))
        else:
            found = [self._search_part(p, vector, n) for p in self.parts]
        scores = np.concatenate([s for s, _ in found])
        rows = np.concatenate([r for _, r in found])
        order = np.lexsort((rows, -scores))[:n]
        return rows[order]


_POOLS = {}


def _pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    """One pool per thread count, shared by every Retriever of the process (a linker that reloads
    its store after each edit makes a new Retriever; its threads are not made again). Each thread
    scans with one OpenMP thread: the parallelism is the parts, and idle OpenMP teams would otherwise
    spin on the cores PyTorch needs next."""
    if threads not in _POOLS:
        _POOLS[threads] = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="retrieval",
                                                                initializer=faiss.omp_set_num_threads,
                                                                initargs=(1,))
    return _POOLS[threads]
