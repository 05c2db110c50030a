"""VDLU, the Vision-based DuaL interaction Unit -> S_V.

DUAL(a_cls, b_cls, b_tokens), with its own weights:
    q = cls_fc(a_cls)          k = cls_fc(b_cls)          (the same layer for both)
    p = mean_tokens tokens_fc(b_tokens)
    c = fc(add_layer_norm(p + q))
    g = tanh(gate_fc(c))                                  (a scalar per pair)
    h = layer_norm(c * g + k)
    score = h . layer_norm(q)                             (the same layer_norm; the paper writes v_A)

    E2M = DUAL_ent2men(v_G(E), v_G(M), V_L(M))
    M2E = DUAL_men2ent(v_G(M), v_G(E), V_L(E))
    S_V = (E2M + M2E) / 2

Each DUAL splits into an "a side" (q and layer_norm(q)) and a "b side" (k and p). For E2M the entity
is the a side, for M2E it is the b side; either way its terms are computed once per KB.
"""
import torch
from torch import nn


class DUAL(nn.Module):
    def __init__(self, dv: int = 96, dim: int = 96):
        super().__init__()
        self.cls_fc = nn.Linear(dv, dim)
        self.tokens_fc = nn.Linear(dv, dim)
        self.fc = nn.Linear(dim, dim)
        self.gate_fc = nn.Linear(dim, 1)
        self.add_layer_norm = nn.LayerNorm(dim)
        self.layer_norm = nn.LayerNorm(dim)

    def a_side(self, a_cls: torch.Tensor) -> dict:
        """a_cls [A, dv] -> q [A, d], q_norm [A, d]."""
        q = self.cls_fc(a_cls)
        return {"q": q, "q_norm": self.layer_norm(q)}

    def b_side(self, b_cls: torch.Tensor, b_tokens: torch.Tensor) -> dict:
        """b_cls [B, dv], b_tokens [B, T, dv] -> k [B, d], p [B, d]."""
        return {"k": self.cls_fc(b_cls), "p": self.tokens_fc(b_tokens).mean(dim=1)}

    def fused(self, a: dict, b: dict) -> torch.Tensor:
        """h = layer_norm(c * g + k) for every (a, b) pair: [A, B, d] (needs only a's q)."""
        c = self.fc(self.add_layer_norm(b["p"].unsqueeze(0) + a["q"].unsqueeze(1)))  # [A, B, d]
        g = torch.tanh(self.gate_fc(c))  # [A, B, 1]
        return self.layer_norm(c * g + b["k"].unsqueeze(0))

    def score(self, a: dict, b: dict) -> torch.Tensor:
        """Score of every (a, b) pair: [A, B]."""
        return (self.fused(a, b) * a["q_norm"].unsqueeze(1)).sum(-1)


class VDLU(nn.Module):
    def __init__(self, dv: int = 96, dim: int = 96):
        super().__init__()
        self.dual_ent2men = DUAL(dv, dim)
        self.dual_men2ent = DUAL(dv, dim)

    def entity_side(self, v_g: torch.Tensor, v_l: torch.Tensor) -> dict:
        """v_g [N, dv], v_l [N, T, dv] -> the entity's terms of both DUALs."""
        return {"e2m": self.dual_ent2men.a_side(v_g), "m2e": self.dual_men2ent.b_side(v_g, v_l)}

    def mention_side(self, v_g: torch.Tensor, v_l: torch.Tensor) -> dict:
        """v_g [B, dv], v_l [B, T, dv] -> the mention's terms of both DUALs."""
        return {"e2m": self.dual_ent2men.b_side(v_g, v_l), "m2e": self.dual_men2ent.a_side(v_g)}

    def score(self, mention: dict, entity: dict):
        """e2m [B, N], m2e [B, N]."""
        e2m = self.dual_ent2men.score(entity["e2m"], mention["e2m"]).T
        m2e = self.dual_men2ent.score(mention["m2e"], entity["m2e"])
        return e2m, m2e
