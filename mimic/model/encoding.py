"""Batched encoding: texts and images -> encoder features -> a side's unit terms, with a progress bar."""
import torch
from tqdm.auto import tqdm

from .images import log_unusable
from .matcher import cat_terms, map_terms


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@torch.no_grad()
def encode_batch(model, texts: list, images: list, side: str, device=None, autocast: str = None) -> dict:
    """One batch -> the `side` ("entity" or "mention") terms of the matcher, on the CPU, in float32.
    autocast "bf16" or "fp16" runs the encoder and the matcher in that precision where PyTorch's autocast
    deems it safe (matrix products; norms and softmax stay float32): faster on a GPU, see docs/store.md
    for its effect on S."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in model.processor(texts, images).items()}
    with torch.autocast(device.type, dtype=AUTOCAST.get(autocast, torch.bfloat16), enabled=autocast is not None):
        features = model.encode(inputs)
        terms = getattr(model.matcher, f"{side}_side")(features)
    return map_terms(lambda t: t.float().cpu(), terms)


def encode_all(model, texts: list, images: list, side: str, batch_size: int = 64, device=None,
               desc: str = None, progress: bool = True) -> dict:
    """All inputs, in order, batch by batch -> one terms dict over all of them."""
    parts = []
    bar = tqdm(total=len(texts), desc=desc or f"encode {side}s", unit=side, disable=not progress)
    for start in range(0, len(texts), batch_size):
        parts.append(encode_batch(model, texts[start:start + batch_size], images[start:start + batch_size],
                                  side, device))
        bar.update(len(parts[-1]["cmfu"]["f"]))
    bar.close()
    if not parts:
        raise ValueError("nothing to encode")
    log_unusable(model.processor.images, sum(i is not None for i in images), f"{side} images")
    return cat_terms(parts)
