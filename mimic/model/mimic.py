"""MIMIC = encoder + matcher, with its configuration."""
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .backbones import load_backbone, make_encoder, make_processor
from .encoder import DEFAULT_ENCODER
from .matcher import UNITS, Features, Matcher, Scores
from .processing import Processor


@dataclass
class MIMICConfig:
    encoder: str = DEFAULT_ENCODER  # the backbone (mimic/model/backbones.py): a CLIP hub id or folder, or open_clip:MODEL[/TAG]
    text_max_length: int = 40
    dv: int = 96
    tglu_dim: int = 96
    vdlu_dim: int = 96
    cmfu_dim: int = 96
    units: tuple = UNITS  # the units that make S (ablation: drop one)
    image_mode: str = "default"  # "authors": their image pipeline, exactly (see mimic/model/images.py)
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
        self.processor = processor or make_processor(config.encoder, clip, config.text_max_length)
        self.processor.images.set_mode(config.image_mode)
        self.encoder = make_encoder(clip, config.dv, self.processor)
        self.matcher = Matcher(text_embed_dim=self.encoder.text_embed_dim, text_token_dim=self.encoder.text_token_dim,
                               dv=config.dv, tglu_dim=config.tglu_dim, vdlu_dim=config.vdlu_dim,
                               cmfu_dim=config.cmfu_dim, units=config.units)

    @classmethod
    def from_encoder(cls, config: MIMICConfig = None, pretrained: bool = True, seed: int = 0,
                     local_files_only: bool = False) -> "MIMIC":
        """A MIMIC on a (pretrained) CLIP, with freshly initialised MIMIC layers: drawn from `seed` right
        before they are built (in the authors' order), whatever loading the CLIP did to the RNG."""
        config = config or MIMICConfig()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            clip = load_backbone(config.encoder, pretrained, local_files_only)  # random weights: from the seed too
            processor = make_processor(config.encoder, clip, config.text_max_length, local_files_only=local_files_only)
            torch.manual_seed(seed)  # the MIMIC layers: from the seed, whatever loading the backbone drew
            return cls(config, clip, processor)

    def set_image_mode(self, mode: str):
        """Switch the image pipeline ("default" or "authors"); recorded in the config, so in checkpoints."""
        self.processor.images.set_mode(mode)
        self.config.image_mode = mode

    def set_text_max_length(self, length: int):
        """Tokens per text (padding and truncation), recorded in the config."""
        self.processor.max_length = self.config.text_max_length = length

    def encode(self, batch: dict) -> Features:
        return self.encoder(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])

    def forward(self, mention_batch: dict, entity_batch: dict) -> Scores:
        """In-batch scores of B mentions against B (or N) entities: [B, N]."""
        return self.matcher(self.encode(mention_batch), self.encode(entity_batch))
