"""open_clip backbones: the four features against open_clip's own forward, the tokenizer each model needs,
train -> save -> load -> link, zero-shot, and refusals (another backbone, unsupported towers, offline).

The models are tiny open_clip architectures registered from JSON (random weights, nothing downloaded),
one per code path: CLIP with a causal text tower and a CLS-pooled ViT; CustomTextCLIP with a bidirectional
text tower (SigLIP/CLIPA style) and an average-pooled ViT; a timm ViT with attention pooling (SigLIP's
image tower); a Hugging Face tokenizer from a local folder.
"""
import json
import os

import open_clip
import pytest
import torch
from PIL import Image

import mimic.model.open_clip_encoder as oc
from mimic.data.readers import load_config
from mimic.kb.encode import encode_store
from mimic.kb.fingerprint import file_fingerprint
from mimic.kb.store import KBStore
from mimic.linker import Linker, Query
from mimic.model.encoder import EncoderUnavailable
from mimic.model.images import open_image
from mimic.model.matcher import select
from mimic.model.mimic import MIMIC, MIMICConfig
from mimic.model.zeroshot import LOGIT_SCALE, zero_shot_init
from mimic.train.checkpoint import CheckpointError, load_authors_checkpoint, load_checkpoint, save_model
from tests.conftest import EXAMPLE_IMAGE

TINY_VISION = {"image_size": 224, "layers": 2, "width": 48, "head_width": 24, "patch_size": 32}
TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
BIDIRECTIONAL = {"context_length": 64, "no_causal_mask": True, "pool_type": "last", "proj_bias": True}
CONFIGS = {
    "mimic-tiny-vit": {"embed_dim": 64, "vision_cfg": TINY_VISION, "text_cfg": TINY_TEXT},
    "mimic-tiny-bidir": {"embed_dim": 64, "custom_text": True,
                         "vision_cfg": {**TINY_VISION, "pool_type": "avg", "final_ln_after_pool": True},
                         "text_cfg": {**TINY_TEXT, **BIDIRECTIONAL}},
    "mimic-tiny-timm": {"embed_dim": 192, "custom_text": True,
                        "vision_cfg": {"image_size": 224, "timm_model_name": "vit_tiny_patch16_224",
                                       "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
                        "text_cfg": {**TINY_TEXT, **BIDIRECTIONAL}},
}
TEXTS = ["Obama [SEP] the 44th president", "Paris [SEP] a city", "a " * 60 + "text longer than forty tokens"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """The tiny configs, and one naming a Hugging Face tokenizer saved in a local folder."""
    folder = tmp_path_factory.mktemp("open_clip_configs")
    from transformers import BertTokenizer
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "obama", "paris", "the", "president", "a", "city", "44th"]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(str(folder / "tokenizer"))
    configs = {**CONFIGS, "mimic-tiny-hf": {
        "embed_dim": 64, "custom_text": True, "vision_cfg": TINY_VISION,
        "text_cfg": {**TINY_TEXT, **BIDIRECTIONAL, "vocab_size": len(words),
                     "hf_tokenizer_name": str(folder / "tokenizer"), "tokenizer_kwargs": {"strip_sep_token": True}}}}
    for name, config in configs.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(str(folder / f"{name}.json"))
    return configs


def tiny(name, seed=0):
    return MIMIC.from_encoder(MIMICConfig(encoder=f"open_clip:{name}"), seed=seed).eval()


def reference_tokens(clip, ids, pixels):
    """open_clip's own forward_intermediates: the last text block after ln_final, the last image block
    before the post-LayerNorm (CLS first when there is one)."""
    if hasattr(clip, "text"):
        text = clip.text.forward_intermediates(ids, indices=1, normalize_intermediates=True, intermediates_only=True,
                                             output_fmt="NLC")
    else:
        text = clip.forward_intermediates(text=ids, text_indices=1, normalize_intermediates=True,
                                          intermediates_only=True)
    visual = clip.visual
    if hasattr(visual, "trunk"):
        patches, prefix = visual.trunk.forward_intermediates(pixels, indices=1, norm=False, output_fmt="NLC",
                                                             return_prefix_tokens=True, intermediates_only=True)[0]
    else:
        image = visual.forward_intermediates(pixels, indices=1, output_fmt="NLC", output_extra_tokens=True,
                                             intermediates_only=True)
        prefix, patches = image["image_intermediates_prefix"][0], image["image_intermediates"][0]
    return text["text_intermediates"][0], torch.cat([prefix, patches], dim=1)


@pytest.mark.parametrize("name,text_width,embed,image_tokens", [("mimic-tiny-vit", 32, 64, 50),
                                                               ("mimic-tiny-bidir", 32, 64, 50),
                                                               ("mimic-tiny-timm", 32, 192, 197)])
def test_features_equal_open_clips_own_forward(registered, name, text_width, embed, image_tokens):
    model = tiny(name)
    clip = model.encoder.clip
    batch = model.processor(TEXTS, [Image.new("RGB", (300, 200), (200, 30, 30)), EXAMPLE_IMAGE, None])
    context = registered[name]["text_cfg"]["context_length"]
    ids = torch.nn.functional.pad(batch["input_ids"], (0, context - 40), value=model.encoder.pad_token_id)
    with torch.no_grad():
        x = model.encode(batch)
        image_embedding, _ = model.encoder.encode_image(batch["pixel_values"])
        t_l, v_tokens = reference_tokens(clip, ids, batch["pixel_values"])
        assert x.t_g.shape == (3, embed) and x.t_l.shape == (3, 40, text_width)
        assert x.v_g.shape == (3, 96) and x.v_l.shape == (3, image_tokens, 96)
        # t_G and the image embedding are open_clip's own, normalised
        torch.testing.assert_close(x.t_g, clip.encode_text(ids, normalize=True), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(image_embedding, clip.encode_image(batch["pixel_values"], normalize=True),
                                   atol=1e-6, rtol=1e-5)
        assert torch.allclose(x.t_g.norm(dim=-1), torch.ones(3))
        # T_L: tokens after ln_final; V_L: every image token before the post-LayerNorm, then image_tokens_fc
        torch.testing.assert_close(x.t_l, t_l[:, :40], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x.v_l, model.encoder.image_tokens_fc(v_tokens), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x.v_g, model.encoder.image_cls_fc(image_embedding), atol=1e-6, rtol=1e-5)


def test_openai_vocabulary_models_use_the_bundled_tokenizer(registered):
    model = tiny("mimic-tiny-vit")
    reference = open_clip.get_tokenizer("mimic-tiny-vit")
    for text in TEXTS[:2]:
        ids = model.processor.tokenize([text])["input_ids"][0].tolist()
        expected = reference([text])[0].tolist()
        length = expected.index(49407) + 1
        assert ids[:length] == expected[:length]
    assert model.processor.tokens("Obama [SEP] x")[:3] == ["<|startoftext|>", "obama", "["]


def test_models_with_their_own_tokenizer_use_it(registered):
    model = tiny("mimic-tiny-hf")
    text = "Obama [SEP] the president"
    ids = model.processor.tokenize([text])["input_ids"][0]
    assert ids.tolist() == open_clip.get_tokenizer("mimic-tiny-hf")([text])[0, :40].tolist()  # SEP stripped to 0
    assert model.processor.tokens(text)[:6] == ["[CLS]", "obama", "[PAD]", "the", "president", "[PAD]"]
    assert isinstance(model.processor.tokenizer, oc.HubTokenizer) and model.encoder.pad_token_id == 0


def test_a_tokenizer_that_cannot_be_built_offline_is_refused_before_any_model_is_built(monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the tokenizer was checked")

    monkeypatch.setattr(oc, "build", no_build)
    for spec in ("open_clip:ViT-B-16-SigLIP", "open_clip:ViT-B-16-SigLIP/webli"):
        with pytest.raises(EncoderUnavailable, match="needs the Hugging Face tokenizer 'timm/ViT-B-16-SigLIP', which "
                                                     "cannot be loaded here"):
            MIMIC.from_encoder(MIMICConfig(encoder=spec))


@pytest.mark.parametrize("spec,message", [
    ("open_clip:RN50", "its image tower is a ResNet"),
    ("open_clip:convnext_base", "timm's convnext_base, not a ViT"),
    ("open_clip:coca_ViT-B-32", "pools by attention"),
    ("open_clip:roberta-ViT-B-32", "transformers model roberta-base"),
    ("open_clip:ViT-Q-99", "open_clip has no model 'ViT-Q-99'"),
    ("open_clip:ViT-B-32/nope", "no pretrained weights 'nope' for ViT-B-32; its tags: openai, "),
    ("open_clip:", "name an open_clip model"),
    ("open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "hf-hub: and local-dir: names are not supported"),
    ("open_clip:../../etc/passwd", "open_clip has no pretrained weights '../etc/passwd' for ..; its tags: none"),
    ("open_clip:ViT-B-32/laion2b_s34b_b79k", "could not load the pretrained weights open_clip:ViT-B-32/laion2b"),
])
def test_what_cannot_be_a_backbone_is_refused_plainly(spec, message, monkeypatch):
    monkeypatch.setattr(oc, "build", lambda *a: pytest.fail("nothing should be built"))
    with pytest.raises(EncoderUnavailable, match=message.replace("(", r"\(")):
        MIMIC.from_encoder(MIMICConfig(encoder=spec))


def test_pretrained_tags_bring_their_activation_and_preprocessing():
    openai = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    assert oc.model_config("ViT-B-32", openai)["quick_gelu"] is True  # OpenAI's weights need QuickGELU
    assert "quick_gelu" not in oc.model_config("ViT-B-32", open_clip.get_pretrained_cfg("ViT-B-32",
                                                                                          "laion2b_s34b_b79k"))
    assert oc.parse_spec("open_clip:ViT-B-32/laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert oc.parse_spec("open_clip:ViT-B-32") == ("ViT-B-32", None)


def test_images_go_through_open_clips_own_transform(registered, tmp_path):
    model = tiny("mimic-tiny-vit")
    pipeline = model.processor.images
    cfg = model.encoder.clip.open_clip_config["preprocess_cfg"]
    transform = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"],
                                          resize_mode=cfg["resize_mode"], interpolation=cfg["interpolation"])
    wide = Image.new("RGB", (420, 240), (10, 120, 200))
    torch.testing.assert_close(pipeline(wide), transform(wide))
    torch.testing.assert_close(pipeline(EXAMPLE_IMAGE), transform(open_image(EXAMPLE_IMAGE)))
    gray = Image.new("L", (50, 40), 128)
    torch.testing.assert_close(pipeline(gray), pipeline(gray.convert("RGB")))  # open_image converts first
    assert torch.equal(pipeline(None), torch.zeros(3, 224, 224))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert torch.equal(pipeline(str(tmp_path / "broken.jpg")), torch.zeros(3, 224, 224))


def test_zero_shot_works_on_an_open_clip_backbone(registered, synth_dataset):
    model = zero_shot_init(tiny("mimic-tiny-bidir", seed=5))
    entities = synth_dataset.entities[:12]
    batch = model.processor([f"{e.name} [SEP] {e.attr}" for e in entities], [None] * 12)
    with torch.no_grad():
        features = model.encode(batch)
        scores = model.matcher(features, features)
    t = features.t_g.double()
    t = t - t.mean(-1, keepdim=True)
    var = (t * t).mean(-1)
    expected = LOGIT_SCALE * (t @ t.T) / (t.shape[-1] * torch.sqrt((var[:, None] + 1e-5) * (var[None, :] + 1e-5)))
    torch.testing.assert_close(scores.s_t.double(), expected, atol=2e-3, rtol=0)  # S_T = λ ĉos(t_E, t_M)
    assert scores.s_v.abs().max() < 0.1  # no image on either side: no visual evidence


@pytest.fixture(scope="module")
def trained_run(registered, synth_config_path, tmp_path_factory):
    from mimic.train.trainer import train
    out = tmp_path_factory.mktemp("open_clip_runs")
    config = load_config(synth_config_path, [f"output_dir={out}", "trainer.max_epochs=2", "train_fraction=0.25",
                                             "trainer.log_every_n_steps=1",
                                             "pretrained_model=open_clip:mimic-tiny-vit"])
    model = tiny("mimic-tiny-vit")
    return train(model, config, progress=False), model


def test_train_save_load_link_round_trip(trained_run, synth_dataset, tmp_path):
    result, trained = trained_run
    own = load_checkpoint(result["best_model"])
    lightning = load_authors_checkpoint(result["best_checkpoint"])  # the run recorded its backbone
    assert own.config.encoder == lightning.config.encoder == "open_clip:mimic-tiny-vit"
    assert "open_clip_preprocess.json" in os.listdir(result["best_model"])
    for key, value in own.state_dict().items():
        assert torch.equal(lightning.state_dict()[key], value), key
    assert not torch.equal(own.state_dict()["matcher.tglu.fc_key.weight"],
                           tiny("mimic-tiny-vit").state_dict()["matcher.tglu.fc_key.weight"])  # it did train
    entities = synth_dataset.entities
    store = encode_store(own, entities, synth_dataset.kb_images, str(tmp_path / "kb"),
                         file_fingerprint(synth_dataset.config.data.entity), batch_size=16, progress=False,
                         precision="float32")  # exact terms: the scores below are compared with the model's own
    linker = Linker.open(store, checkpoint=result["best_model"])
    mentions = synth_dataset.split("test")[:4]
    for m in mentions:
        answer = linker.link(m.sentence, m.mention, synth_dataset.mention_image(m), top_k=3, exact=True)
        # the linker's scores are the model's own, entity by entity
        terms = linker.mention_terms([Query(m.sentence, m.mention, synth_dataset.mention_image(m))])
        with torch.no_grad():
            batch = own.processor([f"{entities[r['index']].name} [SEP] {entities[r['index']].attr}"
                                   for r in answer["results"]],
                                  [synth_dataset.entity_image(entities[r["index"]]) for r in answer["results"]])
            direct = own.matcher.score(select(terms, slice(0, 1)), own.matcher.entity_side(own.encode(batch)))
        assert [r["score"] for r in answer["results"]] == pytest.approx(direct.s[0].tolist(), abs=1e-3)
    assert len(KBStore.load(store)) == len(entities)


def test_a_checkpoint_refuses_another_backbone(trained_run, tiny_model, tmp_path):
    result, _ = trained_run
    for other in ("open_clip:mimic-tiny-bidir", "openai/clip-vit-base-patch32"):
        with pytest.raises(CheckpointError, match="trained on the backbone 'open_clip:mimic-tiny-vit' and cannot run "
                                                  f"on '{other}'"):
            load_checkpoint(result["best_model"], encoder=other)
        with pytest.raises(CheckpointError, match="trained on the backbone 'open_clip:mimic-tiny-vit'"):
            load_checkpoint(result["best_checkpoint"], encoder=other)
    assert load_checkpoint(result["best_model"], encoder="open_clip:mimic-tiny-vit/any-tag") is not None
    save_model(tiny_model, str(tmp_path / "transformers"))
    with pytest.raises(CheckpointError, match="cannot run on 'open_clip:mimic-tiny-vit'"):
        load_checkpoint(str(tmp_path / "transformers"), encoder="open_clip:mimic-tiny-vit")


def test_the_checkpoint_folder_brings_its_own_tokenizer(registered, tmp_path):
    model = tiny("mimic-tiny-hf", seed=2)
    save_model(model, str(tmp_path / "ckpt"))
    loaded = load_checkpoint(str(tmp_path / "ckpt"))
    assert isinstance(loaded.processor.tokenizer, oc.HubTokenizer)
    batch = model.processor(TEXTS[:2], [EXAMPLE_IMAGE, None])
    assert torch.equal(loaded.processor(TEXTS[:2], [EXAMPLE_IMAGE, None])["input_ids"], batch["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(batch).t_g, model.encode(batch).t_g, atol=1e-6, rtol=1e-5)


def test_a_weights_file_that_is_not_one_is_refused(registered, tmp_path):
    (tmp_path / "weights.pt").write_text("not weights")
    with pytest.raises(EncoderUnavailable, match="do not load into open_clip's mimic-tiny-vit"):
        MIMIC.from_encoder(MIMICConfig(encoder=f"open_clip:mimic-tiny-vit/{tmp_path / 'weights.pt'}"))
    torch.save({"visual.proj": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(EncoderUnavailable, match="do not load into"):
        MIMIC.from_encoder(MIMICConfig(encoder=f"open_clip:mimic-tiny-vit/{tmp_path / 'other.pt'}"))


def test_the_demo_says_in_bold_that_an_untagged_open_clip_model_has_random_weights(registered, monkeypatch):
    from demo import models
    monkeypatch.setenv("MIMIC_ENCODER", "open_clip:mimic-tiny-vit")
    monkeypatch.setenv("MIMIC_CHECKPOINT", "")
    monkeypatch.setattr(models, "CHECKPOINTS", "/nonexistent")
    loaded = models.load_demo_model()
    assert loaded.stand_in and loaded.zero_shot
    assert loaded.warnings == ["Random weights: 'open_clip:mimic-tiny-vit' names no pretrained weights, so the results "
                               "are NOT meaningful. Add a pretrained tag, e.g. open_clip:ViT-B-32/laion2b_s34b_b79k."]
    assert loaded.model.config.encoder == "open_clip:mimic-tiny-vit"
