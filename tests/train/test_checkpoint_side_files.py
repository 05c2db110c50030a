"""Damaged checkpoint side files (a `<ckpt>.nil.json`, a `config.json` without its sections) give a
CheckpointError naming the file; the demo then runs zero-shot and says why in bold, without a path."""
import json
from types import SimpleNamespace

import pytest

from mimic.train.checkpoint import CheckpointError, load_checkpoint, save_model, save_nil_rule
from tests.train.test_checkpoint import authors_checkpoint

RULE = {"feature": "margin", "threshold": 0.25, "accuracy": 0.9}


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('"margin"', 'expected a JSON object with "feature" and "threshold"'),
    ('{"feature": "loudness", "threshold": 1}', '"feature" must be one of score, margin'),
    ('{"feature": "score"}', '"threshold" must be a number'),
    ('{"feature": "score", "threshold": "high"}', '"threshold" must be a number'),
    (b"\xff\xfe{}", "not valid JSON"),
])
def test_a_damaged_nil_rule_beside_a_ckpt_is_named(tiny_model, tiny_clip, tmp_path, content, message):
    path = authors_checkpoint(tiny_model, str(tmp_path / "run.ckpt"))
    sidecar = tmp_path / "run.ckpt.nil.json"
    sidecar.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, encoder=tiny_clip)
    assert str(caught.value).startswith(f"{sidecar}: ") and message in str(caught.value)
    save_nil_rule(path, RULE)  # calibrate-nil's own output loads
    assert load_checkpoint(path, encoder=tiny_clip).config.metadata["nil"] == RULE


@pytest.mark.parametrize("edit,message", [
    (lambda meta: meta.pop("mimic"), 'the MIMIC settings ("mimic") are missing'),
    (lambda meta: meta.pop("clip"), 'the CLIP architecture ("clip") are missing'),
    (lambda meta: meta.update(clip=[1, 2]), 'the CLIP architecture ("clip") are missing or not an object'),
    (lambda meta: meta["mimic"].update(units=5), "unusable settings (TypeError"),
    (lambda meta: meta["mimic"].update(metadata="x"), '"mimic"."metadata" must be an object'),
    (lambda meta: meta["mimic"].update(metadata={"nil": {"feature": "score"}}), 'the NIL rule: "threshold" must'),
])
def test_a_config_json_without_its_sections_is_named(tiny_model, tmp_path, edit, message):
    folder = tmp_path / "ckpt"
    save_model(tiny_model, str(folder))
    meta = json.loads((folder / "config.json").read_text())
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(str(folder))
    assert str(caught.value).startswith(f"{folder / 'config.json'}: ") and message in str(caught.value)


@pytest.mark.parametrize("damage", ["nil.json", "config.json"])
def test_the_demo_runs_zero_shot_on_a_damaged_checkpoint_and_says_why(tiny_model, tiny_clip, tmp_path, monkeypatch,
                                                                      damage):
    from demo.handlers import DemoApp
    from demo.models import load_demo_model
    if damage == "nil.json":
        checkpoint = authors_checkpoint(tiny_model, str(tmp_path / "run.ckpt"))
        (tmp_path / "run.ckpt.nil.json").write_text("{oops")
    else:
        checkpoint = str(tmp_path / "ckpt")
        save_model(tiny_model, checkpoint)
        (tmp_path / "ckpt" / "config.json").write_text('{"format": "mimic-el", "version": 1}')
    monkeypatch.setenv("MIMIC_CHECKPOINT", checkpoint)
    monkeypatch.setenv("MIMIC_ENCODER", tiny_clip)
    loaded = load_demo_model()
    assert loaded.zero_shot and loaded.kind == "zero-shot" and not loaded.stand_in
    [warning] = loaded.warnings
    assert warning.startswith("The checkpoint could not be loaded, so the zero-shot model runs instead: the checkpoint")
    assert damage in warning and str(tmp_path) not in warning and tiny_clip not in warning
    status = DemoApp.status_markdown(SimpleNamespace(loaded=loaded, kb=SimpleNamespace(status="Ready.")))
    assert f"⚠️ **{warning}**" in status and "Zero-shot: CLIP similarities" in status


def test_the_demo_reads_images_the_bounded_way_under_an_authors_mode_checkpoint(tiny_model, tiny_clip, tmp_path,
                                                                                 monkeypatch):
    from demo.models import load_demo_model
    tiny_model.set_image_mode("authors")
    save_model(tiny_model, str(tmp_path / "ckpt"))
    assert load_checkpoint(str(tmp_path / "ckpt")).processor.images.mode == "authors"
    monkeypatch.setenv("MIMIC_CHECKPOINT", str(tmp_path / "ckpt"))
    loaded = load_demo_model()
    assert loaded.kind == "trained checkpoint" and loaded.model.processor.images.mode == "default"
    assert loaded.model.config.image_mode == "default"
    [warning] = loaded.warnings
    assert "trained with the authors' image pipeline; the demo reads images with the default one" in warning
