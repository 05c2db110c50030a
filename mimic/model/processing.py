"""Text and image inputs -> CLIP inputs, exactly as the authors build them.

    mention text: "{mention} [SEP] {sentence}"     entity text: "{entity_name} [SEP] {attr}"

tokenised by the CLIP tokenizer, padded to 40 tokens and truncated (start/end tokens included).
"""
import torch

from .images import ImagePipeline, load_image_processor
from .tokenizer import load_tokenizer

# No text longer than this changes its first 40 tokens (each token covers at least one character);
# cutting it keeps tokenising a 100,000-character sentence fast.
MAX_TEXT_CHARS = 10_000


def mention_text(mention: str, sentence: str) -> str:
    return f"{mention} [SEP] {sentence}"


def entity_text(name: str, attr: str) -> str:
    return f"{name} [SEP] {attr}"


def _clip_long_text(text: str) -> str:
    if len(text) <= MAX_TEXT_CHARS:
        return text
    cut = text.find(" ", MAX_TEXT_CHARS)  # at a word boundary, so the last kept word is whole
    return text[:cut] if cut != -1 else text[:MAX_TEXT_CHARS]


class Processor:
    """Tokenizer + image pipeline of one CLIP: `processor(texts, images)` -> model inputs."""

    def __init__(self, tokenizer, image_pipeline: ImagePipeline, max_length: int = 40):
        self.tokenizer = tokenizer
        self.images = image_pipeline
        self.max_length = max_length

    @classmethod
    def for_encoder(cls, name_or_path: str, max_length: int = 40) -> "Processor":
        """In the default image mode (a model switches with `MIMIC.set_image_mode`)."""
        return cls(load_tokenizer(name_or_path), ImagePipeline(load_image_processor(name_or_path)), max_length)

    def tokenize(self, texts: list) -> dict:
        encoded = self.tokenizer([_clip_long_text(t) for t in texts], padding="max_length",
                                 max_length=self.max_length, truncation=True, return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def __call__(self, texts: list, images: list) -> dict:
        """texts: strings; images: paths, bytes, PIL images or None (zeros) -> input tensors."""
        batch = self.tokenize(texts)
        batch["pixel_values"] = torch.stack([self.images(i) for i in images])
        return batch

    def tokens(self, text: str) -> list:
        """The readable tokens of `text` as the model sees them (for the attention heatmap labels)."""
        ids = self.tokenize([text])["input_ids"][0].tolist()
        return [self.tokenizer.convert_ids_to_tokens(i).replace("</w>", "") for i in ids]

    def save(self, folder: str):
        self.tokenizer.save_pretrained(folder)
        self.images.processor.save_pretrained(folder)
