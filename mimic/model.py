"""MIMIC = encoder + matcher, with its configuration."""
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .encoder import DEFAULT_ENCODER, MIMICEncoder, load_clip
from .images import check_image_mode
from .matcher import UNITS, Features, Matcher, Scores
from .processing import Processor


@dataclass
class MIMICConfig:
    encoder: str = DEFAULT_ENCODER  # CLIP hub id or local folder: architecture, tokenizer, image processor
    text_max_length: int = 40
    dv: int = 96
    tglu_dim: int = 96
    vdlu_dim: int = 96
    cmfu_dim: int = 96
    units: tuple = UNITS  # the units that make S (ablation: drop one)
    image_mode: str = "default"  # "authors": their image pipeline, exactly (see mimic/images.py)
    metadata: dict = field(default_factory=dict)  # free-form: training run, NIL threshold, ...

    def to_dict(self) -> dict:
        d = asdict(self)
        d["units"] = list(self.units)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MIMICConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "units" in known:
            known["units"] = tuple(known["units"])
        return cls(**known)


class MIMIC(nn.Module):
    def __init__(self, config: MIMICConfig, clip, processor: Processor = None):
        super().__init__()
        self.config = config
        self.encoder = MIMICEncoder(clip, config.dv)
        text = clip.config.text_config
        self.matcher = Matcher(text_embed_dim=clip.config.projection_dim, text_token_dim=text.hidden_size,
                               dv=config.dv, tglu_dim=config.tglu_dim, vdlu_dim=config.vdlu_dim,
                               cmfu_dim=config.cmfu_dim, units=config.units)
        self.processor = processor or Processor.for_encoder(config.encoder, config.text_max_length, config.image_mode)

    @classmethod
    def from_encoder(cls, config: MIMICConfig = None, pretrained: bool = True, seed: int = 0,
                     local_files_only: bool = False) -> "MIMIC":
        """A MIMIC on a (pretrained) CLIP, with freshly initialised MIMIC layers: drawn from `seed` right
        before they are built (in the authors' order), whatever loading the CLIP did to the RNG."""
        config = config or MIMICConfig()
        clip = load_clip(config.encoder, pretrained, local_files_only)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return cls(config, clip)

    def set_image_mode(self, mode: str):
        """Switch the image pipeline ("default" or "authors"); recorded in the config, so in checkpoints."""
        self.processor.images.mode = check_image_mode(mode)
        self.config.image_mode = mode

    def set_text_max_length(self, length: int):
        """Tokens per text (padding and truncation), recorded in the config."""
        self.processor.max_length = self.config.text_max_length = length

    def encode(self, batch: dict) -> Features:
        return self.encoder(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])

    def forward(self, mention_batch: dict, entity_batch: dict) -> Scores:
        """In-batch scores of B mentions against B (or N) entities: [B, N]."""
        return self.matcher(self.encode(mention_batch), self.encode(entity_batch))
