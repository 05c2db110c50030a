"""Which model the demo runs, and what it tells the user about it.

MIMIC weights: MIMIC_CHECKPOINT (a local file or folder, or a Hugging Face Hub repo "owner/name" or
file "owner/name/path/to/file.ckpt"), else the first checkpoint found in checkpoints/, else the
zero-shot initialisation on the pretrained CLIP. The CLIP: MIMIC_ENCODER (hub id or local folder),
default openai/clip-vit-base-patch32. When the pretrained CLIP cannot be loaded, the demo still starts
on a stand-in of the same architecture with random weights, and says so.
"""
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import urlparse

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


def fetch_checkpoint(spec: str) -> str:
    """A local path as it is; "owner/name" or "owner/name/file" from the Hugging Face Hub."""
    if os.path.exists(spec):
        return spec
    parts = spec.strip("/").split("/")
    if len(parts) < 2:
        raise CheckpointError(f"{spec}: no such file or folder, and not a Hub repo id (owner/name)")
    from huggingface_hub import hf_hub_download, snapshot_download
    repo = "/".join(parts[:2])
    try:
        if len(parts) == 2:
            return snapshot_download(repo)
        return hf_hub_download(repo, "/".join(parts[2:]))
    except Exception as e:  # the hub client raises many kinds; all mean "not available here"
        raise CheckpointError(f"could not download {spec} from the Hugging Face Hub: {e}")


def load_demo_model(device: str = "cpu") -> LoadedModel:
    encoder = os.environ.get("MIMIC_ENCODER") or DEFAULT_ENCODER
    warnings = []
    spec = find_checkpoint()
    if spec:
        try:
            model = load_model(fetch_checkpoint(spec), encoder=os.environ.get("MIMIC_ENCODER"), device=device)
            return LoadedModel(model, f"MIMIC checkpoint {spec} (encoder {model.config.encoder})")
        except (CheckpointError, EncoderUnavailable) as e:
            warnings.append(f"The checkpoint could not be loaded, so the zero-shot model runs instead: {e}")
    local = os.path.isdir(encoder)
    offline = not local and not hub_reachable()
    try:
        model = load_model(None, encoder, "zero-shot", device, local_files_only=offline)
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
