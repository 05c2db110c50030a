"""The CLIP tokenizer, built offline from the BPE vocabulary that open_clip_torch ships.

OpenAI's CLIP models all share one byte-level BPE vocabulary (49,408 entries). open_clip ships it as
`bpe_simple_vocab_16e6.txt.gz`; from it we build transformers' `CLIPTokenizer` with exactly the
vocabulary of `openai/clip-vit-base-patch32`, so no hub access is needed. A local model folder that
carries its own tokenizer files uses those instead.
"""
import functools
import gzip
import importlib.util
import os
from pathlib import Path

from transformers import CLIPTokenizer

# Found without importing open_clip, which would pull in torchvision and timm (2-3 s, 250 MB).
BPE_PATH = Path(importlib.util.find_spec("open_clip").submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # the vocabulary has 49,408 = 2*256 byte symbols + merges + 2 specials
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def byte_symbols() -> list:
    """The 256 byte-level BPE symbols in vocabulary order (GPT-2's byte-to-unicode table): printable
    bytes stand for themselves, the others are moved to code points from 256 upwards."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


@functools.lru_cache(maxsize=1)
def _bundled_vocabulary():
    lines = gzip.open(BPE_PATH).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]  # line 0 is a header
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def bundled_clip_tokenizer() -> CLIPTokenizer:
    """OpenAI CLIP's tokenizer from open_clip's BPE file (no network)."""
    vocab, merges = _bundled_vocabulary()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges))


def load_tokenizer(name_or_path: str) -> CLIPTokenizer:
    """A local folder's own tokenizer when it has one, otherwise OpenAI CLIP's bundled vocabulary."""
    if os.path.isdir(name_or_path) and any(os.path.exists(os.path.join(name_or_path, f)) for f in TOKENIZER_FILES):
        return CLIPTokenizer.from_pretrained(name_or_path)
    return bundled_clip_tokenizer()
