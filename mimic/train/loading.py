"""The model a user asks for: a trained checkpoint, or the pretrained CLIP with an initialisation."""
import torch

from ..model.encoder import DEFAULT_ENCODER
from ..model.encoding import default_device
from ..model.mimic import MIMIC, MIMICConfig
from .checkpoint import CheckpointError, load_checkpoint
from .hub import resolve_checkpoint

INITS = ("zero-shot", "random")


def load_model(checkpoint: str = None, encoder: str = None, init: str = None, device=None,
               pretrained: bool = True, local_files_only: bool = False, seed: int = 0, sizes: dict = None,
               image_mode: str = None) -> MIMIC:
    """A checkpoint (either format; a local path, or a Hugging Face Hub repo "owner/name" or file
    "owner/name/file.ckpt"), or, without one, MIMIC layers initialised by `init` on the backbone
    `encoder` (pretrained, or its architecture at random with pretrained=False), drawn from `seed`, with
    `sizes` (MIMICConfig fields: dv, tglu_dim, ..., text_max_length). image_mode: "default" or
    "authors" (default: the checkpoint's own)."""
    if checkpoint:
        if init:
            raise ValueError("--init applies only without a checkpoint")
        model = load_checkpoint(resolve_checkpoint(checkpoint), encoder=encoder)
    else:
        if init not in INITS:
            raise ValueError(f"without a checkpoint, choose an initialisation: {' or '.join(INITS)}")
        model = MIMIC.from_encoder(MIMICConfig(encoder=encoder or DEFAULT_ENCODER, **(sizes or {})),
                                   pretrained=pretrained, local_files_only=local_files_only, seed=seed)
        if init == "zero-shot":
            from ..model.zeroshot import zero_shot_init
            zero_shot_init(model)
        model.config.metadata = {**model.config.metadata, "init": init, "seed": seed}
    if image_mode:
        model.set_image_mode(image_mode)
    device = torch.device(device) if device else default_device()
    return model.to(device).eval()


def load_recorded(source: dict, checkpoint: str = None, encoder: str = None, init: str = None,
                  device=None) -> MIMIC:
    """The model a store was encoded with, as its manifest's "source" records it (a checkpoint, or a
    backbone with an initialisation, seed and sizes), or the one asked for instead; either way in the
    store's image mode (a store is only ever searched by the model that encoded it: KBStore.check_model)."""
    image_mode = source.get("image_mode", "default")
    if checkpoint or init:
        return load_model(checkpoint, encoder, init, device, image_mode=image_mode)
    if not source.get("checkpoint") and not source.get("init"):
        raise CheckpointError("the store does not record its model: give a checkpoint (--checkpoint, or "
                              "checkpoint=) or an initialisation (--init zero-shot, or init=)")
    return load_model(source.get("checkpoint"), encoder or source.get("encoder"), source.get("init"), device,
                      seed=source.get("seed", 0), sizes=source.get("sizes"), image_mode=image_mode)


def random_parts(model: MIMIC) -> list:
    """What in `model` holds random weights, said for a user ([] for a pretrained CLIP with trained or
    zero-shot MIMIC layers): its rankings mean little until they are trained."""
    from ..model.backbones import has_pretrained_weights
    parts = []
    if not has_pretrained_weights(model.config.encoder):
        parts.append(f"the CLIP backbone {model.config.encoder} has no pretrained tag, so its weights are random "
                     f"(name one, e.g. open_clip:ViT-B-32/laion2b_s34b_b79k)")
    if model.config.metadata.get("init") == "random":
        parts.append("the MIMIC layers are random (--init random: untrained; --init zero-shot makes each unit a "
                     "CLIP similarity)")
    return parts
