"""The MIMIC matcher: input LayerNorms, the three interaction units and the overall score.

    S = (S_T + S_V + S_C) / 3

Every encoder output goes through one of four LayerNorms first (the same norms for mentions and
entities; authors' code). Then each unit splits into an entity side, a mention side and a pairwise
`score`. `Matcher.score(mention_side(m), entity_side(e))` is the one scoring path of the project: the
trainer calls it on in-batch pairs, the evaluator on the whole KB, the linker on precomputed entity
terms (all of them, or a candidate subset selected with `select`).

Ablations (the paper's Table 2) are a `units` set: a dropped unit is still computed and reported, but
takes no part in S, which becomes the mean of the units kept.
"""
from dataclasses import dataclass, fields

import torch
from torch import nn

from .cmfu import CMFU
from .tglu import TGLU
from .vdlu import VDLU

UNITS = ("tglu", "vdlu", "cmfu")
# the unit scores a result row carries beside S ("score")
SCORE_FIELDS = ("s_t", "s_t_g2g", "s_t_g2l", "s_v", "s_v_e2m", "s_v_m2e", "s_c")


@dataclass
class Features:
    """Encoder outputs for N inputs: t_g [N, Dt], t_l [N, L, Dtok], v_g [N, dv], v_l [N, T, dv]."""
    t_g: torch.Tensor
    t_l: torch.Tensor
    v_g: torch.Tensor
    v_l: torch.Tensor

    def __len__(self):
        return len(self.t_g)

    def __getitem__(self, index):
        return Features(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def cat(parts: list) -> "Features":
        return Features(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Features)))


@dataclass
class Scores:
    """All scores of B mentions against N entities, each [B, N]."""
    s: torch.Tensor
    s_t: torch.Tensor
    s_t_g2g: torch.Tensor
    s_t_g2l: torch.Tensor
    s_v: torch.Tensor
    s_v_e2m: torch.Tensor
    s_v_m2e: torch.Tensor
    s_c: torch.Tensor

    def unit(self, name: str) -> torch.Tensor:
        return {"tglu": self.s_t, "vdlu": self.s_v, "cmfu": self.s_c}[name]

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def take(self, positions) -> "Scores":
        """The scores of the entities at `positions` along the entity axis."""
        return Scores(*(getattr(self, f.name)[:, positions] for f in fields(self)))


# Terms are nested dicts of tensors whose first axis is the entity (or mention) axis.
def map_terms(fn, terms):
    """Apply fn to every tensor of a (nested) terms dict."""
    return {k: map_terms(fn, v) if isinstance(v, dict) else fn(v) for k, v in terms.items()}


def select(terms: dict, index: torch.Tensor) -> dict:
    """The terms of the entities at `index` (a candidate subset)."""
    return map_terms(lambda t: t[index], terms)


def cat_terms(parts: list) -> dict:
    first = parts[0]
    return {k: cat_terms([p[k] for p in parts]) if isinstance(v, dict) else torch.cat([p[k] for p in parts])
            for k, v in first.items()}


def flatten_terms(terms: dict, prefix: str = "") -> dict:
    """{"tglu": {"query": T}} -> {"tglu.query": T} (for storage)."""
    out = {}
    for k, v in terms.items():
        if isinstance(v, dict):
            out.update(flatten_terms(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def unflatten_terms(flat: dict) -> dict:
    out = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


class Matcher(nn.Module):
    def __init__(self, text_embed_dim=512, text_token_dim=512, dv=96, tglu_dim=96, vdlu_dim=96, cmfu_dim=96,
                 units=UNITS):
        super().__init__()
        unknown = set(units) - set(UNITS)
        if unknown or not units:
            raise ValueError(f"units must be a non-empty subset of {UNITS}, got {tuple(units)}")
        self.units = tuple(u for u in UNITS if u in units)
        self.text_cls_layernorm = nn.LayerNorm(text_embed_dim)
        self.text_tokens_layernorm = nn.LayerNorm(text_token_dim)
        self.image_cls_layernorm = nn.LayerNorm(dv)
        self.image_tokens_layernorm = nn.LayerNorm(dv)
        self.tglu = TGLU(text_embed_dim, text_token_dim, tglu_dim)
        self.vdlu = VDLU(dv, vdlu_dim)
        self.cmfu = CMFU(text_embed_dim, dv, cmfu_dim)

    def _normalised(self, x: Features) -> Features:
        return Features(self.text_cls_layernorm(x.t_g), self.text_tokens_layernorm(x.t_l),
                        self.image_cls_layernorm(x.v_g), self.image_tokens_layernorm(x.v_l))

    def entity_side(self, entities: Features) -> dict:
        """Everything the units need from the entities alone (computed once per KB)."""
        x = self._normalised(entities)
        return {"tglu": self.tglu.entity_side(x.t_g, x.t_l), "vdlu": self.vdlu.entity_side(x.v_g, x.v_l),
                "cmfu": self.cmfu.entity_side(x.t_g, x.v_l)}

    def mention_side(self, mentions: Features) -> dict:
        x = self._normalised(mentions)
        return {"tglu": self.tglu.mention_side(x.t_g, x.t_l), "vdlu": self.vdlu.mention_side(x.v_g, x.v_l),
                "cmfu": self.cmfu.mention_side(x.t_g, x.v_l)}

    def combine(self, s_t: torch.Tensor, s_v: torch.Tensor, s_c: torch.Tensor) -> torch.Tensor:
        """S: the mean of the kept units' scores, (S_T + S_V + S_C) / 3 with all three."""
        kept = {"tglu": s_t, "vdlu": s_v, "cmfu": s_c}
        return sum(kept[u] for u in self.units) / len(self.units)

    def score(self, mention: dict, entity: dict) -> Scores:
        """Scores of B mentions against N entities from their precomputed sides; each [B, N]."""
        g2g, g2l = self.tglu.score(mention["tglu"], entity["tglu"])
        e2m, m2e = self.vdlu.score(mention["vdlu"], entity["vdlu"])
        s_c = self.cmfu.score(mention["cmfu"], entity["cmfu"])
        s_t, s_v = (g2g + g2l) / 2, (e2m + m2e) / 2
        return Scores(self.combine(s_t, s_v, s_c), s_t, g2g, g2l, s_v, e2m, m2e, s_c)

    def forward(self, mentions: Features, entities: Features) -> Scores:
        return self.score(self.mention_side(mentions), self.entity_side(entities))

    def token_attention(self, mention: dict, entity: dict) -> torch.Tensor:
        """TGLU token-to-token attention [B, N, L_E, L_M] (for display; memory grows with B*N)."""
        return self.tglu.attention(mention["tglu"], entity["tglu"])
