"""Zero-shot MIMIC: weights under which every unit reduces to a CLIP similarity.

The authors published no trained weights; with random MIMIC layers on the real CLIP the ranking means
nothing. `zero_shot_init` sets the MIMIC layers (the CLIP is untouched) so that, with λ = 100 (CLIP's
own logit scale):

    S_T = λ · ĉos(t_E, t_M)                    t = CLIP text embedding (text_embeds)
    S_V = λ · ĉos(m(i_E), m(i_M))              i = CLIP image embedding (image_embeds), m(i) = 0.1 · LN(P i)
    S_C = λ · ĉos(R n(t_E), R n(t_M))          n(t) = the text input norm's output
    S   = (S_T + S_V + S_C) / 3

where ĉos(a, b) = (a − ā)·(b − b̄) / (D · sqrt((var a + ε)(var b + ε))) is the cosine of the centred
vectors as LayerNorm computes it (ε = 1e-5; for CLIP's unit-norm 512-d embeddings it is the centred
cosine times 1 − O(ε / var) ≈ 0.995, the same for every pair to within 3e-4), P and R are fixed
semi-orthogonal matrices (orthonormal rows or columns from a seeded QR: near-isometric projections to
the 96-d unit space), and n(t) = γ_T · LayerNorm(t) is the text input norm's output.

Derivation, unit by unit, from the formulas in mimic/model/tglu.py, vdlu.py, cmfu.py:

* TGLU. `fc_cls = 0` makes u_E = 0, so G2L = 0 and S_T = G2G / 2 = n(t_E) · n(t_M) / 2. With the
  text-embedding LayerNorm at weight γ_T = sqrt(2λ / D) (D = 512) and bias 0, n(t_E)·n(t_M) =
  γ_T² · D · ĉos(t_E, t_M) = 2λ ĉos, hence S_T = λ ĉos(t_E, t_M). The query/key/value layers keep
  their random initialisation, so training can grow G2L (the token heatmap means nothing until then).
* VDLU. `image_cls_fc = s·P` (s puts the coordinates at unit variance), `cls_fc = identity`, `fc = 0`:
  then c = 0, h = layer_norm(0·g + k) = layer_norm(k) and the score is layer_norm(k)·layer_norm(q)
  with q, k the two image embeddings after the input norm, m(i); with `layer_norm` weight
  sqrt(λ / 96) that is λ · ĉos(m(i_E), m(i_M)) for both DUALs. (ĉos of two LayerNorm outputs is the
  centred cosine of the projected embeddings P i to within 0.1 %.) `gate_fc` bias 1 keeps the gate open (tanh 1 = 0.76) so that `fc` receives gradient.
  A missing image enters the model as all-zero pixels, whose CLIP embedding b is one fixed vector.
  P is blind to b (its rows are orthogonal to b), so a missing image gives P i = 0 and S_V = 0: no
  visual evidence, instead of a perfect match between two blanks that would favour every entity
  without an image whenever the mention has none. In float32, P i of a missing image is not exactly 0
  but rounding noise, which the two LayerNorms would blow up; the input norm's weight 0.1 keeps the
  result below 0.1 on the scale of λ = 100.
* CMFU. `image_fc = 0` makes every patch P_i = 0: α is uniform (the patch heatmap carries no
  information) and ctx = 0. `gate_fc` = (weight 0, bias 1) gives g = tanh 1 for every input, and
  f = gate_layer_norm(g · text_fc(n(t))) with `text_fc = R` and `gate_layer_norm` weight sqrt(λ / 96)
  gives S_C = f_E·f_M = λ · ĉos(R n(t_E), R n(t_M)): a text similarity seen through a second
  projection. No zero-shot alignment between patch tokens and text exists in CLIP, so none is claimed.

All three are cosines times the same λ, so they are on one scale, and S ranks like the mean of a text
cosine (counted twice, once through R) and an image cosine: the paper's CLIP baseline, in MIMIC's
shape. Every layer that the formulas zero keeps a gradient path (noted above), so training starts
from here.

The draw is the same on every machine's thread count (issue 18): P and R come from a seeded float64 QR,
the complement of the blank image by a closed form (a Householder reflection), and the QR, the blank
image's forward pass and the products run on one thread, then round to float32. Weights drawn before
(float32 QR and SVD on all threads) differed with OMP_NUM_THREADS, and differ from these: a store encoded
with them under --init zero-shot is refused as "encoded with another checkpoint" and must be re-encoded.
"""
import math
from contextlib import contextmanager

import torch
from torch import nn

LOGIT_SCALE = 100.0


@contextmanager
def one_thread():
    """Run the block on one intra-op thread. LAPACK's QR and SVD (and a forward pass) split their work
    by the thread count, and the split changes the last bits: drawn on 1 thread, the zero-shot weights
    are the same whatever OMP_NUM_THREADS is, so a store encoded on one machine loads on another."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def semi_orthogonal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A rows x cols float64 matrix with orthonormal rows (rows <= cols) or orthonormal columns. Drawn in
    float64: the QR of a Gaussian matrix is well conditioned, so another machine's last bits vanish when
    the result is rounded to float32."""
    with one_thread():
        gaussian = torch.randn(max(rows, cols), min(rows, cols), generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r))  # a unique, well-spread Q
    return q if rows >= cols else q.T


def complement_basis(direction: torch.Tensor) -> torch.Tensor:
    """D x (D - 1), float64: an orthonormal basis of the complement of `direction`, the last D - 1 columns
    of the Householder reflection that takes e_1 to ±direction. A closed form, smooth in `direction`
    (an SVD of I - d dᵀ would return any basis of that 511-fold degenerate space, changed entirely by
    one bit of the input)."""
    d = direction.double() / direction.double().norm()
    e1 = torch.zeros_like(d)
    e1[0] = 1.0
    v = d + (1.0 if d[0] >= 0 else -1.0) * e1  # no cancellation: |v| >= 1
    reflection = torch.eye(len(d), dtype=torch.float64) - 2.0 * torch.outer(v, v) / (v @ v)
    return reflection[:, 1:]


def projection_blind_to(direction: torch.Tensor, rows: int, generator: torch.Generator) -> torch.Tensor:
    """rows x D (float64), semi-orthogonal on the complement of `direction`, and zero on `direction` itself."""
    basis = complement_basis(direction)
    with one_thread():
        return semi_orthogonal(rows, basis.shape[1], generator) @ basis.T


@torch.no_grad()
def blank_image_embedding(model) -> torch.Tensor:
    """CLIP's image embedding of the all-zero pixels that stand for a missing image (any backbone), unit
    norm, float64; computed on the CPU on one thread, so its bits do not depend on the thread count."""
    device = next(model.encoder.parameters()).device
    with one_thread():
        embedding, _ = model.encoder.encode_image(model.processor.images.zeros()[None].to(device))
    embedding = embedding[0].double().cpu()
    return embedding / embedding.norm()


def _set(linear: nn.Linear, weight: torch.Tensor = None, bias: float = 0.0):
    # copy_ rounds a float64 weight to the layer's dtype (float32): the last step of the draw
    linear.weight.copy_(torch.zeros_like(linear.weight) if weight is None else weight)
    linear.bias.fill_(bias)


def _norm(layer: nn.LayerNorm, weight: float):
    layer.weight.fill_(weight)
    layer.bias.zero_()


@torch.no_grad()
def zero_shot_init(model, scale: float = LOGIT_SCALE, seed: int = 0):
    """Set the MIMIC layers of `model` (not its CLIP) to the zero-shot initialisation; returns model."""
    g = torch.Generator().manual_seed(seed)
    m, enc = model.matcher, model.encoder
    text_dim = m.text_cls_layernorm.normalized_shape[0]

    # input norms: the text embedding norm carries the scale of G2G; the others are plain
    _norm(m.text_cls_layernorm, math.sqrt(2 * scale / text_dim))
    _norm(m.image_cls_layernorm, 0.1)  # small: a missing image's rounding noise stays small (see VDLU)
    for layer in (m.text_tokens_layernorm, m.image_tokens_layernorm):
        _norm(layer, 1.0)

    # TGLU: G2L = 0 through fc_cls; query/key/value keep their (random) values
    _set(m.tglu.fc_cls)
    _norm(m.tglu.layer_norm, 1.0)

    # VDLU: both DUALs compare the two normalised image embeddings
    out_dim, in_dim = enc.image_cls_fc.weight.shape
    blind = projection_blind_to(blank_image_embedding(model), out_dim, g)  # a missing image -> S_V = 0
    _set(enc.image_cls_fc, math.sqrt(max(in_dim, out_dim)) * blind)
    for dual in (m.vdlu.dual_ent2men, m.vdlu.dual_men2ent):
        _set(dual.cls_fc, torch.eye(*dual.cls_fc.weight.shape))
        _set(dual.fc)
        _set(dual.gate_fc, bias=1.0)
        _norm(dual.add_layer_norm, 1.0)
        _norm(dual.layer_norm, math.sqrt(scale / dual.layer_norm.normalized_shape[0]))

    # CMFU: no patch attention, an open gate, a text similarity through R
    c = m.cmfu
    _set(c.image_fc)
    _set(c.gate_fc, bias=1.0)
    _set(c.text_fc, semi_orthogonal(*c.text_fc.weight.shape, g))
    _norm(c.gate_layer_norm, math.sqrt(scale / c.gate_layer_norm.normalized_shape[0]))
    _norm(c.context_layer_norm, 1.0)
    model.config.metadata = {**model.config.metadata, "init": "zero-shot"}
    return model
