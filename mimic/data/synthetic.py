"""Small synthetic material for trying the pipeline offline: a tiny CLIP and a multimodal dataset.

`make_tiny_clip` saves a CLIP of the same architecture family as ViT-B/32 (7x7 patches of 32 px on
224 px images, the real 49,408-token vocabulary) at tiny widths, with random weights from a fixed seed.

`make_dataset` writes a dataset in the authors' layout (qid2id.json, kb_entity.json, splits, image
folders, a YAML config) where linking needs both modalities: entities come in groups that share a
name and differ in colour, which only the image (or an adjective in the sentence) reveals.

With `pattern_region=True` each mention image shows the entity's coloured shape small, in one
corner block of 3 x 3 patches chosen at random, among grey distractor shapes: the evidence sits in a
known region, recorded in `mention_regions.json` ({mention id: [left, top, right, bottom]} in pixels
of the 224 x 224 picture), which is what a relevance map should point at.
"""
import json
import os
import random

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import CLIPConfig, CLIPModel

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
           "purple": (140, 50, 170), "orange": (240, 140, 30), "black": (20, 20, 20), "white": (240, 240, 240)}
NOUNS = ["falcon", "river", "castle", "violin", "comet", "tiger", "harbor", "lantern", "meadow", "glacier",
         "canyon", "orchid", "anchor", "beacon", "cedar", "dolphin", "ember", "forest", "granite", "island"]
PLACES = ["paris", "lima", "oslo", "cairo", "tokyo", "quito", "delhi", "perth", "rome", "dakar"]
SHAPES = ["circle", "square", "triangle"]
TEMPLATES = ["we visited the {m} last summer near {p}.", "a photo of the {m} was taken in {p}.",
             "everyone talked about the {m} at the meeting in {p}.", "the {m} appeared again, this time in {p}."]


def make_tiny_clip(folder: str, seed: int = 0, projection_dim: int = 64) -> str:
    """Save a tiny random CLIP (transformers format) to `folder` and return the folder."""
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=49408, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=1),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
        projection_dim=projection_dim)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(folder)
    return folder


def _shape(draw, shape, box, colour):
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)


def _brightness_jitter(image, rng):
    shifted = np.asarray(image, dtype=np.int16) + rng.randint(-12, 12)
    return Image.fromarray(np.clip(shifted, 0, 255).astype(np.uint8))


def _draw(colour, shape, rng, jitter=0):
    """A 224 x 224 picture: the entity's colour as a shape on a grey background, with optional noise."""
    image = Image.new("RGB", (224, 224), (128, 128, 128))
    dx, dy = (rng.randint(-jitter, jitter), rng.randint(-jitter, jitter)) if jitter else (0, 0)
    _shape(ImageDraw.Draw(image), shape, (40 + dx, 40 + dy, 184 + dx, 184 + dy), colour)
    return _brightness_jitter(image, rng) if jitter else image


REGION_PATCHES = 3  # side of the corner block that holds the pattern, in 32-px patches


def _draw_in_region(colour, shape, rng):
    """A 224 x 224 picture with the entity's shape in a random corner block of 3 x 3 patches and grey
    distractors elsewhere -> (image, the block as [left, top, right, bottom] in pixels)."""
    size, block = 224, REGION_PATCHES * 32
    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    left, top = rng.choice([0, size - block]), rng.choice([0, size - block])
    for _ in range(3):  # grey shapes outside the block carry no identity
        while True:
            x, y = rng.randrange(0, size - 48), rng.randrange(0, size - 48)
            if x + 48 <= left or x >= left + block or y + 48 <= top or y >= top + block:
                break
        grey = rng.randrange(60, 200)
        draw.rectangle((x, y, x + 48, y + 48), fill=(grey, grey, grey))
    _shape(draw, shape, (left + 12, top + 12, left + block - 12, top + block - 12), colour)
    return _brightness_jitter(image, rng), [left, top, left + block, top + block]


def make_dataset(folder: str, num_entities: int = 48, mentions_per_entity: int = 5, seed: int = 0,
                 encoder: str = "openai/clip-vit-base-patch32", image_free_share: float = 0.1,
                 mention_image_dir: str = "mention_image", pattern_region: bool = False) -> str:
    """Write a synthetic dataset in the authors' layout; return the path of its YAML config.

    mention_image_dir: the folder the mention images are written to; the config always says
    `mention_image` (pass "mention_images" for the layout of the authors' RichpediaMEL archive).
    pattern_region: mention images hold the entity's pattern in a known corner block (module docstring)."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(folder, "kb_image"), exist_ok=True)
    os.makedirs(os.path.join(folder, mention_image_dir), exist_ok=True)
    colours = list(COLOURS)
    entities, qid2id = [], {}
    for index in range(num_entities):
        noun = NOUNS[index // len(colours) % len(NOUNS)]  # groups of entities share a name
        colour = colours[index % len(colours)]
        shape = SHAPES[index % len(SHAPES)]
        place = PLACES[rng.randrange(len(PLACES))]
        qid = f"Q{1000 + index}"
        qid2id[qid] = index
        has_image = rng.random() >= image_free_share
        if has_image:
            _draw(COLOURS[colour], shape, rng).save(os.path.join(folder, "kb_image", f"{qid}.jpg"), quality=95)
        entities.append({"id": index, "type": "entity", "entity_name": f"The%20{noun.title()}",
                         "attr": f"a {colour} {shape} {noun} known from {place}.",
                         "image_list": [f"{qid}.jpg"] if has_image else [],
                         "_colour": colour, "_shape": shape, "_place": place, "_noun": noun})
    mentions, regions = [], {}
    for entity in entities:
        for k in range(mentions_per_entity):
            mid = f"M{entity['id']}-{k}"
            # the place is a distractor: only the image (or, sometimes, a colour word) tells the group apart
            sentence = rng.choice(TEMPLATES).format(m=entity["_noun"], p=rng.choice(PLACES))
            if rng.random() < 0.2:
                sentence = sentence.replace(entity["_noun"], f"{entity['_colour']} {entity['_noun']}", 1)
            if pattern_region:
                image, regions[mid] = _draw_in_region(COLOURS[entity["_colour"]], entity["_shape"], rng)
            else:
                image = _draw(COLOURS[entity["_colour"]], entity["_shape"], rng, jitter=12)
            image.save(os.path.join(folder, mention_image_dir, f"{mid}.jpg"), quality=90)
            mentions.append({"id": mid, "sentence": sentence, "mentions": entity["_noun"],
                             "imgPath": f"{mid}.png", "answer": f"Q{1000 + entity['id']}"})
    rng.shuffle(mentions)
    n = len(mentions)
    splits = {"train": mentions[: int(n * 0.6)], "dev": mentions[int(n * 0.6): int(n * 0.8)],
              "test": mentions[int(n * 0.8):]}
    for entity in entities:
        for key in [k for k in entity if k.startswith("_")]:
            del entity[key]
    with open(os.path.join(folder, "qid2id.json"), "w") as f:
        json.dump(qid2id, f)
    with open(os.path.join(folder, "kb_entity.json"), "w") as f:
        json.dump(entities, f, indent=1)
    for name, rows in splits.items():
        with open(os.path.join(folder, f"SYNTH_{name}.json"), "w") as f:
            json.dump(rows, f, indent=1)
    if pattern_region:
        with open(os.path.join(folder, "mention_regions.json"), "w") as f:
            json.dump(regions, f)
    config_path = os.path.join(folder, "synthetic.yaml")
    with open(config_path, "w") as f:
        f.write(SYNTH_CONFIG.format(num_entity=num_entities, encoder=encoder, **encoder_widths(encoder)))
    return config_path


def encoder_widths(encoder: str) -> dict:
    """The config's model widths for a CLIP: its own, or null (read from the model) where the authors' one
    key stands for two widths that differ in this CLIP (text embedding and text tokens)."""
    from ..model.backbones import is_open_clip
    from ..model.encoder import clip_config
    if is_open_clip(encoder):
        return {"input_hidden_dim": "null", "dt": "null", "input_image_hidden_dim": "null"}
    config = clip_config(encoder)
    text, embed = config.text_config.hidden_size, config.projection_dim
    shared = embed if text == embed else "null"
    return {"input_hidden_dim": shared, "dt": shared, "input_image_hidden_dim": config.vision_config.hidden_size}


SYNTH_CONFIG = """\
run_name: Synthetic
seed: 43
pretrained_model: '{encoder}'
lr: 1e-3

data:
  num_entity: {num_entity}
  kb_img_folder: kb_image
  mention_img_folder: mention_image
  qid2id: qid2id.json
  entity: kb_entity.json
  train_file: SYNTH_train.json
  dev_file: SYNTH_dev.json
  test_file: SYNTH_test.json
  batch_size: 32
  num_workers: 0
  text_max_length: 40
  eval_chunk_size: 6000
  eval_batch_size: 20
  embed_update_batch_size: 64

model:
  input_hidden_dim: {input_hidden_dim}
  input_image_hidden_dim: {input_image_hidden_dim}
  hidden_dim: 96
  dv: 96
  dt: {dt}
  TGLU_hidden_dim: 96
  IDLU_hidden_dim: 96
  CMFU_hidden_dim: 96

trainer:
  max_epochs: 6
  num_sanity_val_steps: 0
  check_val_every_n_epoch: 2
  log_every_n_steps: 5
"""
