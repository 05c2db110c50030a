"""Training on the synthetic dataset: the loss falls, H@1 rises far above chance; resume; ablations."""
import csv
import glob
import os

import pytest
import torch

from mimic.data.readers import load_config, subsample
from mimic.model.mimic import MIMIC, MIMICConfig
from mimic.train.checkpoint import load_authors_checkpoint, load_checkpoint
from mimic.train.evaluate import evaluate
from mimic.train.trainer import train


def _epoch_losses(run_dir, key="Train/loss_epoch"):
    (path,) = glob.glob(os.path.join(run_dir, "version_*", "metrics.csv"))
    return [float(r[key]) for r in csv.DictReader(open(path)) if r.get(key)], open(path).readline()


@pytest.fixture(scope="module")
def trained(synth_config_path, tiny_clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = load_config(synth_config_path, [f"output_dir={out}"])
    model = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=0)
    return train(model, config, progress=False), config


def test_training_lowers_the_loss_and_lifts_hits_at_1(trained, synth_dataset, tiny_clip):
    result, config = trained
    losses, _ = _epoch_losses(result["run_dir"])
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    untrained = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=0)
    _, before = evaluate(untrained, synth_dataset, "test", progress=False)
    after = result["test_metrics"]
    chance = 1 / len(synth_dataset.entities)
    # measured: H@1 0.25 untrained -> 0.96 trained (chance 0.02), 48 test mentions, 48 entities
    assert before["hits@1"] < 0.45 and after["hits@1"] >= 0.85 and after["hits@1"] > 20 * chance
    assert after["mrr"] > before["mrr"] + 0.3


def test_best_checkpoint_is_written_in_both_formats(trained, synth_dataset):
    result, _ = trained
    lightning = load_authors_checkpoint(result["best_checkpoint"])  # the run's pretrained_model folder exists
    own = load_checkpoint(result["best_model"])
    for key, value in own.state_dict().items():
        assert torch.equal(lightning.state_dict()[key], value), key
    _, m = evaluate(own, synth_dataset, "test", progress=False)
    assert m == result["test_metrics"]


def test_resume_continues_from_the_last_checkpoint(synth_config_path, tiny_clip, tmp_path):
    config = load_config(synth_config_path, [f"output_dir={tmp_path}", "trainer.max_epochs=2"])
    train(MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=0), config, progress=False)
    last = os.path.join(tmp_path, "Synthetic", "checkpoints", "last.ckpt")
    assert torch.load(last, weights_only=False)["epoch"] == 1
    config.trainer.max_epochs = 4
    train(MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=0), config, resume=True, progress=False)
    state = torch.load(last, weights_only=False)
    assert state["epoch"] == 3 and state["global_step"] == 4 * 5  # 144 mentions / batch 32 = 5 steps an epoch


def test_ablation_switches_remove_what_they_name(synth_config_path, tiny_clip, tmp_path):
    overrides = [f"output_dir={tmp_path}", "trainer.max_epochs=2", "ablation.units=[tglu,cmfu]",
                 "ablation.unit_losses=[cmfu]"]
    config = load_config(synth_config_path, overrides)
    model = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip, units=("tglu", "cmfu")), seed=0)
    result = train(model, config, progress=False)
    _, header = _epoch_losses(result["run_dir"])
    assert "Train/loss_cmfu" in header and "Train/loss_overall" in header
    assert "Train/loss_tglu" not in header and "Train/loss_vdlu" not in header
    assert load_checkpoint(result["best_model"]).config.units == ("tglu", "cmfu")
    # the dropped unit got no gradient, so it kept its initial weights
    initial = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip, units=("tglu", "cmfu")), seed=0)
    trained = load_checkpoint(result["best_model"])
    for key, value in initial.matcher.vdlu.state_dict().items():
        assert torch.equal(trained.matcher.vdlu.state_dict()[key], value), key
    assert not torch.equal(trained.matcher.tglu.fc_key.weight, initial.matcher.tglu.fc_key.weight)


def test_low_resource_subset_is_reproducible():
    items = list(range(1000))
    a, b = subsample(items, 0.1, 43), subsample(items, 0.1, 43)
    assert a == b and len(a) == 100 and a == sorted(a)
    assert subsample(items, 0.1, 44) != a and subsample(items, 1.0, 43) == items
    with pytest.raises(ValueError, match="fraction must be in"):
        subsample(items, 0, 43)
