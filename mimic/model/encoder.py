"""The encoder: one CLIP for mentions and entities, plus two linear layers on the image side.

    t_G = the CLIP text embedding (projected, L2-normalised)                  [N, E]      (512 for ViT-B/32)
    T_L = the text tower's tokens after its final LayerNorm                   [N, L, W_t] (40 x 512)
    v_G = image_cls_fc(the CLIP image embedding (projected, L2-normalised))   [N, dv]     (96)
    V_L = image_tokens_fc(every image token after the last transformer
          block, before the post-LayerNorm: CLS + 7x7 patches for B/32)       [N, T, dv]  (50 x 96)

`MIMICEncoder` holds the CLIP as `self.clip` (so the weights keep the authors' keys `encoder.clip.*`)
and asks a subclass for the two towers: `encode_text` and `encode_image` return the normalised
embedding and the tokens, and the four widths come from the model. `text_blocks` and `vision_blocks`
are each tower's transformer layers, in order, for methods that need their attention (relevance maps).

This file holds the transformers family (`openai/clip-vit-base-patch32`, another hub id, or a local
folder); `mimic/model/open_clip_encoder.py` the open_clip one; `mimic/model/backbones.py` picks by name.
"""
import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel
from transformers.utils import logging as transformers_logging

from .matcher import Features

DEFAULT_ENCODER = "openai/clip-vit-base-patch32"
OPEN_CLIP = "open_clip:"  # the prefix of an open_clip backbone's name (mimic/model/backbones.py)
_BUNDLED_CONFIGS = {DEFAULT_ENCODER: Path(__file__).with_name("clip_vit_b32.json")}


class EncoderUnavailable(RuntimeError):
    """The pretrained CLIP could not be loaded (offline, wrong id or path, unsupported backbone)."""


def unit(x: torch.Tensor) -> torch.Tensor:
    """L2-normalised along the last axis, computed as CLIPModel does."""
    return x / x.pow(2).sum(dim=-1, keepdim=True).pow(0.5)


class MIMICEncoder(nn.Module):
    """CLIP -> Features(t_G, T_L, v_G, V_L). A subclass implements the two towers and reads the four
    widths off `self.clip`: text_embed_dim (E, of t_G), text_token_dim (W_t, of T_L), image_embed_dim (E,
    the image embedding before image_cls_fc), image_token_dim (W_v, the image tokens before image_tokens_fc)."""

    def __init__(self, clip: nn.Module, dv: int = 96):
        super().__init__()
        self.clip = clip
        self.image_cls_fc = nn.Linear(self.image_embed_dim, dv)
        self.image_tokens_fc = nn.Linear(self.image_token_dim, dv)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple:
        """-> (t_G [N, E] normalised, T_L [N, L, W_t])"""
        raise NotImplementedError

    def encode_image(self, pixel_values: torch.Tensor) -> tuple:
        """-> (image embedding [N, E] normalised, image tokens before the post-LayerNorm [N, T, W_v])"""
        raise NotImplementedError

    @property
    def text_blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def vision_blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor) -> Features:
        t_g, t_l = self.encode_text(input_ids, attention_mask)
        v_g, v_l = self.encode_image(pixel_values)
        return Features(t_g=t_g, t_l=t_l, v_g=self.image_cls_fc(v_g), v_l=self.image_tokens_fc(v_l))


class CLIPEncoder(MIMICEncoder):
    """transformers' CLIPModel, as the authors use it."""

    @property
    def text_embed_dim(self):
        return self.clip.config.projection_dim

    image_embed_dim = text_embed_dim

    @property
    def text_token_dim(self):
        return self.clip.config.text_config.hidden_size

    @property
    def image_token_dim(self):
        return self.clip.config.vision_config.hidden_size

    def encode_text(self, input_ids, attention_mask):
        out = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return unit(out.pooler_output), out.last_hidden_state  # pooler_output: projected EOS state

    def encode_image(self, pixel_values):
        out = self.clip.get_image_features(pixel_values=pixel_values)
        return unit(out.pooler_output), out.last_hidden_state  # last_hidden_state: before post_layernorm

    @property
    def text_blocks(self):
        return self.clip.text_model.encoder.layers  # CLIPEncoderLayer: .self_attn, .mlp

    @property
    def vision_blocks(self):
        return self.clip.vision_model.encoder.layers


def clip_config(name_or_path: str) -> CLIPConfig:
    """The CLIP architecture: a local folder's config.json, the bundled ViT-B/32 one, or the hub's."""
    if os.path.isfile(os.path.join(name_or_path, "config.json")):
        return CLIPConfig.from_pretrained(name_or_path)
    if name_or_path in _BUNDLED_CONFIGS:
        values = json.loads(_BUNDLED_CONFIGS[name_or_path].read_text())
        values.pop("_comment")
        return CLIPConfig(**values)
    try:
        return CLIPConfig.from_pretrained(name_or_path)
    except OSError as e:
        raise EncoderUnavailable(f"cannot read the CLIP configuration of {name_or_path!r}: {e}") from e


def load_clip(name_or_path: str = DEFAULT_ENCODER, pretrained: bool = True, local_files_only: bool = False) -> CLIPModel:
    """CLIPModel with pretrained weights (hub id or local folder), or the same architecture at random.
    local_files_only: use the local Hugging Face cache only (fails at once instead of retrying offline)."""
    if not pretrained:
        return CLIPModel(clip_config(name_or_path)).eval()
    transformers_logging.disable_progress_bar()  # one bar per weight file is noise in a CLI or a server log
    try:
        return CLIPModel.from_pretrained(name_or_path, dtype=torch.float32, local_files_only=local_files_only).eval()
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EncoderUnavailable(
            f"could not load the pretrained CLIP {name_or_path!r} (no internet access, or no such model or folder). "
            f"Run once with network access (the weights are then cached), or give a local copy of the model with "
            f"--encoder DIR (encoder=DIR in Python); to try mimic-el with no download at all, --encoder "
            f"open_clip:ViT-B-32 builds that architecture with random weights (its rankings mean nothing). "
            f"Details: {reason}") from e
