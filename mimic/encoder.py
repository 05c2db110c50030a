"""The encoder: one CLIP for mentions and entities, plus two linear layers on the image side.

    t_G = CLIP text_embeds   (projected, L2-normalised)                      [N, 512]
    T_L = text tower's last hidden state (after its final LayerNorm)        [N, 40, 512]
    v_G = image_cls_fc(CLIP image_embeds (projected, L2-normalised))        [N, 96]
    V_L = image_tokens_fc(vision tower's last hidden state, before its
          post-LayerNorm: CLS + 7x7 patches)                                [N, 50, 96]

The CLIP comes from transformers by hub id (default `openai/clip-vit-base-patch32`) or local folder.
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
_BUNDLED_CONFIGS = {DEFAULT_ENCODER: Path(__file__).with_name("clip_vit_b32.json")}


class EncoderUnavailable(RuntimeError):
    """The pretrained CLIP could not be loaded (offline, wrong id or path)."""


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
        raise EncoderUnavailable(
            f"could not load the pretrained CLIP {name_or_path!r} (no internet access, or no such model "
            f"or folder). Download it once with network access, or pass a local folder. Details: {e}") from e


class MIMICEncoder(nn.Module):
    def __init__(self, clip: CLIPModel, dv: int = 96):
        super().__init__()
        self.clip = clip
        self.image_cls_fc = nn.Linear(clip.config.projection_dim, dv)
        self.image_tokens_fc = nn.Linear(clip.config.vision_config.hidden_size, dv)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor) -> Features:
        out = self.clip(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
        return Features(t_g=out.text_embeds, t_l=out.text_model_output.last_hidden_state,
                        v_g=self.image_cls_fc(out.image_embeds),
                        v_l=self.image_tokens_fc(out.vision_model_output.last_hidden_state))
