"""Plain, loop-based computations of the facts' formulas, one (mention, entity) pair at a time.

Written independently of mimic/: explicit loops over tokens, explicit softmax and LayerNorm, weights
read straight from the modules' parameters. The tests compare the library against these.
"""
import math

import torch


def linear(layer, x):
    return layer.weight @ x + layer.bias


def layer_norm(layer, x):
    mean = sum(x.tolist()) / len(x)
    var = sum((v - mean) ** 2 for v in x.tolist()) / len(x)
    return (x - mean) / math.sqrt(var + layer.eps) * layer.weight + layer.bias


def softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


@torch.no_grad()
def tglu_pair(tglu, tg_e, tl_e, tg_m, tl_m):
    """-> (G2G, G2L) for one pair; tl_* are [L, D] token matrices."""
    g2g = float(tg_e @ tg_m)
    keys = [linear(tglu.fc_key, tl_m[j]) for j in range(len(tl_m))]
    values = [linear(tglu.fc_value, tl_m[j]) for j in range(len(tl_m))]
    d = tglu.fc_key.out_features
    context_sum = torch.zeros(d, dtype=torch.float64)
    for i in range(len(tl_e)):
        q = linear(tglu.fc_query, tl_e[i])
        weights = softmax([float(q @ k) / math.sqrt(d) for k in keys])
        context_sum = context_sum + sum(w * v for w, v in zip(weights, values))
    context = layer_norm(tglu.layer_norm, context_sum / len(tl_e))
    g2l = float(linear(tglu.fc_cls, tg_e) @ context)
    return g2g, g2l


@torch.no_grad()
def dual_pair(dual, a_cls, b_cls, b_tokens):
    q = linear(dual.cls_fc, a_cls)
    k = linear(dual.cls_fc, b_cls)
    p = sum(linear(dual.tokens_fc, b_tokens[t]) for t in range(len(b_tokens))) / len(b_tokens)
    c = linear(dual.fc, layer_norm(dual.add_layer_norm, p + q))
    g = math.tanh(float(linear(dual.gate_fc, c)[0]))
    h = layer_norm(dual.layer_norm, c * g + k)
    return float(h @ layer_norm(dual.layer_norm, q))


@torch.no_grad()
def cmfu_side(cmfu, tg, vl):
    t = linear(cmfu.text_fc, tg)
    patches = [linear(cmfu.image_fc, vl[i]) for i in range(len(vl))]
    alpha = softmax([float(t @ p) for p in patches])
    context = sum(a * p for a, p in zip(alpha, patches))
    g = math.tanh(float(linear(cmfu.gate_fc, t)[0]))
    return layer_norm(cmfu.gate_layer_norm, t * g + context), alpha


@torch.no_grad()
def matcher_pair(matcher, ent, men):
    """Every score of one pair; ent / men are (t_g [D], t_l [L, D], v_g [dv], v_l [T, dv]) tuples."""
    def norm(x):
        tg, tl, vg, vl = x
        return (layer_norm(matcher.text_cls_layernorm, tg),
                torch.stack([layer_norm(matcher.text_tokens_layernorm, r) for r in tl]),
                layer_norm(matcher.image_cls_layernorm, vg),
                torch.stack([layer_norm(matcher.image_tokens_layernorm, r) for r in vl]))
    tg_e, tl_e, vg_e, vl_e = norm(ent)
    tg_m, tl_m, vg_m, vl_m = norm(men)
    g2g, g2l = tglu_pair(matcher.tglu, tg_e, tl_e, tg_m, tl_m)
    e2m = dual_pair(matcher.vdlu.dual_ent2men, vg_e, vg_m, vl_m)
    m2e = dual_pair(matcher.vdlu.dual_men2ent, vg_m, vg_e, vl_e)
    f_e, _ = cmfu_side(matcher.cmfu, tg_e, vl_e)
    f_m, _ = cmfu_side(matcher.cmfu, tg_m, vl_m)
    s_c = float(f_e @ f_m)
    s_t, s_v = (g2g + g2l) / 2, (e2m + m2e) / 2
    return {"s": (s_t + s_v + s_c) / 3, "s_t": s_t, "s_t_g2g": g2g, "s_t_g2l": g2l, "s_v": s_v,
            "s_v_e2m": e2m, "s_v_m2e": m2e, "s_c": s_c}


def stable_rank(scores, gold):
    """Rank of `gold` when entities are sorted by score descending, ties by index (a plain sort)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order.index(gold) + 1


def authors_style_scores(matcher, ent, men):
    """S [B, N] computed the way the authors' matcher does it, all pairs at once from raw encoder outputs
    (input norms and every projection recomputed per call; 4-D attention, context averaged after A V).
    ent / men: (t_g, t_l, v_g, v_l) tuples of batched tensors."""
    F = torch.nn.functional
    def ln(m, x):
        return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)
    tg_e, tl_e, vg_e, vl_e = (ln(matcher.text_cls_layernorm, ent[0]), ln(matcher.text_tokens_layernorm, ent[1]),
                              ln(matcher.image_cls_layernorm, ent[2]), ln(matcher.image_tokens_layernorm, ent[3]))
    tg_m, tl_m, vg_m, vl_m = (ln(matcher.text_cls_layernorm, men[0]), ln(matcher.text_tokens_layernorm, men[1]),
                              ln(matcher.image_cls_layernorm, men[2]), ln(matcher.image_tokens_layernorm, men[3]))
    t = matcher.tglu
    q = t.fc_query(tl_e).unsqueeze(1)                      # [N, 1, L, d]
    k, v = t.fc_key(tl_m).unsqueeze(0), t.fc_value(tl_m).unsqueeze(0)  # [1, B, L, d]
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(t.fc_key.out_features), dim=-1)
    context = t.layer_norm((probs @ v).mean(dim=-2))       # [N, B, d]
    g2l = (t.fc_cls(tg_e).unsqueeze(1) * context).sum(-1).T
    s_t = (g2l + tg_m @ tg_e.T) / 2

    def dual(d, a_cls, b_cls, b_tokens):
        qa, kb = d.cls_fc(a_cls), d.cls_fc(b_cls)
        c = d.fc(d.add_layer_norm(d.tokens_fc(b_tokens).mean(-2).unsqueeze(0) + qa.unsqueeze(1)))
        h = d.layer_norm(c * torch.tanh(d.gate_fc(c)) + kb.unsqueeze(0))
        return (h * d.layer_norm(qa.unsqueeze(1))).sum(-1)
    s_v = (dual(matcher.vdlu.dual_ent2men, vg_e, vg_m, vl_m).T + dual(matcher.vdlu.dual_men2ent, vg_m, vg_e, vl_e)) / 2

    c = matcher.cmfu
    def fuse(tg, vl):
        tt, pp = c.text_fc(tg), c.image_fc(vl)
        ctx = (torch.softmax(tt.unsqueeze(1) @ pp.transpose(-1, -2), dim=-1) @ pp).squeeze(1)
        return c.gate_layer_norm(tt * torch.tanh(c.gate_fc(tt)) + ctx)
    s_c = fuse(tg_m, vl_m) @ fuse(tg_e, vl_e).T
    return (s_t + s_v + s_c) / 3


def argsort_ranks(scores):
    """The authors' rank: argsort of argsort (descending), here with a stable sort so ties go by index."""
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    return torch.argsort(order, dim=-1, stable=True) + 1
