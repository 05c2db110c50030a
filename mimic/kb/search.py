"""Top-k search of one mention over a pre-encoded KB, fast by default and exact on request.

Both paths end in `Matcher.score` on the entities' stored terms, so a returned score is the score.

Exact top-k of a set of entities. G2G, S_C and S_V are computed for every entity of the set (cheap: dot
products and two 96x96 GEMMs each) and G2L is bounded from above without the attention:
G2L = u_E . LayerNorm(x), where x is a convex combination of the mention's value vectors.
LayerNorm(x) = γ ⊙ z + β with z = centred(x) / σ(x): z lies in the span of the centred value vectors
and |z| <= √d, hence

    G2L <= β . u_E + √d * |Qᵀ (γ ⊙ u_E)|       (Q: an orthonormal basis of that span)

Entities are then scored fully in decreasing order of their bound until the k-th best exact score
exceeds every remaining bound: the result is provably the set's top-k (ties broken by index).

- `--exact`: the set is the whole KB. Its small terms (tglu.t_g, tglu.cls, cmfu.f and the VDLU
  terms, 2.7 kB per entity at the default precision) are read from the memory map chunk by chunk;
  tglu.query is read only for the entities scored fully. Exactly the exhaustive top-k.
- default: the set is the `candidates` best entities of the retrieval index (mimic/kb/retrieval.py).
  The answer is the exhaustive top-k whenever that lies among the candidates; benchmarks/scale.py
  measures how often (every one of 200 queries at 110,000 and 1,000,000 entities, see docs/store.md).
"""
import math

import numpy as np
import torch

from ..model.matcher import Matcher, Scores, flatten_terms, unflatten_terms
from .compression import complete, to_tensor
from .retrieval import VECTOR_TERMS, Retriever, Space, build_in_memory, unit_weights

BOUND_MARGIN = 1e-4  # absolute slack on the stopping rule, far above float32 rounding of the scores
FIRST_BLOCK = 32  # entities fully scored first: the top-10 is nearly always among the 32 best bounds
MAX_BLOCK = 4096  # entities fully scored at once (the attention takes 6.4 kB each)
SCAN_CHUNK = 16384  # entities per step of a pass over the whole KB
DEFAULT_CANDIDATES = None  # chosen by KB size, see `candidate_count`
SMALL_TERMS = VECTOR_TERMS  # what the cheap part and the bound need: everything but the tokens


class MemoryTerms:
    """Entity terms held in memory (the evaluator's, calibrate-nil's), behind the reading interface of
    a KBStore; its retrieval index is built here, in memory."""

    def __init__(self, terms: dict):
        self.flat = {k: v.detach() for k, v in flatten_terms(terms).items()}
        self.count = len(self.flat["cmfu.f"])

    def __len__(self):
        return self.count

    def term_names(self) -> list:
        return list(self.flat)

    def read_terms(self, index, names=None) -> dict:
        index = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return {n: self.flat[n][index].float().numpy() for n in (names or self.flat)}

    def scan(self, names, chunk: int = SCAN_CHUNK):
        for start in range(0, self.count, chunk):
            yield start, {n: self.flat[n][start:start + chunk].float().numpy() for n in names}

    def live(self, rows):
        return np.asarray(rows, dtype=np.int64)

    def retriever(self, matcher, threads: int = None) -> Retriever:
        space = Space.measure(matcher, (v for _, v in self.scan(("vdlu.e2m.q", "vdlu.m2e.k"))))
        spec, indexes = build_in_memory(self.count, lambda rows: space.entity_vectors(
            {n: self.flat[n][rows].float() for n in VECTOR_TERMS}))
        return Retriever(space, [(ix, part["rows"][0]) for ix, part in zip(indexes, spec["parts"])],
                         np.zeros(0, np.int64), threads)


def candidate_count(count: int) -> int:
    """Candidates of the default path: one per thousand entities, at least 256. The exhaustive top-10 lies
    within the first 40 (8-bit codes) or 64 (4-bit codes) of 200,000 random entities, about one per
    three thousand: this keeps a margin of three (benchmarks/scale.py checks it up to a million)."""
    return max(256, count // 1000)


class Searcher:
    """Search over `source`: a KBStore (memory-mapped, its saved index) or a nested terms dict."""

    def __init__(self, matcher: Matcher, source, candidates: int = DEFAULT_CANDIDATES, threads: int = None):
        self.matcher = matcher.eval()
        self.source = source if hasattr(source, "read_terms") else MemoryTerms(source)
        self.count = len(self.source)
        self.candidates = candidates or candidate_count(self.count)
        self.w = unit_weights(matcher)
        self.retriever = self.source.retriever(self.matcher, threads)
        self.last_exact_evaluated = 0

    # -- terms --------------------------------------------------------------------------------------
    def _tensors(self, values: dict) -> dict:
        """Float32 tensors of flat term values, with what the store leaves out recomputed (`complete`)."""
        return complete(self.matcher, {n: to_tensor(v) for n, v in values.items()})

    def _flat_terms(self, index, names) -> dict:
        """The flat terms `names` at `index`, as `_tensors`."""
        return self._tensors(self.source.read_terms(index, names))

    def entity_terms(self, index, names=None) -> dict:
        """The terms of the entities at `index` in float32 (the store keeps them coded); `names` limits
        them to some units' terms ("tglu", "vdlu", "cmfu")."""
        index = np.asarray(torch.as_tensor(index).reshape(-1), dtype=np.int64)
        wanted = [n for n in self.source.term_names() if names is None or n.split(".")[0] in names]
        return unflatten_terms(self._flat_terms(index, wanted))

    @torch.no_grad()
    def score(self, mention: dict, index: torch.Tensor) -> Scores:
        return self.matcher.score(mention, self.entity_terms(index))

    # -- search -------------------------------------------------------------------------------------
    def candidates_for(self, mention: dict, n: int) -> torch.Tensor:
        """The n best entities of the retrieval index (positions), best first."""
        rows = self.retriever.search(mention, min(n, self.count))
        return torch.from_numpy(self.source.live(rows)).long()

    @staticmethod
    def _top(index: torch.Tensor, s: torch.Tensor, k: int):
        """The k best by score descending, ties by lower entity index: (their indices, positions)."""
        order = torch.from_numpy(np.lexsort((index.numpy(), -s.numpy()))[:k])
        return index[order], order

    @torch.no_grad()
    def search(self, mention: dict, k: int = 10, exact: bool = False):
        """One mention (sides with batch size 1) -> (entity indices [k'], Scores [1, k']) best first."""
        k = max(0, min(k, self.count))
        if k == 0:
            empty = torch.zeros(1, 0)
            return torch.zeros(0, dtype=torch.long), Scores(*([empty] * 8))
        among = None if exact else self.candidates_for(mention, max(self.candidates, k))
        return self._best(mention, k, among)

    def _bound_basis(self, mention: dict) -> torch.Tensor:
        values = mention["tglu"]["value"][0]  # [L, d]
        centred = (values - values.mean(dim=1, keepdim=True)).double().numpy()
        basis, _ = np.linalg.qr(centred.T)  # [d, min(L, d)], orthonormal (numpy: no thread team for a 40x96 QR)
        return torch.from_numpy(basis).float()

    def _g2l_bound(self, basis: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        ln = self.matcher.tglu.layer_norm
        return cls @ ln.bias + math.sqrt(cls.shape[1]) * ((cls * ln.weight) @ basis).norm(dim=1)

    @torch.no_grad()
    def g2l_upper_bound(self, mention: dict) -> torch.Tensor:
        """An upper bound of G2L for every entity (see the module docstring): [N]."""
        basis = self._bound_basis(mention)
        return torch.cat([self._g2l_bound(basis, to_tensor(v["tglu.cls"]))
                          for _, v in self.source.scan(("tglu.cls",))])

    def _cheap_and_bound(self, mention: dict, basis: torch.Tensor, flat: dict):
        """w_T/2 G2G + w_V S_V + w_C S_C, and that plus the G2L bound, for the entities of `flat`."""
        e = unflatten_terms(flat)
        g2g = mention["tglu"]["t_g"] @ e["tglu"]["t_g"].T
        e2m, m2e = self.matcher.vdlu.score(mention["vdlu"], e["vdlu"])
        s_c = self.matcher.cmfu.score(mention["cmfu"], e["cmfu"])
        cheap = (self.w["tglu"] / 2 * g2g + self.w["vdlu"] * (e2m + m2e) / 2 + self.w["cmfu"] * s_c)[0]
        return cheap, cheap + self.w["tglu"] / 2 * self._g2l_bound(basis, e["tglu"]["cls"])

    def _best(self, mention: dict, k: int, among: torch.Tensor = None):
        """The exact top-k of the entities `among` (all of them when None), by bound-ordered scoring:
        (entity indices [k], their Scores [1, k]), best first."""
        basis = self._bound_basis(mention)
        if among is None:
            ids, cheap, bound = [], [], []
            for start, values in self.source.scan(SMALL_TERMS, SCAN_CHUNK):
                c, b = self._cheap_and_bound(mention, basis, self._tensors(values))
                ids.append(torch.arange(start, start + len(c)))
                cheap.append(c)
                bound.append(b)
            ids, cheap, bound = torch.cat(ids), torch.cat(cheap), torch.cat(bound)
        else:
            ids = among
            cheap, bound = self._cheap_and_bound(mention, basis, self._flat_terms(ids.numpy(), SMALL_TERMS))
        if self.w["tglu"] == 0:  # without TGLU the cheap part is the whole score
            self.last_exact_evaluated = 0
            found = self._top(ids, cheap, k)[0]
            return found, self.score(mention, found)
        order = torch.argsort(bound, descending=True)
        best_index, best = torch.zeros(0, dtype=torch.long), None
        start, block = 0, FIRST_BLOCK
        while start < len(ids):
            index = ids[order[start:start + block]]
            scores = self.score(mention, index)
            if best is not None:
                scores = Scores(*(torch.cat([a, b], dim=1) for a, b in zip(vars(best).values(), vars(scores).values())))
            best_index, kept = self._top(torch.cat([best_index, index]), scores.s[0], k)
            best = scores.take(kept)
            start += len(index)
            block = min(2 * block, MAX_BLOCK)
            if start < len(ids) and len(best_index) == k:
                kth = float(best.s[0, -1])
                if kth > float(bound[order[start]]) + BOUND_MARGIN + 1e-6 * abs(kth):
                    break
        self.last_exact_evaluated = start  # how many entities needed the full score (for the benchmarks)
        return best_index, best
