"""CMFU, the Cross-Modal Fusion Unit -> S_C.

For each side X in {E, M} on its own:
    t   = text_fc(t_G(X))                       [d]
    P   = image_fc(V_L(X))                      [T, d]   (all T = 50 tokens, CLS included)
    α   = softmax_i(t . P_i)                    [T]      (no scaling)
    ctx = Σ_i α_i P_i
    g   = tanh(gate_fc(t))                               (a scalar)
    f_X = gate_layer_norm(t * g + ctx)
    S_C = f_E . f_M

f_X depends on one side only, so S_C is a plain dot product of precomputed vectors. α is the
attention over image patches (CLS + 7x7 grid) that the demo draws. `context_layer_norm` exists in the
authors' checkpoints but their code never uses it; it is kept so that their checkpoints load.
"""
import torch
from torch import nn


class CMFU(nn.Module):
    def __init__(self, text_embed_dim: int = 512, dv: int = 96, dim: int = 96):
        super().__init__()
        self.text_fc = nn.Linear(text_embed_dim, dim)
        self.image_fc = nn.Linear(dv, dim)
        self.gate_fc = nn.Linear(dim, 1)
        self.gate_layer_norm = nn.LayerNorm(dim)
        self.context_layer_norm = nn.LayerNorm(dim)  # unused, as in the authors' code

    def side(self, t_g: torch.Tensor, v_l: torch.Tensor) -> dict:
        """t_g [N, 512], v_l [N, T, dv] -> fused f [N, d] and patch attention alpha [N, T]."""
        t = self.text_fc(t_g)
        patches = self.image_fc(v_l)
        alpha = torch.softmax((patches @ t.unsqueeze(-1)).squeeze(-1), dim=-1)
        context = (alpha.unsqueeze(-1) * patches).sum(dim=1)
        gate = torch.tanh(self.gate_fc(t))
        return {"f": self.gate_layer_norm(t * gate + context), "alpha": alpha}

    # The two sides are the same computation; the names keep the matcher symmetric with the other units.
    entity_side = side
    mention_side = side

    def score(self, mention: dict, entity: dict) -> torch.Tensor:
        """S_C for every pair: [B, N]."""
        return mention["f"] @ entity["f"].T
