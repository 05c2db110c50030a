"""Which model the demo runs, and what it tells the user about it.

MIMIC weights: MIMIC_CHECKPOINT (a local file or folder, or a Hugging Face Hub repo "owner/name" or
file "owner/name/path/to/file.ckpt"), else the first checkpoint found in checkpoints/, else the
zero-shot initialisation on the pretrained CLIP. The CLIP: MIMIC_ENCODER (hub id, local folder or
open_clip:MODEL/PRETRAINED), default openai/clip-vit-base-patch32. When the pretrained CLIP cannot be
loaded, the demo still starts on a stand-in of the same architecture with random weights, and says so
(as it does for open_clip:MODEL, which names no pretrained weights).
"""
import hashlib
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import urlparse

from mimic.model.backbones import has_pretrained_weights, is_open_clip
from mimic.model.encoder import DEFAULT_ENCODER, EncoderUnavailable
from mimic.train.checkpoint import CheckpointError
from mimic.train.loading import load_model

from .safe_text import without_paths

log = logging.getLogger(__name__)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINTS = os.path.join(ROOT, "checkpoints")
ZERO_SHOT_NOTE = ("Zero-shot: CLIP similarities; load or train a checkpoint for MIMIC's learned interactions "
                  "(the interaction units are untrained).")
KNOWN_VITS = {(768, 12, 32): "ViT-B/32", (768, 12, 16): "ViT-B/16", (1024, 24, 14): "ViT-L/14"}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class LoadedModel:
    """What runs, described to visitors by kind, backbone and fingerprint: never by a path or a setting."""
    model: object
    kind: str  # "trained checkpoint", "zero-shot" or "stand-in"
    warnings: list = field(default_factory=list)  # what the user must know
    zero_shot: bool = False
    stand_in: bool = False
    fingerprints: dict = None  # of the weights, once hashed (the KB preparation does it in the background)

    @property
    def description(self) -> str:
        """One line: what runs."""
        text = {"trained checkpoint": "MIMIC, trained checkpoint", "zero-shot": "MIMIC, zero-shot initialisation",
                "stand-in": "MIMIC, zero-shot initialisation on a stand-in CLIP (random weights)"}[self.kind]
        text += f"; {backbone_name(self.model)}"
        if self.fingerprints:
            text += f"; weights fingerprint {weights_fingerprint(self.fingerprints)}"
        return text + (f". {ZERO_SHOT_NOTE}" if self.zero_shot else "")


def weights_fingerprint(fingerprints: dict) -> str:
    """One short id of the CLIP and MIMIC weights (and settings) that run."""
    return hashlib.sha256((fingerprints["encoder"] + fingerprints["checkpoint"]).encode()).hexdigest()[:12]


def public_encoder_name(encoder: str) -> str:
    """A Hugging Face Hub id as it is (it is public); a local folder is not named."""
    return "a local folder" if os.path.exists(encoder) or not HUB_ID.fullmatch(encoder or "") else encoder


def backbone_name(model) -> str:
    """e.g. "CLIP ViT-B/32 (openai/clip-vit-base-patch32)", from the weights' architecture; an open_clip
    backbone by its open_clip names (public: local open_clip files are refused)."""
    if is_open_clip(model.config.encoder):
        return model.config.encoder
    vision = model.encoder.clip.config.vision_config
    shape = (vision.hidden_size, vision.num_hidden_layers, vision.patch_size)
    name = KNOWN_VITS.get(shape, f"ViT ({shape[1]} layers of width {shape[0]}, {shape[2]}-px patches)")
    encoder = public_encoder_name(model.config.encoder or "")
    return f"CLIP {name}" + ("" if encoder == "a local folder" else f" ({encoder})")


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
            log.info("serving the checkpoint %s", spec)
            if model.config.image_mode != "default":
                # the authors' pipeline has no memory bound but PIL's (about 540 MB for one image): not for a
                # public server, so visitors' and the KB's images are read the default, bounded way
                model.set_image_mode("default")
                warnings.append("This checkpoint was trained with the authors' image pipeline; the demo reads "
                                "images with the default one (RGB conversion, EXIF rotation, bounded memory), so "
                                "grayscale, transparent or rotated pictures score differently than in their code.")
            return LoadedModel(model, "trained checkpoint", warnings)
        except Exception as e:  # a damaged checkpoint must not take the demo down: zero-shot runs instead
            log.warning("the checkpoint %s could not be loaded: %s", spec, e, exc_info=not isinstance(
                e, (CheckpointError, EncoderUnavailable)))
            reason = (without_paths(e, {spec: "the checkpoint", encoder: "the encoder"})
                      if isinstance(e, (CheckpointError, EncoderUnavailable)) else "see the server log")
            warnings.append(f"The checkpoint could not be loaded, so the zero-shot model runs instead: {reason}")
    local = os.path.isdir(encoder)
    offline = not local and not hub_reachable()
    try:
        model = load_model(None, encoder, "zero-shot", device, local_files_only=offline)
        if not has_pretrained_weights(encoder):  # open_clip:MODEL without a tag: the architecture at random
            warnings.append(f"Random weights: '{encoder}' names no pretrained weights, so the results are NOT "
                            "meaningful. Add a pretrained tag, e.g. open_clip:ViT-B-32/laion2b_s34b_b79k.")
            return LoadedModel(model, "stand-in", warnings, zero_shot=True, stand_in=True)
        return LoadedModel(model, "zero-shot", warnings, zero_shot=True)
    except EncoderUnavailable as e:
        log.warning("%s", e)
        warnings.append(f"Stand-in encoder: the pretrained CLIP ({public_encoder_name(encoder)}) could not be "
                        f"loaded{' (the Hugging Face Hub is not reachable)' if offline else ''}. A CLIP of the same "
                        "architecture with random weights runs instead: the results are NOT meaningful. "
                        "Download the model once with network access (it is then cached), or set MIMIC_ENCODER "
                        "to a local folder.")
        model = load_model(None, encoder, "zero-shot", device, pretrained=False)
        return LoadedModel(model, "stand-in", warnings, zero_shot=True, stand_in=True)
