"""Which CLIP runs inside MIMIC, named by one string (`--encoder`, `MIMIC_ENCODER`, MIMICConfig.encoder):

    openai/clip-vit-base-patch32, another hub id, a local folder   transformers' CLIPModel   mimic/model/encoder.py
    open_clip:MODEL/PRETRAINED  (open_clip:ViT-B-32/laion2b_s34b_b79k)   open_clip, pretrained  mimic/model/open_clip_encoder.py
    open_clip:MODEL             (open_clip:ViT-B-32)                      open_clip, random weights

Each family gives the CLIP module (pretrained, or its architecture at random), the encoder that reads
the four features off it, the processor (tokenizer + image pipeline) it needs, and the architecture
record a checkpoint keeps so that it loads with no hub.
"""
from torch import nn
from transformers import CLIPConfig, CLIPModel

from .encoder import OPEN_CLIP, CLIPEncoder, MIMICEncoder, load_clip
from .processing import Processor


def is_open_clip(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith(OPEN_CLIP)


def has_pretrained_weights(spec: str) -> bool:
    """False for "open_clip:MODEL" without a pretrained tag: an architecture with random weights."""
    if not is_open_clip(spec):
        return True
    from .open_clip_encoder import parse_spec
    return parse_spec(spec)[1] is not None


def _is_open_clip_module(clip: nn.Module) -> bool:
    return hasattr(clip, "open_clip_config")


def load_backbone(spec: str, pretrained: bool = True, local_files_only: bool = False) -> nn.Module:
    """The CLIP a spec names: pretrained, or (pretrained=False) its architecture with random weights."""
    if is_open_clip(spec):
        from .open_clip_encoder import load_open_clip
        return load_open_clip(spec, pretrained, local_files_only)
    return load_clip(spec, pretrained, local_files_only)


def architecture(clip: nn.Module) -> dict:
    """What a checkpoint's config.json records of its CLIP (a transformers CLIPConfig, or open_clip's config)."""
    if _is_open_clip_module(clip):
        from .open_clip_encoder import architecture as open_clip_architecture
        return open_clip_architecture(clip)
    return clip.config.to_dict()


def from_architecture(record: dict) -> nn.Module:
    """The CLIP of a recorded architecture, with random weights (the checkpoint's weights come next)."""
    if "open_clip" in record:
        from .open_clip_encoder import from_architecture as open_clip_from_architecture
        return open_clip_from_architecture(record)
    return CLIPModel(CLIPConfig(**record))


def make_processor(spec: str, clip: nn.Module, max_length: int, folder: str = None,
                   local_files_only: bool = False) -> Processor:
    """Tokenizer + image pipeline of the CLIP; from a checkpoint folder when given (it holds both)."""
    if _is_open_clip_module(clip):
        from .open_clip_encoder import open_clip_processor
        return open_clip_processor(clip, max_length, folder, local_files_only)
    return Processor.for_encoder(folder or spec, max_length)


def make_encoder(clip: nn.Module, dv: int, processor: Processor) -> MIMICEncoder:
    if _is_open_clip_module(clip):
        from .open_clip_encoder import OpenCLIPEncoder
        return OpenCLIPEncoder(clip, dv, pad_token_id=processor.tokenizer.pad_token_id)
    return CLIPEncoder(clip, dv)


def same_backbone(recorded: str, requested: str) -> bool:
    """Can weights trained on `recorded` run on `requested`? open_clip: the same architecture (the pretrained
    tag may differ: the checkpoint brings its own weights). transformers: any CLIP id or folder (the
    weights' shapes are then checked key by key). Never across the two families."""
    if is_open_clip(recorded) or is_open_clip(requested):
        if not (is_open_clip(recorded) and is_open_clip(requested)):
            return False
        from .open_clip_encoder import parse_spec
        return parse_spec(recorded)[0] == parse_spec(requested)[0]
    return True

