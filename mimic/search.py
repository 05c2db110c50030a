"""Top-k search of one mention over a pre-encoded KB, fast by default and exact on request.

Both paths end in `Matcher.score` on precomputed entity terms, so a returned score is the score.

Split of S by what it costs (w_u = 1 / number of kept units, 0 for a dropped unit):

    S = w_T/2 * G2G + w_C * S_C            a dot product of precomputed vectors  -> faiss
      + w_V * S_V                          cheap for all entities: two 96x96 GEMMs
      + w_T/2 * G2L                        the costly part: a 40x40 attention per entity

Default: faiss (exact inner product) retrieves the `candidates` best entities by the dot-product part;
the full score ranks them. Fast, and nearly always the exhaustive top-k (the benchmark measures how
often).

Exact (`exact=True`): G2G, S_C and S_V are computed for every entity, and G2L is bounded from above
without the attention. G2L = u_E . LayerNorm(x), where u_E = fc_cls(t_G(E)) and x is a convex
combination of the mention's value vectors. LayerNorm(x) = γ ⊙ z + β with z = centred(x) / σ(x):
z lies in the span of the centred value vectors and |z| <= √d, hence

    G2L <= β . u_E + √d * |Qᵀ (γ ⊙ u_E)|       (Q: an orthonormal basis of that span)

Entities are then scored exactly in decreasing order of their bound until the k-th best exact score
exceeds every remaining bound: the result is provably the exhaustive top-k (ties broken by index).
"""
import math

import faiss
import numpy as np
import torch

from .matcher import Matcher, Scores, map_terms, select

BOUND_MARGIN = 1e-4  # absolute slack on the stopping rule, far above float32 rounding of the scores


def _unit_weights(matcher: Matcher) -> dict:
    return {u: (1.0 / len(matcher.units) if u in matcher.units else 0.0) for u in ("tglu", "vdlu", "cmfu")}


class Searcher:
    def __init__(self, matcher: Matcher, terms: dict, candidates: int = 1024):
        self.matcher = matcher.eval()
        self.terms = map_terms(lambda t: t.detach(), terms)
        self.candidates = candidates
        self.w = _unit_weights(matcher)
        self.count = len(terms["cmfu"]["f"])
        self.index = self._build_index()

    # -- the dot-product part ---------------------------------------------------------------------
    def _dot_scale(self):
        return self.w["tglu"] / 2, self.w["cmfu"]

    def _build_index(self):
        a, c = self._dot_scale()
        vectors = torch.cat([self.terms["tglu"]["t_g"].float() * a, self.terms["cmfu"]["f"].float() * c], dim=1)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors.numpy(), dtype=np.float32))
        return index

    def _query_vector(self, mention: dict) -> np.ndarray:
        return torch.cat([mention["tglu"]["t_g"], mention["cmfu"]["f"]], dim=1).numpy().astype(np.float32)

    # -- scoring ----------------------------------------------------------------------------------
    def entity_terms(self, index) -> dict:
        """The terms of the entities at `index`, in float32 (the store may keep some in float16)."""
        return map_terms(lambda t: t.float(), select(self.terms, index))

    @torch.no_grad()
    def score(self, mention: dict, index: torch.Tensor) -> Scores:
        return self.matcher.score(mention, self.entity_terms(index))

    @staticmethod
    def _top(index: torch.Tensor, s: torch.Tensor, k: int):
        """The k best by score descending, ties by lower entity index."""
        order = sorted(range(len(index)), key=lambda i: (-float(s[i]), int(index[i])))[:k]
        return index[order], order

    @torch.no_grad()
    def search(self, mention: dict, k: int = 10, exact: bool = False):
        """One mention (sides with batch size 1) -> (entity indices [k'], Scores [1, k']) best first."""
        k = max(0, min(k, self.count))
        if k == 0:
            empty = torch.zeros(1, 0)
            return torch.zeros(0, dtype=torch.long), Scores(*([empty] * 8))
        found = self._exact(mention, k) if exact else self._fast(mention, k)
        return found, self.score(mention, found)

    def _fast(self, mention: dict, k: int) -> torch.Tensor:
        n = min(max(self.candidates, k), self.count)
        _, ids = self.index.search(self._query_vector(mention), n)
        candidates = torch.from_numpy(ids[0][ids[0] >= 0]).long()
        s = self.score(mention, candidates).s[0]
        return self._top(candidates, s, k)[0]

    def _cheap_part(self, mention: dict, chunk: int = 65536) -> torch.Tensor:
        """w_T/2 G2G + w_V S_V + w_C S_C for every entity: [N]."""
        parts = []
        for start in range(0, self.count, chunk):
            e = map_terms(lambda t: t.float(), select({k: self.terms[k] for k in ("tglu", "vdlu", "cmfu")},
                                                       slice(start, start + chunk)))
            g2g = mention["tglu"]["t_g"] @ e["tglu"]["t_g"].T
            e2m, m2e = self.matcher.vdlu.score(mention["vdlu"], e["vdlu"])
            s_c = self.matcher.cmfu.score(mention["cmfu"], e["cmfu"])
            parts.append(self.w["tglu"] / 2 * g2g + self.w["vdlu"] * (e2m + m2e) / 2 + self.w["cmfu"] * s_c)
        return torch.cat(parts, dim=1)[0]

    @torch.no_grad()
    def g2l_upper_bound(self, mention: dict) -> torch.Tensor:
        """An upper bound of G2L for every entity (see the module docstring): [N]."""
        ln = self.matcher.tglu.layer_norm
        values = mention["tglu"]["value"][0]  # [L, d]
        centred = values - values.mean(dim=1, keepdim=True)
        basis, _ = torch.linalg.qr(centred.T)  # [d, min(L, d)], orthonormal
        cls = self.terms["tglu"]["cls"].float()
        spread = ((cls * ln.weight) @ basis).norm(dim=1)
        return cls @ ln.bias + math.sqrt(cls.shape[1]) * spread

    def _exact(self, mention: dict, k: int) -> torch.Tensor:
        cheap = self._cheap_part(mention)
        if self.w["tglu"] == 0:  # without TGLU the cheap part is the whole score
            self.last_exact_evaluated = 0
            return self._top(torch.arange(self.count), cheap, k)[0]
        bound = cheap + self.w["tglu"] / 2 * self.g2l_upper_bound(mention)
        order = torch.argsort(bound, descending=True)
        best_index, best_s = torch.zeros(0, dtype=torch.long), torch.zeros(0)
        start, block = 0, 256
        while start < self.count:
            index = order[start:start + block]
            s = self.score(mention, index).s[0]
            best_index, kept = self._top(torch.cat([best_index, index]), torch.cat([best_s, s]), k)
            best_s = torch.cat([best_s, s])[kept]
            start += len(index)
            block *= 2
            if start < self.count and len(best_s) == k:
                kth = float(best_s[-1])
                if kth > float(bound[order[start]]) + BOUND_MARGIN + 1e-6 * abs(kth):
                    break
        self.last_exact_evaluated = start  # how many entities needed the full score (for the benchmark)
        return best_index
