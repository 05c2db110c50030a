"""TGLU, the Text-based Global-Local interaction Unit -> S_T.

    G2G = t_G(E) . t_G(M)                                   (512-d dot product, no projection)
    A   = softmax(Q Kᵀ / √d)     Q = fc_query(T_L(E)), K = fc_key(T_L(M)), V = fc_value(T_L(M))
    G2L = fc_cls(t_G(E)) . LayerNorm(mean_i (A V)_i)        (mean over the entity tokens i)
    S_T = (G2G + G2L) / 2

No padding mask: padded positions take part in the attention and in the mean, as in the authors' code.

The unit is split into an entity side (everything that depends on the entity alone, computed once
per KB), a mention side, and `score`, which combines the two for every (mention, entity) pair.
Training, evaluation and linking all call `score`; only where the sides come from differs.
"""
import math

import torch
from torch import nn


class TGLU(nn.Module):
    def __init__(self, text_embed_dim: int = 512, text_token_dim: int = 512, dim: int = 96):
        super().__init__()
        self.dim = dim
        self.fc_query = nn.Linear(text_token_dim, dim)
        self.fc_key = nn.Linear(text_token_dim, dim)
        self.fc_value = nn.Linear(text_token_dim, dim)
        self.fc_cls = nn.Linear(text_embed_dim, dim)
        self.layer_norm = nn.LayerNorm(dim)

    def entity_side(self, t_g: torch.Tensor, t_l: torch.Tensor) -> dict:
        """t_g [N, 512], t_l [N, L, 512] -> t_g [N, 512], query [N, L, d], cls [N, d]."""
        return {"t_g": t_g, "query": self.fc_query(t_l), "cls": self.fc_cls(t_g)}

    def mention_side(self, t_g: torch.Tensor, t_l: torch.Tensor) -> dict:
        """t_g [B, 512], t_l [B, L, 512] -> t_g [B, 512], key [B, L, d], value [B, L, d]."""
        return {"t_g": t_g, "key": self.fc_key(t_l), "value": self.fc_value(t_l)}

    def attention(self, mention: dict, entity: dict) -> torch.Tensor:
        """Token-to-token weights A [B, N, L_E, L_M]: each entity token over the mention tokens."""
        query, key = entity["query"], mention["key"]
        n, l_e, d = query.shape
        b, l_m, _ = key.shape
        # One GEMM for all pairs: [N*L_E, d] x [d, B*L_M].
        logits = query.reshape(n * l_e, d) @ key.reshape(b * l_m, d).T
        logits = logits.view(n, l_e, b, l_m).permute(2, 0, 1, 3)
        return torch.softmax(logits / math.sqrt(self.dim), dim=-1)

    def score(self, mention: dict, entity: dict, return_attention: bool = False):
        """Scores for every pair: g2g [B, N], g2l [B, N] (and A [B, N, L_E, L_M] if asked)."""
        g2g = mention["t_g"] @ entity["t_g"].T
        attention = self.attention(mention, entity)
        # mean_i (A V)_i == (mean_i A_i) V, so the B x N x L_E x d context is never materialised.
        weights = attention.mean(dim=2)  # [B, N, L_M]
        context = torch.einsum("bnj,bjd->bnd", weights, mention["value"])
        g2l = (self.layer_norm(context) * entity["cls"].unsqueeze(0)).sum(-1)
        return (g2g, g2l, attention) if return_attention else (g2g, g2l)
