"""The model a user asks for: a trained checkpoint, or the pretrained CLIP with an initialisation."""
import torch

from ..model.encoder import DEFAULT_ENCODER
from ..model.encoding import default_device
from ..model.mimic import MIMIC, MIMICConfig
from .checkpoint import load_checkpoint
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
