"""open_clip backbones: `open_clip:MODEL/PRETRAINED` (pretrained weights) or `open_clip:MODEL` (random weights).

MODEL is an open_clip architecture (`open_clip.list_models()`: ViT-B-32, ViT-B-16, ViT-L-14, ViT-SO400M-14-
SigLIP, ...), PRETRAINED one of its tags (`open_clip.list_pretrained_tags_by_model(MODEL)`: laion2b_s34b_b79k,
openai, ...). Pretrained weights come from the Hugging Face Hub or its local cache, as open_clip fetches them.

The four features keep their definitions (see mimic/model/encoder.py), computed by open_clip's own modules:

    text:  the tokens (at most text_max_length, padded to the model's context length as open_clip does)
           -> embedding + positions -> transformer -> ln_final = T_L (the first text_max_length positions)
           -> open_clip's pooling (EOS token, or last) -> text projection -> L2-normalised = t_G
    image: patch embedding (+ CLS) -> transformer blocks = the tokens before the post-LayerNorm (-> V_L)
           -> open_clip's post-LayerNorm and pooling -> projection -> L2-normalised (-> v_G)

so t_G equals `encode_text(..., normalize=True)` and the image embedding `encode_image(..., normalize=True)`
(tests/model/test_open_clip.py checks both). Image towers: open_clip's VisionTransformer, or a timm ViT
(SigLIP). Text towers: open_clip's own (CLIP's, or the bidirectional one of SigLIP and CLIPA).
Refused, with the reason: ResNet and ConvNeXt image towers (no patch tokens in this sense), attention-
pooled towers (CoCa), text towers from transformers (roberta, mt5, ...).

Tokenizers: models on OpenAI's vocabulary (49,408 BPE tokens) use the one bundled with open_clip
(mimic/model/tokenizer.py, no network); models that name a Hugging Face tokenizer (SigLIP, CLIPA, ...) load
it as open_clip does, from the Hub or its local cache, and are refused clearly when it cannot be.
Images: open_clip's own inference transform for the model (size, resize mode, interpolation, mean/std
of the pretrained tag), after the library's safe `open_image`.
"""
import copy
import functools
import json
import os

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, merge_preprocess_dict
from open_clip.transformer import text_global_pool
from torch import nn

from .encoder import OPEN_CLIP, EncoderUnavailable, MIMICEncoder, unit
from .images import ImagePipeline
from .processing import Processor
from .tokenizer import bundled_clip_tokenizer, load_tokenizer

OPENAI_VOCAB_SIZE = 49408
PREPROCESS_FILE = "open_clip_preprocess.json"


def parse_spec(spec: str) -> tuple:
    """"open_clip:ViT-B-32/laion2b_s34b_b79k" -> ("ViT-B-32", "laion2b_s34b_b79k"); no tag -> (name, None)."""
    name, _, tag = spec[len(OPEN_CLIP):].partition("/")
    if not name:
        raise EncoderUnavailable(f"{spec!r}: name an open_clip model, e.g. open_clip:ViT-B-32/laion2b_s34b_b79k")
    if ":" in name:  # open_clip's own hf-hub: and local-dir: names fetch configs and weights in their own way
        raise EncoderUnavailable(f"{spec!r}: use an open_clip model name and a pretrained tag, MODEL/PRETRAINED "
                                 "(open_clip.list_pretrained()); hf-hub: and local-dir: names are not supported")
    return name, tag or None


def _unsupported(model_cfg: dict) -> str:
    """Why MIMIC cannot use this architecture ('' when it can)."""
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if isinstance(vision.get("layers"), (list, tuple)):
        return "its image tower is a ResNet; MIMIC needs a ViT's patch tokens"
    if vision.get("timm_model_name") and not vision["timm_model_name"].startswith("vit_"):
        return f"its image tower is timm's {vision['timm_model_name']}, not a ViT; MIMIC needs a ViT's patch tokens"
    if vision.get("attentional_pool") or "multimodal_cfg" in model_cfg:
        return "its image tower pools by attention (CoCa); MIMIC needs the plain ViT tokens"
    if text.get("hf_model_name"):
        return f"its text tower is the transformers model {text['hf_model_name']}, which mimic-el does not wrap"
    if text.get("embed_cls"):
        return "its text tower appends a class token (CoCa)"
    return ""


def model_config(name: str, tag_cfg: dict = None) -> dict:
    """open_clip's configuration of `name`, with the activation its pretrained weights were trained with."""
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise EncoderUnavailable(f"open_clip has no model {name!r}; see open_clip.list_models() (e.g. ViT-B-32, "
                                 f"ViT-B-16, ViT-L-14)")
    reason = _unsupported(model_cfg)
    if reason:
        raise EncoderUnavailable(f"open_clip:{name} cannot be a MIMIC backbone: {reason}")
    if (tag_cfg or {}).get("quick_gelu"):
        model_cfg["quick_gelu"] = True  # e.g. OpenAI's weights: open_clip only warns when this is missing
    return model_cfg


def _tag_config(name: str, tag: str) -> dict:
    """open_clip's record of a pretrained tag (where the weights are, their preprocessing); {} for a weights file."""
    if os.path.isfile(tag):
        return {"file": tag}
    tag_cfg = open_clip.get_pretrained_cfg(name, tag)
    if not tag_cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise EncoderUnavailable(f"open_clip has no pretrained weights {tag!r} for {name}; its tags: {known}")
    return tag_cfg


def build(model_cfg: dict, preprocess_cfg: dict) -> nn.Module:
    """The architecture at random (seeded by the caller), as open_clip's create_model builds it on the CPU;
    the configuration is kept as `model.open_clip_config` (what a checkpoint records)."""
    cfg = copy.deepcopy(model_cfg)
    if "timm_model_name" in cfg["vision_cfg"]:
        cfg["vision_cfg"]["timm_model_pretrained"] = False  # never fetch ImageNet weights behind the user's back
    custom_text = cfg.pop("custom_text", False)
    model = (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)(**cfg)
    preprocess_cfg = {**preprocess_cfg, "size": getattr(model.visual, "image_size", preprocess_cfg["size"])}
    open_clip.set_model_preprocess_cfg(model, preprocess_cfg)
    model.open_clip_config = {"model_cfg": copy.deepcopy(model_cfg), "preprocess_cfg": preprocess_cfg}
    return model.eval()


def _weights_file(name: str, tag: str, tag_cfg: dict, local_files_only: bool) -> str:
    """The pretrained weights of a tag: from the Hub, or only from its local cache."""
    hub = tag_cfg.get("hf_hub", "")
    try:
        if local_files_only and hub:
            from huggingface_hub import try_to_load_from_cache
            repo, filename = os.path.split(hub)
            filename = filename or "open_clip_pytorch_model.bin"
            for candidate in ("open_clip_model.safetensors", os.path.splitext(filename)[0] + ".safetensors", filename):
                cached = try_to_load_from_cache(repo, candidate)
                if isinstance(cached, str):
                    return cached
            raise FileNotFoundError(f"{repo} is not in the local Hugging Face cache")
        return open_clip.download_pretrained(tag_cfg)
    except Exception as e:  # the hub client and open_clip raise many kinds; all mean "not available here"
        raise EncoderUnavailable(
            f"could not load the pretrained weights open_clip:{name}/{tag} (no internet access, or not in the local "
            f"Hugging Face cache). Download them once with network access. Details: {e}") from e


def load_open_clip(spec: str, pretrained: bool = True, local_files_only: bool = False) -> nn.Module:
    """The open_clip model a spec names: with its pretrained weights, or (no tag, or pretrained=False) at random."""
    name, tag = parse_spec(spec)
    tag_cfg = _tag_config(name, tag) if tag else {}
    model_cfg = model_config(name, tag_cfg)
    if _hub_tokenizer_name(model_cfg):
        load_open_clip_tokenizer(model_cfg, local_files_only=local_files_only)  # refuse before fetching any weights
    weights = _weights_file(name, tag, tag_cfg, local_files_only) if tag and pretrained else None
    model = build(model_cfg, merge_preprocess_dict(PreprocessCfg(), tag_cfg))
    _check_towers(model, spec)
    if weights:
        try:
            open_clip.load_checkpoint(model, weights, strict=True)  # torch.load(weights_only=True) inside
        except Exception as e:  # torch and open_clip raise many kinds; all mean "not these weights"
            raise EncoderUnavailable(f"the weights of {spec} do not load into open_clip's {name} (a damaged file, or "
                                     f"weights of another model): {str(e).splitlines()[0] if str(e) else e!r}") from e
    return model.eval()


def from_architecture(architecture: dict) -> nn.Module:
    """The model a checkpoint's config.json records ({"open_clip": {"model_cfg", "preprocess_cfg"}}), at random."""
    recorded = architecture["open_clip"]
    model = build(recorded["model_cfg"], recorded["preprocess_cfg"])
    _check_towers(model, "the checkpoint's open_clip model")
    return model


def architecture(model: nn.Module) -> dict:
    return {"open_clip": model.open_clip_config}


def _check_towers(model: nn.Module, what: str):
    visual = model.visual
    if hasattr(visual, "trunk"):
        from timm.models.vision_transformer import VisionTransformer
        if not isinstance(visual.trunk, VisionTransformer):
            raise EncoderUnavailable(f"{what}: its timm image tower {type(visual.trunk).__name__} is not a plain ViT")
    elif not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise EncoderUnavailable(f"{what}: its image tower {type(visual).__name__} is not a ViT")


# -- the tokenizer each model needs -----------------------------------------------------------------

class HubTokenizer:
    """open_clip's wrapper of a Hugging Face tokenizer (SigLIP, CLIPA, ...), with the calls Processor makes.
    open_clip's cleaning (e.g. SigLIP's canonicalisation) and padding apply as in open_clip."""

    def __init__(self, wrapped):
        self.wrapped = wrapped
        self.pad_token_id = wrapped.tokenizer.pad_token_id or 0

    def __call__(self, texts: list, max_length: int, **_) -> dict:
        ids = self.wrapped(texts, context_length=max_length)
        return {"input_ids": ids, "attention_mask": (ids != self.pad_token_id).long()}

    def convert_ids_to_tokens(self, i: int) -> str:
        return self.wrapped.tokenizer.convert_ids_to_tokens(i)

    def __len__(self):
        return len(self.wrapped.tokenizer)

    def save_pretrained(self, folder: str):
        self.wrapped.save_pretrained(folder)


def _hub_tokenizer_name(model_cfg: dict) -> str:
    return model_cfg["text_cfg"].get("hf_tokenizer_name", "")


def load_open_clip_tokenizer(model_cfg: dict, source: str = None, local_files_only: bool = False):
    """The tokenizer a model needs. source: a checkpoint folder that holds it (else the model's own name)."""
    text_cfg = model_cfg["text_cfg"]
    hub_name = _hub_tokenizer_name(model_cfg)
    if not hub_name:
        if text_cfg.get("vocab_size", OPENAI_VOCAB_SIZE) != OPENAI_VOCAB_SIZE:
            raise EncoderUnavailable(f"this open_clip model has a {text_cfg['vocab_size']}-token vocabulary and "
                                     "names no tokenizer")
        return load_tokenizer(source) if source else bundled_clip_tokenizer()  # OpenAI's BPE, offline
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}), tokenizer_mode=text_cfg.get("tokenizer_mode"))
    if local_files_only:
        kwargs["local_files_only"] = True
    try:
        build = _hf_tokenizer if source is None else _hf_tokenizer.__wrapped__  # a folder's files may change
        return HubTokenizer(build(source or hub_name, text_cfg.get("context_length"), **kwargs))
    except Exception as e:  # transformers raises OSError, ValueError, ...: all mean "cannot be built here"
        raise EncoderUnavailable(
            f"this open_clip model needs the Hugging Face tokenizer {hub_name!r}, which cannot be loaded here (no "
            f"internet access, or not in the local Hugging Face cache). Download it once with network access. "
            f"Details: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


@functools.lru_cache(maxsize=8)
def _hf_tokenizer(source: str, context_length: int, **kwargs):
    """open_clip's HFTokenizer, built once per hub name (checked before a model is built, used after)."""
    from open_clip.tokenizer import HFTokenizer
    return HFTokenizer(source, context_length=context_length, **kwargs)


# -- images -----------------------------------------------------------------------------------------

class ImageSettings:
    """open_clip's preprocessing settings of a model, in the role of a transformers image processor
    (what a checkpoint folder saves and the KB fingerprint reads)."""

    def __init__(self, preprocess_cfg: dict):
        self.cfg = dict(preprocess_cfg)
        size = self.cfg["size"]
        height, width = (size, size) if isinstance(size, int) else size
        self.crop_size = {"height": height, "width": width}

    def to_dict(self) -> dict:
        return dict(self.cfg)

    def save_pretrained(self, folder: str):
        with open(os.path.join(folder, PREPROCESS_FILE), "w", encoding="utf-8") as f:
            json.dump(self.cfg, f, indent=1)

    @classmethod
    def from_folder(cls, folder: str) -> "ImageSettings":
        with open(os.path.join(folder, PREPROCESS_FILE), encoding="utf-8") as f:
            return cls(json.load(f))


class OpenCLIPImagePipeline(ImagePipeline):
    """Image -> pixels with open_clip's inference transform for the model; zeros when there is no usable image."""

    def __init__(self, settings: ImageSettings):
        super().__init__(settings)
        cfg = settings.cfg
        self.width = settings.crop_size["width"]
        self.transform = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"],
                                                   resize_mode=cfg["resize_mode"], interpolation=cfg["interpolation"],
                                                   fill_color=cfg["fill_color"])

    def zeros(self) -> torch.Tensor:
        return torch.zeros(3, self.size, self.width)

    def pixels(self, image) -> torch.Tensor:
        return self.transform(image)


def open_clip_processor(model: nn.Module, max_length: int, folder: str = None, local_files_only: bool = False):
    """Tokenizer + image pipeline of an open_clip model; from a checkpoint folder when it holds them."""
    model_cfg = model.open_clip_config["model_cfg"]
    context = model_cfg["text_cfg"].get("context_length", 77)
    if max_length > context:
        raise EncoderUnavailable(f"text_max_length {max_length} is longer than this model's context of {context} tokens")
    tokenizer = load_open_clip_tokenizer(model_cfg, folder, local_files_only)
    settings = ImageSettings(model.open_clip_config["preprocess_cfg"])
    return Processor(tokenizer, OpenCLIPImagePipeline(settings), max_length)


# -- the encoder ------------------------------------------------------------------------------------

class OpenCLIPEncoder(MIMICEncoder):
    """An open_clip CLIP or CustomTextCLIP -> the four features (module docstring).
    pad_token_id: what pads the text from text_max_length to the model's context length."""

    def __init__(self, clip: nn.Module, dv: int = 96, pad_token_id: int = 0):
        super().__init__(clip, dv)
        self.pad_token_id = pad_token_id

    @property
    def text_tower(self) -> nn.Module:
        """The module holding token_embedding, positional_embedding, transformer, ln_final, text_projection."""
        return getattr(self.clip, "text", self.clip)

    @property
    def text_embed_dim(self):
        return self.clip.open_clip_config["model_cfg"]["embed_dim"]

    image_embed_dim = text_embed_dim  # CLIP compares the two embeddings by a dot product

    @property
    def text_token_dim(self):
        return self.text_tower.ln_final.normalized_shape[0]

    @property
    def image_token_dim(self):
        visual = self.clip.visual
        return visual.trunk.embed_dim if hasattr(visual, "trunk") else visual.transformer.width

    @property
    def text_blocks(self):
        return self.text_tower.transformer.resblocks  # ResidualAttentionBlock: .attn, .ln_1, .mlp

    @property
    def vision_blocks(self):
        visual = self.clip.visual
        return visual.trunk.blocks if hasattr(visual, "trunk") else visual.transformer.resblocks

    def encode_text(self, input_ids, attention_mask=None):
        tower, length = self.text_tower, input_ids.shape[1]
        context = tower.positional_embedding.shape[0]
        ids = F.pad(input_ids, (0, context - length), value=self.pad_token_id)
        if tower is self.clip:  # CLIP: the text tower's parts sit on the model itself
            x = tower.token_embedding(ids) + tower.positional_embedding
            mask, pool, eos = tower.attn_mask, tower.text_pool_type, tower.text_eos_id
        else:  # CustomTextCLIP's TextTransformer: it builds its own mask (causal, padding, or none)
            x, mask = tower._embeds(ids)
            pool, eos = tower.pool_type, tower.eos_id
        x = tower.ln_final(tower.transformer(x, attn_mask=mask))  # [N, context, W_t]
        pooled = text_global_pool(x, ids, pool, eos_token_id=eos)
        projection = tower.text_projection
        if isinstance(projection, nn.Linear):
            pooled = projection(pooled)
        elif projection is not None:
            pooled = pooled @ projection
        return unit(pooled), x[:, :length]

    def encode_image(self, pixel_values):
        visual = self.clip.visual
        if hasattr(visual, "trunk"):  # timm ViT (SigLIP): its forward_features, split before the final norm
            trunk = visual.trunk
            x = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(pixel_values))))
            tokens = trunk.blocks(x)
            pooled = visual.head(trunk.forward_head(trunk.norm(tokens)))
        else:  # open_clip's VisionTransformer.forward, split before the post-LayerNorm
            tokens = visual.transformer(visual._embeds(pixel_values))
            pooled, _ = visual._pool(tokens)
            if visual.proj is not None:
                pooled = pooled @ visual.proj
        return unit(pooled), tokens
