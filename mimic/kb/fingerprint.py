"""Fingerprints that tie a pre-encoded KB to the exact model and KB file that made it."""
import hashlib
import json
import os

import torch


def _hash_tensors(named: list) -> str:
    h = hashlib.sha256()
    for name, tensor in named:
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def model_fingerprints(model) -> dict:
    """{"encoder": CLIP weights + tokenizer + image settings (image mode included), "checkpoint": the MIMIC
    layers + units}."""
    state = model.state_dict()
    clip = [(k, v) for k, v in state.items() if k.startswith("encoder.clip.")]
    mimic = [(k, v) for k, v in state.items() if not k.startswith("encoder.clip.")]
    processor = model.processor
    settings = {"max_length": processor.max_length, "vocab_size": len(processor.tokenizer),
                "image": processor.images.processor.to_dict()}
    if processor.images.mode != "default":
        # Only a non-default image mode enters the hash, so stores encoded before modes existed stay valid;
        # a store encoded in one mode is refused by a model in the other.
        settings["image_mode"] = processor.images.mode
    encoder = hashlib.sha256((_hash_tensors(clip) + json.dumps(settings, sort_keys=True, default=str)).encode())
    checkpoint = hashlib.sha256((_hash_tensors(mimic) + ",".join(model.config.units)).encode())
    return {"encoder": encoder.hexdigest()[:32], "checkpoint": checkpoint.hexdigest()[:32]}


def file_fingerprint(*paths) -> str:
    h = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:32]
