"""Relevance maps: how much each image patch and each word of one (mention, candidate) pair moved S,
and each unit's score S_T, S_V, S_C.

Method: the gradient-weighted attention relevance of Chefer, Gur and Wolf ("Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021), the attribution
commonly used for CLIP. Why this one: it is gradient-based and class-specific (a map per target score,
not where the model attends), it follows attention through every layer, and it costs one forward pass
and a backward pass per target, where integrated gradients would need 20-50 passes: one explanation
with full-size ViT-B/32 fits in about a second on two CPU cores.

For each CLIP tower (vision: CLS + 7x7 patches; text: 40 positions) and a target score y:

    Ā_l = mean over heads of (∂y/∂A_l ⊙ A_l)⁺      A_l: layer l's attention probabilities [T, T]
    R   = I, then R ← R + Ā_l R layer by layer      R_ij: relevance of input token j for output token i
    r_j = Σ_i w_i R_ij                              relevance of input token j for y

Readout. Chefer et al. read the row of the one token a classifier uses (CLS; EOT for text). MIMIC reads
every output token: V_L is all 50 vision states (v_G is the CLS row), T_L all 40 text states (t_G the
EOT row). So the rows are weighted by how much y depends on each output state h_i,

    w_i ∝ ‖∂y/∂h_i‖ · ‖h_i‖      (normalised to sum 1)

the change of y for a change of h_i in proportion to its size (every MIMIC path reads h through a
LayerNorm, which ignores the scale of h). When y reads one row only, as under the zero-shot
initialisation (v_G and t_G only), this is exactly Chefer et al.'s readout.

Targets. y is each of S_T, S_V, S_C, and S. S is the mean of the units, so ∂S/∂A is the same mean of
the units' gradients; the rule is applied to that (the positive part and the product are not linear,
so the map of S is not the mean of the unit maps). S_T reads no image and S_V no text (the towers meet
only in the units), so one backward pass of S_T + S_V yields both towers' gradients for those two, and
one pass of S_C the rest: two backward passes in all. The image maps of S_T are therefore zero.

Maps are non-negative; higher = more of that score. Their scale is relative: compare patches within a
grid, not grids with each other.

Per backbone. What depends on the CLIP implementation is isolated in a tracer: which modules are each
tower's attention layers and how to make them return their probabilities (eager attention, for this
pass only: linking keeps sdpa), which module outputs the states MIMIC reads, where the token
embeddings are (to mask words), and the patch size. `tracer_for(model)` returns one for transformers'
CLIP and for open_clip's own ViT towers, or raises UnsupportedBackbone (timm image towers, e.g. SigLIP).
"""
import contextlib
import math
import re
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .heatmap import patch_grid

UNIT_TARGETS = ("s_t", "s_v", "s_c")
GRID_TARGETS = ("s", "s_t", "s_v", "s_c")
TOKEN_TARGETS = ("s", "s_t")
TOWERS = ("vision", "text")
# One explanation pass at a time per process: the pass switches the CLIP's attention implementation.
_PASS_LOCK = threading.Lock()


class UnsupportedBackbone(ValueError):
    """Relevance maps need access to the encoder's attention layers; this encoder is not supported."""


@dataclass
class Trace:
    """What one forward pass records of one tower, in layer order."""
    attentions: list = field(default_factory=list)  # [N, heads, T, T] per layer
    states: list = field(default_factory=list)  # [N, T, D]: the output states MIMIC reads (one entry)


class _Tracer:
    """What every tracer shares: the recording pass and the word mask. A tracer sets `token_embedding` and
    `patch_size` and supplies `_install(traces, keeper, undo)`, which makes its attention layers and
    readout modules hand their values to `keeper(store)` and registers with `undo` (an ExitStack) how to
    put each change back."""

    @contextlib.contextmanager
    def recording(self):
        """Within: forward passes of this thread record {"vision": Trace, "text": Trace}, with attention
        that yields its probabilities."""
        traces = {tower: Trace() for tower in TOWERS}
        owner = threading.get_ident()  # another thread linking meanwhile must not add to the traces

        def keeper(store):
            return lambda value: store.append(value) if threading.get_ident() == owner else None

        with _PASS_LOCK, contextlib.ExitStack() as undo:
            self._install(traces, keeper, undo)
            yield traces

    @staticmethod
    def _keep_output(module, record, undo, pick=lambda output: output):
        """Hand pick(module's output) to `record` on every forward, until `undo`."""
        undo.callback(module.register_forward_hook(lambda module, args, output: record(pick(output))).remove)

    @contextlib.contextmanager
    def masked_tokens(self, keep: torch.Tensor):
        """Within: the word embedding of every text position where keep [N, L] is 0 is zero (its position
        embedding stays, so the other tokens keep their places). Positions past L (open_clip pads the text
        to its context length) stay unmasked."""
        def hook(module, args, output):
            padded = F.pad(keep.to(output.dtype), (0, output.shape[1] - keep.shape[1]), value=1.0)
            return output * padded.unsqueeze(-1)
        handle = self.token_embedding.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


class TransformersCLIPTracer(_Tracer):
    """The per-backbone part, for the transformers CLIP encoder (mimic/model/encoder.py's CLIPEncoder)."""

    def __init__(self, encoder):
        clip = encoder.clip
        vision, text = clip.vision_model, clip.text_model
        self.clip = clip
        self.attention_layers = {"vision": [block.self_attn for block in encoder.vision_blocks],
                                 "text": [block.self_attn for block in encoder.text_blocks]}
        # V_L and v_G both come from the vision encoder's output (before the post-LayerNorm); T_L and t_G
        # from the text tower's final LayerNorm.
        self.readout = {"vision": (vision.encoder, lambda out: out.last_hidden_state),
                        "text": (text.final_layer_norm, lambda out: out)}
        self.token_embedding = text.embeddings.token_embedding
        self.patch_size = vision.config.patch_size

    def _install(self, traces, keeper, undo):
        for tower in TOWERS:
            for layer in self.attention_layers[tower]:  # eager attention returns (output, probabilities)
                self._keep_output(layer, keeper(traces[tower].attentions), undo, pick=lambda o: o[1])
            module, pick = self.readout[tower]
            self._keep_output(module, keeper(traces[tower].states), undo, pick=pick)
        undo.callback(self.clip.set_attn_implementation, self.clip.config._attn_implementation)
        self.clip.set_attn_implementation("eager")


def _eager_self_attention(attention, record):
    """A forward for an `nn.MultiheadAttention` used as self-attention (open_clip's blocks) that computes
    the probabilities explicitly, hands them to `record`, and uses that very tensor for the output, so
    that gradients reach it. It equals the module's own forward (tests/explain/test_relevance.py checks the scores)."""
    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        x = query if attention.batch_first else query.transpose(0, 1)  # [N, T, D]
        n, t, d = x.shape
        heads = attention.num_heads
        q, k, v = (y.reshape(n, t, heads, d // heads).transpose(1, 2)
                   for y in F.linear(x, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1))
        logits = q @ k.transpose(-2, -1) / math.sqrt(d // heads)  # [N, H, T, T]
        for mask in (attn_mask, None if key_padding_mask is None else key_padding_mask[:, None, None, :]):
            if mask is not None:
                mask = mask.reshape(n, heads, t, t) if mask.dim() == 3 else mask
                logits = logits.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
        probabilities = logits.softmax(dim=-1)
        record(probabilities)
        out = attention.out_proj((probabilities @ v).transpose(1, 2).reshape(n, t, d))
        return (out if attention.batch_first else out.transpose(0, 1)), None
    return forward


class OpenCLIPTracer(_Tracer):
    """The per-backbone part for open_clip models with open_clip's own towers (mimic/model/open_clip_encoder.py):
    their blocks call `nn.MultiheadAttention` without weights, so for the pass each one is given an
    explicit forward (`_eager_self_attention`)."""

    def __init__(self, encoder):
        visual, text = encoder.clip.visual, encoder.text_tower
        self.attention_layers = {"vision": [block.attn for block in encoder.vision_blocks],
                                 "text": [block.attn for block in encoder.text_blocks]}
        for layer in self.attention_layers["vision"] + self.attention_layers["text"]:
            if not layer._qkv_same_embed_dim or layer.bias_k is not None or layer.add_zero_attn:
                raise UnsupportedBackbone("relevance maps need plain self-attention layers; this open_clip model's "
                                          "attention has separate key/value widths or extra key/value tokens")
        # V_L and v_G come from the vision transformer's output (before ln_post); T_L and t_G from ln_final.
        self.readout = {"vision": visual.transformer, "text": text.ln_final}
        self.token_embedding = text.token_embedding
        size = visual.patch_size
        self.patch_size = size[0] if isinstance(size, (tuple, list)) else size

    def _install(self, traces, keeper, undo):
        for tower in TOWERS:
            for layer in self.attention_layers[tower]:
                layer.forward = _eager_self_attention(layer, keeper(traces[tower].attentions))
                undo.callback(delattr, layer, "forward")  # back to the class's own (fast) forward
            self._keep_output(self.readout[tower], keeper(traces[tower].states), undo)


def tracer_for(model):
    """The tracer of the model's encoder, or UnsupportedBackbone saying what is supported."""
    from ..model.encoder import CLIPEncoder
    from ..model.open_clip_encoder import OpenCLIPEncoder
    if isinstance(model.encoder, CLIPEncoder):
        return TransformersCLIPTracer(model.encoder)
    if isinstance(model.encoder, OpenCLIPEncoder) and not hasattr(model.encoder.clip.visual, "trunk"):
        return OpenCLIPTracer(model.encoder)
    raise UnsupportedBackbone(f"relevance maps are implemented for transformers' CLIP and open_clip's own ViT towers; "
                              f"this model's image tower is a timm model ({model.config.encoder})")


# -- the rule -------------------------------------------------------------------------------------

def token_relevance(attentions: list, attention_grads: list, states: torch.Tensor,
                    state_grads: torch.Tensor) -> torch.Tensor:
    """Chefer et al.'s rule with MIMIC's readout (module docstring) -> relevance of each input token [N, T].
    attentions, attention_grads: per layer [N, H, T, T]; states, state_grads: [N, T, D]."""
    n, _, t, _ = attentions[0].shape
    relevance = torch.eye(t, dtype=states.dtype, device=states.device).expand(n, t, t)
    for a, g in zip(attentions, attention_grads):
        weighted = (g * a).clamp(min=0).mean(dim=1)  # Ā [N, T, T]
        relevance = relevance + weighted @ relevance
    readout = state_grads.norm(dim=-1) * states.norm(dim=-1)  # [N, T]
    readout = readout / readout.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(readout.dtype).tiny)
    return (readout.unsqueeze(1) @ relevance).squeeze(1)


def _grads(target: torch.Tensor, inputs: list, retain: bool) -> list:
    grads = torch.autograd.grad(target, inputs, retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _combine(matcher, per_unit: dict) -> list:
    """∂S/∂x from the units' gradients: S's own mean (the kept units), applied to each tensor."""
    return [matcher.combine(t, v, c) for t, v, c in zip(per_unit["s_t"], per_unit["s_v"], per_unit["s_c"])]


def relevance_pass(model, texts: list, images: list, tracer=None) -> tuple:
    """One forward pass of (mention, entity) with gradients -> (Scores [1, 1], {target: {tower: [2, T]}}, the
    model's inputs); row 0 the mention, row 1 the entity. `images`: paths, bytes, PIL images or None, read
    by the model's own image pipeline (and image mode), as when linking."""
    tracer = tracer or tracer_for(model)
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in model.processor(texts, images).items()}
    matcher = model.matcher
    if torch.is_inference_mode_enabled():
        raise RuntimeError("relevance maps need gradients: call them outside torch.inference_mode()")
    with torch.enable_grad(), tracer.recording() as traces:
        features = model.encode(batch)
        scores = matcher.score(matcher.mention_side(features[0:1]), matcher.entity_side(features[1:2]))
        inputs = [x for tower in TOWERS for x in (*traces[tower].attentions, traces[tower].states[-1])]
        cross = _grads(scores.s_c.sum(), inputs, retain=True)
        # S_T reads only the text tower and S_V only the vision tower: one pass gives both.
        text_and_vision = _grads((scores.s_t + scores.s_v).sum(), inputs, retain=False)
    layers = {tower: len(traces[tower].attentions) for tower in TOWERS}
    vision_part = layers["vision"] + 1  # the vision tower's tensors come first in `inputs`
    zeros = [torch.zeros_like(x) for x in inputs]
    per_unit = {"s_c": cross,
                "s_t": zeros[:vision_part] + text_and_vision[vision_part:],
                "s_v": text_and_vision[:vision_part] + zeros[vision_part:]}
    per_target = {**per_unit, "s": _combine(matcher, per_unit)}
    relevance = {}
    for target, grads in per_target.items():
        relevance[target] = {}
        for tower, start in (("vision", 0), ("text", vision_part)):
            count = layers[tower]
            attentions = [a.detach() for a in traces[tower].attentions]
            relevance[target][tower] = token_relevance(attentions, grads[start:start + count],
                                                       traces[tower].states[-1].detach(), grads[start + count])
    return scores, relevance, batch


def readable_tokens(tokenizer, ids: list) -> list:
    """CLIP token ids -> the text of each token (bytes decoded; part of a character split over tokens is �)."""
    return [tokenizer.convert_tokens_to_string([token]).removesuffix("</w>")
            for token in tokenizer.convert_ids_to_tokens(ids)]


def word_positions(attention_mask: torch.Tensor) -> slice:
    """The positions of the words of one tokenised text: after the start token, before the end token."""
    return slice(1, int(attention_mask.sum()) - 1)


def explain_pair(model, mention_text: str, mention_image, entity_text: str, entity_image, tracer=None) -> dict:
    """Relevance maps of one (mention, entity) pair, both re-encoded from their text and image.

    -> {"scores": {"s", "s_t", "s_v", "s_c"} of this pass,
        "mention_relevance", "entity_relevance": {"s", "s_t", "s_v", "s_c"} -> patch grid (rows of floats),
                                                 or None for a side without a usable image,
        "token_relevance": {"tokens": the mention's words as tokens, "s": [...], "s_t": [...]},
        "word_relevance": the same over the words of the mention's text (`words_of`: tokens joined into
                          words, the [SEP] marker left out): [{"word", "start", "end", "s", "s_t"}]}
    """
    scores, relevance, batch = relevance_pass(model, [mention_text, entity_text], [mention_image, entity_image], tracer)
    out = {"scores": {k: float(getattr(scores, k).detach()) for k in GRID_TARGETS}}
    for row, side in enumerate(("mention_relevance", "entity_relevance")):
        # no image, or one the pipeline could not use, is the all-zero input: nothing to map
        has_image = bool(batch["pixel_values"][row].abs().sum() > 0)
        out[side] = ({k: patch_grid(relevance[k]["vision"][row].tolist()).tolist() for k in GRID_TARGETS}
                     if has_image else None)
    words = word_positions(batch["attention_mask"][0])
    ids = batch["input_ids"][0, words].tolist()
    out["token_relevance"] = {"tokens": readable_tokens(model.processor.tokenizer, ids),
                              **{k: relevance[k]["text"][0, words].tolist() for k in TOKEN_TARGETS}}
    out["word_relevance"] = words_of(mention_text, out["token_relevance"]["tokens"],
                                     {k: out["token_relevance"][k] for k in TOKEN_TARGETS})
    return out


def token_spans(text: str, tokens: list) -> list:
    """Where each token (from `readable_tokens`) stands in `text`: (start, end) or None, in order. CLIP
    lower-cases and normalises spaces, so each token is looked for case-insensitively after the previous
    one; a token holding only part of a character gets None."""
    spans, cursor = [], 0
    for token in tokens:
        piece = token.replace("\ufffd", "")
        found = re.compile(re.escape(piece), re.IGNORECASE).search(text, cursor) if piece.strip() else None
        spans.append(found.span() if found else None)
        cursor = found.end() if found else cursor
    return spans


SEPARATOR = "[SEP]"  # the marker between mention and sentence (mimic/model/processing.py): not a word read


def words_of(text: str, tokens: list, relevance: dict) -> list:
    """The relevance of each word of `text` the model read: tokens (from `readable_tokens`) whose characters
    touch are one word (sub-word pieces and their punctuation), its relevance the sum of theirs; the [SEP]
    marker is left out. relevance: {unit: a value per token} -> [{"word", "start", "end", unit: value}]."""
    out = []
    for position, span in enumerate(token_spans(text, tokens)):
        if span is None:
            continue
        if out and out[-1]["end"] == span[0]:
            word = out[-1]
            word["end"] = span[1]
        else:
            word = {"start": span[0], "end": span[1], **{unit: 0.0 for unit in relevance}}
            out.append(word)
        for unit, values in relevance.items():
            word[unit] += float(values[position])
    for word in out:
        word["word"] = text[word["start"]:word["end"]]
    return [w for w in out if w["word"].upper() != SEPARATOR]
