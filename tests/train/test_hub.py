"""Checkpoints on the Hugging Face Hub, offline: the staged folder, loaded through a Hugging Face cache laid
out as a download leaves it (HF_HUB_OFFLINE=1), the model card parsed by huggingface_hub, one upload call."""
import json
import os
import shutil
import subprocess
import sys

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard

import mimic.train.hub as hub
from mimic.kb.encode import encode_store
from mimic.linker import Linker
from mimic.train.checkpoint import CheckpointError, save_model, save_nil_rule
from mimic.train.hub import HubError, push_to_hub, resolve_checkpoint, stage
from mimic.train.loading import load_model
from tests.train.test_checkpoint import authors_checkpoint, scores

REPO = "alice/mimic-test"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESULT = {"run_dir": "/home/alice/runs/Synthetic", "best_checkpoint": "/home/alice/runs/Synthetic/checkpoints/best.ckpt",
          "best_val_mrr": 0.91, "best_model": "/home/alice/runs/Synthetic/best",
          "test_metrics": {"hits@1": 0.875, "hits@3": 0.95, "hits@5": 0.975, "hits@10": 1.0, "hits@20": 1.0,
                           "mrr": 0.9166, "mr": 1.3, "count": 48}}
HPARAMS = """\
run_name: Synthetic
seed: 43
pretrained_model: /home/alice/models/clip
lr: 0.001
train_fraction: 1.0
optim: {betas: [0.9, 0.999], eps: 0.0001, weight_decay: 0.0001}
data: {batch_size: 32, text_max_length: 40, entity: /home/alice/data/kb_entity.json}
trainer: {max_epochs: 6, check_val_every_n_epoch: 2}
ablation: {units: [tglu, vdlu, cmfu], unit_losses: [tglu, vdlu, cmfu]}
"""


def fake_run(tmp_path, model, result=RESULT, hparams=HPARAMS):
    """The layout a training run leaves: runs/<run>/{best/, checkpoints/, result.json, version_0/hparams.yaml}."""
    run = tmp_path / "runs" / "Synthetic"
    save_model(model, str(run / "best"))
    (run / "result.json").write_text(json.dumps(result) if isinstance(result, dict) else result)
    (run / "version_0").mkdir()
    (run / "version_0" / "hparams.yaml").write_text(hparams)
    return run


def into_hf_cache(folder, cache, repo=REPO):
    """Lay `folder` out as huggingface_hub's cache holds a downloaded model repo."""
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / COMMIT)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)


@pytest.fixture()
def uploads(monkeypatch, tmp_path):
    """HfApi with its two network calls replaced: the repo creation and the one upload, recorded."""
    calls = {"create": [], "upload": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create"].append({"repo_id": repo_id, **kwargs})
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        copy = tmp_path / f"uploaded-{len(calls['upload'])}"
        shutil.copytree(kwargs["folder_path"], copy)  # the staging folder is removed after the upload
        calls["upload"].append({**kwargs, "copy": copy})

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_the_folder_that_loads_back_from_the_hub_cache(tiny_model, synth_dataset, tmp_path, uploads,
                                                                     monkeypatch):
    run = fake_run(tmp_path, tiny_model)
    save_nil_rule(str(run / "best"), {"feature": "margin", "threshold": 0.25, "accuracy": 0.8, "split": "dev",
                                      "config": "/home/alice/configs/synthetic.yaml"})
    assert push_to_hub(str(run / "best"), REPO, private=True) == f"https://huggingface.co/{REPO}"
    assert uploads["create"] == [{"repo_id": REPO, "repo_type": "model", "private": True, "exist_ok": True}]
    (upload,) = uploads["upload"]
    assert upload["repo_id"] == REPO and upload["repo_type"] == "model"
    assert not os.path.exists(upload["folder_path"])  # the staging folder was cleaned up
    uploaded = upload["copy"]
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"} <= set(os.listdir(uploaded))
    for name in os.listdir(uploaded):  # no path of the publisher's machine is published
        text = (uploaded / name).read_bytes()
        assert b"/home/alice" not in text and str(tmp_path).encode() not in text, name

    cache = tmp_path / "hf-cache"
    into_hf_cache(uploaded, cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve_checkpoint(REPO) == str(cache / "models--alice--mimic-test" / "snapshots" / COMMIT)
    downloaded = load_model(REPO, device="cpu")
    assert downloaded.config.metadata["nil"]["threshold"] == 0.25
    torch.testing.assert_close(scores(downloaded).s, scores(tiny_model).s, rtol=1e-6, atol=1e-4)
    store = encode_store(tiny_model, synth_dataset.entities[:8], synth_dataset.kb_images, str(tmp_path / "kb"), "kb",
                         batch_size=8, progress=False)
    result = Linker.open(store, checkpoint=REPO).link("we visited the falcon", "falcon", top_k=3)
    assert [r["rank"] for r in result["results"]] == [1, 2, 3]


def test_the_model_card_parses_and_says_what_users_need(tiny_model, tmp_path):
    run = fake_run(tmp_path, tiny_model)
    folder = stage(str(run / "best"), str(tmp_path / "staged"), REPO)
    card = ModelCard.load(os.path.join(folder, "README.md"))
    data = card.data
    assert data.library_name == "mimic-el" and data.license == "mit"
    assert data.base_model is None  # the tiny CLIP is a local folder, not a Hub model
    assert {"entity-linking", "multimodal"} <= set(data.tags)
    assert data.datasets == ["Synthetic"]
    assert data.metrics == ["hits@1", "hits@3", "hits@5", "hits@10", "hits@20", "mrr", "mr"]
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results["hits@1"] == 87.5 and results["mrr"] == 91.66 and results["mr"] == 1.3
    assert all(r.dataset_split == "test" and r.task_type == "entity-linking" for r in data.eval_results)
    text = card.text
    assert f"MIMIC_CHECKPOINT={REPO}" in text and f'Linker.open("kb/mine", checkpoint="{REPO}")' in text
    assert "| lr | 0.001 |" in text and "| data.batch_size | 32 |" in text and "| trainer.max_epochs | 6 |" in text
    assert "kb_entity.json" not in text  # data paths are not training settings
    assert "No NIL rule" in text and "@inproceedings{luo2023mimic" in text


def test_the_card_names_the_base_clip_and_the_nil_rule(tiny_model):
    tiny_model.config.encoder = "openai/clip-vit-base-patch32"  # as a checkpoint trained on it records
    tiny_model.config.metadata = {"nil": {"feature": "top", "threshold": 3.5, "accuracy": 0.9}}
    card = ModelCard(hub.model_card(tiny_model, REPO))
    assert card.data.base_model == "openai/clip-vit-base-patch32"
    assert card.data.eval_results is None and card.data.datasets is None  # no run beside it: nothing claimed
    assert "when `top` < 3.5000" in card.text and "(accuracy 90.00 %)" in card.text
    assert hub._base_model("open_clip:ViT-B-32/laion2b_s34b_b79k") == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    assert hub._base_model("open_clip:ViT-B-32") is None


def test_an_authors_ckpt_is_converted_before_upload(tiny_model, tiny_clip, tmp_path, uploads):
    path = authors_checkpoint(tiny_model, str(tmp_path / "epoch=7.ckpt"))
    push_to_hub(path, REPO, encoder=tiny_clip)
    uploaded = uploads["upload"][0]["copy"]
    assert {"config.json", "model.safetensors", "README.md"} <= set(os.listdir(uploaded))
    from mimic.train.checkpoint import load_checkpoint
    torch.testing.assert_close(scores(load_checkpoint(str(uploaded))).s, scores(tiny_model).s, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("repo_id", ["alice", "alice/mimic/extra", "../mimic", "al ice/mimic", "alice/", "a/b" * 60])
def test_bad_repo_names_are_refused_before_anything_happens(tiny_model, tmp_path, uploads, repo_id):
    save_model(tiny_model, str(tmp_path / "ckpt"))
    with pytest.raises(HubError, match="owner/name|not a valid Hub repo name"):
        push_to_hub(str(tmp_path / "ckpt"), repo_id)
    assert uploads == {"create": [], "upload": []}


def test_hostile_run_files_do_not_break_the_card(tiny_model, tmp_path):
    result = {"test_metrics": {"hits@1": float("nan"), "mrr": "0.9", "mr": True, "hits@3": 0.5}}
    run = fake_run(tmp_path, tiny_model, result=result,
                   hparams="run_name: \"x | y\\n---\\n<script>alert(1)</script>\"\nlr: [1, 2]\n")
    card = ModelCard.load(os.path.join(stage(str(run / "best"), str(tmp_path / "a"), REPO), "README.md"))
    assert card.data.metrics == ["hits@3"]  # NaN, strings and booleans are not results
    assert "<script>" not in card.text and card.data.datasets == ["x y --- script alert(1) /script"]
    (run / "result.json").write_text("{not json")
    (run / "version_0" / "hparams.yaml").write_text("a: [unclosed")
    card = ModelCard.load(os.path.join(stage(str(run / "best"), str(tmp_path / "b"), REPO), "README.md"))
    assert card.data.eval_results is None and "training settings were not found" in card.text


def test_staging_never_overwrites_and_a_missing_hub_checkpoint_is_one_clear_error(tiny_model, tmp_path):
    save_model(tiny_model, str(tmp_path / "ckpt"))
    (tmp_path / "review").mkdir()
    (tmp_path / "review" / "notes.txt").write_text("mine")
    with pytest.raises(HubError, match="exists and is not an empty folder"):
        stage(str(tmp_path / "ckpt"), str(tmp_path / "review"), REPO)
    assert os.listdir(tmp_path / "review") == ["notes.txt"]
    with pytest.raises(CheckpointError, match="could not be downloaded from the Hugging Face Hub"):
        resolve_checkpoint("alice/not-in-the-cache")  # HF_HUB_OFFLINE=1: fails at once
    with pytest.raises(CheckpointError, match="not a Hub repo"):
        resolve_checkpoint("no-such-checkpoint")


def test_push_to_hub_command(tiny_model, tmp_path):
    save_model(tiny_model, str(tmp_path / "ckpt"))
    run = lambda *a: subprocess.run([sys.executable, "-m", "mimic", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=300)
    out = run("push-to-hub", str(tmp_path / "ckpt"), REPO, "--stage", str(tmp_path / "review"))
    assert out.returncode == 0, out.stderr
    assert "nothing was uploaded" in out.stdout and os.path.isfile(tmp_path / "review" / "README.md")
    out = run("push-to-hub", str(tmp_path / "ckpt"), "not a repo")
    assert out.returncode == 2 and out.stderr.strip() == "error: 'not a repo': a Hub model repo is named owner/name"
