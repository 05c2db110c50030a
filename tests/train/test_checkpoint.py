"""Checkpoints: the authors' Lightning format, the own format, and refusals that name the problem."""
import os
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from mimic.data.synthetic import make_tiny_clip
from mimic.model.mimic import MIMIC, MIMICConfig
from mimic.train.checkpoint import CheckpointError, load_authors_checkpoint, load_checkpoint, save_model

FACT_KEYS = ["encoder.image_cls_fc.weight", "encoder.image_tokens_fc.bias", "matcher.text_cls_layernorm.weight",
             "matcher.text_tokens_layernorm.bias", "matcher.image_cls_layernorm.weight",
             "matcher.image_tokens_layernorm.weight", "matcher.tglu.fc_query.weight", "matcher.tglu.fc_key.bias",
             "matcher.tglu.fc_value.weight", "matcher.tglu.fc_cls.weight", "matcher.tglu.layer_norm.weight",
             "matcher.vdlu.dual_ent2men.cls_fc.weight", "matcher.vdlu.dual_ent2men.tokens_fc.weight",
             "matcher.vdlu.dual_men2ent.fc.weight", "matcher.vdlu.dual_men2ent.gate_fc.weight",
             "matcher.vdlu.dual_men2ent.add_layer_norm.weight", "matcher.vdlu.dual_ent2men.layer_norm.bias",
             "matcher.cmfu.text_fc.weight", "matcher.cmfu.image_fc.weight", "matcher.cmfu.gate_fc.weight",
             "matcher.cmfu.gate_layer_norm.weight", "matcher.cmfu.context_layer_norm.weight",
             "encoder.clip.text_model.embeddings.token_embedding.weight",
             "encoder.clip.vision_model.embeddings.patch_embedding.weight", "encoder.clip.logit_scale"]


def authors_checkpoint(model, path, extra=None):
    """What the authors' code writes: Lightning's dict, weights under state_dict, an OmegaConf config."""
    state = dict(model.state_dict())
    state["encoder.clip.text_model.embeddings.position_ids"] = torch.arange(77)[None]  # older transformers
    state["encoder.clip.vision_model.embeddings.position_ids"] = torch.arange(50)[None]
    state.update(extra or {})
    hparams = OmegaConf.create({"run_name": "WikiMEL", "seed": 43, "pretrained_model": "/nowhere/clip", "lr": 1e-5,
                                "data": {"text_max_length": 40, "batch_size": 128},
                                "model": {"dv": 96, "TGLU_hidden_dim": 96}, "trainer": {"devices": [0]}})
    torch.save({"epoch": 7, "global_step": 900, "pytorch-lightning_version": "1.7.7", "state_dict": state,
                "loops": {}, "callbacks": {}, "hyper_parameters": hparams, "hparams_name": "args"}, path)
    return path


def scores(model, texts=("Obama [SEP] the president",), entities=("Barack Obama [SEP] president", "Paris [SEP] city")):
    with torch.no_grad():
        m = model.matcher.mention_side(model.encode(model.processor(list(texts), [None] * len(texts))))
        e = model.matcher.entity_side(model.encode(model.processor(list(entities), [None] * len(entities))))
        return model.matcher.score(m, e)


def test_state_dict_has_the_authors_keys(tiny_model):
    keys = tiny_model.state_dict().keys()
    for key in FACT_KEYS:
        assert key in keys, key
    assert tiny_model.state_dict()["encoder.image_cls_fc.weight"].shape == (96, 64)  # dv x projection_dim
    assert tiny_model.state_dict()["matcher.vdlu.dual_men2ent.gate_fc.weight"].shape == (1, 96)


def test_authors_checkpoint_round_trip(tiny_model, tiny_clip, tmp_path):
    path = authors_checkpoint(tiny_model, str(tmp_path / "epoch=7.ckpt"))
    loaded = load_authors_checkpoint(path, encoder=tiny_clip)
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    before, after = scores(tiny_model), scores(loaded)
    # The weights are equal bit for bit (above); the scores only to float32 rounding: a model loaded from a
    # file holds its weights at other memory alignments, and the CPU kernels then sum in another order.
    torch.testing.assert_close(after.s, before.s, rtol=1e-6, atol=1e-4)


def test_shape_mismatch_names_the_first_offending_key(tiny_model, tiny_clip, tmp_path):
    path = authors_checkpoint(tiny_model, str(tmp_path / "bad.ckpt"),
                              {"matcher.tglu.fc_key.weight": torch.zeros(96, 33)})
    with pytest.raises(CheckpointError, match=r"'matcher.tglu.fc_key.weight' has shape \(96, 33\) but the model "
                                              r"expects \(96, 32\)"):
        load_authors_checkpoint(path, encoder=tiny_clip)


def test_missing_and_unexpected_keys_are_named(tiny_model, tiny_clip, tmp_path):
    state = dict(tiny_model.state_dict())
    del state["matcher.cmfu.gate_fc.bias"]
    torch.save({"state_dict": state}, tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="missing key 'matcher.cmfu.gate_fc.bias'"):
        load_authors_checkpoint(str(tmp_path / "missing.ckpt"), encoder=tiny_clip)
    path = authors_checkpoint(tiny_model, str(tmp_path / "extra.ckpt"), {"matcher.extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected key 'matcher.extra.weight'"):
        load_authors_checkpoint(path, encoder=tiny_clip)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_runs_code_is_refused_without_running(tmp_path, tiny_clip):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": _RunsCode(str(marker))}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(str(tmp_path / "evil.ckpt"), encoder=tiny_clip)
    assert not marker.exists()


def test_truncated_and_foreign_files_are_refused(tiny_model, tiny_clip, tmp_path):
    path = authors_checkpoint(tiny_model, str(tmp_path / "full.ckpt"))
    data = open(path, "rb").read()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(str(tmp_path / "cut.ckpt"), encoder=tiny_clip)
    (tmp_path / "notes.ckpt").write_text("these are my notes, not weights")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(str(tmp_path / "notes.ckpt"), encoder=tiny_clip)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="no MIMIC weights"):
        load_checkpoint(str(tmp_path / "other.ckpt"), encoder=tiny_clip)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(str(tmp_path / "absent.ckpt"))


def test_own_format_round_trip_needs_no_encoder_folder(tmp_path):
    clip_dir = make_tiny_clip(str(tmp_path / "clip"), seed=4)
    model = MIMIC.from_encoder(MIMICConfig(encoder=clip_dir, units=("tglu", "cmfu"), metadata={"note": "x"}), seed=2)
    save_model(model, str(tmp_path / "ckpt"))
    assert sorted(os.listdir(tmp_path / "ckpt"))[:2] == ["config.json", "model.safetensors"]
    shutil.rmtree(clip_dir)  # the folder is self-contained: config, weights, tokenizer, image processor
    loaded = load_checkpoint(str(tmp_path / "ckpt"))
    assert loaded.config.units == ("tglu", "cmfu") and loaded.config.metadata == {"note": "x"}
    torch.testing.assert_close(scores(loaded).s, scores(model).s, rtol=1e-6, atol=1e-4)  # float32 rounding


def test_damaged_own_format_is_refused(tiny_model, tmp_path):
    save_model(tiny_model, str(tmp_path / "ckpt"))
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="damaged or truncated weights file"):
        load_checkpoint(str(tmp_path / "ckpt"))
    with pytest.raises(CheckpointError, match="not a mimic-el checkpoint folder"):
        load_checkpoint(str(tmp_path))
