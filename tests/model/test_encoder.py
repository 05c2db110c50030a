"""The encoder, the offline tokenizer and the image pipeline, on a tiny CLIP saved and loaded like a real one."""
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from mimic.model.encoder import DEFAULT_ENCODER, EncoderUnavailable, clip_config, load_clip
from mimic.model.images import ImagePipeline, load_image_processor
from mimic.model.processing import Processor, entity_text, mention_text
from mimic.model.tokenizer import bundled_clip_tokenizer

TEXTS = ["Barack Obama [SEP] Obama was the 44th president of the United States.",
         "café naïve résumé [SEP] Ünïcödé àccents", "東京タワー [SEP] 東京の電波塔", "emoji 😀 and שלום  \t tabs",
         "a " * 60 + "very long sentence that must be truncated at forty tokens"]


def test_bundled_tokenizer_matches_open_clip():
    ours = bundled_clip_tokenizer()
    assert len(ours) == 49408
    assert ours.convert_tokens_to_ids("<|startoftext|>") == 49406 and ours.eos_token_id == 49407
    reference = open_clip.get_tokenizer("ViT-B-32")
    for text in TEXTS:
        ids = ours(text, padding="max_length", max_length=40, truncation=True)["input_ids"]
        expected = reference([text], context_length=40)[0].tolist()
        length = expected.index(49407) + 1  # open_clip pads with 0, transformers with <|endoftext|>
        assert ids[:length] == expected[:length], text
        assert ids[length:] == [49407] * (40 - length)


def test_texts_are_built_as_the_authors_do():
    assert mention_text("Obama", "Obama spoke.") == "Obama [SEP] Obama spoke."
    assert entity_text("Barack Obama", "44th president") == "Barack Obama [SEP] 44th president"


def test_long_sentence_is_truncated_fast_and_keeps_the_mention(tiny_clip):
    processor = Processor.for_encoder(tiny_clip)
    short = processor.tokenize([mention_text("Obama", "Obama visited Paris. " * 3)])
    huge = processor.tokenize([mention_text("Obama", "Obama visited Paris. " * 5000)])  # ~100,000 characters
    assert huge["input_ids"].shape == (1, 40)
    assert huge["input_ids"][0, :5].tolist() == short["input_ids"][0, :5].tolist()
    assert processor.tokens("Obama [SEP] x")[:3] == ["<|startoftext|>", "obama", "["]


def test_encoder_outputs_follow_the_facts(tiny_model):
    clip = tiny_model.encoder.clip
    batch = tiny_model.processor(["Obama [SEP] the president", "Paris [SEP] a city"],
                                 [Image.new("RGB", (300, 200), (200, 30, 30)), None])
    with torch.no_grad():
        x = tiny_model.encode(batch)
        text = clip.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        vision = clip.vision_model(pixel_values=batch["pixel_values"])
    assert x.t_g.shape == (2, 64) and x.t_l.shape == (2, 40, 32)
    assert x.v_g.shape == (2, 96) and x.v_l.shape == (2, 50, 96)  # CLS + 7x7 patches
    # t_G: projected and L2-normalised; T_L: text tower's last hidden state (after its final LayerNorm)
    t_g = clip.text_projection(text.pooler_output)
    torch.testing.assert_close(x.t_g, t_g / t_g.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(x.t_l, text.last_hidden_state)
    # v_G: image_cls_fc(normalised image_embeds); V_L: image_tokens_fc(hidden state before post-LayerNorm)
    v = clip.visual_projection(vision.pooler_output)
    torch.testing.assert_close(x.v_g, tiny_model.encoder.image_cls_fc(v / v.norm(dim=-1, keepdim=True)))
    torch.testing.assert_close(x.v_l, tiny_model.encoder.image_tokens_fc(vision.last_hidden_state))


def test_attention_mask_is_passed_to_clip(tiny_model):
    batch = tiny_model.processor(["Obama [SEP] a short text"], [None])
    with torch.no_grad():
        masked = tiny_model.encode(batch).t_l
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
        unmasked = tiny_model.encode(batch).t_l
    n = int(tiny_model.processor.tokenize(["Obama [SEP] a short text"])["attention_mask"].sum())
    torch.testing.assert_close(masked[:, :n], unmasked[:, :n])  # causal: real tokens never see padding
    assert not torch.allclose(masked[:, n:], unmasked[:, n:])  # padded positions do differ


def test_pretrained_loading_uses_the_saved_weights(tiny_clip):
    a, b = load_clip(tiny_clip), load_clip(tiny_clip)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_unreachable_hub_model_is_reported_plainly():
    with pytest.raises(EncoderUnavailable, match="could not load the pretrained CLIP"):
        load_clip("openai/clip-vit-base-patch32")  # HF_HUB_OFFLINE=1: fails at once


def test_default_architecture_is_known_offline():
    config = clip_config(DEFAULT_ENCODER)
    assert (config.projection_dim, config.text_config.hidden_size, config.vision_config.hidden_size) == (512, 512, 768)
    assert (config.vision_config.patch_size, config.vision_config.image_size) == (32, 224)


def test_image_pipeline_resizes_with_lanczos_then_normalises():
    pipeline = ImagePipeline(load_image_processor("openai/clip-vit-base-patch32"))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (300, 420, 3), dtype=np.uint8))
    pixels = pipeline(image)
    resized = np.asarray(image.resize((224, 224), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
    expected = torch.from_numpy(((resized - mean) / std).transpose(2, 0, 1).copy())
    torch.testing.assert_close(pixels, expected, atol=1e-5, rtol=1e-5)


def test_missing_image_gives_zeros_and_grayscale_is_converted(tmp_path):
    pipeline = ImagePipeline(load_image_processor("openai/clip-vit-base-patch32"))
    assert torch.equal(pipeline(None), torch.zeros(3, 224, 224))
    assert torch.equal(pipeline(str(tmp_path / "missing.jpg")), torch.zeros(3, 224, 224))
    gray = Image.new("L", (50, 40), 128)
    torch.testing.assert_close(pipeline(gray), pipeline(gray.convert("RGB")))
