"""Which model the demo runs, and what it tells the user about it.

MIMIC weights: MIMIC_CHECKPOINT (a local file or folder, or a Hugging Face Hub repo "owner/name" or
file "owner/name/path/to/file.ckpt"), else the first checkpoint found in checkpoints/, else the
zero-shot initialisation on the pretrained CLIP. The CLIP: MIMIC_ENCODER (hub id, local folder or
open_clip:MODEL/PRETRAINED), default openai/clip-vit-base-patch32. When the pretrained CLIP cannot be
loaded, the demo still starts on a stand-in of the same architecture with random weights, and says so
(as it does for open_clip:MODEL, which names no pretrained weights).
"""
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import urlparse

from mimic.backbones import has_pretrained_weights
from mimic.checkpoint import CheckpointError
from mimic.encoder import DEFAULT_ENCODER, EncoderUnavailable
from mimic.loading import load_model

log = logging.getLogger(__name__)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINTS = os.path.join(ROOT, "checkpoints")
ZERO_SHOT_NOTE = ("Zero-shot: CLIP similarities; load or train a checkpoint for MIMIC's learned interactions "
                  "(the interaction units are untrained).")


@dataclass
class LoadedModel:
    model: object
    description: str  # one line: what runs
    warnings: list = field(default_factory=list)  # what the user must know
    zero_shot: bool = False
    stand_in: bool = False


def hub_reachable(timeout: float = 2.0) -> bool:
    """Can the Hugging Face Hub be reached? (one quick TCP connect, so an offline start waits 2 s, not 30)."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    result = []

    def connect():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)  # name resolution has no timeout of its own
    return bool(result)


def find_checkpoint() -> str:
    """MIMIC_CHECKPOINT, else the first checkpoint in checkpoints/ (a mimic-el folder or a .ckpt file)."""
    if os.environ.get("MIMIC_CHECKPOINT"):
        return os.environ["MIMIC_CHECKPOINT"]
    if os.path.isdir(CHECKPOINTS):
        for name in sorted(os.listdir(CHECKPOINTS)):
            path = os.path.join(CHECKPOINTS, name)
            if (os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))) or name.endswith(".ckpt"):
                return path
    return None


def load_demo_model(device: str = "cpu") -> LoadedModel:
    encoder = os.environ.get("MIMIC_ENCODER") or DEFAULT_ENCODER
    warnings = []
    spec = find_checkpoint()
    if spec:
        try:
            model = load_model(spec, encoder=os.environ.get("MIMIC_ENCODER"), device=device)
            return LoadedModel(model, f"MIMIC checkpoint {spec} (encoder {model.config.encoder})")
        except (CheckpointError, EncoderUnavailable) as e:
            warnings.append(f"The checkpoint could not be loaded, so the zero-shot model runs instead: {e}")
    local = os.path.isdir(encoder)
    offline = not local and not hub_reachable()
    try:
        model = load_model(None, encoder, "zero-shot", device, local_files_only=offline)
        if not has_pretrained_weights(encoder):  # open_clip:MODEL without a tag: the architecture at random
            warnings.append(f"Random weights: '{encoder}' names no pretrained weights, so the results are NOT "
                            "meaningful. Add a pretrained tag, e.g. open_clip:ViT-B-32/laion2b_s34b_b79k.")
            return LoadedModel(model, f"{encoder} (random weights); {ZERO_SHOT_NOTE}", warnings, zero_shot=True,
                               stand_in=True)
        return LoadedModel(model, f"CLIP {encoder} (pretrained); {ZERO_SHOT_NOTE}", warnings, zero_shot=True)
    except EncoderUnavailable as e:
        log.warning("%s", e)
        warnings.append(f"Stand-in encoder: the pretrained CLIP '{encoder}' could not be loaded"
                        f"{' (the Hugging Face Hub is not reachable)' if offline else ''}. A CLIP of the same "
                        "architecture with random weights runs instead: the results are NOT meaningful. "
                        "Download the model once with network access (it is then cached), or set MIMIC_ENCODER "
                        "to a local folder.")
        model = load_model(None, encoder, "zero-shot", device, pretrained=False)
        return LoadedModel(model, f"stand-in CLIP (random weights, architecture of {encoder}); {ZERO_SHOT_NOTE}",
                           warnings, zero_shot=True, stand_in=True)
